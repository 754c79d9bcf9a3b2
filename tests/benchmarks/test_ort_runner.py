"""ort_runner.py as the script other machines run: its CLI and its JSON."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeprune.benchmarks import ort_runner

RUNNER = Path(ort_runner.__file__)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True,
                          timeout=120)


def test_imports_only_stdlib_numpy_onnxruntime():
    tree = ast.parse(RUNNER.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    third_party = roots - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "onnxruntime"}


def test_script_prints_one_json_object_with_raw_samples(models, tmp_path):
    # Run from a copy outside the package, as on a board.
    copy = tmp_path / "ort_runner.py"
    copy.write_text(RUNNER.read_text())
    p = subprocess.run([sys.executable, str(copy), str(models["small"]), "--threads", "1",
                        "--warmup", "2", "--runs", "15", "--shape", "x=2x128"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert d["schema"] == ort_runner.SCHEMA and d["mode"] == "latency"
    assert len(d["samples_ms"]) == d["runs"] == 15
    assert all(s > 0 for s in d["samples_ms"])
    assert d["threads"] == 1 and d["warmup"] == 2
    assert d["provider_used"] == "CPUExecutionProvider" and d["fallback"] is None
    assert d["ort_version"] and d["cpu"]
    assert d["inputs"] == [{"name": "x", "shape": [2, 128], "dtype": "float32"}]
    assert d["profile"] is None
    assert len(d["model_sha256"]) == 64


def test_missing_provider_is_a_recorded_fallback_and_a_warning(models):
    p = run(str(models["small"]), "--runs", "3", "--warmup", "0",
            "--providers", "NoSuchExecutionProvider,CPUExecutionProvider")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["providers_requested"] == ["NoSuchExecutionProvider", "CPUExecutionProvider"]
    assert d["provider_used"] == "CPUExecutionProvider"
    assert "NoSuchExecutionProvider not available" in d["fallback"]
    assert "warning: provider fallback" in p.stderr


def test_profile_lists_top_ops_from_onnxruntime_profiler(models):
    # which op takes longer is a timing fact of a shared machine; what the profile must get right is
    # every op type of the graph, its node and call counts, and an order by time
    p = run(str(models["small"]), "--runs", "5", "--warmup", "1", "--profile", "--top", "5")
    d = json.loads(p.stdout)
    ops = d["profile"]["top_ops"]
    assert {o["op_type"] for o in ops} == {"MatMul", "Relu"}
    for o in ops:
        assert o["nodes"] == 4 and o["calls"] == 4 * d["profile"]["runs"] and 0 < o["share"] <= 1
    assert [o["total_ms"] for o in ops] == sorted((o["total_ms"] for o in ops), reverse=True)
    assert sum(o["share"] for o in ops) <= 1 + 1e-9
    p = run(str(models["small"]), "--runs", "5", "--warmup", "1", "--profile", "--top", "1")
    assert len(json.loads(p.stdout)["profile"]["top_ops"]) == 1


def test_time_budget_stops_the_loop(models):
    p = run(str(models["small"]), "--time-budget", "0.05", "--runs", "100000000", "--warmup", "0")
    d = json.loads(p.stdout)
    assert d["budget_exhausted"] is True
    assert 1 <= d["runs"] < 100000000 and d["time_budget_s"] == 0.05


def test_memory_mode_reports_peak_above_own_footprint(models):
    p = run(str(models["small"]), "--memory", "--no-arena", "--runs", "2")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["mode"] == "memory" and d["arena"] is False
    assert d["model_peak_bytes"] == d["peak_rss_bytes"] - d["baseline_rss_bytes"] > 0
    assert d["runtime_init_bytes"] == d["baseline_rss_bytes"] - d["bare_rss_bytes"]


@pytest.mark.parametrize("args, message", [
    (["/no/such/model.onnx"], "model file not found"),
    (["{small}", "--shape", "q=1x128"], "unknown input"),
    (["{small}", "--shape", "x=1xfoo"], "bad --shape"),
    (["{small}", "--threads", "0"], "--threads must be at least 1"),
    (["{junk}"], "onnxruntime cannot load"),
])
def test_bad_input_is_one_line_and_exit_2(models, tmp_path, args, message):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    p = run(*[a.format(small=models["small"], junk=junk) for a in args])
    assert p.returncode == 2
    assert p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr


def test_cpu_model_is_named():
    assert ort_runner.cpu_model() not in ("", "unknown")
