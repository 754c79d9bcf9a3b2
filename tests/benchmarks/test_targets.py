"""Measurement targets on this host, and the figure a build judges (``LatencyFigure``)."""

from __future__ import annotations

import pytest

from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.targets import HostTarget, LatencyFigure, MeasuringTarget, Target
from edgeprune.errors import EdgepruneError


def test_host_target_measures_here(models):
    t = HostTarget()
    assert isinstance(t, Target) and isinstance(t, MeasuringTarget)
    assert t.measures and not t.remote and t.source == "measured:host" and t.address is None
    cfg = BenchConfig(warmup=1, runs=5)
    latency, memory = t.bench(models["small"], cfg)
    assert latency.source == "measured:host" and latency.runs == 5 and memory is None
    latency, memory = t.bench(models["small"], cfg, memory_repeats=1)
    assert memory is not None and memory.repeats == 1 and memory.arena_on_peak_bytes > 0


def test_host_figure_is_the_build_dict(models):
    t = HostTarget(BenchConfig(threads=1, device="host"))
    fig = t.figure(models["small"], "p90", runs=7)
    r = fig.measured
    assert fig.is_measured and r.runs == 7 and fig.value_ms == r.p90_ms
    # exactly the keys (and order) of the build's device figure for a measured source
    assert fig.to_dict() == {"value_ms": r.p90_ms, "source": "measured:host", "p50_ms": r.p50_ms,
                             "p90_ms": r.p90_ms, "threads": r.threads, "provider": r.provider_used}
    assert list(fig.to_dict()) == ["value_ms", "source", "p50_ms", "p90_ms", "threads", "provider"]
    p50 = t.figure(models["small"], runs=3)
    assert p50.metric == "p50" and p50.value_ms == p50.measured.p50_ms
    with pytest.raises(EdgepruneError, match="p50 or p90"):
        t.figure(models["small"], "p99")


def test_predicted_figure_dict_and_metric():
    p50 = LatencyFigure.from_band(10.0, 8.0, 12.0, 0.2, "predicted:rpi4")
    p90 = LatencyFigure.from_band(10.0, 8.0, 12.0, 0.2, "predicted:rpi4", "p90")
    assert not p50.is_measured and p50.value_ms == 10.0 and p90.value_ms == 12.0
    assert p90.to_dict() == {"value_ms": 12.0, "source": "predicted:rpi4", "predicted_ms": 10.0,
                             "low_ms": 8.0, "high_ms": 12.0, "expected_error": 0.2}
    assert list(p90.to_dict()) == ["value_ms", "source", "predicted_ms", "low_ms", "high_ms", "expected_error"]
