"""A model with dynamic height and width is not timed or predicted at 1x1: --shape is required."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgeprune.cli import app

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the TorchScript exporter's notice


def export(path: Path, dynamic: dict[int, str]) -> Path:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": dynamic}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def dynamic_hw(tmp_path_factory) -> Path:
    return export(tmp_path_factory.mktemp("dyn") / "hw.onnx", {0: "batch", 2: "height", 3: "width"})


BENCH = ["--runs", "5", "--warmup", "1", "--no-memory"]


@pytest.mark.parametrize("command", [["bench", *BENCH], ["predict", "--device", "rpi4"],
                                     ["check", "--budget", "10s", "--no-memory", "--rounds", "2"]],
                         ids=["bench", "predict", "check"])
def test_dynamic_height_and_width_without_shape_is_one_line(dynamic_hw, command):
    r = runner.invoke(app, [command[0], str(dynamic_hw), *command[1:]])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [
        "error: input 'x' has dynamic dims (batch, 3, height, width) and only a dynamic batch defaults to 1: "
        "pass its shape, e.g. --shape x=1x3x224x224"], r.output
    assert "Traceback" not in r.output


def test_bench_with_shape_times_that_shape(dynamic_hw):
    r = runner.invoke(app, ["bench", str(dynamic_hw), *BENCH, "--shape", "x=2x3x40x24", "--json"])
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)["results"]
    assert res["extra"]["inputs"] == [{"name": "x", "shape": [2, 3, 40, 24], "dtype": "float32"}]
    assert res["runs"] == 5 and res["p50_ms"] > 0


def test_predict_with_shape_predicts_that_shape(dynamic_hw):
    ms = {}
    for side in (32, 64):
        r = runner.invoke(app, ["predict", str(dynamic_hw), "--device", "rpi4", "--shape", f"x=1x3x{side}x{side}",
                                "--json"])
        assert r.exit_code == 0, r.output
        ms[side] = json.loads(r.stdout)["prediction"]["latency_ms"]
    assert ms[64] > ms[32] > 0            # four times the pixels, more predicted time


def test_a_dynamic_batch_alone_still_defaults_to_one(tmp_path):
    path = export(tmp_path / "batch.onnx", {0: "batch"})
    r = runner.invoke(app, ["bench", str(path), *BENCH, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["extra"]["inputs"][0]["shape"] == [1, 3, 16, 16]
    r = runner.invoke(app, ["predict", str(path), "--device", "rpi4", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["prediction"]["latency_ms"] > 0


def test_check_with_shape_gates_that_shape(dynamic_hw):
    r = runner.invoke(app, ["check", str(dynamic_hw), "--budget", "10s", "--no-memory", "--rounds", "2",
                            "--shape", "x=1x3x32x32", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["latency"]["extra"]["inputs"][0]["shape"] == [1, 3, 32, 32]
