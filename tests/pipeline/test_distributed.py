"""Evaluation under real torchrun processes (Gloo, CPU): the same figures on 1 and 2 processes, bit for bit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builds import brightness_npz, factories_importable  # tests/builds.py

from edgeprune.pipeline.distributed import BatchSums, World, world

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
SCORE = ["score", "--score-images", "64", "--batch-size", "16", "--json"]     # 4 batches: 2 per rank


def run(args: list[str], procs: int) -> subprocess.CompletedProcess:
    cmd = ([TORCHRUN, "--standalone", "--nproc-per-node", str(procs), "-m", "edgeprune"] if procs > 1
           else [sys.executable, "-m", "edgeprune"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEPRUNE_PROGRESS": "0"}    # read now: PYTHONPATH may grow
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600)


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
    p = run(["prune", "--remove", "2", "--out", str(tmp_path / "p.pt")], 2)
    assert p.returncode != 0 and not (tmp_path / "p.pt").exists()
    assert "edgeprune prune does not run across processes yet; under torchrun only build, score, eval do" in p.stderr
    assert not re.search(r'File ".*/(edgeprune|pipeline)/', p.stderr)    # torchrun reports its child's exit


def tiny_build(tmp_path, *extra: str) -> list[str]:
    """``build`` arguments for a tiny model on tiny data in ``tmp_path`` (block removal only), plus ``extra``."""
    brightness_npz(tmp_path / "tiny.npz", 300, 200)
    factories_importable()
    return ["build", "--model", "tinynets:tiny_resnet", "--input-size", "16", "--data", str(tmp_path / "tiny.npz"),
            "--device", "rpi4", "--score-images", "64", "--batch-size", "16", "--bench-runs", "3",
            "--bench-rounds", "3", "--levers", "blocks", "--json", *extra]


@needs_torchrun
def test_a_build_on_two_processes_ships_the_plan_and_figures_of_one(tmp_path):
    """Scoring and search split across 2 Gloo ranks (fine-tune replicated); rank 0 alone writes the artifact."""
    args = tiny_build(tmp_path, "--finetune-epochs", "0.05", "--shortlist", "2")
    one = run([*args, "--budget", "0.001ms", "--out", str(tmp_path / "probe")], 1)      # what the blocks reach
    probe = json.loads(one.stdout)
    budget = f"{(probe['search']['base']['latency_ms'] + probe['best_reachable_ms']) / 2:.4f}ms"
    one, two = (run([*args, "--budget", budget, "--out", str(tmp_path / out)], n) for out, n in (("one", 1), ("two", 2)))
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)          # one JSON document: rank 0's
    assert a["removed"] == b["removed"] and a["removed"]
    assert a["search"]["considered"] == b["search"]["considered"]  # every plan's scoring top-1 and loss
    assert a["accuracy"] == b["accuracy"]                          # held-out top-1 before, after, fine-tuned
    assert (tmp_path / "two" / "artifact" / "model.onnx").is_file()
    assert not list((tmp_path / "two").glob("**/.*.tmp*"))


def _rank_pid(rank: int) -> int | None:
    """The pid of this machine's edgeprune process that torchrun started as ``rank``, if any."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = environ.read_bytes().split(b"\0")
            argv = (environ.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env) and b"edgeprune" in argv:
            return int(environ.parent.name)
    return None


@needs_torchrun
def test_a_rank_killed_mid_build_leaves_no_artifact_and_the_rerun_resumes(tmp_path):
    args = tiny_build(tmp_path, "--finetune-epochs", "2", "--shortlist", "1", "--budget", "0.3ms",
                      "--out", str(tmp_path / "b"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEPRUNE_PROGRESS": "0"}
    proc = subprocess.Popen([TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "edgeprune", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "b").glob("cache/*/accuracy-memo.json")):     # the search has measured
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        pid = _rank_pid(1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=300) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "b" / "artifact").exists()                   # nothing half shipped
    again = run(args, 1)
    assert again.returncode == 0, again.stderr[-2000:]
    out = json.loads(again.stdout)
    assert out["removed"] and (tmp_path / "b" / "artifact" / "model.onnx").is_file()
