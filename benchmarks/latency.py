"""Host latency measurement: :mod:`ort_runner` in-process, summarised as a LatencyResult.

The timing loop itself lives in ``ort_runner.py`` (stdlib + numpy + onnxruntime only) so
that exactly the same code runs here and on a board; this module adds the settings
(threads, providers, optionally from a loaded device profile), error mapping and statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgeprune.benchmarks import ort_runner
from edgeprune.benchmarks.stats import LatencyResult, summarize
from edgeprune.errors import EdgepruneError

CPU = ort_runner.CPU_PROVIDER


@dataclass
class BenchConfig:
    """How to run a model: the settings a baseline records and a check must repeat."""

    threads: int = 1
    providers: list[str] = field(default_factory=lambda: [CPU])
    warmup: int = 10
    runs: int | None = 100
    time_budget_s: float | None = None
    profile: bool = False
    top: int = 10
    shapes: dict[str, list[int]] = field(default_factory=dict)
    seed: int = 0
    device: str | None = None      # the device profile the threads/providers came from

    def settings(self) -> dict[str, Any]:
        """What a baseline records (and a check reuses)."""
        return {"threads": self.threads, "providers": list(self.providers),
                "warmup": self.warmup, "runs": self.runs, "time_budget_s": self.time_budget_s,
                "shapes": dict(self.shapes), "seed": self.seed, "device": self.device}

    @classmethod
    def from_settings(cls, d: dict[str, Any]) -> "BenchConfig":
        return cls(threads=int(d.get("threads", 1)),
                   providers=list(d.get("providers") or [CPU]),
                   warmup=int(d.get("warmup", 10)),
                   runs=d.get("runs", 100),
                   time_budget_s=d.get("time_budget_s"),
                   shapes={k: list(v) for k, v in (d.get("shapes") or {}).items()},
                   seed=int(d.get("seed", 0)),
                   device=d.get("device"))

    def validate(self) -> None:
        if self.threads < 1:
            raise EdgepruneError(f"--threads must be at least 1, got {self.threads}")
        if self.warmup < 0:
            raise EdgepruneError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.runs is not None and self.runs < 1:
            raise EdgepruneError(f"--runs must be at least 1, got {self.runs}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise EdgepruneError(f"--time-budget must be positive, got {self.time_budget_s}")
        if not self.providers:
            raise EdgepruneError("give at least one execution provider")


def parse_providers(text: str | None) -> list[str] | None:
    """``"CUDAExecutionProvider,CPUExecutionProvider"`` -> list; ``None`` stays ``None``."""
    if text is None:
        return None
    providers = [p.strip() for p in text.split(",") if p.strip()]
    if not providers:
        raise EdgepruneError("--providers is empty; give e.g. CPUExecutionProvider")
    return providers


def parse_shapes(items: list[str] | None) -> dict[str, list[int]]:
    try:
        return ort_runner.parse_shapes(items)
    except ort_runner.RunnerError as e:
        raise EdgepruneError(str(e)) from None


class DeviceSettings(Protocol):
    """What a device profile gives a benchmark (``edgeprune.devices.profiles.DeviceProfile``)."""

    name: str
    threads: int
    providers: list[str]


def resolve_config(base: BenchConfig, *, profile: DeviceSettings | None = None,
                   threads: int | None = None, providers: list[str] | None = None) -> BenchConfig:
    """``base`` with a device profile's threads and providers, then explicit flags on top.

    ``profile`` is a loaded profile; ``edgeprune.devices.targets.bench_config`` takes a
    ``--device`` name or path instead.
    """
    cfg = BenchConfig(**{**base.__dict__})
    if profile is not None:
        cfg.threads, cfg.providers, cfg.device = (int(profile.threads), list(profile.providers),
                                                  str(profile.name))
    if threads is not None:
        cfg.threads = threads
    if providers is not None:
        cfg.providers = providers
    cfg.validate()
    return cfg


def to_result(raw: dict[str, Any], source: str = "measured:host") -> LatencyResult:
    """Turn one ``ort_runner`` timing JSON object (from here or from a board) into a result."""
    try:
        samples = [float(x) for x in raw["samples_ms"]]
        stats = summarize(samples)
        extra_keys = ("model", "model_bytes", "model_sha256", "inputs", "profile",
                      "time_budget_s", "budget_exhausted", "session_providers",
                      "providers_available", "platform", "machine", "cpu_count", "wall_s")
        return LatencyResult(
            **stats, runs=len(samples), warmup=int(raw["warmup"]), threads=int(raw["threads"]),
            providers_requested=list(raw["providers_requested"]),
            provider_used=str(raw["provider_used"]), fallback=raw.get("fallback"),
            ort_version=str(raw["ort_version"]), cpu=str(raw["cpu"]), source=source,
            samples_ms=samples, extra={k: raw[k] for k in extra_keys if k in raw})
    except (KeyError, TypeError, ValueError) as e:
        raise EdgepruneError(f"runner output is not a complete {ort_runner.SCHEMA} object "
                             f"({type(e).__name__}: {e})") from None


def measure(model: str | os.PathLike[str], cfg: BenchConfig) -> LatencyResult:
    """Time one model on this host with ``cfg``; figures in milliseconds."""
    cfg.validate()
    spec = ort_runner.LatencySpec(
        model=str(model), threads=cfg.threads, providers=list(cfg.providers),
        warmup=cfg.warmup, runs=cfg.runs, time_budget_s=cfg.time_budget_s,
        profile=cfg.profile, top=cfg.top, shapes=dict(cfg.shapes), seed=cfg.seed)
    try:
        raw = ort_runner.measure_latency(spec)
    except ort_runner.RunnerError as e:
        raise EdgepruneError(str(e)) from None
    return to_result(raw)
