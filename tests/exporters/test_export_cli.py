"""``edgeprune export`` through Typer's CliRunner and a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.exporters.artifact import checksum_problems

runner = CliRunner()
ARGS = ["export", "--model", "cifar_resnet20", "--data", "default", "--val-images", "32"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "art"
    result = runner.invoke(app, [*ARGS, "--out", str(out), "--json"])
    return out, result


def test_json_prints_the_manifest(exported):
    out, result = exported
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["schema_version"] == 1 and manifest["source"]["model"] == "cifar_resnet20"
    assert manifest["verification"]["passed"] and manifest["verification"]["real"]["n"] == 32
    assert manifest["preprocessing"]["data"] == "default" and len(manifest["classes"]) == 10
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert checksum_problems(out) == []


def test_existing_folder_is_refused_then_replaced_with_force(exported):
    out, _ = exported
    before = (out / "manifest.json").read_text()
    refused = runner.invoke(app, [*ARGS, "--out", str(out)])
    assert refused.exit_code == 2
    assert "already exists; pass --force" in refused.output and "Traceback" not in refused.output
    assert (out / "manifest.json").read_text() == before
    forced = runner.invoke(app, [*ARGS, "--out", str(out), "--force", "--opset", "20"])
    assert forced.exit_code == 0, forced.output
    assert "artifact" in forced.stdout and "dynamo" in forced.stdout
    assert json.loads((out / "manifest.json").read_text())["model"]["opset"] == 20


def test_bad_flags_are_one_line(tmp_path):
    r = runner.invoke(app, [*ARGS, "--out", str(tmp_path / "a"), "--min-agreement", "2"])
    assert r.exit_code == 2 and "--min-agreement" in r.output
    r = runner.invoke(app, ["export", "--model", "no_such_net", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "unknown model" in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_subprocess_operation_onnx_cannot_express_exits_2(tmp_path):
    (tmp_path / "histnet.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class HistNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)

            def forward(self, x):
                return torch.histc(self.conv(x), bins=10).unsqueeze(0)

        def build():
            return HistNet()
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "EDGEPRUNE_PROGRESS": "0"}
    out = tmp_path / "art"
    p = subprocess.run([sys.executable, "-c", "from edgeprune.cli import main; main()", "export",
                        "--model", "histnet:build", "--input-size", "16", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the model cannot be exported to ONNX"), p.stderr
    assert "aten::histc" in lines[0] and "Traceback" not in p.stderr and p.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["histnet.py"]


def test_opset_comes_from_the_flag_then_the_device_profile_then_the_default():
    from edgeprune.commands.export import DEFAULT_OPSET, resolve_opset

    assert resolve_opset(17, "rpi4") == (17, "--opset")
    assert resolve_opset(None, None) == (DEFAULT_OPSET, "default")
    opset, origin = resolve_opset(None, "rpi4")
    assert opset == DEFAULT_OPSET and "rpi4" in origin
