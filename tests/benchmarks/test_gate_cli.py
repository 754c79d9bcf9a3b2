"""`edgeprune bench` and `edgeprune check` end to end on real models and real sessions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprune.cli import app

runner = CliRunner()
QUICK = ["--rounds", "5"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def baseline(models, tmp_path_factory) -> Path:
    """A baseline for the small model, with the model copied beside it (as in CI)."""
    d = tmp_path_factory.mktemp("baseline")
    model = d / "small_baseline.onnx"
    shutil.copy(models["small"], model)
    r = invoke("bench", model, "--runs", "30", "--warmup", "3", "--save-baseline",
               d / "baseline.json", "--json")
    assert r.exit_code == 0, r.output
    return d / "baseline.json"


def one_error_line(r, fragment: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert fragment in lines[0]
    assert "Traceback" not in r.output


def test_bench_json_figures(models):
    r = invoke("bench", models["small"], "--runs", "25", "--warmup", "2", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    (lat,) = d["results"]
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert lat["runs"] == 25 and lat["threads"] == 1
    assert lat["provider_used"] == "CPUExecutionProvider" and lat["ort_version"] and lat["cpu"]
    (mem,) = d["memory"]
    assert mem["arena_on_peak_bytes"] > 0 and mem["arena_off_peak_bytes"] > 0
    assert mem["file_bytes"] == models["small"].stat().st_size


def test_bench_human_table_and_profile(models):
    r = invoke("bench", models["small"], "--runs", "10", "--profile", "--no-memory",
               "--device", "host")
    assert r.exit_code == 0, r.output
    for word in ("p50", "p99", "CV", "MatMul", "threads 1", "CPUExecutionProvider"):
        assert word in r.stdout


def test_bench_missing_provider_warns_and_records_fallback(models):
    r = invoke("bench", models["small"], "--runs", "5", "--no-memory", "--json",
               "--providers", "TensorrtExecutionProvider,CPUExecutionProvider")
    assert r.exit_code == 0, r.output
    assert "warning" in r.stderr and "TensorrtExecutionProvider" in r.stderr
    lat = json.loads(r.stdout)["results"][0]
    assert lat["provider_used"] == "CPUExecutionProvider"
    assert "TensorrtExecutionProvider not available" in lat["fallback"]


def test_bench_vs_reports_ratio_with_interval(models):
    r = invoke("bench", models["double"], "--vs", models["small"], "--no-memory", "--json", *QUICK)
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)["comparison"]
    assert c["ci_low"] <= c["ratio"] <= c["ci_high"] and c["ratio"] > 1.2
    assert c["rounds"] == 5 and len(c["round_ratios"]) == 5


def test_baseline_records_identity_and_settings(baseline):
    d = json.loads(baseline.read_text())
    assert d["schema"] == "edgeprune.baseline/1"
    assert d["model"]["path"] == "small_baseline.onnx" and len(d["model"]["sha256"]) == 64
    assert d["settings"]["threads"] == 1 and d["settings"]["providers"] == ["CPUExecutionProvider"]
    assert d["latency"]["p50_ms"] > 0 and d["memory"]["arena_on_peak_bytes"] > 0


def test_same_model_passes_and_junit_carries_verdict(models, baseline, tmp_path):
    junit = tmp_path / "check.xml"
    r = invoke("check", models["small"], "--baseline", baseline, "--tolerance", "5%",
               "--junit", junit, *QUICK)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout and "latency-ratio" in r.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["verdict"] == "pass" and props["mode"] == "ratio"
    names = [c.get("name") for c in suite.iter("testcase")]
    assert names == ["latency-ratio", "memory-arena-on", "memory-arena-off"]


def test_twice_the_work_fails(models, baseline, tmp_path):
    junit = tmp_path / "check.xml"
    r = invoke("check", models["double"], "--baseline", baseline, "--no-memory", "--json",
               "--junit", junit, *QUICK)
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)
    assert d["verdict"] == "fail" and d["mode"] == "ratio"
    (chk,) = d["checks"]
    assert chk["name"] == "latency-ratio" and not chk["passed"] and chk["measured"] > 1.05
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and "candidate/baseline" in failure.get("message")


def test_more_memory_fails_memory_check(models, baseline):
    r = invoke("check", models["big"], "--baseline", baseline, "--json", *QUICK)
    assert r.exit_code == 1, r.output
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert not checks["memory-arena-on"]["passed"]


def test_without_baseline_model_falls_back_to_absolute(models, baseline, tmp_path):
    lone = tmp_path / "baseline.json"
    shutil.copy(baseline, lone)                        # the model is not beside this copy
    r = invoke("check", models["small"], "--baseline", lone, "--no-memory", "--json",
               "--tolerance", "900%")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["mode"] == "absolute" and d["checks"][0]["name"] == "latency-absolute"
    assert any("not at hand" in n for n in d["notes"])
    # ... unless told where it is
    r = invoke("check", models["small"], "--baseline", lone, "--no-memory", "--json",
               "--baseline-model", baseline.parent / "small_baseline.onnx", *QUICK)
    assert r.exit_code == 0 and json.loads(r.stdout)["mode"] == "ratio"


def test_plain_budgets(models):
    r = invoke("check", models["small"], "--budget", "10s", "--max-memory", "4GiB", "--json")
    assert r.exit_code == 0, r.output
    assert {c["name"] for c in json.loads(r.stdout)["checks"]} == {"latency-budget",
                                                                  "memory-budget"}
    r = invoke("check", models["small"], "--budget", "0.00001ms", "--budget-stat", "p99")
    assert r.exit_code == 1 and "FAIL" in r.stdout
    r = invoke("check", models["small"], "--max-memory", "1KB", "--json")
    assert r.exit_code == 1
    assert not json.loads(r.stdout)["checks"][0]["passed"]


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"schema": "other/1"}', "schema"),
    ("__DROP_P50__", "missing latency.p50_ms"),
    ("__NEG_P50__", "latency.p50_ms must be a positive number"),
    ("__BAD_SHA__", "sha256"),
    ("__THREADS_STR__", "settings.threads has the wrong type"),
])
def test_malformed_baseline_exits_2_with_one_line(models, baseline, tmp_path, content, fragment):
    good = json.loads(baseline.read_text())
    if content == "__DROP_P50__":
        del good["latency"]["p50_ms"]
        content = json.dumps(good)
    elif content == "__NEG_P50__":
        good["latency"]["p50_ms"] = -1
        content = json.dumps(good)
    elif content == "__BAD_SHA__":
        good["model"]["sha256"] = "xyz"
        content = json.dumps(good)
    elif content == "__THREADS_STR__":
        good["settings"]["threads"] = "four"
        content = json.dumps(good)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    one_error_line(invoke("check", models["small"], "--baseline", bad), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["check", "{missing}", "--baseline", "{baseline}"], "model file not found"),
    (["check", "{small}", "--baseline", "{missing}"], "baseline file not found"),
    (["check", "{small}", "--baseline", "{baseline}", "--tolerance", "5"], "ambiguous"),
    (["check", "{small}"], "nothing to check"),
    (["check", "{small}", "--budget", "3 parsecs"], "--budget"),
    (["check", "{small}", "--baseline", "{baseline}", "--baseline-model", "{double}"],
     "is not the baseline's model"),
    (["check", "{junk}", "--budget", "3ms"], "not a readable ONNX model"),
    (["bench", "{missing}"], "model file not found"),
    (["bench", "{small}", "--save-baseline", "{missing_dir}/b.json"], "does not exist"),
    (["bench", "{small}", "--threads", "0"], "--threads must be at least 1"),
    (["bench", "{small}", "--device", "no-such-board"], "no-such-board"),
])
def test_bad_input_exits_2_with_one_line(models, baseline, tmp_path, args, fragment):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    subst = {"missing": tmp_path / "missing.onnx", "baseline": baseline, "small": models["small"],
             "double": models["double"], "junk": junk, "missing_dir": tmp_path / "nope"}
    one_error_line(invoke(*[a.format(**subst) for a in args]), fragment)


def test_real_subprocess_exit_codes(models, baseline, tmp_path):
    cmd = [sys.executable, "-c", "from edgeprune.cli import main; main()", "check"]
    bad = subprocess.run(cmd + [str(models["double"]), "--baseline", str(baseline), "--no-memory",
                                "--junit", str(tmp_path / "j.xml"), *QUICK],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1, bad.stderr
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"
    err = subprocess.run(cmd + [str(tmp_path / "nope.onnx"), "--budget", "1ms"],
                         capture_output=True, text=True, timeout=300)
    assert err.returncode == 2 and len(err.stderr.strip().splitlines()) == 1
