"""Peak memory of direct-removal scoring before and after values are freed by last use.

Run (the committed table, about 5 minutes on 2 cores):

    nice -n 10 .venv/bin/python benchmarks/studies/scoring_memory.py

Quick check (random weights, tiny; not the table):

    .venv/bin/python benchmarks/studies/scoring_memory.py --models mobilenet_v2 --images 8 --batches 8,4 \
        --size 96 --out /tmp/scoring-memory.md

``removal_accuracy`` (prefix reuse) over every candidate block of torchvision models with random
weights (memory does not depend on the weights) and 10 classes, on random images, each
measurement in a fresh subprocess: the peak resident set (VmHWM) of that process, its resident
set just before scoring (the interpreter, torch, the model and the images), and the wall time.
"before" is the algorithm as it was at commit 2edf1d1 (copied below as ``_before``: one pass keeps
every node's value, then each candidate copies the prefix and keeps every value of its suffix);
"after" is ``edgeprune.pipeline.importance.removal_accuracy`` as it is now. The study checks that
both give bit-identical scores at each batch size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.fx as fx

from edgeprune.benchmarks.ort_runner import cpu_model
from edgeprune.files import write_text_atomic
from edgeprune.pipeline.blocks import analyse, discover
from edgeprune.pipeline.importance import (Score, ScoreContext, _accumulate, _replacement, candidates_for,
                                           removal_accuracy, residual_norm_ratio, trace_with_blocks_as_leaves)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the algorithm before (2edf1d1)

@torch.no_grad()
def _before(model, blocks, batches, ctx):
    """``removal_accuracy``'s prefix-reuse path as of commit 2edf1d1, for this study only."""
    model = model.eval().to(ctx.device)
    names = [b.name for b in blocks]
    stats: dict = {}
    gm = trace_with_blocks_as_leaves(model, names)
    nodes = list(gm.graph.nodes)
    position = {n.target: i for i, n in enumerate(nodes) if n.op == "call_module" and n.target in names}
    replacements = {b.name: _replacement(model, b).to(ctx.device).eval() for b in blocks}
    for x, y in batches:
        interp = fx.Interpreter(gm)
        env = _run_from(interp, nodes, 0, {}, x)
        _accumulate(stats, "", env[nodes[-1]], y)
        for name in names:
            p = position[name]
            prefix = {n: env[n] for n in nodes[:p]}
            node = nodes[p]
            prefix[node] = replacements[name](*interp.map_nodes_to_values(node.args, node))
            out = _run_from(fx.Interpreter(gm), nodes, p + 1, prefix, x)
            _accumulate(stats, name, out[nodes[-1]], y)
    full = stats.pop("")
    per = {k: (v[0] / v[2], v[1] / v[2]) for k, v in stats.items()}
    return (full[0] / full[2], full[1] / full[2]), per


def _run_from(interp, nodes, start, env, x):
    interp.env = dict(env)
    interp.args_iter = iter([x])
    for node in nodes[start:]:
        if node.op == "output":
            interp.env[node] = interp.map_nodes_to_values(node.args[0], node)
        else:
            interp.env[node] = interp.run_node(node)
    return interp.env


@torch.no_grad()
def _norm_ratio_before(model, blocks, batches, ctx):
    """``residual_norm_ratio`` as of commit 2edf1d1: every block's input for every image is kept."""
    model = model.eval().to(ctx.device)
    inputs = {b.name: [] for b in blocks}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: inputs[n].append(i[0].detach())) for n in inputs]
    for x, _ in batches:
        model(x)
    for h in hooks:
        h.remove()
    out = {}
    for b in blocks:
        res = analyse(model.get_submodule(b.name))
        interp = fx.Interpreter(res.graph, garbage_collect_values=False)
        ratios = []
        for x in inputs[b.name]:
            interp.run(x)
            ratios.append(interp.env[res.branch].flatten(1).norm(dim=1)
                          / interp.env[res.shortcut].flatten(1).norm(dim=1).clamp_min(1e-12))
        out[b.name] = Score(b.name, torch.cat(ratios).mean().item())
    return out


def _scores(criterion: str, algo: str):
    if criterion == "direct":
        return _before if algo == "before" else removal_accuracy
    fn = _norm_ratio_before if algo == "before" else residual_norm_ratio
    return lambda *a: sorted((k, v.importance) for k, v in fn(*a).items())


# ---------------------------------------------------------------- one measurement (a fresh process)

def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(arch: str, criterion: str, algo: str, batch: int, images: int, size: int, repeats: int) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    blocks = candidates_for(discover(model, (1, 3, size, size)), False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(images, 3, size, size, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, images, batch)]
    fn = _scores(criterion, algo)
    rss_before = _status_kb("VmRSS")
    walls, peak = [], 0
    for _ in range(repeats):        # the peak is the first run's; the time, the fastest run's
        t0 = time.perf_counter()
        scores = fn(model, blocks, batches, ScoreContext())
        walls.append(time.perf_counter() - t0)
        peak = peak or _status_kb("VmHWM")
    return {"arch": arch, "criterion": criterion, "algo": algo, "batch": batch, "images": images, "size": size,
            "candidates": len(blocks),
            "inputs_mb_per_image": sum(math.prod(b.in_shape[1:]) for b in blocks) * 4 / 2**20,
            "rss_before_mb": rss_before / 1024, "peak_mb": peak / 1024,
            "wall_s": min(walls), "threads": torch.get_num_threads(), "scores": scores}


def measure(arch: str, criterion: str, algo: str, batch: int, images: int, size: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", arch, criterion, algo, str(batch), str(images), str(size),
           str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the table

def report(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    mb_image = 3 * args.size * args.size * 4 / 2**20
    lines = [
        "# Memory of block scoring",
        "",
        "Peak resident memory of direct-removal scoring (`removal_accuracy` with prefix reuse, what "
        "`rank_blocks(..., \"direct\")` and the build's plan search call) over every removable "
        "(identity-shortcut) block, before and after the change that drops each value after its last reader "
        "and runs each candidate's suffix on only the values it reads (`pipeline/importance.py`); and of the "
        "`norm-ratio` proxy (a default proxy of `build`), before and after it takes each block's ratios as its "
        f"batch runs. torchvision models with random weights (memory does not depend on them), 10 classes, "
        f"{args.images} random images at {args.size}x{args.size} (batches of {args.batches.replace(',', ' and ')} "
        "images), each measurement in a fresh process. *Peak* is that process's VmHWM during the first run; "
        "*before scoring* is its resident set just before the call (Python, torch, the model and the images), "
        "so *scoring added* is what scoring itself took. *before* is the code at commit 2edf1d1, reproduced in "
        "the study script; *after* is the current code. Before and after give bit-identical scores at every "
        f"batch size (the study checks). Wall time: the fastest of {args.repeats} runs, on cores shared with "
        f"other work (load average {args.load[0]:.1f} at the start, {args.load[1]:.1f} at the end), so only a "
        "rough guide.",
        "",
        "| model | blocks | criterion | batch | algorithm | peak MiB | before scoring MiB | scoring added MiB | wall s |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['candidates']} | {r['criterion']} | {r['batch']} | {r['algo']} | "
                     f"{r['peak_mb']:.0f} | {r['rss_before_mb']:.0f} | {r['peak_mb'] - r['rss_before_mb']:.0f} | "
                     f"{r['wall_s']:.1f} |")
    nr = {r["arch"]: r for r in rows if r["criterion"] == "norm-ratio" and r["algo"] == "before"}
    lines += [
        "",
        "What it shows:",
        "",
        "- **Direct removal, before:** one pass kept every node's value of the whole graph (the blocks are "
        "leaves, but everything between them is traced node by node: MobileNetV2's 112x112 stem and its "
        "non-residual inverted-residual layers), each candidate then kept every value of its suffix, and the "
        "previous batch's values were still held while the next batch's pass ran. Memory grew with the images "
        "in a batch times the size of the graph: at the build's old 250-image batches, about 250/64 = 4 times "
        "what the 64-image batch adds above ("
        + ", ".join(f"{r['arch']} about {4 * (r['peak_mb'] - r['rss_before_mb']) / 1024:.0f} GiB" for r in rows
                    if r["criterion"] == "direct" and r["algo"] == "before" and r["batch"] == r["images"])
        + "; an extrapolation, not measured here; a user's build of MobileNetV2 was stopped by the kernel at "
        "21.4 GB).",
        "- **Direct removal, after:** at a block, only what the graph from that block on reads from before it "
        "is held (in a chain, the block's input), plus the live values of the suffix being run: about two "
        "forward passes of one batch, whatever the number of blocks. The batch size is the one knob "
        "(`--batch-size`; default "
        f"{args.default_batch}, `EVAL_BATCH_SIZE` in `pipeline/evaluate.py`).",
        "- **norm-ratio, before:** every block's input was kept for every scoring image before any ratio was "
        "taken, so memory grew with the number of scoring images, whatever the batch: "
        + ", ".join(f"{a}: {r['inputs_mb_per_image']:.1f} MiB an image, {r['inputs_mb_per_image'] * 500 / 1024:.1f} GiB "
                    "for the build's default 500 scoring images" for a, r in nr.items())
        + ". **After:** one batch at a time.",
        f"- Whatever the criterion, the scoring images themselves stay in memory ({mb_image:.2f} MiB an image "
        f"at {args.size}x{args.size}, {mb_image * 500 / 1024:.2f} GiB for 500).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {rows[0]['threads']} torch threads. "
        f"Date: {datetime.date.today().isoformat()}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,resnet50")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="64,32", help="batch sizes; the first is the old (whole set in one batch)")
    ap.add_argument("--default-batch", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "docs" / "scoring-memory.md"))
    ap.add_argument("--repeats", type=int, default=2, help="runs per measurement; the wall time is the fastest")
    ap.add_argument("--norm-ratio", default="resnet50", help="models to measure norm-ratio on too (at the last batch)")
    ap.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        arch, criterion, algo, batch, images, size, repeats = args.worker
        print(json.dumps(worker(arch, criterion, algo, int(batch), int(images), int(size), int(repeats))))
        return
    rows, load = [], [os.getloadavg()[0]]
    batches = [int(b) for b in args.batches.split(",")]
    models = args.models.split(",")
    runs = [(a, "direct", b) for a in models for b in batches]
    runs += [(a, "norm-ratio", batches[-1]) for a in args.norm_ratio.split(",") if a in models]
    for arch, criterion, batch in runs:
        pair = {}
        for algo in ("before", "after"):
            r = measure(arch, criterion, algo, batch, args.images, args.size, args.repeats)
            print(f"{arch} {criterion} batch {batch} {algo}: peak {r['peak_mb']:.0f} MB "
                  f"(before scoring {r['rss_before_mb']:.0f} MB), {r['wall_s']:.1f} s", flush=True)
            pair[algo] = r
            rows.append(r)
        if pair["before"]["scores"] != pair["after"]["scores"]:
            raise SystemExit(f"{arch} {criterion} batch {batch}: before and after give different scores")
    load.append(os.getloadavg()[0])
    args.load = load
    command = "python benchmarks/studies/scoring_memory.py" + "".join(
        f" {a}" for a in sys.argv[1:] if a)
    write_text_atomic(args.out, report(rows, args, command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
