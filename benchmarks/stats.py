"""Latency statistics shared by the host benchmark, the SSH runner and the CI gate.

Every latency figure edgeprune reports is a :class:`LatencyResult`; ``source`` says where
it came from ("measured:host", "measured:ssh:<device>", ...) so that no number travels
without its provenance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class LatencyResult:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float                      # coefficient of variation, std / mean
    runs: int
    warmup: int
    threads: int
    providers_requested: list[str]
    provider_used: str
    fallback: str | None           # why a requested provider did not run, if one did not
    ort_version: str
    cpu: str
    source: str = "measured:host"
    samples_ms: list[float] = field(default_factory=list, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyResult":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/std/min/max/cv of latency samples in milliseconds."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples")
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "cv": std / mean if mean > 0 else 0.0,
    }
