"""The baseline file the CI gate judges against: figures, model identity and settings.

``edgeprune bench MODEL.onnx --save-baseline baseline.json`` writes it. It records the
model's path (relative to the baseline file when the model lies beside or below it, so the
pair can be committed together), its sha256 over the .onnx and any external data, the
settings the figures were measured with (threads, providers, warm-up, runs, input shapes)
and the figures themselves (latency; memory unless skipped).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.memory import MemoryResult
from edgeprune.benchmarks.modelfile import ModelFile, inspect_model
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.errors import EdgepruneError
from edgeprune.files import read_json, write_json_atomic

SCHEMA = "edgeprune.baseline/1"
_LATENCY_REQUIRED = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms",
                     "cv", "runs", "warmup", "threads", "providers_requested",
                     "provider_used", "ort_version", "cpu")


@dataclass
class Baseline:
    model_path: str                      # as recorded: relative to the baseline file if possible
    model_sha256: str
    model_bytes: int                     # .onnx plus external data
    settings: dict[str, Any]
    latency: LatencyResult
    memory: MemoryResult | None = None
    created: str = ""
    edgeprune_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bench_config(self) -> BenchConfig:
        return BenchConfig.from_settings(self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created": self.created,
            "edgeprune_version": self.edgeprune_version,
            "model": {"path": self.model_path, "sha256": self.model_sha256,
                      "bytes": self.model_bytes},
            "settings": self.settings,
            "latency": self.latency.to_dict(samples=False),
            "memory": self.memory.to_dict() if self.memory else None,
            "extra": self.extra,
        }


def make_baseline(model: ModelFile, baseline_path: str | os.PathLike[str], cfg: BenchConfig,
                  latency: LatencyResult, memory: MemoryResult | None) -> Baseline:
    target_dir = Path(baseline_path).resolve().parent
    model_abs = Path(model.path).resolve()
    try:
        recorded = model_abs.relative_to(target_dir).as_posix()
    except ValueError:
        recorded = str(model_abs)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return Baseline(model_path=recorded, model_sha256=model.sha256, model_bytes=model.total_bytes,
                    settings=cfg.settings(), latency=latency, memory=memory, created=now)


def save_baseline(baseline: Baseline, path: str | os.PathLike[str]) -> Path:
    """Write atomically: a temporary file beside the target, then a rename."""
    target = Path(path)
    if target.is_dir():
        raise EdgepruneError(f"baseline path is a directory: {target}")
    if not target.parent.exists():
        raise EdgepruneError(f"folder for the baseline does not exist: {target.parent}")
    return write_json_atomic(target, baseline.to_dict())


def _need(d: Any, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise EdgepruneError(f"malformed baseline {path}: missing {where}{key}")
    if not isinstance(d[key], kind) or isinstance(d[key], bool) and kind is not bool:
        raise EdgepruneError(f"malformed baseline {path}: {where}{key} has the wrong type")
    return d[key]


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read and validate a baseline; any defect is one clear EdgepruneError line."""
    p = Path(path)
    d = read_json(p, "baseline file")
    if not isinstance(d, dict):
        raise EdgepruneError(f"malformed baseline {p}: expected a JSON object")
    if d.get("schema") != SCHEMA:
        raise EdgepruneError(f"malformed baseline {p}: schema is {d.get('schema')!r}, "
                             f"expected {SCHEMA!r} (re-create it with bench --save-baseline)")
    model = _need(d, "model", dict, "", p)
    mpath = _need(model, "path", str, "model.", p)
    sha = _need(model, "sha256", str, "model.", p)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise EdgepruneError(f"malformed baseline {p}: model.sha256 is not a sha256 hex digest")
    mbytes = _need(model, "bytes", int, "model.", p)
    settings = _need(d, "settings", dict, "", p)
    _need(settings, "threads", int, "settings.", p)
    _need(settings, "providers", list, "settings.", p)
    lat = _need(d, "latency", dict, "", p)
    for key in _LATENCY_REQUIRED:
        _need(lat, key, (int, float, str, list), "latency.", p)
    for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms"):
        if not isinstance(lat[key], (int, float)) or not lat[key] > 0:
            raise EdgepruneError(f"malformed baseline {p}: latency.{key} must be a positive number")
    memory = None
    if d.get("memory") is not None:
        mem = _need(d, "memory", dict, "", p)
        for key in ("arena_on_peak_bytes", "arena_off_peak_bytes", "file_bytes"):
            _need(mem, key, int, "memory.", p)
        try:
            memory = MemoryResult.from_dict(mem)
        except TypeError:
            raise EdgepruneError(f"malformed baseline {p}: memory section is incomplete") from None
    try:
        latency = LatencyResult.from_dict(lat)
    except TypeError:
        raise EdgepruneError(f"malformed baseline {p}: latency section is incomplete") from None
    return Baseline(model_path=mpath, model_sha256=sha, model_bytes=mbytes, settings=settings,
                    latency=latency, memory=memory, created=str(d.get("created", "")),
                    edgeprune_version=str(d.get("edgeprune_version", "")),
                    extra=d.get("extra") or {})


def locate_model(baseline: Baseline, baseline_path: str | os.PathLike[str],
                 override: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """Where the baseline's own model is, if at hand and unchanged, and why (or why not).

    With ``override`` (``--baseline-model``) the file must exist and match the recorded
    sha256, or it is bad input. Without it, the recorded path is tried; a missing or
    changed file means the gate falls back to the stored absolute figures.
    """
    if override is not None:
        info = inspect_model(override)
        if info.sha256 != baseline.model_sha256:
            raise EdgepruneError(f"--baseline-model {override} is not the baseline's model "
                                 f"(sha256 {info.sha256[:12]}… != {baseline.model_sha256[:12]}…)")
        return Path(override), f"baseline model {override} (sha256 matches)"
    recorded = Path(baseline.model_path)
    candidate = recorded if recorded.is_absolute() else Path(baseline_path).parent / recorded
    if not candidate.is_file():
        return None, f"baseline model {candidate} is not at hand"
    try:
        info = inspect_model(candidate)
    except EdgepruneError as e:
        return None, f"baseline model unusable: {e}"
    if info.sha256 != baseline.model_sha256:
        return None, f"{candidate} has changed since the baseline was recorded (sha256 differs)"
    return candidate, f"baseline model {candidate} (sha256 matches)"
