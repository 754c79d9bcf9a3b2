"""Scoring and fine-tuning throughput on 1 and 2 torchrun processes, and how far the 2-process fine-tune lands
from the 1-process one, on the bundled ResNet-56.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/studies/distributed_throughput.py

Every measurement is a fresh ``torchrun --standalone --nproc-per-node N`` of this script (``--worker``),
each process on one thread (``OMP_NUM_THREADS=1``), N = 1 and 2 interleaved (1 2 2 1 ...) so both see the
same drift of a shared machine:

- scoring: direct-removal scores of the 25 removable blocks (prefix reuse, ``importance.direct_removal``) on
  the first ``--score-images`` bundled test images in batches of 16 (whole batches round robin across ranks);
  images/s = images / wall time between two barriers;
- fine-tune: ``finetune`` (SGD, batch 128, crop augmentation, the build's defaults) of ResNet-56 with its last
  block of each stage removed, on the bundled training images; images/s over steps 2..``--steps`` (the first
  step builds DDP and sizes micro-batches), timed on rank 0 (every step ends in the all-reduce, so rank 0 waits
  for the slowest).

Then one agreement run each on 1 and 2 processes: the same fine-tune for ``--agree-steps`` steps, whose weights
are compared (largest absolute difference) and evaluated on the 2,000 bundled test images.

Each finished measurement is kept in ``--workdir`` (rerunning resumes); results go to ``docs/distributed.json``
and ``docs/distributed.md``. ``--quick`` (1 round, 32 images, 3 steps, 4 agreement steps) checks the script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from edgeprune.files import write_text_atomic
from edgeprune.pipeline.blocks import discover, remove_blocks
from edgeprune.pipeline.data import DataSpec, load_data_for
from edgeprune.pipeline.distributed import barrier, init_from_env
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.importance import ScoreContext, candidates_for, direct_removal
from edgeprune.pipeline.models import ModelSpec, load_model

ROOT = Path(__file__).resolve().parents[2]
REMOVED = ["layer1.8", "layer2.8", "layer3.8"]      # the fine-tuned plan: the last block of each stage
SCORE_BATCH = 16


# ---------------------------------------------------------------- one torchrun process

def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    here = init_from_env("cpu")
    loaded = load_model(ModelSpec("default"))
    bundle = load_data_for(DataSpec(), loaded)
    blocks = discover(loaded.model, loaded.input_shape)
    result: dict = {"world": here.size}
    if args.what == "score":
        batches = list(bundle.batches("val", SCORE_BATCH, indices=torch.arange(args.score_images)))
        cands = candidates_for(blocks, False)
        barrier()
        t0 = time.perf_counter()
        scores = direct_removal(loaded.model, cands, batches, ScoreContext())
        barrier()
        wall = time.perf_counter() - t0
        result.update(images=args.score_images, blocks=len(cands), wall_s=wall, images_per_s=args.score_images / wall,
                      checksum=sum(s.loss for s in scores.values()))
    else:
        model = remove_blocks(loaded.model, REMOVED, blocks)
        cfg = FinetuneConfig(steps=args.steps, batch_size=128, augment="crop", seed=0)
        stamps: list[float] = []
        barrier()
        finetune(model, lambda ep: bundle.batches("train", cfg.batch_size, shuffle=True, seed=ep),
                 len(bundle.y_train), cfg, progress=None, after_step=lambda s, t: stamps.append(time.perf_counter()))
        timed = len(stamps) - 2                         # steps 2..N (stamps[0]: before step 1)
        wall = stamps[-1] - stamps[1]
        result.update(steps=args.steps, timed_steps=timed, batch=cfg.batch_size, wall_s=wall,
                      images_per_s=timed * cfg.batch_size / wall, first_step_s=stamps[1] - stamps[0])
        if args.save:
            if here.main:
                torch.save(model.state_dict(), args.save)
            barrier()
    if here.main:
        write_text_atomic(Path(args.result), json.dumps(result))


# ---------------------------------------------------------------- the driver

def launch(procs: int, what: str, out: Path, extra: list[str]) -> dict:
    if out.exists():
        return json.loads(out.read_text())
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc-per-node", str(procs), __file__, "--worker", what,
           "--result", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEPRUNE_PROGRESS": "0"}
    load = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"{what} on {procs} processes failed:\n{p.stderr[-3000:]}")
    r = {**json.loads(out.read_text()), "load_before": load, "load_after": os.getloadavg()[0]}
    write_text_atomic(out, json.dumps(r))
    return r


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def agreement(work: Path, steps: int) -> dict:
    """The same fine-tune on 1 and 2 processes: weight difference, and each on the 2,000 test images."""
    done = work / f"agreement-{steps}.json"
    if done.exists():
        return json.loads(done.read_text())
    loaded = load_model(ModelSpec("default"))
    bundle = load_data_for(DataSpec(), loaded)
    blocks = discover(loaded.model, loaded.input_shape)
    states, figures = {}, {}
    for n in (1, 2):
        path = work / f"agree-{n}.pt"
        launch(n, "finetune", work / f"agree-{n}.json", ["--steps", str(steps), "--save", str(path)])
        states[n] = torch.load(path, weights_only=True)
        model = remove_blocks(loaded.model, REMOVED, blocks)
        model.load_state_dict(states[n])
        r = evaluate(model, bundle.batches("val", 250), "cpu")
        figures[n] = {"top1": r.top1, "loss": r.loss}
    params = [k for k in states[1] if "running" not in k and "num_batches" not in k]
    diff = lambda keys: max(float((states[1][k].double() - states[2][k].double()).abs().max()) for k in keys)  # noqa: E731
    scale = max(float(states[1][k].abs().max()) for k in params)
    before = remove_blocks(loaded.model, REMOVED, blocks)
    r0 = evaluate(before, bundle.batches("val", 250), "cpu")
    result = {"steps": steps, "max_abs_weight_diff": diff(params), "largest_weight": scale,
              "parameters": sum(states[1][k].numel() for k in params),
              "max_abs_buffer_diff": diff([k for k in states[1] if "running" in k]),
              "before": {"top1": r0.top1, "loss": r0.loss}, "one": figures[1], "two": figures[2],
              "test_images": len(bundle.y_val)}
    write_text_atomic(done, json.dumps(result))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=["score", "finetune"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=5, help="measurements of each kind and process count")
    ap.add_argument("--score-images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="fine-tune steps per throughput measurement")
    ap.add_argument("--agree-steps", type=int, default=20, help="fine-tune steps of the agreement runs")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "distributed"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "distributed"), help="writes OUT.json and OUT.md")
    ap.add_argument("--quick", action="store_true", help="1 round, 32 images, 3 steps, 4 agreement steps")
    args = ap.parse_args()
    if args.worker:
        args.what = args.worker
        return worker(args)
    if args.quick:
        args.rounds, args.score_images, args.steps, args.agree_steps = 1, 32, 3, 4
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, list[dict]]] = {"score": {1: [], 2: []}, "finetune": {1: [], 2: []}}
    started = time.time()
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)            # 1 2 | 2 1 | 1 2 ...
        for what, extra in (("score", ["--score-images", str(args.score_images)]), ("finetune", ["--steps", str(args.steps)])):
            for n in order:
                tag = f"{what}-{n}-r{r}-{args.score_images if what == 'score' else args.steps}"
                res = launch(n, what, work / f"{tag}.json", extra)
                runs[what][n].append(res)
                print(f"{tag}: {res['images_per_s']:.2f} images/s (load {res['load_before']:.1f})", flush=True)
    agree = agreement(work, args.agree_steps)
    print(f"agreement after {agree['steps']} steps: max |w1 - w2| {agree['max_abs_weight_diff']:.3g}", flush=True)
    summary = {}
    for what in runs:
        med = {n: statistics.median(x["images_per_s"] for x in runs[what][n]) for n in (1, 2)}
        paired = [b["images_per_s"] / a["images_per_s"] for a, b in zip(runs[what][1], runs[what][2])]
        summary[what] = {"median_images_per_s": {str(n): med[n] for n in med}, "ratio_2_over_1": med[2] / med[1],
                         "round_ratios": paired, "median_round_ratio": statistics.median(paired),
                         "runs": {str(n): [x["images_per_s"] for x in runs[what][n]] for n in (1, 2)},
                         "load": {str(n): [x["load_before"] for x in runs[what][n]] for n in (1, 2)}}
    assert len({round(x["checksum"], 9) for n in (1, 2) for x in runs["score"][n]}) == 1   # same scores on 1 and 2
    doc = {"command": " ".join(["OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/studies/distributed_throughput.py",
                                *sys.argv[1:]]),
           "date": datetime.date.today().isoformat(), "cpu": cpu_model(), "threads_per_process": 1,
           "torch": torch.__version__, "rounds": args.rounds, "score_images": args.score_images,
           "score_batch": SCORE_BATCH, "finetune_steps": args.steps, "finetune_batch": 128, "removed": REMOVED,
           "wall_s_this_invocation": time.time() - started, **summary, "agreement": agree}
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(doc, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), report(doc))
    print(f"wrote {out.with_suffix('.md')}")


def report(d: dict) -> str:
    s, f, a = d["score"], d["finetune"], d["agreement"]
    runs = lambda x, n: ", ".join(f"{v:.2f}" for v in x["runs"][n])  # noqa: E731
    ratios = lambda x: ", ".join(f"{v:.2f}" for v in x["round_ratios"]) + f" (**{x['median_round_ratio']:.2f}**)"  # noqa: E731
    return f"""# Several processes: throughput and agreement

`torchrun --nproc-per-node N -m edgeprune build ...` splits scoring and evaluation across the N ranks
(whole batches, round robin, sums added in batch order: the same figures as one process, bit for bit)
and fine-tunes under DistributedDataParallel (each rank trains its share of every global batch of 128,
gradients all-reduced; [architecture.md](architecture.md), `pipeline/finetune.py`). This page measures
both on this machine and how far the 2-process fine-tune lands from the 1-process one.

Produced by ({d['date']}, torch {d['torch']}; a rerun resumes from the measurements kept in `runs/distributed`):

```
{d['command']}
```

Machine: {d['cpu']} (`lscpu`), a shared virtual machine; every process on {d['threads_per_process']} thread
(`OMP_NUM_THREADS=1`), each measurement a fresh `torchrun --standalone`, 1 and 2 processes interleaved,
{d['rounds']} rounds; medians.

| work | 1 process (images/s) | 2 processes (images/s) | 2 / 1 (medians) | 2 / 1 per round (median) | runs, 1 process | runs, 2 processes |
|---|---:|---:|---:|---|---|---|
| direct-removal scoring, ResNet-56, {d['score_images']} images, 25 blocks | {s['median_images_per_s']['1']:.2f} | {s['median_images_per_s']['2']:.2f} | **{s['ratio_2_over_1']:.2f}** | {ratios(s)} | {runs(s, '1')} | {runs(s, '2')} |
| fine-tune (DDP), ResNet-56 minus {', '.join(d['removed'])}, batch {d['finetune_batch']}, steps 2-{d['finetune_steps']} | {f['median_images_per_s']['1']:.2f} | {f['median_images_per_s']['2']:.2f} | **{f['ratio_2_over_1']:.2f}** | {ratios(f)} | {runs(f, '1')} | {runs(f, '2')} |

A round measures 1 and 2 processes back to back (so they share the machine's load of the moment); the
per-round ratio is 2-process over 1-process images/s within a round.

Scoring gives the same scores on 1 and 2 processes in every run (the script checks it).

**What the ratio can and cannot show.** This machine has {d['cpu'].split(', ')[-1]}, shared with other jobs
(the 1-minute load average before each run was {min(min(v) for v in s['load'].values()):.1f}-{max(max(v) for v in s['load'].values()):.1f}).
Two one-thread processes can at best use both cores, so 2 is the ceiling here, and with other jobs on
the same two cores the second process competes with them: the ratio depends on what else ran, and says
nothing about N GPUs or hosts. What it can show: that the split work runs side by side (a ratio above 1),
in scoring (the ranks exchange only the per-batch sums at the end) and in the fine-tune (which also
all-reduces the gradients of {a['parameters'] / 1e6:.2f} M parameters through Gloo every step). What it cannot: the speed-up on an idle
machine, on N GPUs with NCCL or on N hosts (the work per rank there is 1/N of the batch, as here).

## How far the 2-process fine-tune lands from 1 process

The same fine-tune ({a['steps']} steps of batch 128, SGD, lr 0.01, crop augmentation, seed 0) of ResNet-56
minus {', '.join(d['removed'])}, on 1 and on 2 processes. The 2 ranks hold the same weights bit for bit
(`tests/pipeline/test_distributed.py`); against 1 process they differ because (a) BatchNorm normalises
each rank's share of 64 images rather than the batch of 128 (the one-process run with micro-batches of 64
would normalise alike), (b) floating-point additions run in another order (the gradient all-reduce, the
loss weighting). Alone, (b) is below 1e-7 on the tests' tiny models (a model without BatchNorm, and one
whose one-process micro-batches are the ranks' shares: `tests/pipeline/test_distributed.py` asserts 1e-6).

| | top-1 ({a['test_images']} test images) | loss |
|---|---:|---:|
| before the fine-tune (blocks removed) | {a['before']['top1']:.2%} | {a['before']['loss']:.4f} |
| fine-tuned on 1 process | {a['one']['top1']:.2%} | {a['one']['loss']:.4f} |
| fine-tuned on 2 processes | {a['two']['top1']:.2%} | {a['two']['loss']:.4f} |

Largest absolute weight difference, 1 against 2 processes: **{a['max_abs_weight_diff']:.2g}** (the largest
weight is {a['largest_weight']:.2f}); BatchNorm running statistics: {a['max_abs_buffer_diff']:.2g}. On several
ranks the running statistics are averaged over the ranks after every step: the average of the shares'
means is the batch's mean, so the running mean is updated as one process updates it; the running
variance lacks the spread between the shares' means (slightly smaller). The top-1 difference,
{abs(a['one']['top1'] - a['two']['top1']) * a['test_images']:.0f} of {a['test_images']} images, is within the
noise of one such figure (binomial standard error about 0.5 points at this accuracy).

BatchNorm on several CPUs: torch has no SyncBatchNorm for CPUs (it is CUDA-only), so each rank normalises
its own share; with `--accelerator cuda` and several ranks the fine-tune swaps in SyncBatchNorm (the whole
global batch's statistics, as one process). The tests check the swap and its undoing on the CPU; a
fine-tune with it has not run here (no GPU).
"""


if __name__ == "__main__":
    main()
