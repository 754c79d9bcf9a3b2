"""Under real torchrun processes (Gloo, CPU): evaluation gives the same figures on 1 and 2 processes, bit
for bit; the fine-tune runs under DistributedDataParallel, every rank ending with the same weights."""

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
from edgeprune.pipeline.finetune import shard

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


def test_a_global_batch_splits_into_contiguous_shares_whose_weights_average_to_the_batch_mean():
    assert shard(16, World(0, 1)) == (slice(0, 16), 1.0)
    assert [shard(16, World(r, 2)) for r in (0, 1)] == [(slice(0, 8), 1.0), (slice(8, 16), 1.0)]
    three = [shard(7, World(r, 3)) for r in (0, 1, 2)]
    assert [rows for rows, _ in three] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert [w for _, w in three] == pytest.approx([9 / 7, 6 / 7, 6 / 7]) and sum(w for _, w in three) / 3 == pytest.approx(1)
    assert [shard(1, World(r, 2)) for r in (0, 1)] == [(slice(0, 1), 2.0), (slice(0, 1), 0.0)]  # runs, adds nothing


WORKER = Path(__file__).parent / "finetune_ranks.py"      # the fine-tunes: one result per scenario and rank
# BatchNorm normalises each rank's share of 8 images rather than the batch of 16: weights and loss differ by
# that, not only by the order of additions (measured: weights 0.003-0.016 apart, losses 0.005)
BN_WEIGHTS, BN_LOSS = 0.05, 0.02
FP_ORDER = 1e-6     # where BatchNorm sees the same images (no BN, or one-process micro-batches of the share)


def _finetunes(tmp_path: Path, procs: int) -> list[dict]:
    out = tmp_path / f"p{procs}"
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", str(procs)] if procs > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*cmd, str(WORKER), str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    import torch
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(procs)]


def _max_diff(a: dict, b: dict, buffers: bool = False) -> float:
    keys = [k for k in a if buffers or not ("running" in k or "num_batches" in k)]
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


@needs_torchrun
def test_a_finetune_on_two_processes_trains_shares_of_the_one_process_batches_to_the_same_weights_on_every_rank(
        tmp_path):
    """DDP over 2 Gloo ranks: plain, distilled, micro-batched, ragged (a rank with no image), resumed and
    gradual fine-tunes; every rank holds the same weights and buffers, bit for bit."""
    import torch
    (one,), (r0, r1) = _finetunes(tmp_path, 1), _finetunes(tmp_path, 2)
    assert one.keys() == r0.keys() == {"plain", "kd", "micro", "ragged", "resume", "torn", "gradual"}
    for name in r0:
        assert r0[name]["state"].keys() == r1[name]["state"].keys()
        assert all(torch.equal(r0[name]["state"][k], r1[name]["state"][k]) for k in r0[name]["state"]), name
        assert r0[name]["loss"] == r1[name]["loss"]
    # the same images in each BatchNorm: the one-process step, up to the order of additions
    for name in ("micro", "ragged"):
        assert _max_diff(one[name]["state"], r0[name]["state"]) < FP_ORDER, name
    assert abs(one["ragged"]["loss"] - r0["ragged"]["loss"]) < FP_ORDER
    # BatchNorm over the rank's share: close to one process, and trained as far
    for name in ("plain", "kd", "gradual"):
        assert 0 < _max_diff(one[name]["state"], r0[name]["state"]) < BN_WEIGHTS, name
        assert abs(one[name]["loss"] - r0[name]["loss"]) < BN_LOSS, name
    assert r0["plain"]["loss"] < 0.6 < 0.69                   # it learned (0.695 before)
    # interrupted mid-epoch and resumed from rank 0's checkpoint: the uninterrupted run, bit for bit
    plain, resumed, torn = r0["plain"]["state"], r0["resume"]["state"], r0["torn"]["state"]
    assert all(torch.equal(plain[k], resumed[k]) for k in plain)
    # a torn checkpoint is discarded alike on every rank (rank 0 says so, once): a fresh run
    assert all(torch.equal(plain[k], torn[k]) for k in plain)
    assert len(r0["torn"]["warned"]) == 1 and "discarded a corrupt fine-tune checkpoint" in r0["torn"]["warned"][0]
    assert r1["torn"]["warned"] == [] and one["torn"]["warned"] == r0["torn"]["warned"]
    # gradual masks re-applied after every step on every rank
    g = r0["gradual"]
    assert float(g["state"][g["root"] + ".weight"][g["dead"]].abs().sum()) == 0.0


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


# after the DDP fine-tune, within these of one process (measured: the same top-1, losses 0.0004-0.004 apart)
FINETUNED_POINTS, FINETUNED_LOSS = 5.0, 0.02      # top-1 on the 100 held-out images (1 point each); loss


@needs_torchrun
def test_a_build_on_two_processes_ships_the_plan_and_figures_of_one(tmp_path):
    """Scoring and search split across 2 Gloo ranks (bit for bit), the fine-tune under DDP (close: BatchNorm
    over each rank's share, additions in another order); rank 0 alone writes the artifact."""
    (tmp_path / "ft.toml").write_text("[finetune]\nbatch_size = 32\n")   # 7 steps an epoch: a fine-tune that learns
    args = tiny_build(tmp_path, "--finetune-epochs", "3", "--finetune-lr", "0.05", "--shortlist", "2",
                      "--config", str(tmp_path / "ft.toml"))
    one = run([*args, "--budget", "0.001ms", "--out", str(tmp_path / "probe")], 1)      # what the blocks reach
    probe = json.loads(one.stdout)
    budget = f"{(probe['search']['base']['latency_ms'] + probe['best_reachable_ms']) / 2:.4f}ms"
    one, two = (run([*args, "--budget", budget, "--out", str(tmp_path / out)], n) for out, n in (("one", 1), ("two", 2)))
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)          # one JSON document: rank 0's
    assert a["search"]["considered"] == b["search"]["considered"]  # every plan's scoring top-1 and loss
    shortlisted = ("removed", "latency_ms", "final_ms", "top1", "loss")
    short_a, short_b = a["selection"]["candidates"], b["selection"]["candidates"]
    assert [{k: c[k] for k in shortlisted} for c in short_a] == [{k: c[k] for k in shortlisted} for c in short_b]
    assert len(short_a) == 2 and a["selection"]["mode"] == "recovered"   # both plans fine-tuned, then chosen
    for c, d in zip(short_a, short_b):                                  # after the fine-tune: close
        assert abs(c["recovered_loss"] - d["recovered_loss"]) < FINETUNED_LOSS
    # the same plan wins (deterministic: the same seeds, Gloo's fixed order of additions); two plans whose
    # fine-tuned losses were closer than the DDP difference could swap in general
    assert a["removed"] == b["removed"] and a["removed"]
    before = ("images", "scoring_images", "before", "after_removal", "split")
    assert {k: a["accuracy"][k] for k in before} == {k: b["accuracy"][k] for k in before}   # held-out, bit for bit
    tuned_one, tuned_two = a["accuracy"]["after_finetune"], b["accuracy"]["after_finetune"]
    assert tuned_one > a["accuracy"]["after_removal"] and tuned_two > a["accuracy"]["after_removal"]   # it learned
    assert abs(tuned_one - tuned_two) * 100 <= FINETUNED_POINTS
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


@needs_torchrun
def test_the_table_search_plans_the_same_on_one_and_two_processes(tmp_path):
    """A build over blocks and channels (the table search: screens and whole plans measured with the evaluation
    split across the ranks, rank 0's clock for --search-minutes) reaches the same plan, measured alike."""
    brightness_npz(tmp_path / "tiny.npz", 400, 200)
    factories_importable()
    args = ["build", "--model", "tinynets:tiny_wide_resnet", "--input-size", "16", "--data", str(tmp_path / "tiny.npz"),
            "--device", "rpi4", "--budget", "0.9ms", "--levers", "blocks,channels", "--strategy", "table",
            "--score-images", "64", "--batch-size", "16", "--finetune-epochs", "0", "--bench-runs", "5",
            "--bench-rounds", "3", "--max-accuracy-drop", "100", "--shortlist", "1", "--json"]
    one, two = run([*args, "--out", str(tmp_path / "one")], 1), run([*args, "--out", str(tmp_path / "two")], 2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["removed"] == b["removed"] and a["removed"]
    plans = lambda out: [(p["removed"], p["top1"], p["loss"]) for p in out["search"]["considered"]]   # noqa: E731
    assert plans(a) == plans(b) and a["search_cost"] == b["search_cost"]
    assert a["search_cost"]["joint"]["table"]["rounds"] >= 1
