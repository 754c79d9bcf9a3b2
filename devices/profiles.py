"""Device profiles: one TOML data file per device, validated into a :class:`DeviceProfile`.

A profile says what the device is (CPU, cores, clock, RAM), how edgeprune should run
models on it (threads, onnxruntime providers in preference order, optionally an SSH
target), and the constants of its latency model together with where every figure came
from and how far a prediction is expected to be off.

Bundled profiles live in ``devices/profiles/*.toml``; a user's own file is loaded by
passing its path wherever a device name is accepted.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgeprune.devices.address import parse_target
from edgeprune.devices.fingerprint import Fingerprint, differences, local
from edgeprune.devices.kernels import validate_coefficients
from edgeprune.errors import EdgepruneError
from edgeprune.files import read_toml, write_text_atomic

PROFILE_DIR = "profiles"
KNOWN_PROVIDERS = {
    "CPUExecutionProvider", "XnnpackExecutionProvider", "ACLExecutionProvider",
    "CUDAExecutionProvider", "TensorrtExecutionProvider", "CoreMLExecutionProvider",
    "NnapiExecutionProvider", "QNNExecutionProvider", "OpenVINOExecutionProvider",
    "DmlExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
}


@dataclass
class Int8Model:
    """How a device runs int8 (QDQ) models: ``[latency_model.int8]`` of a profile.

    A profile with fitted int8 constants (``host``: ``coefficients.qconv`` and the other int8 classes) needs
    no ``ratio``; a board without them predicts a quantized convolution or GEMM as ``ratio`` x the fp32
    cost of the same work. A prediction of a model with int8 kernels carries ``expected_error``.
    """

    expected_error: float          # relative half-width of the band of a prediction with int8 kernels
    source: str                    # where the ratio and the band come from
    dotprod: bool | None = None    # the core has the int8 dot-product instructions (None: not an ARM core)
    ratio: float | None = None     # int8 / fp32 time of a quantized convolution or GEMM


INT8_KEYS = {"expected_error", "source", "dotprod", "ratio"}


@dataclass
class LatencyModel:
    """Constants of the kernel-sum latency model (see ``edgeprune.devices.predictor``).

    ``coefficients[kind][feature]`` is the cost of one unit of ``feature`` for a kernel of
    class ``kind``, in microseconds; ``run_overhead_us`` is paid once per inference;
    ``runtime_factor`` multiplies the whole sum (it carries the gap between the runtime
    the constants were fitted on and onnxruntime, 1.0 when fitted on onnxruntime).
    """

    coefficients: dict[str, dict[str, float]]
    run_overhead_us: float = 0.0
    runtime_factor: float = 1.0
    nchwc_block: int = 0           # onnxruntime x86 NCHWc block size to replay (0 = none)
    cache_mb: float = 0.0          # weights beyond this many MB pay the mb_w_spill cost
    fitted_on: str = ""            # what the constants were fitted to, in words
    fit: dict[str, Any] = field(default_factory=dict)   # fit statistics (residuals, n)
    int8: Int8Model | None = None  # how int8 kernels are predicted (None: no int8 figures)


@dataclass
class DeviceProfile:
    name: str
    cpu: str
    cores: int
    clock_ghz: float
    ram_gb: float
    threads: int
    providers: list[str]
    latency_source: str            # how this profile's latency figures are obtained
    expected_error: float | None   # relative half-width of the error band (0.1 = +-10%)
    description: str = ""
    ssh: str | None = None         # user@host[:port] of the device, if reachable
    python: str = "python3"        # interpreter on the device for the SSH runner
    sources: dict[str, str] = field(default_factory=dict)
    latency_model: LatencyModel | None = None
    fingerprint: Fingerprint | None = None   # the machine the latency model was fitted on
    path: Path | None = None       # file it was loaded from

    def summary(self) -> dict[str, Any]:
        """The facts ``edgeprune devices`` lists, JSON-ready."""
        return {
            "name": self.name, "cpu": self.cpu, "cores": self.cores,
            "clock_ghz": self.clock_ghz, "ram_gb": self.ram_gb, "threads": self.threads,
            "providers": list(self.providers), "ssh": self.ssh,
            "latency_source": self.latency_source, "expected_error": self.expected_error,
            "has_latency_model": self.latency_model is not None,
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None,
            "path": str(self.path) if self.path else None,
        }


# -- loading -------------------------------------------------------------------------

def _bundled_dir() -> Path:
    return Path(str(resources.files("edgeprune.devices").joinpath(PROFILE_DIR)))


def list_profiles() -> list[DeviceProfile]:
    """All bundled profiles, sorted by name."""
    return sorted((load_profile(str(p)) for p in _bundled_dir().glob("*.toml")),
                  key=lambda p: p.name)


def profile_names() -> list[str]:
    return sorted(p.stem for p in _bundled_dir().glob("*.toml"))


def bundled_profile_path(name: str) -> Path:
    """The shipped profile file of ``name`` (whether or not it exists)."""
    return _bundled_dir() / f"{name}.toml"


def calibrated_host_path(fingerprint: Fingerprint | None = None) -> Path:
    """Where ``edgeprune calibrate --device host`` keeps the profile it fitted on this machine (or the one
    ``fingerprint`` describes): one file per machine, in the user's cache folder."""
    fp = fingerprint or local()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeprune" / "profiles" / f"host-{fp.key()}.toml"


def bundled_host_fitted_elsewhere() -> list[str]:
    """How this machine differs from the one the bundled host profile was fitted on (empty: the same)."""
    fitted = read_toml(bundled_profile_path("host"), "device profile").get("fingerprint")
    return differences(Fingerprint.from_dict(fitted, "the bundled host profile") if fitted else None, local())


def _host_path(bundled: Path) -> Path:
    """The profile ``host`` names: the bundled one where it was fitted on this machine; otherwise this
    machine's own calibration when one is cached (``calibrated_host_path``); else the bundled one, whose
    predictions then say that it was fitted elsewhere."""
    if not bundled_host_fitted_elsewhere():
        return bundled
    mine = calibrated_host_path()
    return mine if mine.is_file() else bundled


def _resolve(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    looks_like_path = p.suffix == ".toml" or os.sep in name_or_path or "/" in name_or_path
    if looks_like_path:
        if not p.is_file():
            raise EdgepruneError(f"device profile file not found: {name_or_path}")
        return p
    bundled = bundled_profile_path(name_or_path)
    if bundled.is_file():
        return _host_path(bundled) if name_or_path == "host" else bundled
    raise EdgepruneError(
        f"unknown device '{name_or_path}'; known devices: {', '.join(profile_names())} "
        "(or pass the path of a profile .toml file)")


def load_profile(name_or_path: str) -> DeviceProfile:
    """Load a bundled profile by name (``rpi4``) or a user's profile file by path."""
    path = _resolve(str(name_or_path))
    return profile_from_dict(read_toml(path, "device profile"), path)


# -- validation ----------------------------------------------------------------------

def _get(data: dict, key: str, kind: type | tuple, where: Path | str, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise EdgepruneError(f"device profile {where}: missing required key '{key}'")
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise EdgepruneError(
            f"device profile {where}: '{key}' must be {names}, got {type(value).__name__} {value!r}")
    return value


def _positive(value: float, key: str, where: Path | str) -> None:
    if not math.isfinite(value) or value <= 0:
        raise EdgepruneError(f"device profile {where}: '{key}' must be positive, got {value!r}")


def _latency_model_from_dict(d: dict, where: Path | str) -> LatencyModel:
    unknown = set(d) - LATENCY_MODEL_KEYS
    if unknown:
        raise EdgepruneError(f"device profile {where}: unknown key(s) {', '.join(sorted(unknown))} in "
                             f"[latency_model]; known: {', '.join(sorted(LATENCY_MODEL_KEYS))}")
    coeffs_raw = _get(d, "coefficients", dict, where)
    coeffs: dict[str, dict[str, float]] = {}
    for kind, feats in coeffs_raw.items():
        if not isinstance(feats, dict):
            raise EdgepruneError(
                f"device profile {where}: latency_model.coefficients.{kind} must be a table")
        coeffs[kind] = {}
        for feat, v in feats.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise EdgepruneError(
                    f"device profile {where}: latency_model.coefficients.{kind}.{feat} must be "
                    f"a non-negative number, got {v!r}")
            coeffs[kind][feat] = float(v)
    model = LatencyModel(
        coefficients=coeffs,
        run_overhead_us=_get(d, "run_overhead_us", float, where, 0.0),
        runtime_factor=_get(d, "runtime_factor", float, where, 1.0),
        nchwc_block=_get(d, "nchwc_block", int, where, 0),
        cache_mb=_get(d, "cache_mb", float, where, 0.0),
        fitted_on=_get(d, "fitted_on", str, where, ""),
        fit=_get(d, "fit", dict, where, {}),
        int8=_int8_from_dict(_get(d, "int8", dict, where, None), where),
    )
    _positive(model.runtime_factor, "latency_model.runtime_factor", where)
    if model.nchwc_block not in (0, 4, 8, 16):
        raise EdgepruneError(f"device profile {where}: latency_model.nchwc_block must be 0, 4, 8 or 16")
    if model.cache_mb < 0:
        raise EdgepruneError(f"device profile {where}: latency_model.cache_mb must be >= 0")
    if model.run_overhead_us < 0:
        raise EdgepruneError(f"device profile {where}: latency_model.run_overhead_us must be >= 0")
    validate_coefficients(coeffs, where)
    return model


LATENCY_MODEL_KEYS = {"coefficients", "run_overhead_us", "runtime_factor", "nchwc_block", "cache_mb",
                      "fitted_on", "fit", "int8"}


def _int8_from_dict(d: dict | None, where: Path | str) -> Int8Model | None:
    if d is None:
        return None
    unknown = set(d) - INT8_KEYS
    if unknown:
        raise EdgepruneError(f"device profile {where}: unknown key(s) {', '.join(sorted(unknown))} in "
                             f"[latency_model.int8]; known: {', '.join(sorted(INT8_KEYS))}")
    w = f"{where} [latency_model.int8]"
    m = Int8Model(expected_error=_get(d, "expected_error", float, w), source=_get(d, "source", str, w),
                  dotprod=_get(d, "dotprod", bool, w, None), ratio=_get(d, "ratio", float, w, None))
    if not (0 < m.expected_error < 10):
        raise EdgepruneError(f"device profile {w}: 'expected_error' is a relative error (0.5 = +-50%), "
                             f"got {m.expected_error!r}")
    if m.ratio is not None:
        _positive(m.ratio, "latency_model.int8.ratio", where)
    return m


def profile_from_dict(data: dict, where: Path | str = "<dict>") -> DeviceProfile:
    path = where if isinstance(where, Path) else None
    name = _get(data, "name", str, where)
    if not name or any(c.isspace() for c in name):
        raise EdgepruneError(f"device profile {where}: 'name' must be a non-empty word, got {name!r}")
    providers = _get(data, "providers", list, where)
    if not providers or not all(isinstance(p, str) for p in providers):
        raise EdgepruneError(f"device profile {where}: 'providers' must be a non-empty list of strings")
    unknown = [p for p in providers if p not in KNOWN_PROVIDERS]
    if unknown:
        raise EdgepruneError(
            f"device profile {where}: unknown onnxruntime provider(s) {', '.join(unknown)}; "
            "names look like 'CPUExecutionProvider'")
    ssh = _get(data, "ssh", str, where, "") or None
    expected_error = _get(data, "expected_error", float, where, None)
    if expected_error is not None and not (0 < expected_error < 10):
        raise EdgepruneError(
            f"device profile {where}: 'expected_error' is a relative error (0.1 = +-10%), "
            f"got {expected_error!r}")
    sources = _get(data, "sources", dict, where, {})
    if not all(isinstance(v, str) for v in sources.values()):
        raise EdgepruneError(f"device profile {where}: every entry of [sources] must be a string")
    lm = _get(data, "latency_model", dict, where, None)
    fp = _get(data, "fingerprint", dict, where, None)
    prof = DeviceProfile(
        name=name,
        cpu=_get(data, "cpu", str, where),
        cores=_get(data, "cores", int, where),
        clock_ghz=_get(data, "clock_ghz", float, where),
        ram_gb=_get(data, "ram_gb", float, where),
        threads=_get(data, "threads", int, where),
        providers=list(providers),
        latency_source=_get(data, "latency_source", str, where),
        expected_error=expected_error,
        description=_get(data, "description", str, where, ""),
        ssh=ssh,
        python=_get(data, "python", str, where, "python3"),
        sources=dict(sources),
        latency_model=_latency_model_from_dict(lm, where) if lm is not None else None,
        fingerprint=Fingerprint.from_dict(fp, f"device profile {where}") if fp is not None else None,
        path=path,
    )
    for key in ("cores", "threads"):
        _positive(getattr(prof, key), key, where)
    for key in ("clock_ghz", "ram_gb"):
        _positive(getattr(prof, key), key, where)
    if ssh is not None:
        parse_target(ssh)  # raises a clear error for a malformed target
    return prof


# -- writing -------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write non-finite float {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        esc = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{esc}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_table(d: dict, prefix: str, out: list[str]) -> None:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        out.append(f"\n[{prefix}]")
    for k, v in scalars.items():
        out.append(f"{_key(k)} = {_toml_value(v)}")
    for k, v in tables.items():
        _toml_table(v, f"{prefix}.{_key(k)}" if prefix else _key(k), out)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def profile_to_dict(p: DeviceProfile) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": p.name, "description": p.description, "cpu": p.cpu, "cores": p.cores,
        "clock_ghz": p.clock_ghz, "ram_gb": p.ram_gb, "threads": p.threads,
        "providers": list(p.providers), "ssh": p.ssh or "", "python": p.python,
        "latency_source": p.latency_source, "expected_error": p.expected_error,
        "sources": dict(p.sources),
    }
    if p.fingerprint is not None:
        d["fingerprint"] = p.fingerprint.to_dict()
    if p.latency_model is not None:
        lm = p.latency_model
        d["latency_model"] = {
            "run_overhead_us": lm.run_overhead_us, "runtime_factor": lm.runtime_factor,
            "nchwc_block": lm.nchwc_block, "cache_mb": lm.cache_mb,
            "fitted_on": lm.fitted_on, "fit": dict(lm.fit),
            "coefficients": {k: dict(v) for k, v in lm.coefficients.items()},
        }
        if lm.int8 is not None:
            d["latency_model"]["int8"] = {k: v for k, v in asdict(lm.int8).items() if v is not None}
    return d


def dumps_profile(p: DeviceProfile, header: str = "") -> str:
    out = [f"# {line}" for line in header.splitlines()]
    _toml_table(profile_to_dict(p), "", out)
    return "\n".join(out).lstrip("\n") + "\n"


def save_profile(p: DeviceProfile, path: str | Path, header: str = "") -> Path:
    """Write ``p`` as TOML atomically (temp file beside the target, then rename)."""
    path = Path(path)
    text = dumps_profile(p, header)
    profile_from_dict(tomllib.loads(text), path)  # never write a file we cannot read back
    return write_text_atomic(path, text)
