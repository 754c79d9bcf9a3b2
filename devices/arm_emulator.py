"""Running the aarch64 guest Python under qemu user-mode emulation, on a chosen core.

``qemu-aarch64-static -cpu <core> -L <prefix> <prefix>/usr/bin/python3.11 -I -S ...``: an
instruction the core lacks stops the run with SIGILL, as it would on the board. Each run
gets its own ``-L`` prefix: symlinks to the prepared aarch64 root (``arm_userland``) plus a
``proc/cpuinfo`` for the emulated core (``arm_cores.fake_cpuinfo``), which keeps
onnxruntime >= 1.28 alive under Debian's qemu 7.2.

:func:`run_on_arm` ships ``arm_verify_worker.py`` (stdlib, numpy and onnxruntime only)
into a job folder, runs it on the model and inputs, and reads back the outputs or why
there are none. Nothing here times inference: latency under emulation means nothing.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune.devices.arm_cores import fake_cpuinfo, host_cpus
from edgeprune.errors import EdgepruneError
from edgeprune.files import read_json

if TYPE_CHECKING:
    from edgeprune.devices.arm_userland import ArmEnv

GUEST_PYTHON = "/usr/bin/python3.11"     # the interpreter inside the aarch64 root
WORKER = Path(__file__).with_name("arm_verify_worker.py")


def find_qemu(explicit: str | None = None) -> Path:
    """The qemu-aarch64 user-mode emulator: ``explicit``, $EDGEPRUNE_QEMU, or on PATH."""
    name = explicit or os.environ.get("EDGEPRUNE_QEMU")
    if name:
        found = shutil.which(name)
        if not found:
            raise EdgepruneError(f"emulator not found or not executable: {name}")
        return Path(found)
    for candidate in ("qemu-aarch64-static", "qemu-aarch64"):
        found = shutil.which(candidate)
        if found:
            return Path(found)
    raise EdgepruneError("qemu-aarch64-static not found: install it with 'apt-get install qemu-user-static' "
                         "(Debian/Ubuntu) or pass --qemu PATH")


def qemu_facts(qemu: Path) -> tuple[str, list[str]]:
    """The emulator's version line and the -cpu models it knows."""
    try:
        version = subprocess.run([str(qemu), "--version"], capture_output=True, text=True, timeout=30)
        cpus = subprocess.run([str(qemu), "-cpu", "help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EdgepruneError(f"cannot run the emulator {qemu}: {e}") from None
    first = (version.stdout or version.stderr).strip().splitlines()
    if version.returncode != 0 or not first or "aarch64" not in first[0]:
        raise EdgepruneError(f"{qemu} is not a qemu aarch64 user-mode emulator")
    names = [line.split()[0] for line in cpus.stdout.splitlines()[1:] if line.strip()]
    return first[0], names


def no_core_dumps() -> None:
    """``preexec_fn`` for emulated runs: a guest that crashes leaves no core file behind."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def emulate(qemu: Path, cpu: str, root: Path, run_dir: Path, args: list[str],
            timeout: float) -> subprocess.CompletedProcess:
    """Run the guest python under ``qemu -cpu cpu`` with a per-run prefix holding /proc/cpuinfo."""
    prefix = run_dir / "prefix"
    prefix.mkdir()
    for entry in root.iterdir():
        (prefix / entry.name).symlink_to(entry)
    text = fake_cpuinfo(cpu, host_cpus())
    if text is not None:
        (prefix / "proc").mkdir()
        (prefix / "proc/cpuinfo").write_text(text)
    cmd = [str(qemu), "-cpu", cpu, "-L", str(prefix), str(prefix) + GUEST_PYTHON, "-I", "-S", *args]
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(run_dir)}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=run_dir, timeout=timeout,
                              preexec_fn=no_core_dumps)
    except subprocess.TimeoutExpired:
        raise EdgepruneError(f"the emulated run did not finish in {timeout:.0f} s; use fewer --samples "
                             "or a longer --timeout") from None


def describe_exit(code: int, stderr: str) -> str:
    """Why an emulated process ended badly, in words (SIGILL: an instruction the core lacks)."""
    sig = -code if code < 0 else code - 128 if code > 128 else 0
    if sig == signal.SIGILL:
        return "illegal instruction (the code uses an instruction this core lacks)"
    if sig > 0:
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return f"exit code {code}" + (f": {lines[-1][:300]}" if lines else "")


@dataclass
class ArmRun:
    """What the emulated side produced: outputs per sample, or why it produced none."""

    ok: bool
    outputs: list[dict[str, np.ndarray]]
    error: str | None
    info: dict[str, Any]              # the worker's result.json: versions, hwcaps, error


def run_on_arm(env: ArmEnv, qemu: Path, cpu: str, model: Path, feeds: list[dict[str, np.ndarray]],
               threads: int = 1, timeout: float = 1800.0) -> ArmRun:
    """Run ``model`` on every feed with the aarch64 onnxruntime emulated on ``cpu``."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-arm-") as tmp:
        run_dir = Path(tmp)
        np.savez(run_dir / "inputs.npz", **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
        job = {"model": str(Path(model).resolve()), "site": str(env.site), "inputs": "inputs.npz",
               "samples": len(feeds), "input_names": list(feeds[0]), "threads": threads}
        (run_dir / "job.json").write_text(json.dumps(job))
        worker = run_dir / WORKER.name
        shutil.copyfile(WORKER, worker)
        proc = emulate(qemu, cpu, env.root, run_dir, [str(worker), str(run_dir)], timeout)
        try:
            info = read_json(run_dir / "result.json")
        except EdgepruneError:        # the worker died before writing it
            info = {}
        if proc.returncode != 0 or not info.get("ok"):
            error = info.get("error") or describe_exit(proc.returncode, proc.stderr)
            return ArmRun(False, [], error, info)
        with np.load(run_dir / "outputs.npz", allow_pickle=False) as data:
            outputs: list[dict[str, np.ndarray]] = [{} for _ in feeds]
            for key in data.files:
                i, name = key.split("/", 1)
                outputs[int(i)][name] = data[key]
    return ArmRun(True, outputs, None, info)
