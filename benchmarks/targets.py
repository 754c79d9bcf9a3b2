"""Where a latency figure comes from: measured here, measured on a device, or predicted.

A :class:`Target` is the one answer to "measured on the host, measured over SSH, or
predicted?". Every command that needs a latency figure asks a target for it instead of
deciding on its own:

* :class:`HostTarget` (here) measures in this process with :mod:`ort_runner`; it is
  ``local``, so two models can also be timed interleaved (``bench --vs``, the ratio of
  ``check``).
* the SSH-measured and the predicted targets live in :mod:`edgeprune.devices.targets`
  (this package imports nothing from ``edgeprune.devices``), and so does
  ``resolve_target``, which makes the decision from ``--device``/``--ssh``.

A :class:`LatencyFigure` is one figure judged against a budget: the measured p50 or p90,
or the predicted centre (p50) or the upper edge of the error band (p90).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from edgeprune.benchmarks.latency import BenchConfig, measure
from edgeprune.benchmarks.memory import MemoryResult, measure_memory
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.errors import EdgepruneError

HOST_SOURCE = "measured:host"
METRICS = ("p50", "p90")

Model = str | os.PathLike[str]


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise EdgepruneError(f"--metric must be p50 or p90, got {metric!r}")
    return metric


@dataclass
class LatencyFigure:
    """One latency figure and where it came from.

    ``value_ms`` is the figure judged for ``metric``: the measured p50/p90, or for a
    prediction its centre (p50) or the upper edge of its band (p90). A measured figure
    keeps its :class:`LatencyResult` in ``measured``; a predicted one its centre, band and
    relative expected error.
    """

    value_ms: float
    source: str                            # measured:host | measured:ssh:<device> | predicted:<device>
    metric: str = "p50"
    measured: LatencyResult | None = None
    predicted_ms: float | None = None
    low_ms: float | None = None
    high_ms: float | None = None
    expected_error: float | None = None

    @property
    def is_measured(self) -> bool:
        return self.measured is not None

    @classmethod
    def from_result(cls, result: LatencyResult, metric: str = "p50") -> "LatencyFigure":
        check_metric(metric)
        value = result.p90_ms if metric == "p90" else result.p50_ms
        return cls(value, result.source, metric, measured=result)

    @classmethod
    def from_band(cls, predicted_ms: float, low_ms: float, high_ms: float, expected_error: float,
                  source: str, metric: str = "p50") -> "LatencyFigure":
        check_metric(metric)
        value = high_ms if metric == "p90" else predicted_ms
        return cls(value, source, metric, predicted_ms=predicted_ms, low_ms=low_ms,
                   high_ms=high_ms, expected_error=expected_error)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``device_before``/``device_after`` entry."""
        if self.measured is not None:
            r = self.measured
            return {"value_ms": self.value_ms, "source": self.source, "p50_ms": r.p50_ms,
                    "p90_ms": r.p90_ms, "threads": r.threads, "provider": r.provider_used}
        return {"value_ms": self.value_ms, "source": self.source, "predicted_ms": self.predicted_ms,
                "low_ms": self.low_ms, "high_ms": self.high_ms, "expected_error": self.expected_error}


@runtime_checkable
class Target(Protocol):
    """Anything that gives a latency figure for a model."""

    name: str              # the device: "host" or the profile's name (or the SSH address)
    measures: bool         # True: figures are measured; False: predicted
    remote: bool           # True: the model runs on another machine (a device over SSH)

    @property
    def source(self) -> str:
        """How its figures are labelled: measured:host, measured:ssh:<device>, predicted:<device>."""
        ...

    def figure(self, model: Model, metric: str = "p50", runs: int = 100) -> LatencyFigure:
        """The figure for ``metric``, with the target's own threads and providers."""
        ...


@runtime_checkable
class MeasuringTarget(Target, Protocol):
    """A target that runs the model: here, or on a device.

    ``remote`` targets run it elsewhere: only stored figures can be compared with theirs,
    since the interleaved A/B ratio needs both models in one process on this host.
    """

    where: str             # for messages: "on this host", "over SSH on pi@board:22"
    address: str | None    # the --ssh address of a remote target
    python: str            # the interpreter that runs the model

    def bench(self, model: Model, cfg: BenchConfig, memory_repeats: int = 0
              ) -> tuple[LatencyResult, MemoryResult | None]:
        """Latency with ``cfg``, then peak memory (fresh processes) when ``memory_repeats`` > 0."""
        ...

    def latency(self, model: Model, cfg: BenchConfig) -> LatencyResult: ...

    def memory(self, model: Model, cfg: BenchConfig, repeats: int = 3) -> MemoryResult | None: ...


@dataclass
class HostTarget:
    """Measured here, in this process (latency) and in fresh subprocesses (memory).

    ``settings`` are the threads and providers :meth:`figure` uses (the ``host`` profile's
    when resolved from one); ``bench``/``latency``/``memory`` take theirs from ``cfg``.
    """

    settings: BenchConfig | None = None
    name: str = "host"
    measures: bool = True
    remote: bool = False
    where: str = "on this host"
    address: str | None = None
    python: str = sys.executable

    @property
    def source(self) -> str:
        return HOST_SOURCE

    def latency(self, model: Model, cfg: BenchConfig) -> LatencyResult:
        return measure(model, cfg)

    def memory(self, model: Model, cfg: BenchConfig, repeats: int = 3) -> MemoryResult | None:
        return measure_memory(model, cfg, repeats=repeats)

    def bench(self, model: Model, cfg: BenchConfig, memory_repeats: int = 0
              ) -> tuple[LatencyResult, MemoryResult | None]:
        latency = self.latency(model, cfg)
        return latency, self.memory(model, cfg, memory_repeats) if memory_repeats else None

    def figure(self, model: Model, metric: str = "p50", runs: int = 100) -> LatencyFigure:
        check_metric(metric)
        base = self.settings or BenchConfig(device=self.name)
        return LatencyFigure.from_result(self.latency(model, replace(base, runs=runs)), metric)
