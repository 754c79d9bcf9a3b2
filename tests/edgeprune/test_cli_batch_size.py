"""`score` and `eval` cut their images into batches of `--batch-size` (default EVAL_BATCH_SIZE)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.commands import blocks as blocks_cmd
from edgeprune.commands import eval as eval_cmd
from edgeprune.pipeline.evaluate import EVAL_BATCH_SIZE

runner = CliRunner()
TINY = ["--model", "cifar_resnet20", "--data", "default"]


def _recording(monkeypatch, module, name, at):
    """Record the batch sizes ``module.name`` receives as its positional argument ``at``."""
    sizes: list[int] = []
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        args = list(args)
        args[at] = list(args[at])
        sizes.extend(len(y) for _, y in args[at])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return sizes


@pytest.mark.parametrize("flag", [[], ["--batch-size", "15"]])
def test_score_batches(monkeypatch, flag):
    sizes = _recording(monkeypatch, blocks_cmd, "rank_blocks", 2)
    r = runner.invoke(app, ["score", *TINY, "--criterion", "direct", "--score-images", "40", *flag, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == 40
    step = int(flag[1]) if flag else EVAL_BATCH_SIZE
    assert sizes == [step] * (40 // step) + ([40 % step] if 40 % step else [])


def test_eval_batches(monkeypatch):
    sizes = _recording(monkeypatch, eval_cmd, "evaluate", 1)
    r = runner.invoke(app, ["eval", *TINY, "--limit", "50", "--batch-size", "20", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == 50 and sizes == [20, 20, 10]
