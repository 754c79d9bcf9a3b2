"""Evaluation under real torchrun processes (Gloo, CPU): the same figures on 1 and 2 processes, bit for bit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from edgeprune.pipeline.distributed import BatchSums, World, world

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEPRUNE_PROGRESS": "0"}
SCORE = ["score", "--score-images", "64", "--batch-size", "16", "--json"]     # 4 batches: 2 per rank


def run(args: list[str], procs: int) -> subprocess.CompletedProcess:
    cmd = ([TORCHRUN, "--standalone", "--nproc-per-node", str(procs), "-m", "edgeprune"] if procs > 1
           else [sys.executable, "-m", "edgeprune"])
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=ENV, timeout=600)


def test_batch_sums_add_in_batch_order_whoever_ran_them():
    sums = BatchSums()
    for b in (2, 0, 1):                              # recorded out of order, as ranks finish
        sums.add(b, "x", [1, [1e16, 1.0, -1e16][b]])
    # one process adds 1e16 + 1.0 - 1e16 in batch order: 0.0 (float), not 1.0
    assert sums.totals() == {"x": [3, 1e16 + 1.0 - 1e16]}
    assert world() == World(0, 1) and World(1, 2).runs(3) and not World(0, 2).runs(3)


needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed with torch here")


@needs_torchrun
@pytest.mark.parametrize("args", [SCORE, [*SCORE, "--lever", "channels", "--model", "cifar_resnet20"]],
                         ids=["blocks", "channels"])
def test_direct_scores_are_the_same_on_one_and_two_processes(args):
    one, two = run(args, 1), run(args, 2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)       # rank 0 alone printed: one JSON document
    assert a["scores"] == b["scores"] and a["order"] == b["order"] and a["images"] == b["images"] == 64
    assert len({s["loss"] for s in a["scores"].values()}) > 1   # scores that differ, equal to the last bit


@needs_torchrun
def test_eval_is_the_same_on_one_and_two_processes():
    args = ["eval", "--split", "val", "--json"]
    one, two = run(args, 1), run(args, 2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert (a["top1"], a["loss"], a["images"]) == (b["top1"], b["loss"], b["images"]) and a["images"] > 1000


@needs_torchrun
def test_commands_that_do_not_split_their_work_are_refused_under_torchrun(tmp_path):
    p = run(["build", "--out", str(tmp_path / "b")], 2)
    assert p.returncode != 0 and not (tmp_path / "b").exists()
    assert "edgeprune build does not run across processes yet; under torchrun only score, eval do" in p.stderr
    assert not re.search(r'File ".*/(edgeprune|pipeline)/', p.stderr)    # torchrun reports its child's exit
