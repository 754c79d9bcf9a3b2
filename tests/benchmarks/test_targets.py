"""Measurement targets on this host, and the figure a build judges (``LatencyFigure``)."""

from __future__ import annotations

import pytest

from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.stats import LatencyResult
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


def test_chance_and_confidence_from_a_prediction_band():
    from edgeprune.benchmarks.targets import at_confidence, chance_within, judged_prediction
    # the band +-e holds 90% of devices: the centre is a coin toss, the upper edge 95%
    assert chance_within(10.0, 0.3, 10.0) == pytest.approx(0.5)
    assert chance_within(10.0, 0.3, 13.0) == pytest.approx(0.95)
    assert chance_within(10.0, 0.3, 10.0 / 1.3) == pytest.approx(0.05)
    assert at_confidence(10.0, 0.3, 0.95) == pytest.approx(13.0) == judged_prediction(10.0, 0.3, "p90")
    assert at_confidence(10.0, 0.3, 0.5) == pytest.approx(10.0) == judged_prediction(10.0, 0.3, "p50")
    for c in (0.6, 0.8, 0.9, 0.99):
        assert chance_within(10.0, 0.3, at_confidence(10.0, 0.3, c)) == pytest.approx(c)
    assert chance_within(10.0, None, 10.0) == 1.0 and chance_within(10.0, None, 9.9) == 0.0   # no band: certain
    fig = LatencyFigure.from_band(10.0, 7.0, 13.0, 0.3, "predicted:rpi4", confidence=0.9)
    assert fig.value_ms == pytest.approx(at_confidence(10.0, 0.3, 0.9)) and fig.chance_within(fig.value_ms) == \
        pytest.approx(0.9)
    for bad in (1.0, 0.3):
        with pytest.raises(EdgepruneError, match="--confidence is the chance"):
            LatencyFigure.from_band(10.0, 7.0, 13.0, 0.3, "predicted:rpi4", confidence=bad)


def test_a_measured_figure_states_its_own_spread():
    runs = [float(v) for v in range(1, 101)]            # 1..100 ms
    r = LatencyResult(p50_ms=50.5, p90_ms=90.1, p99_ms=99.0, mean_ms=50.5, std_ms=29.0, min_ms=1.0, max_ms=100.0,
                      cv=0.57, runs=100, warmup=0, threads=1, providers_requested=["CPUExecutionProvider"],
                      provider_used="CPUExecutionProvider", fallback=None, ort_version="x", cpu="x", samples_ms=runs)
    fig = LatencyFigure.from_result(r, confidence=0.9)
    assert fig.value_ms == 90.0 and fig.chance_within(90.0) == 0.9 and fig.chance_within(50.5) == 0.5
    assert LatencyFigure.from_result(r).chance_within(100.0) == 1.0
