"""`edgeprune build --levers blocks,int8` end to end on a tiny model: int8 taken where the board's prediction
falls (rpi5, dot-product), refused where it does not (rpi3), and what ships is measured on the int8 file."""

from __future__ import annotations

import json

import onnx
import pytest
from typer.testing import CliRunner

from builds import brightness_npz, factories_importable  # tests/builds.py

from edgeprune.cli import app
from edgeprune.devices.fingerprint import local
from edgeprune.devices.profiles import bundled_profile_path
from edgeprune.exporters.artifact import checksum_problems

runner = CliRunner()
PROFILES = bundled_profile_path("rpi3").parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    brightness_npz(tmp / "tiny.npz", 500, 200)
    factories_importable()
    args = ["--model", "tinynets:tiny_resnet", "--input-size", "16", "--data", str(tmp / "tiny.npz"),
            "--score-images", "100", "--finetune-epochs", "0.1", "--bench-runs", "5", "--calibration-images", "32",
            "--bench-rounds", "3", "--shortlist", "1"]
    r = runner.invoke(app, ["build", *args, "--device", "rpi5", "--levers", "blocks", "--budget", "0.001ms",
                            "--out", str(tmp / "u"), "--json"])
    base = json.loads(r.stdout)["search"]["base"]["latency_ms"]     # the unpruned float model on rpi5
    return tmp, args, base


def build(env, *extra):
    tmp, args, _ = env
    r = runner.invoke(app, ["build", *args, *extra, "--json"])
    return r, json.loads(r.stdout)


def test_int8_pays_on_the_pi5_and_leaves_more_of_the_model(env):
    tmp, _, base = env
    budget = f"{0.9 * base:.5f}ms"          # under the float model, above its int8 twin (0.86x on rpi5)
    r, out = build(env, "--device", "rpi5", "--budget", budget, "--levers", "blocks,int8", "--out", str(tmp / "q"))
    assert r.exit_code == 0, r.output
    assert out["int8"]["taken"] and out["int8"]["ratio"] < 1 and "int8" in out["message"]
    assert out["removed"] == [] and out["accuracy"]["precision"] == "int8"   # int8 alone meets it: nothing removed
    acc = out["accuracy"]
    assert acc["shipped"] == acc["onnx_int8"] and acc["onnx_fp32"] is not None
    art = tmp / "q" / "artifact"
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["precision"]["model"] == "int8" and manifest["precision"]["activations"] == "int8"
    assert manifest["sizes"]["int8"]["gzip_bytes"] < manifest["sizes"]["fp32"]["gzip_bytes"]
    assert manifest["latency"]["device_after"]["value_ms"] <= 0.9 * base
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(art / "model.onnx")).graph.node)
    report = (art / "report.md").read_text()
    assert "## INT8" in report and "model file, int8 (onnxruntime): **shipped**" in report
    # the Pi 5's file has int8 activations: on an x86 host (uint8 recommended) its host figures are said not to be the board's
    x86 = local().machine in ("x86_64", "AMD64")
    assert (out["int8"]["host_note"] is not None) == x86
    assert ("the host timed the file made for rpi5 (int8 activations)" in report) == x86
    assert checksum_problems(art) == []
    # run again: the build resumes from its cache, mixed precision included (one re-quantization, no measuring)
    _, args, _ = env
    r = runner.invoke(app, ["build", *args, "--device", "rpi5", "--budget", budget, "--levers", "blocks,int8",
                            "--out", str(tmp / "q")])
    assert r.exit_code == 0, r.output
    assert "mixed precision found in the cache" in r.stderr and "measuring on" not in r.stderr
    again = json.loads((art / "manifest.json").read_text())
    assert again["accuracy"] == manifest["accuracy"] and again["precision"] == manifest["precision"]
    # without the int8 lever the same budget costs blocks
    r, fp32 = build(env, "--device", "rpi5", "--budget", budget, "--levers", "blocks", "--out", str(tmp / "f"))
    assert r.exit_code == 0, r.output
    assert len(fp32["removed"]) > 0 and fp32["accuracy"]["precision"] == "fp32" and "int8" not in fp32


def test_int8_is_refused_where_the_board_gains_nothing(env, tmp_path):
    """A board whose quantized convolutions are predicted 1.6x slower than float ones: int8 is not taken and the
    build plans (and ships) in fp32, even with a budget only int8 would spare the blocks for."""
    tmp, _, base = env
    text = (PROFILES / "rpi3.toml").read_text()
    slow = tmp_path / "slow-int8.toml"
    slow.write_text(text.replace('name = "rpi3"', 'name = "slow-int8"').replace("ratio = 1.0", "ratio = 1.6"))
    r, out = build(env, "--device", str(slow), "--budget", "1000ms", "--levers", "blocks,int8", "--out", str(tmp / "p3"))
    assert r.exit_code == 0, r.output
    assert out["int8"]["taken"] is False and "does not pay on slow-int8" in out["int8"]["reason"]
    assert out["int8"]["original_int8_ms"] > out["int8"]["original_fp32_ms"]
    assert out["accuracy"]["precision"] == "fp32"
    manifest = json.loads((tmp / "p3" / "artifact" / "manifest.json").read_text())
    assert manifest["precision"]["model"] == "fp32"


def test_int8_options_are_checked_before_anything_runs(env, tmp_path):
    _, args, _ = env
    r = runner.invoke(app, ["build", *args, "--levers", "blocks,int8", "--calibration-images", "4",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "at least 16 images" in r.stderr and not (tmp_path / "x").exists()
    r = runner.invoke(app, ["build", *args, "--max-int8-drop", "-1", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--max-int8-drop must be between 0 and 100" in r.stderr
