"""The ARM cores verify-arm emulates: which one a board has, and what the guest reads about it.

A board's core comes from ``--cpu`` or from the device profile's ``cpu`` text
(``rpi4`` -> ``cortex-a72``); it names one of qemu's ``-cpu`` models.

qemu 7.2 (Debian 12) does not emulate ``/proc/cpuinfo`` for aarch64 guests, so the guest
reads the host's x86 text, and onnxruntime >= 1.28 (its bundled cpuinfo library) crashes
at import on it. :func:`fake_cpuinfo` writes the file an arm64 kernel would print for the
emulated core (its MIDR fields); ``arm_emulator`` serves it to each run through qemu's
``-L`` prefix. See docs/verify-arm.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgeprune.devices.profiles import load_profile
from edgeprune.errors import EdgepruneError


@dataclass(frozen=True)
class Core:
    """A CPU core qemu can emulate, with the MIDR_EL1 fields its qemu model reports."""

    qemu_cpu: str
    implementer: int
    variant: int
    part: int
    revision: int


# qemu -cpu models by the name device profiles use for the core (found in their `cpu` text).
CORES = {c.qemu_cpu: c for c in [
    Core("cortex-a35", 0x41, 0x1, 0xd04, 0),
    Core("cortex-a53", 0x41, 0x0, 0xd03, 4),
    Core("cortex-a55", 0x41, 0x2, 0xd05, 0),
    Core("cortex-a57", 0x41, 0x1, 0xd07, 0),
    Core("cortex-a72", 0x41, 0x0, 0xd08, 3),
    Core("cortex-a76", 0x41, 0x4, 0xd0b, 1),
    Core("cortex-a710", 0x41, 0x2, 0xd47, 1),
    Core("neoverse-n1", 0x41, 0x4, 0xd0c, 1),
    Core("neoverse-n2", 0x41, 0x0, 0xd49, 3),
    Core("neoverse-v1", 0x41, 0x1, 0xd40, 2),
    Core("a64fx", 0x46, 0x1, 0x001, 0),
    Core("max", 0x00, 0x0, 0x051, 0),
]}
_CORE_IN_TEXT = re.compile(r"(cortex-a\d+|neoverse-[nv]\d|a64fx)", re.IGNORECASE)


def core_from_profile(device: str) -> str:
    """The qemu -cpu model for a device profile's core (its ``cpu`` text names it)."""
    profile = load_profile(device)
    match = _CORE_IN_TEXT.search(profile.cpu)
    if not match:
        raise EdgepruneError(f"device '{profile.name}' ({profile.cpu}) is not an ARM core qemu can emulate; "
                             "pass --cpu (e.g. cortex-a72)")
    return match.group(1).lower()


def wanted_core(device: str | None, cpu: str | None) -> str:
    """The qemu -cpu model: ``cpu`` if given, else the core of the device profile."""
    if cpu:
        return cpu.lower()
    if not device:
        raise EdgepruneError("give --device (e.g. rpi4) or --cpu (e.g. cortex-a72)")
    return core_from_profile(device)


def fake_cpuinfo(qemu_cpu: str, n_cpus: int) -> str | None:
    """/proc/cpuinfo as an arm64 kernel prints it for ``n_cpus`` of the core; None for a core
    not in :data:`CORES`.

    The ``Features`` line is left out: on aarch64 onnxruntime (and its cpuinfo library)
    read the features from AT_HWCAP, which qemu sets from the emulated core.
    """
    core = CORES.get(qemu_cpu)
    if core is None:
        return None
    block = ("processor\t: {i}\nBogoMIPS\t: 100.00\n"
             f"CPU implementer\t: 0x{core.implementer:02x}\nCPU architecture: 8\n"
             f"CPU variant\t: 0x{core.variant:x}\nCPU part\t: 0x{core.part:03x}\n"
             f"CPU revision\t: {core.revision}\n")
    return "\n".join(block.format(i=i) for i in range(n_cpus)) + "\n"


def host_cpus() -> int:
    """CPUs the guest sees in /sys/devices/system/cpu/present (the host's sysfs shows through)."""
    try:
        text = Path("/sys/devices/system/cpu/present").read_text().strip()
        count = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            count = max(count, int(hi or lo) + 1)
        return count
    except (OSError, ValueError):
        return os.cpu_count() or 1
