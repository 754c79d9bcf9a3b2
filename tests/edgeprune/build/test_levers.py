"""Builds with the channel and resolution levers, end to end on a tiny model and tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from builds import brightness_npz, factories_importable  # tests/builds.py

from edgeprune.cli import app
from edgeprune.exporters.artifact import checksum_problems

runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("levers")
    brightness_npz(tmp / "tiny.npz", 400, 200)
    factories_importable()
    args = ["--model", "tinynets:tiny_wide_resnet", "--input-size", "16", "--data", str(tmp / "tiny.npz"),
            "--device", "rpi4", "--score-images", "60", "--finetune-epochs", "0", "--bench-runs", "5",
            "--max-accuracy-drop", "100", "--shortlist", "1"]
    return tmp, args


def _build(env, *extra, out="b"):
    tmp, args = env
    r = runner.invoke(app, ["build", *args, *extra, "--out", str(tmp / out), "--json"])
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None)


@pytest.fixture(scope="module")
def reach(env):
    """What each lever reaches, from one unreachable build (answered before any accuracy is measured)."""
    r, out = _build(env, "--budget", "0.001ms", "--levers", "blocks", out="u")
    assert r.exit_code == 3, r.output
    return out, r


def test_unreachable_says_what_each_other_lever_would_reach(reach):
    out, r = reach
    reach_ms = out["lever_reach_ms"]
    assert set(reach_ms) == {"blocks", "blocks+channels", "blocks+resolution"}
    assert reach_ms["blocks+channels"] < reach_ms["blocks"] and reach_ms["blocks+resolution"] < reach_ms["blocks"]
    msg = out["message"]
    assert "unreachable by block removal" in msg
    assert "with channels as well:" in msg and "with resolution as well:" in msg and "\n" not in msg
    assert out["search_evaluations"] == 0


def test_channels_meet_a_budget_blocks_alone_cannot(env, reach):
    reach_ms = reach[0]["lever_reach_ms"]
    budget = reach_ms["blocks+channels"] + 0.5 * (reach_ms["blocks"] - reach_ms["blocks+channels"])
    r, out = _build(env, "--budget", f"{budget:.4f}ms", "--levers", "blocks")
    assert r.exit_code == 3 and "unreachable" in out["message"]
    r, out = _build(env, "--budget", f"{budget:.4f}ms", "--levers", "blocks,channels", out="c")
    assert r.exit_code == 0, r.output
    assert any(t.startswith("channels:") for t in out["removed"]) and "table" in out["search"]["best"]
    cost = out["search_cost"]           # what the search cost: rounds, plans measured whole, moves screened, images
    assert cost["joint"]["table"]["rounds"] >= 1 and cost["joint"]["table"]["screened"] > 0
    assert cost["evaluations"] == out["search_evaluations"] > 0 and cost["image_passes"] > cost["evaluations"]
    assert out["stage_s"]["search"] > 0 and out["stage_s"]["finetune"] >= 0
    art = Path(out["artifact"])
    assert checksum_problems(art) == []
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["latency"]["device_after"]["value_ms"] <= budget
    assert manifest["source"]["plan"]["channel_steps"] and manifest["source"]["plan"]["levers"][-1] == "channels"
    assert manifest["verification"]["passed"] if "verification" in manifest else True
    assert "channel groups shrunk" in (art / "report.md").read_text()
    assert f"Search cost: {cost['evaluations']} accuracy measurements" in (art / "report.md").read_text()


def test_gradual_channel_removal_ships_the_same_structure(env, reach):
    reach_ms = reach[0]["lever_reach_ms"]
    budget = reach_ms["blocks+channels"] + 0.5 * (reach_ms["blocks"] - reach_ms["blocks+channels"])
    r, out = _build(env, "--budget", f"{budget:.4f}ms", "--levers", "blocks,channels", "--gradual",
                    "--finetune-epochs", "0.5", out="g")
    assert r.exit_code == 0, r.output
    art = Path(out["artifact"])
    assert checksum_problems(art) == [] and "gradual = true" in (art / "build-config.toml").read_text()
    assert any(t.startswith("channels:") for t in out["removed"])
    assert out["latency"]["device_after"]["value_ms"] <= budget


def test_resolution_lever_ships_the_chosen_input_size(env, reach):
    reach_ms = reach[0]["lever_reach_ms"]
    budget = reach_ms["blocks+resolution"] + 0.2 * (reach_ms["blocks"] - reach_ms["blocks+resolution"])
    r, out = _build(env, "--budget", f"{budget:.4f}ms", "--levers", "blocks,resolution", "--min-resolution", "8",
                    out="r")
    assert r.exit_code == 0, r.output
    size = next(int(t.split(":")[1]) for t in out["removed"] if t.startswith("resolution:"))
    assert size < 16
    art = Path(out["artifact"])
    dims = [d.dim_value for d in onnx.load(str(art / "model.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == [size, size]
    manifest = json.loads((art / "manifest.json").read_text())
    steps = manifest["preprocessing"]["steps"]
    assert any(s["op"] == "resize" and s["size"] == [size, size] for s in steps)
    golden = np.load(art / "golden.npz")
    assert golden[next(k for k in golden.files if golden[k].ndim == 4)].shape[2:] == (size, size)


def test_bad_lever_input_is_one_line(env, tmp_path):
    r, _ = _build(env, "--budget", "1ms", "--levers", "blocks,width", out="x1")
    assert r.exit_code == 2 and "unknown lever width; known: blocks, channels, resolution" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    r, _ = _build(env, "--budget", "1ms", "--levers", "resolution", "--min-resolution", "20", out="x2")
    assert r.exit_code == 2 and "--min-resolution 20 is above the model's input size 16" in r.stderr


def test_a_model_torch_pruning_cannot_handle_is_one_line_naming_the_layer(env):
    tmp, args = env
    swapped = [("tinynets:grouped_net" if a == "tinynets:tiny_wide_resnet" else a) for a in args]
    r = runner.invoke(app, ["build", *swapped, "--budget", "0.001ms", "--levers", "blocks,channels", "--json",
                            "--out", str(tmp / "grouped")])
    assert r.exit_code == 2 and r.stderr.strip().count("\n") == 0, r.output
    assert "torch-pruning cannot handle layer grouped.0 (Conv2d, groups=4)" in r.stderr
    r = runner.invoke(app, ["build", *swapped, "--budget", "0.001ms", "--levers", "blocks",
                            "--out", str(tmp / "grouped-blocks")])
    assert r.exit_code == 2 and "no removable block" in r.stderr, r.output     # nothing for blocks alone


def test_a_model_without_residual_blocks_is_pruned_by_its_channels(env, reach):
    tmp, args = env
    plain = [("tinynets:plain_net" if a == "tinynets:tiny_wide_resnet" else a) for a in args]
    r = runner.invoke(app, ["build", *plain, "--budget", "0.001ms", "--json", "--out", str(tmp / "plain-u")])
    assert r.exit_code == 3, r.output
    reach_ms = json.loads(r.stdout)["lever_reach_ms"]
    base = json.loads(r.stdout)["search"]["base"]["latency_ms"]
    budget = reach_ms["blocks+channels"] + 0.3 * (base - reach_ms["blocks+channels"])
    r = runner.invoke(app, ["build", *plain, "--budget", f"{budget:.4f}ms", "--json", "--out", str(tmp / "plain")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["removed"] and all(t.startswith("channels:") for t in out["removed"])
