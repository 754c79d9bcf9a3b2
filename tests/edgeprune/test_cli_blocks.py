"""`edgeprune blocks | score | prune | eval` through Typer's runner and a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from edgeprune.cli import app

runner = CliRunner()
TINY = ["--model", "cifar_resnet20", "--data", "default"]


def test_blocks_json():
    r = runner.invoke(app, ["blocks", "--model", "cifar_resnet20", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["blocks"]) == 9 and out["blocks"][3]["kind"] == "projection"
    assert out["total_macs"] > sum(b["macs"] for b in out["blocks"]) * 0.9


def test_blocks_of_model_without_blocks_fails_cleanly():
    r = runner.invoke(app, ["blocks", "--model", "vgg11", "--input-size", "32"])
    assert r.exit_code == 2 and "no residual block" in r.stderr


def test_score_json_ranks_every_identity_block():
    r = runner.invoke(app, ["score", *TINY, "--criterion", "l1", "--score-images", "50", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["order"]) == 7 and out["criterion"] == "l1"


def test_score_channel_groups_json_and_bad_options():
    r = runner.invoke(app, ["score", *TINY, "--lever", "channels", "--criterion", "bn-scale", "--score-images", "50",
                            "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    # ResNet-20 at multiple 8: the 16-channel stem stage and the 9 branch convs shrink; 3 stages + 9 = 12 groups
    assert out["lever"] == "channels" and len(out["order"]) == 12 == len(out["scores"])
    imps = [out["scores"][g]["importance"] for g in out["order"]]
    assert imps == sorted(imps) and out["scores"]["layer3.0.conv1"]["kept"] == 56
    for args, message in [(["--criterion", "l1"], "unknown channel-group criterion 'l1'; choose from direct"),
                          (["--mode", "iterative"], "--mode iterative is for blocks"),
                          (["--channel-multiple", "6"], "--channel-multiple must be a multiple of 4"),
                          (["--channel-criterion", "taylor"], "--channel-criterion")]:
        r = runner.invoke(app, ["score", *TINY, "--lever", "channels", *args])
        assert r.exit_code == 2 and message in r.stderr, (args, r.output)
    r = runner.invoke(app, ["score", *TINY, "--lever", "widths"])
    assert r.exit_code == 2 and "--lever must be blocks or channels" in r.stderr


def test_prune_record_roundtrip_and_bad_names(tmp_path):
    out = tmp_path / "p.pt"
    r = runner.invoke(app, ["prune", *TINY, "--blocks", "layer1.1,layer3.2", "--score-images", "100",
                            "--finetune-steps", "2", "--kd", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "p.json").read_text())
    assert rec["removed"] == ["layer1.1", "layer3.2"] and rec["finetune"]["kd"] is True
    assert "after_finetune" in rec["accuracy"]
    # the record is a model: eval loads it, replaying the plan on a fresh base model
    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "p.json"), "--limit", "50", "--json"])
    assert r.exit_code == 0, r.output
    # refusing to overwrite, then bad names: one line, exit 2
    r = runner.invoke(app, ["prune", *TINY, "--blocks", "layer1.1", "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.stderr
    r = runner.invoke(app, ["prune", *TINY, "--blocks", "layer7.7", "--out", str(tmp_path / "q.pt")])
    assert r.exit_code == 2 and "no removable block named layer7.7" in r.stderr
    assert not (tmp_path / "q.pt").exists()
    r = runner.invoke(app, ["prune", *TINY, "--blocks", "layer2.0", "--out", str(tmp_path / "q.pt")])
    assert r.exit_code == 2 and "projection" in r.stderr


def test_subprocess_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"not a checkpoint")
    p = subprocess.run([sys.executable, "-m", "edgeprune", "eval", "--model", "cifar_resnet20", "--weights", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "corrupted or truncated" in p.stderr


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("edgeprune ")
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "eval" in r.stdout and "prune" in r.stdout
