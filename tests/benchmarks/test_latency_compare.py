"""In-process latency figures, the interleaved comparison and memory, on real sessions."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.benchmarks.compare import CompareConfig, bootstrap_median_ci, compare
from edgeprune.benchmarks.latency import BenchConfig, measure, resolve_config, to_result
from edgeprune.benchmarks.memory import measure_memory, probe
from edgeprune.errors import EdgepruneError

FAST = CompareConfig(rounds=5, max_rounds=5, round_ms=40)


def test_figures_are_positive_and_ordered(models):
    r = measure(models["small"], BenchConfig(warmup=2, runs=40))
    assert r.runs == 40 == len(r.samples_ms)
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
    assert r.mean_ms > 0 and r.std_ms >= 0 and r.cv == pytest.approx(r.std_ms / r.mean_ms)
    assert r.threads == 1 and r.provider_used == "CPUExecutionProvider" and r.fallback is None
    assert r.source == "measured:host" and r.ort_version and r.cpu


def test_missing_provider_is_recorded_as_fallback(models):
    cfg = BenchConfig(warmup=0, runs=3, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    r = measure(models["small"], cfg)
    assert r.provider_used == "CPUExecutionProvider"
    assert r.fallback and "CUDAExecutionProvider" in r.fallback
    assert r.providers_requested == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_time_budget_and_runs(models):
    r = measure(models["small"], BenchConfig(warmup=0, runs=None, time_budget_s=0.05))
    assert r.runs >= 1 and r.extra["budget_exhausted"] is True


def test_to_result_rejects_incomplete_runner_output():
    with pytest.raises(EdgepruneError, match="not a complete"):
        to_result({"samples_ms": [1.0, 2.0]})


def test_device_profile_sets_threads_and_providers_and_flags_win():
    from edgeprune.devices.targets import bench_config

    cfg = bench_config(BenchConfig(), "rpi4")
    assert cfg.device == "rpi4" and cfg.threads == 4 and cfg.providers == ["CPUExecutionProvider"]
    cfg = bench_config(BenchConfig(), "rpi4", threads=2)
    assert cfg.threads == 2
    with pytest.raises(EdgepruneError):
        bench_config(BenchConfig(), "no-such-board")
    # benchmarks itself takes a loaded profile (it imports nothing of edgeprune.devices)
    from edgeprune.devices.profiles import load_profile

    assert resolve_config(BenchConfig(), profile=load_profile("rpi4"), providers=["X"]).providers == ["X"]
    assert resolve_config(BenchConfig(threads=3)).threads == 3


def test_bootstrap_interval_brackets_the_median():
    rng = np.random.default_rng(1)
    values = 1.10 + rng.normal(0, 0.01, 25)
    lo, hi = bootstrap_median_ci(values, 0.95, 2000, np.random.default_rng(0))
    assert lo < np.median(values) < hi
    assert lo > 1.09 and hi < 1.11
    lo2, hi2 = bootstrap_median_ci(values, 0.5, 2000, np.random.default_rng(0))
    assert hi2 - lo2 < hi - lo


def test_comparison_orders_models_by_work(models):
    c = compare(models["double"], models["small"], BenchConfig(warmup=3), FAST)
    assert c.rounds == 5 == len(c.round_ratios)
    assert c.ci_low <= c.ratio <= c.ci_high
    assert c.ratio > 1.2                      # twice the MatMuls
    assert c.a.runs == c.b.runs == 5 * 2 * c.half_block
    assert c.a.extra["model"] == str(models["double"])


def test_sequential_rounds_stop_only_when_conclusive_or_at_the_cap(models):
    # Threshold at the A/A ratio itself: the interval usually straddles it, so rounds
    # are added; measuring may stop before the cap only once the interval excludes it.
    cfg = CompareConfig(rounds=4, max_rounds=12, step=4, round_ms=20, threshold=1.0)
    c = compare(models["small"], models["small"], BenchConfig(warmup=2), cfg)
    assert c.rounds in (4, 8, 12)
    assert c.extended == (c.rounds > 4)
    assert c.rounds == 12 or c.conclusive
    # A threshold far from any plausible ratio is conclusive at once: no extra rounds.
    far = CompareConfig(rounds=4, max_rounds=12, step=4, round_ms=20, threshold=50.0)
    c = compare(models["small"], models["small"], BenchConfig(warmup=2), far)
    assert c.rounds == 4 and not c.extended and c.conclusive


def test_compare_config_is_validated(models):
    with pytest.raises(EdgepruneError, match="--rounds"):
        compare(models["small"], models["small"], BenchConfig(), CompareConfig(rounds=1))


def test_memory_peak_grows_with_weights(models):
    small = measure_memory(models["small"], BenchConfig(), repeats=1, runs=2)
    big = measure_memory(models["big"], BenchConfig(), repeats=1, runs=2)
    assert small.arena_on_peak_bytes > 0 and small.arena_off_peak_bytes > 0
    # big carries 8 MiB of weights more than small
    assert big.arena_on_peak_bytes - small.arena_on_peak_bytes > 6 * 2**20
    assert big.total_file_bytes > 8 * 2**20 > small.total_file_bytes
    assert set(small.samples) == {"arena_on", "arena_off"}


def test_a_memory_probe_that_does_not_finish_is_stopped_with_what_to_check(models):
    with pytest.raises(EdgepruneError, match=r"memory probe of .*small.onnx \(a fresh onnxruntime process, arena on, "
                                             r"2 runs\) took longer than 0 s; stopped: .*--no-memory"):
        probe(str(models["small"]), BenchConfig(), arena=True, runs=2, timeout_s=0.01)


def test_memory_timeout_flag_reaches_the_probes(models):
    from typer.testing import CliRunner

    from edgeprune.cli import app
    runner = CliRunner()
    for command in (["bench", str(models["small"]), "--runs", "3"],
                    ["check", str(models["small"]), "--max-memory", "1GB", "--rounds", "2"]):
        r = runner.invoke(app, [*command, "--memory-timeout", "0.01"])
        assert r.exit_code == 2 and "took longer than 0 s" in r.stderr and "--memory-timeout" in r.stderr, r.output
    r = runner.invoke(app, ["bench", str(models["small"]), "--runs", "3", "--memory-timeout", "0"])
    assert r.exit_code == 2 and "--memory-timeout must be positive" in r.stderr, r.output
