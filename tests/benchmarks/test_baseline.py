"""Baseline files and model identity (external data included)."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from edgeprune.benchmarks.baseline import load_baseline, locate_model, make_baseline, save_baseline
from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.modelfile import inspect_model
from edgeprune.benchmarks.stats import LatencyResult, summarize
from edgeprune.errors import EdgepruneError


def fake_latency() -> LatencyResult:
    # Only the file format is under test here; the figures come from real runs elsewhere.
    return LatencyResult(**summarize([1.0, 1.1, 1.2]), runs=3, warmup=0, threads=1,
                         providers_requested=["CPUExecutionProvider"],
                         provider_used="CPUExecutionProvider", fallback=None,
                         ort_version="x", cpu="y")


def test_external_data_is_part_of_the_identity(models, tmp_path):
    model = onnx.load(str(models["big"]))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    info = inspect_model(tmp_path / "ext.onnx")
    assert info.external_files == ["ext.onnx.data"]
    assert info.total_bytes == info.file_bytes + (tmp_path / "ext.onnx.data").stat().st_size
    data = bytearray((tmp_path / "ext.onnx.data").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "ext.onnx.data").write_bytes(bytes(data))
    assert inspect_model(tmp_path / "ext.onnx").sha256 != info.sha256
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(EdgepruneError, match="external data"):
        inspect_model(tmp_path / "ext.onnx")


def test_roundtrip_and_relative_model_path(models, tmp_path):
    shutil.copy(models["small"], tmp_path / "m.onnx")
    cfg = BenchConfig(threads=2, shapes={"x": [4, 128]})
    b = make_baseline(inspect_model(tmp_path / "m.onnx"), tmp_path / "b.json", cfg,
                      fake_latency(), None)
    save_baseline(b, tmp_path / "b.json")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    got = load_baseline(tmp_path / "b.json")
    assert got.model_path == "m.onnx" and got.model_sha256 == b.model_sha256
    assert got.bench_config.threads == 2 and got.bench_config.shapes == {"x": [4, 128]}
    assert got.latency.p50_ms == pytest.approx(1.1)
    path, why = locate_model(got, tmp_path / "b.json")
    assert path == tmp_path / "m.onnx" and "matches" in why


def test_changed_or_missing_model_is_not_at_hand(models, tmp_path):
    shutil.copy(models["small"], tmp_path / "m.onnx")
    b = make_baseline(inspect_model(tmp_path / "m.onnx"), tmp_path / "b.json", BenchConfig(),
                      fake_latency(), None)
    shutil.copy(models["double"], tmp_path / "m.onnx")          # rebuilt in place
    path, why = locate_model(b, tmp_path / "b.json")
    assert path is None and "changed" in why
    (tmp_path / "m.onnx").unlink()
    path, why = locate_model(b, tmp_path / "b.json")
    assert path is None and "not at hand" in why


def test_wrong_schema_is_refused(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"schema": "edgeprune.baseline/0"}))
    with pytest.raises(EdgepruneError, match="schema"):
        load_baseline(tmp_path / "b.json")
