"""The aarch64 userland verify-arm runs in: Debian's arm64 Python plus PyPI's aarch64 wheels.

Assembled without a board and cached per onnxruntime version under
``$XDG_CACHE_HOME/edgeprune/arm/<version>`` (``~/.cache`` by default):

* ``root/``: Debian's arm64 packages of python3.11 and its libraries, resolved and
  downloaded by apt with a private state folder (no change to the host's dpkg
  architectures, no root needed) and unpacked with ``dpkg-deb -x``;
* ``site/``: PyPI's aarch64 wheels of onnxruntime and numpy (``pip download --platform
  ...``), unzipped;
* ``env.json``: versions, package names and wheel hashes.

It is built in a temporary folder beside the cache entry, smoke-tested (``import
onnxruntime`` under the emulator) and renamed into place, so an interruption or a
version that does not run never leaves a broken cache. The rename fails when another
preparation got there first; its copy is then used and ours discarded.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgeprune.devices.arm_emulator import GUEST_PYTHON, describe_exit, emulate, find_qemu
from edgeprune.errors import EdgepruneError
from edgeprune.files import read_json, sha256_file

DEFAULT_ORT_VERSION = "1.31.1"   # newest release; runs under Debian's qemu 7.2 with the cpuinfo fix
DEBIAN_SUITE = "bookworm"        # its python3.11 matches the cp311 aarch64 wheels
PYTHON_TAG = "311"
DEBIAN_PACKAGES = ["python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1"]
# manylinux tags an aarch64 wheel may carry that bookworm's glibc 2.36 can load
WHEEL_PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, 37)]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ENV_FILE = "env.json"
ENV_LAYOUT = 1                   # bump when the cached layout changes

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


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


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeprune" / "arm"


def check_version(ort_version: str) -> None:
    """Refuse an onnxruntime version that is not a release number (it names a cache folder)."""
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", ort_version):
        raise EdgepruneError(f"--onnxruntime takes a release number like {DEFAULT_ORT_VERSION}, got {ort_version!r}")


def prepare_arm_env(ort_version: str = DEFAULT_ORT_VERSION, cache_dir: Path | None = None,
                    qemu: str | None = None, log: Log = _quiet) -> ArmEnv:
    """The aarch64 userland for ``ort_version``, from the cache or prepared (atomically) now."""
    check_version(ort_version)
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
            os.rename(tmp, target)        # fails if target exists: never replaces a folder in use
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
    """The cached userland at ``path``; None if there is none."""
    if not path.exists():
        return None
    try:
        info = read_json(path / ENV_FILE)
    except EdgepruneError:   # not made by prepare_arm_env (it renames only complete folders)
        raise EdgepruneError(f"{path} is not a prepared aarch64 environment; remove it and run again") from None
    if info.get("layout") != ENV_LAYOUT:
        raise EdgepruneError(f"{path} was prepared by another edgeprune version; remove it and run again")
    return ArmEnv(path, info["onnxruntime"], info["numpy"], from_cache=True, info=info)


# -- the pieces of a preparation -------------------------------------------------------------

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
        hashes[wheel.name] = sha256_file(wheel)
    return hashes


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


def _smoke_test(path: Path, qemu: Path) -> dict[str, Any]:
    """Import numpy and onnxruntime in the new userland; the env is cached only if this works."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import numpy, onnxruntime; "
            "print(json.dumps({'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))")
    with tempfile.TemporaryDirectory(prefix="edgeprune-arm-") as tmp:
        proc = emulate(qemu, "max", path / "root", Path(tmp), ["-c", code, str(path / "site")], timeout=600)
    if proc.returncode != 0:
        raise EdgepruneError(f"the aarch64 onnxruntime does not import under {qemu.name}: "
                             f"{describe_exit(proc.returncode, proc.stderr)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
