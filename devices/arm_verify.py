"""Verify an ONNX model on the aarch64 build of onnxruntime, emulated on the board's core.

The firmware team runs the artifact with the aarch64 onnxruntime wheel, whose kernels
differ from the x86 build the pipeline used. This module runs that wheel under qemu
user-mode emulation (``qemu-aarch64-static -cpu cortex-a72`` for a Raspberry Pi 4, ...),
so an instruction the real core lacks fails here as it would on the board, and compares
its outputs with the host's x86 onnxruntime on the same inputs.

The aarch64 userland is assembled without a board and cached per onnxruntime version
under ``$XDG_CACHE_HOME/edgeprune/arm/<version>`` (``~/.cache`` by default):

* Debian's arm64 packages of python3.11 and its libraries, resolved and downloaded by
  apt with a private state folder (no change to the host's dpkg architectures, no root
  needed) and unpacked with ``dpkg-deb -x``;
* PyPI's aarch64 wheels of onnxruntime and numpy (``pip download --platform ...``),
  unpacked into a site folder.

It is built in a temporary folder beside the cache entry, smoke-tested (``import
onnxruntime`` under the emulator) and renamed into place, so an interruption or a
version that does not run never leaves a broken cache.

qemu 7.2 (Debian 12) does not emulate ``/proc/cpuinfo`` for aarch64 guests: the guest
reads the host's x86 text. onnxruntime >= 1.28 (its bundled cpuinfo library) then
dereferences a null pointer at import while reading the cache topology, so those
versions died with SIGSEGV. Each run therefore gets a ``/proc/cpuinfo`` with the
emulated core's MIDR fields, served through qemu's ``-L`` prefix (qemu >= 8.2 emulates
the file itself). See docs/verify-arm.md.

Nothing here measures time of inference: latency under emulation means nothing.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeprune.errors import EdgepruneError

DEFAULT_ORT_VERSION = "1.31.1"   # newest release; runs under Debian's qemu 7.2 with the cpuinfo fix
DEFAULT_DEVICE = "rpi4"
DEBIAN_SUITE = "bookworm"        # its python3.11 matches the cp311 aarch64 wheels
GUEST_PYTHON = "/usr/bin/python3.11"
PYTHON_TAG = "311"
DEBIAN_PACKAGES = ["python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1"]
# manylinux tags an aarch64 wheel may carry that bookworm's glibc 2.36 can load
WHEEL_PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, 37)]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
WORKER = Path(__file__).with_name("arm_verify_worker.py")
ENV_FILE = "env.json"
ENV_LAYOUT = 1                   # bump when the cached layout changes


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


# -- configuration and results --------------------------------------------------------

@dataclass
class ArmVerifyConfig:
    device: str | None = None         # device profile name or .toml path; gives the core (rpi4
                                      # when neither device nor cpu is given)
    cpu: str | None = None            # qemu -cpu model; overrides the profile's core
    ort_version: str = DEFAULT_ORT_VERSION
    samples: int = 8                  # inputs run on both sides (golden vectors or random)
    seed: int = 0                     # for random inputs
    atol: float = 1e-4                # pass if max |arm - x86| <= atol + rtol * max |x86|
    rtol: float = 1e-4
    min_top1_agreement: float = 1.0   # fraction of samples whose arg-max must agree
    threads: int = 1                  # intra-op threads on the emulated side
    qemu: str | None = None           # emulator binary; default qemu-aarch64-static on PATH
    cache_dir: Path | None = None     # default $XDG_CACHE_HOME/edgeprune/arm
    timeout_s: float = 1800.0         # for the emulated run
    write_manifest: bool = True       # add a verify_arm section to an artifact's manifest


@dataclass
class ArmEnv:
    """A prepared aarch64 userland: Debian's python in ``root``, the wheels in ``site``."""

    path: Path
    ort_version: str
    numpy_version: str
    from_cache: bool = False
    prepare_s: float = 0.0            # wall time of preparation (or of finding the cache)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def site(self) -> Path:
        return self.path / "site"


@dataclass
class ArmRun:
    """What the emulated side produced: outputs per sample, or why it produced none."""

    ok: bool
    outputs: list[dict[str, np.ndarray]]
    error: str | None
    info: dict[str, Any]


@dataclass
class Comparison:
    verdict: str                      # "pass" or "fail"
    reason: str
    max_abs_diff: float | None
    tolerance: float | None
    top1_agreement: float | None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def max_abs_x86(self) -> float | None:
        """The largest |output| on the x86 side: the scale the difference is read against."""
        scales = [o["max_abs_x86"] for o in self.outputs.values() if "max_abs_x86" in o]
        return max(scales) if scales else None


@dataclass
class ArmVerifyResult:
    verdict: str                      # "pass" or "fail"
    reason: str
    model: str
    artifact: str | None
    device: str | None
    qemu_cpu: str
    emulator: str
    onnxruntime_aarch64: str
    onnxruntime_x86: str
    numpy_aarch64: str
    inputs: str                       # where the inputs came from, in words
    samples: int
    threads: int                      # intra-op threads on each side (CPU execution provider)
    max_abs_diff: float | None
    tolerance: float | None
    max_abs_x86: float | None         # largest |output| on x86, to read the difference against
    top1_agreement: float | None
    outputs: dict[str, dict[str, Any]]
    hwcaps: list[str]                 # features the emulated core advertises (AT_HWCAP)
    model_sha256: str
    env_path: str
    env_from_cache: bool
    env_prepare_s: float              # preparing (or finding) the aarch64 userland; not a model latency
    manifest_updated: bool = False
    checked_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_section(self) -> dict[str, Any]:
        """What goes in the artifact's manifest: the verdict and its evidence, no host paths."""
        d = self.to_dict()
        for key in ("artifact", "model", "env_path", "env_from_cache", "env_prepare_s", "manifest_updated"):
            d.pop(key)
        return d


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- the emulator and the core -------------------------------------------------------------

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


def core_from_profile(device: str) -> str:
    """The qemu -cpu model for a device profile's core (its ``cpu`` text names it)."""
    from edgeprune.devices.profiles import load_profile

    profile = load_profile(device)
    core = getattr(profile, "core", None)         # a dedicated field, if profiles gain one
    match = _CORE_IN_TEXT.search(str(core or profile.cpu))
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
    """/proc/cpuinfo as an arm64 kernel prints it for ``n_cpus`` of the core.

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


def _host_cpus() -> int:
    """CPUs the guest sees in /sys/devices/system/cpu/present (the host's sysfs)."""
    try:
        text = Path("/sys/devices/system/cpu/present").read_text().strip()
        count = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            count = max(count, int(hi or lo) + 1)
        return count
    except (OSError, ValueError):
        return os.cpu_count() or 1


# -- preparing the aarch64 userland -------------------------------------------------------

def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeprune" / "arm"


def _check_version(ort_version: str) -> None:
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", ort_version):
        raise EdgepruneError(f"--onnxruntime takes a release number like {DEFAULT_ORT_VERSION}, got {ort_version!r}")


def _run_tool(cmd: list[str], what: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except FileNotFoundError:
        raise EdgepruneError(f"{what} needs '{cmd[0]}', which is not installed") from None
    except subprocess.TimeoutExpired:
        raise EdgepruneError(f"{what} timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR"))] or lines[-1:]
        raise EdgepruneError(f"{what} failed: {' | '.join(errors)[:400]}")
    return proc.stdout


def _apt_config(work: Path, mirror: str, security: str) -> Path:
    """A private apt configuration that resolves arm64 packages into ``work``."""
    if not Path(KEYRING).is_file():
        raise EdgepruneError(f"Debian's archive keyring is missing ({KEYRING}): apt-get install debian-archive-keyring")
    for sub in ("state/lists/partial", "cache/archives/partial", "sources"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "state/status").touch()
    (work / "sources/debian.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {DEBIAN_SUITE} {DEBIAN_SUITE}-updates\nComponents: main\n"
        f"Signed-By: {KEYRING}\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {DEBIAN_SUITE}-security\nComponents: main\nSigned-By: {KEYRING}\n")
    conf = work / "apt.conf"
    conf.write_text("\n".join([
        f'Dir::State "{work}/state";', f'Dir::State::status "{work}/state/status";',
        f'Dir::Cache "{work}/cache";', 'Dir::Etc::SourceList "/dev/null";',
        f'Dir::Etc::SourceParts "{work}/sources";', 'Dir::Etc::Preferences "/dev/null";',
        'Dir::Etc::PreferencesParts "/dev/null";', 'APT::Architecture "arm64";',
        'APT::Architectures { "arm64"; };', 'Debug::NoLocking "true";', 'Acquire::Languages "none";',
        f'APT::Sandbox::User "{getpass.getuser()}";', ""]))
    return conf


def _debian_userland(work: Path, root: Path, log: Log) -> list[str]:
    """Download python3.11 and its libraries for arm64 and unpack them into ``root``."""
    mirror = os.environ.get("EDGEPRUNE_DEBIAN_MIRROR", DEFAULT_MIRROR)
    security = os.environ.get("EDGEPRUNE_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY_MIRROR)
    conf = _apt_config(work, mirror, security)
    env = {**os.environ, "APT_CONFIG": str(conf), "DEBIAN_FRONTEND": "noninteractive"}
    log(f"apt: arm64 package lists of Debian {DEBIAN_SUITE} from {mirror}")
    _run_tool(["apt-get", "-q", "update"], "apt-get update (arm64 lists)", env)
    log(f"apt: downloading {', '.join(DEBIAN_PACKAGES)} and their dependencies (arm64)")
    _run_tool(["apt-get", "-q", "-y", "--download-only", "--no-install-recommends", "install", *DEBIAN_PACKAGES],
              "apt-get download (arm64 python3.11)", env)
    debs = sorted((work / "cache/archives").glob("*.deb"))
    if not debs:
        raise EdgepruneError("apt-get downloaded no arm64 packages")
    for deb in debs:
        _run_tool(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "usr/share/lintian"):
        shutil.rmtree(root / junk, ignore_errors=True)
    if not (root / GUEST_PYTHON.lstrip("/")).exists():
        raise EdgepruneError(f"the arm64 packages did not provide {GUEST_PYTHON}")
    return [d.name for d in debs]


def _wheels(work: Path, site: Path, ort_version: str, log: Log) -> dict[str, str]:
    """Download the aarch64 wheels of onnxruntime and numpy and unpack them into ``site``."""
    import zipfile

    numpy_req = "numpy<2" if tuple(int(p) for p in ort_version.split(".")[:2]) < (1, 19) else "numpy"
    dest = work / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", PYTHON_TAG, "--implementation", "cp", "--abi", f"cp{PYTHON_TAG}",
           *[arg for plat in WHEEL_PLATFORMS for arg in ("--platform", plat)],
           "-d", str(dest), f"onnxruntime=={ort_version}", numpy_req]
    log(f"pip: aarch64 wheels onnxruntime=={ort_version} and {numpy_req} for CPython 3.{PYTHON_TAG[1:]}")
    try:
        _run_tool(cmd, f"pip download of the aarch64 onnxruntime {ort_version} wheel")
    except EdgepruneError as e:
        raise EdgepruneError(f"{e} (is {ort_version} an onnxruntime release with a cp{PYTHON_TAG} aarch64 "
                             "wheel on PyPI?)") from None
    hashes = {}
    for wheel in sorted(dest.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
        hashes[wheel.name] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return hashes


def _smoke_test(path: Path, qemu: Path) -> dict[str, Any]:
    """Import numpy and onnxruntime in the new userland; the env is cached only if this works."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import numpy, onnxruntime; "
            "print(json.dumps({'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))")
    with tempfile.TemporaryDirectory(prefix="edgeprune-arm-") as tmp:
        proc = _emulate(qemu, "max", path / "root", Path(tmp), ["-c", code, str(path / "site")], timeout=600)
    if proc.returncode != 0:
        raise EdgepruneError(f"the aarch64 onnxruntime does not import under {qemu.name}: "
                             f"{_describe_exit(proc.returncode, proc.stderr)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_arm_env(ort_version: str = DEFAULT_ORT_VERSION, cache_dir: Path | None = None,
                    qemu: str | None = None, log: Log = _quiet) -> ArmEnv:
    """The aarch64 userland for ``ort_version``, from the cache or prepared (atomically) now."""
    _check_version(ort_version)
    start = time.perf_counter()
    target = cache_root(cache_dir) / ort_version
    env = _load_env(target)
    if env is not None:
        env.prepare_s = time.perf_counter() - start
        return env
    emulator = find_qemu(qemu)
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"preparing the aarch64 onnxruntime {ort_version} environment in {target} (once per version)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{ort_version}.", suffix=".tmp", dir=target.parent))
    try:
        work = tmp / "work"
        wheels = _wheels(work, tmp / "site", ort_version, log)
        debs = _debian_userland(work, tmp / "root", log)
        shutil.rmtree(work)
        log("checking that onnxruntime imports under the emulator")
        versions = _smoke_test(tmp, emulator)
        info = {"layout": ENV_LAYOUT, "onnxruntime": versions["onnxruntime"], "numpy": versions["numpy"],
                "debian_suite": DEBIAN_SUITE, "python": GUEST_PYTHON, "debian_packages": debs,
                "wheels_sha256": wheels, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / ENV_FILE).write_text(json.dumps(info, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if _load_env(target) is None:   # not a concurrent preparation that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env = _load_env(target)
    if env is None:
        raise EdgepruneError(f"the prepared aarch64 environment at {target} is unreadable")
    env.from_cache = False
    env.prepare_s = time.perf_counter() - start
    return env


def _load_env(path: Path) -> ArmEnv | None:
    try:
        info = json.loads((path / ENV_FILE).read_text())
    except (OSError, ValueError):
        if path.exists():   # not made by prepare_arm_env (it renames only complete folders)
            raise EdgepruneError(f"{path} is not a prepared aarch64 environment; remove it and run again")
        return None
    if info.get("layout") != ENV_LAYOUT:
        raise EdgepruneError(f"{path} was prepared by another edgeprune version; remove it and run again")
    return ArmEnv(path, info["onnxruntime"], info["numpy"], from_cache=True, info=info)


# -- running under the emulator -----------------------------------------------------------

def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _emulate(qemu: Path, cpu: str, root: Path, run_dir: Path, args: list[str],
             timeout: float) -> subprocess.CompletedProcess:
    """Run the guest python under ``qemu -cpu cpu`` with a per-run prefix holding /proc/cpuinfo."""
    prefix = run_dir / "prefix"
    prefix.mkdir()
    for entry in root.iterdir():
        (prefix / entry.name).symlink_to(entry)
    text = fake_cpuinfo(cpu, _host_cpus())
    if text is not None:
        (prefix / "proc").mkdir()
        (prefix / "proc/cpuinfo").write_text(text)
    cmd = [str(qemu), "-cpu", cpu, "-L", str(prefix), str(prefix) + GUEST_PYTHON, "-I", "-S", *args]
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(run_dir)}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=run_dir, timeout=timeout,
                              preexec_fn=_no_core_dumps)
    except subprocess.TimeoutExpired:
        raise EdgepruneError(f"the emulated run did not finish in {timeout:.0f} s; use fewer --samples "
                             "or a longer --timeout") from None


def _describe_exit(code: int, stderr: str) -> str:
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
        proc = _emulate(qemu, cpu, env.root, run_dir, [str(worker), str(run_dir)], timeout)
        try:
            info = json.loads((run_dir / "result.json").read_text())
        except (OSError, ValueError):
            info = {}
        if proc.returncode != 0 or not info.get("ok"):
            error = info.get("error") or _describe_exit(proc.returncode, proc.stderr)
            return ArmRun(False, [], error, info)
        with np.load(run_dir / "outputs.npz", allow_pickle=False) as data:
            outputs: list[dict[str, np.ndarray]] = [{} for _ in feeds]
            for key in data.files:
                i, name = key.split("/", 1)
                outputs[int(i)][name] = data[key]
    return ArmRun(True, outputs, None, info)


def run_on_host(model: Path, feeds: list[dict[str, np.ndarray]], threads: int = 1) -> list[dict[str, np.ndarray]]:
    """The same feeds through the host's (x86) onnxruntime, CPU execution provider."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        raise EdgepruneError(f"onnxruntime cannot load {model}: {str(e).splitlines()[0][:300]}") from None
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feed))) for feed in feeds]


# -- comparing ------------------------------------------------------------------------------

def compare_outputs(x86: list[dict[str, np.ndarray]], arm: list[dict[str, np.ndarray]],
                    atol: float = 1e-4, rtol: float = 1e-4, min_top1_agreement: float = 1.0) -> Comparison:
    """Max absolute difference per output and top-1 agreement of the first output."""
    if len(x86) != len(arm) or not x86:
        return Comparison("fail", f"the aarch64 side returned {len(arm)} results for {len(x86)} inputs",
                          None, None, None)
    per_output: dict[str, dict[str, Any]] = {}
    worst, worst_tol, problems = 0.0, None, []
    for name in x86[0]:
        if any(name not in a for a in arm):
            problems.append(f"output '{name}' missing on the aarch64 side")
            continue
        ref = [r[name] for r in x86]
        got = [a[name] for a in arm]
        if any(r.shape != g.shape for r, g in zip(ref, got)):
            problems.append(f"output '{name}' has shape {got[0].shape} on aarch64, {ref[0].shape} on x86")
            continue
        if not all(np.issubdtype(r.dtype, np.number) for r in ref):
            equal = all(np.array_equal(r, g) for r, g in zip(ref, got))
            per_output[name] = {"shape": list(ref[0].shape), "equal": equal}
            if not equal:
                problems.append(f"output '{name}' differs")
            continue
        r64 = [r.astype(np.float64) for r in ref]
        g64 = [g.astype(np.float64) for g in got]
        finite_mismatch = any((np.isfinite(r) != np.isfinite(g)).any() for r, g in zip(r64, g64))
        diff = max(float(np.nanmax(np.abs(np.where(np.isfinite(r) & np.isfinite(g), r - g, 0.0)), initial=0.0))
                   for r, g in zip(r64, g64))
        scale = max(float(np.max(np.abs(np.nan_to_num(r, posinf=0, neginf=0)), initial=0.0)) for r in r64)
        tol = atol + rtol * scale
        per_output[name] = {"shape": list(ref[0].shape), "max_abs_diff": diff, "tolerance": tol,
                            "max_abs_x86": scale}
        if diff >= worst:
            worst, worst_tol = diff, tol
        if finite_mismatch:
            problems.append(f"output '{name}' is non-finite on one side only")
        elif diff > tol:
            problems.append(f"output '{name}' differs by {diff:.3g} (tolerance {tol:.3g})")
    top1 = _top1_agreement([r[next(iter(x86[0]))] for r in x86],
                           [a.get(next(iter(x86[0]))) for a in arm])
    if top1 is not None and top1 < min_top1_agreement:
        problems.append(f"top-1 agrees on {top1:.1%} of the inputs (need {min_top1_agreement:.1%})")
    verdict = "fail" if problems else "pass"
    reason = "; ".join(problems) if problems else "outputs agree within tolerance"
    return Comparison(verdict, reason, worst if per_output else None, worst_tol, top1, per_output)


def _top1_agreement(ref: list[np.ndarray], got: list[np.ndarray | None]) -> float | None:
    """Fraction of rows whose arg-max agrees, for (batch, classes) outputs; None otherwise."""
    if any(g is None or g.shape != r.shape for r, g in zip(ref, got)):
        return None
    if ref[0].ndim != 2 or ref[0].shape[1] < 2 or not np.issubdtype(ref[0].dtype, np.floating):
        return None
    agree = [np.argmax(r, axis=1) == np.argmax(g, axis=1) for r, g in zip(ref, got)]
    return float(np.mean(np.concatenate(agree)))


# -- inputs ---------------------------------------------------------------------------------

@dataclass
class _InputSpec:
    name: str
    shape: list[int | None]           # None for a symbolic dimension
    dtype: np.dtype


def model_inputs(model: Path) -> list[_InputSpec]:
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a non-ONNX file
        raise EdgepruneError(f"{model} is not a readable ONNX model: {str(e).splitlines()[0][:200]}") from None
    inits = {i.name for i in proto.graph.initializer}
    specs = []
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise EdgepruneError(f"input '{inp.name}' of {model} is not a tensor; verify-arm handles tensor inputs")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        specs.append(_InputSpec(inp.name, dims, np.dtype(tensor_dtype_to_np_dtype(t.elem_type))))
    if not specs:
        raise EdgepruneError(f"{model} has no inputs to feed")
    return specs


def random_feeds(specs: list[_InputSpec], samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed = {}
        for s in specs:
            if any(d is None for d in s.shape[1:]):
                raise EdgepruneError(f"input '{s.name}' has a symbolic dimension besides the batch: "
                                     "verify an artifact with golden.npz instead")
            shape = [1 if d is None else d for d in s.shape]
            if np.issubdtype(s.dtype, np.floating):
                feed[s.name] = rng.standard_normal(shape).astype(s.dtype)
            elif s.dtype == np.bool_:
                feed[s.name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                feed[s.name] = rng.integers(0, 10, shape).astype(s.dtype)
        feeds.append(feed)
    return feeds


def _golden_array(data: Any, spec: _InputSpec, single: bool) -> np.ndarray | None:
    names = [spec.name, f"inputs/{spec.name}", f"input/{spec.name}"]
    if single:
        names += ["input", "inputs", "x", "images"]
    for key in names:
        if key in data.files:
            return data[key]
    return None


def golden_feeds(path: Path, specs: list[_InputSpec], samples: int) -> list[dict[str, np.ndarray]]:
    """Up to ``samples`` model-sized feeds cut from the artifact's golden test vectors.

    An input is found under its own name (or ``inputs/<name>``; for a one-input model also
    ``input``, ``inputs``, ``x`` or ``images``) as an array of stacked samples whose first
    dimension is cut into the model's batch size.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EdgepruneError(f"{path} is not a readable .npz of test vectors: {e}") from None
    with data:
        arrays = {}
        for s in specs:
            arr = _golden_array(data, s, len(specs) == 1)
            if arr is None:
                raise EdgepruneError(f"{path} has no array for model input '{s.name}' (it holds: {', '.join(data.files)})")
            if arr.ndim != len(s.shape) or any(d is not None and d != a for d, a in zip(s.shape[1:], arr.shape[1:])):
                raise EdgepruneError(f"{path}: '{s.name}' has shape {list(arr.shape)}, the model takes {s.shape}")
            arrays[s.name] = arr.astype(s.dtype, copy=False)
    batch = {s.name: s.shape[0] or 1 for s in specs}
    count = min(arrays[s.name].shape[0] // batch[s.name] for s in specs)
    if count == 0:
        raise EdgepruneError(f"{path} holds fewer test vectors than one model batch")
    return [{n: a[i * batch[n]:(i + 1) * batch[n]] for n, a in arrays.items()} for i in range(min(count, samples))]


def _resolve_target(path: Path) -> tuple[Path, Path | None]:
    """(model.onnx, artifact folder or None) for an artifact folder or a bare .onnx file."""
    if path.is_dir():
        model = path / "model.onnx"
        if not model.is_file():
            raise EdgepruneError(f"{path} is not an artifact folder: it has no model.onnx")
        return model, path
    if not path.exists():
        raise EdgepruneError(f"no such file or folder: {path}")
    if path.suffix != ".onnx":
        raise EdgepruneError(f"{path}: give an artifact folder or an .onnx model")
    return path, None


# -- the whole check ------------------------------------------------------------------------

def verify_arm(model_or_artifact: str | Path, config: ArmVerifyConfig | None = None,
               log: Log = _quiet) -> ArmVerifyResult:
    """Run the model on the emulated board's aarch64 onnxruntime and compare with x86.

    Bad input or a missing emulator raises :class:`EdgepruneError`; a model that crashes,
    errs or disagrees on the emulated core gives ``verdict == "fail"``. Given an artifact
    folder, the result is recorded as the manifest's ``verify_arm`` section.
    """
    cfg = config or ArmVerifyConfig()
    if cfg.samples < 1:
        raise EdgepruneError(f"--samples must be at least 1, got {cfg.samples}")
    if cfg.threads < 1:
        raise EdgepruneError(f"threads must be at least 1, got {cfg.threads}")
    _check_version(cfg.ort_version)
    model, artifact = _resolve_target(Path(model_or_artifact))
    device = cfg.device or (None if cfg.cpu else DEFAULT_DEVICE)
    cpu = wanted_core(device, cfg.cpu)
    qemu = find_qemu(cfg.qemu)
    emulator, known = qemu_facts(qemu)
    if cpu not in known:
        raise EdgepruneError(f"this qemu cannot emulate '{cpu}'; it knows: {', '.join(known)}")
    specs = model_inputs(model)
    golden = artifact / "golden.npz" if artifact else None
    if golden is not None and golden.is_file():
        feeds = golden_feeds(golden, specs, cfg.samples)
        described = "golden.npz (preprocessed validation images)"
    else:
        feeds = random_feeds(specs, cfg.samples, cfg.seed)
        described = f"random normal inputs, seed {cfg.seed}"
    x86 = run_on_host(model, feeds, cfg.threads)
    env = prepare_arm_env(cfg.ort_version, cfg.cache_dir, str(qemu), log)
    log(f"running {model.name} on aarch64 onnxruntime {env.ort_version} emulated on {cpu} ({len(feeds)} input(s))")
    arm = run_on_arm(env, qemu, cpu, model, feeds, cfg.threads, cfg.timeout_s)
    if arm.ok:
        cmp = compare_outputs(x86, arm.outputs, cfg.atol, cfg.rtol, cfg.min_top1_agreement)
    else:
        cmp = Comparison("fail", f"the aarch64 onnxruntime failed on {cpu}: {arm.error}", None, None, None)
    import onnxruntime as ort

    result = ArmVerifyResult(
        verdict=cmp.verdict, reason=cmp.reason, model=str(model), artifact=str(artifact) if artifact else None,
        device=device, qemu_cpu=cpu, emulator=emulator,
        onnxruntime_aarch64=env.ort_version, onnxruntime_x86=ort.__version__, numpy_aarch64=env.numpy_version,
        inputs=described, samples=len(feeds), threads=cfg.threads, max_abs_diff=cmp.max_abs_diff, tolerance=cmp.tolerance,
        max_abs_x86=cmp.max_abs_x86,
        top1_agreement=cmp.top1_agreement, outputs=cmp.outputs, hwcaps=arm.info.get("hwcaps", []),
        model_sha256=hashlib.sha256(model.read_bytes()).hexdigest(), env_path=str(env.path),
        env_from_cache=env.from_cache, env_prepare_s=env.prepare_s,
        checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if artifact is not None and cfg.write_manifest and (artifact / "manifest.json").is_file():
        from edgeprune.exporters.artifact import update_manifest

        update_manifest(artifact, "verify_arm", result.manifest_section())
        result.manifest_updated = True
    return result
