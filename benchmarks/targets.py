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
or the predicted centre (p50) or the upper edge of the error band (p90); with a
``confidence`` c, the figure the device meets with chance c instead (a prediction's, from
its band: :func:`at_confidence`; a measurement's, the c-quantile of its runs). Every figure
states the chance that the device meets a budget (:meth:`LatencyFigure.chance_within`).

A prediction's band is the profile's ``expected_error`` e, the 90th percentile of the
cross-validated relative error |predicted / measured - 1| of its fit. The error is taken as
log-normal and centred: ln(measured / predicted) ~ N(0, s) with s = ln(1 + e) / z(0.95),
so that 90% of devices fall within the band's factor 1 + e either way. Then the chance
that the device meets a budget B for a prediction P is Phi(ln(B / P) / s), and the figure
met with chance c is P * exp(s * z(c)). The centring and the shape are assumptions (the
fits report a median error near zero, not a distribution); a profile whose band was not
measured (no ``expected_error``) gives certainties.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any, Protocol, runtime_checkable

from edgeprune.benchmarks.latency import BenchConfig, measure
from edgeprune.benchmarks.memory import MEMORY_TIMEOUT_S, MemoryResult, measure_memory
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.errors import EdgepruneError

HOST_SOURCE = "measured:host"
METRICS = ("p50", "p90")

Model = str | os.PathLike[str]


_Z_BAND = NormalDist().inv_cdf(0.95)      # the band holds 90% of devices, two-sided


def band_sigma(expected_error: float | None) -> float:
    """The log-normal spread of ln(measured / predicted) that puts 90% within the band."""
    return math.log1p(expected_error) / _Z_BAND if expected_error else 0.0


def check_confidence(confidence: float | None) -> float | None:
    if confidence is not None and not (0.5 <= confidence < 1):
        raise EdgepruneError(f"--confidence is the chance that the device meets the budget, from 0.5 (the "
                             f"prediction's centre) to below 1, got {confidence:g}")
    return confidence


def chance_within(predicted_ms: float, expected_error: float | None, budget_ms: float) -> float:
    """The chance that a device predicted at ``predicted_ms`` meets ``budget_ms`` (module docstring)."""
    s = band_sigma(expected_error)
    if s == 0 or predicted_ms <= 0:
        return 1.0 if predicted_ms <= budget_ms else 0.0
    return NormalDist().cdf(math.log(budget_ms / predicted_ms) / s)


def at_confidence(predicted_ms: float, expected_error: float | None, confidence: float) -> float:
    """The figure a device predicted at ``predicted_ms`` meets with chance ``confidence``."""
    return predicted_ms * math.exp(band_sigma(expected_error) * NormalDist().inv_cdf(confidence))


def judged_prediction(predicted_ms: float, expected_error: float | None, metric: str,
                      confidence: float | None = None) -> float:
    """The figure a prediction is judged on: met with chance ``confidence`` when given, else its
    centre (p50) or the band's upper edge (p90)."""
    if confidence is not None:
        return at_confidence(predicted_ms, expected_error, confidence)
    return predicted_ms * (1 + (expected_error or 0.0)) if metric == "p90" else predicted_ms


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
    confidence: float | None = None        # value_ms is the figure met with this chance

    @property
    def is_measured(self) -> bool:
        return self.measured is not None

    @classmethod
    def from_result(cls, result: LatencyResult, metric: str = "p50",
                    confidence: float | None = None) -> "LatencyFigure":
        check_metric(metric)
        check_confidence(confidence)
        if confidence is not None and result.samples_ms:
            runs = sorted(result.samples_ms)
            value = runs[min(len(runs) - 1, math.ceil(confidence * len(runs)) - 1)]
        elif confidence is not None:     # no runs kept: the first stored quantile met with that chance
            value = result.p50_ms if confidence <= 0.5 else result.p90_ms if confidence <= 0.9 else result.p99_ms
        else:
            value = result.p90_ms if metric == "p90" else result.p50_ms
        return cls(value, result.source, metric, measured=result, confidence=confidence)

    @classmethod
    def from_band(cls, predicted_ms: float, low_ms: float, high_ms: float, expected_error: float,
                  source: str, metric: str = "p50", confidence: float | None = None) -> "LatencyFigure":
        check_metric(metric)
        check_confidence(confidence)
        return cls(judged_prediction(predicted_ms, expected_error, metric, confidence), source, metric,
                   predicted_ms=predicted_ms, low_ms=low_ms, high_ms=high_ms, expected_error=expected_error,
                   confidence=confidence)

    def chance_within(self, budget_ms: float) -> float:
        """The chance that the device meets ``budget_ms``: from the band for a prediction; for a
        measurement, the share of its runs at or under it (its own spread)."""
        if self.measured is None:
            return chance_within(self.predicted_ms or self.value_ms, self.expected_error, budget_ms)
        runs = self.measured.samples_ms
        if not runs:
            return 1.0 if self.value_ms <= budget_ms else 0.0
        return sum(r <= budget_ms for r in runs) / len(runs)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``device_before``/``device_after`` entry."""
        if self.measured is not None:
            r = self.measured
            d = {"value_ms": self.value_ms, "source": self.source, "p50_ms": r.p50_ms,
                 "p90_ms": r.p90_ms, "threads": r.threads, "provider": r.provider_used}
        else:
            d = {"value_ms": self.value_ms, "source": self.source, "predicted_ms": self.predicted_ms,
                 "low_ms": self.low_ms, "high_ms": self.high_ms, "expected_error": self.expected_error}
        return {**d, "confidence": self.confidence} if self.confidence is not None else d


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

    def figure(self, model: Model, metric: str = "p50", runs: int = 100,
               confidence: float | None = None) -> LatencyFigure:
        """The figure for ``metric`` (or met with chance ``confidence``), with the target's own threads
        and providers."""
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
    memory_timeout_s: float = MEMORY_TIMEOUT_S    # each memory probe (a fresh process); --memory-timeout

    def __post_init__(self) -> None:
        if not self.memory_timeout_s > 0:
            raise EdgepruneError(f"--memory-timeout must be positive, got {self.memory_timeout_s:g}")

    @property
    def source(self) -> str:
        return HOST_SOURCE

    def latency(self, model: Model, cfg: BenchConfig) -> LatencyResult:
        return measure(model, cfg)

    def memory(self, model: Model, cfg: BenchConfig, repeats: int = 3) -> MemoryResult | None:
        return measure_memory(model, cfg, repeats=repeats, timeout_s=self.memory_timeout_s)

    def bench(self, model: Model, cfg: BenchConfig, memory_repeats: int = 0
              ) -> tuple[LatencyResult, MemoryResult | None]:
        latency = self.latency(model, cfg)
        return latency, self.memory(model, cfg, memory_repeats) if memory_repeats else None

    def figure(self, model: Model, metric: str = "p50", runs: int = 100,
               confidence: float | None = None) -> LatencyFigure:
        check_metric(metric)
        base = self.settings or BenchConfig(device=self.name)
        return LatencyFigure.from_result(self.latency(model, replace(base, runs=runs)), metric, confidence)
