"""The plan latency table against export-and-predict, on random plans of seven models.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/plan_latency_table.py

For each model (the two bundled ones at their own size; torchvision's ResNet-18, ResNet-50,
MobileNetV2, MobileNetV3-Large and EfficientNet-B0 at 224 px, random weights, 10 classes: latency
only) it builds the build's plan table once (``devices.plan_latency``: one dynamo export of the
original) and draws ``--plans`` random plans: each removable block removed with chance 0.3, each
channel group shrunk with chance 0.5 by a uniform number of its steps, and with chance 0.3 a smaller
input (a uniform size of the resolution lever's, down to half). Each plan's model is built as the build
builds it (``PlanSpace.apply``), exported as the joint greedy exported its plans (TorchScript) and
predicted on each device: that is the reference; the table prices the same plan without exporting.
Reported per model and device: the median and worst relative difference, and the time per plan of
each way. Results are written to ``docs/plan-latency-table.json`` after each model (rerun to resume;
``--redo`` repeats), the table to ``docs/plan-latency-table.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import torchvision

from edgeprune.build.space import plan_prediction
from edgeprune.devices.plan_latency import plan_latency_table
from edgeprune.files import write_json_atomic
from edgeprune.pipeline.blocks import discover, remove_blocks
from edgeprune.pipeline.channels import channel_groups, channel_orders, producers, prune_channels
from edgeprune.pipeline.importance import candidates_for
from edgeprune.pipeline.levers import resolution_steps
from edgeprune.pipeline.models import ModelSpec, load_model

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["default", "mobilenet_v2_fmnist", "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large",
          "efficientnet_b0"]
DEVICES = ["rpi4", "host"]
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/plan_latency_table.py"


def model_of(name: str) -> tuple[torch.nn.Module, tuple[int, int, int, int]]:
    if name in ("default", "mobilenet_v2_fmnist"):
        loaded = load_model(ModelSpec(name=name))
        return loaded.model.eval(), loaded.input_shape
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=10).eval(), (1, 3, 224, 224)


def study(name: str, plans: int, seed: int) -> dict:
    model, shape = model_of(name)
    blocks = discover(model, shape)
    candidates = [b.name for b in candidates_for(blocks, False)]
    groups = channel_groups(model, shape)
    orders = channel_orders(model, groups, shape, "magnitude")
    sizes = resolution_steps(shape[2], max(1, shape[2] // 2), 8)
    tables, built = {}, {}
    for device in DEVICES:
        t = time.perf_counter()
        tables[device] = plan_latency_table(model, (torch.zeros(shape),), device, [b.name for b in blocks], producers(groups))
        built[device] = time.perf_counter() - t
    rng = random.Random(seed)
    rows = []
    for i in range(plans):
        removed = [b for b in candidates if rng.random() < 0.3]
        steps = {g.name: rng.randint(1, g.max_steps) for g in groups if rng.random() < 0.5}
        size = rng.choice(sizes) if sizes and rng.random() < 0.3 else None
        plan_shape = (*shape[:2], size, size) if size else shape
        pruned = prune_channels(model, groups, orders, steps, plan_shape) if steps else model
        if removed:
            pruned = remove_blocks(pruned, removed, blocks, replace_projection=True)
        widths = {g.name: g.kept(steps[g.name]) for g in groups if g.name in steps}
        row = {"blocks": len(removed), "groups": len(steps), "size": size or shape[2]}
        for device in DEVICES:
            t = time.perf_counter()
            ref = plan_prediction(pruned, plan_shape, device).latency_ms
            t_ref = time.perf_counter() - t
            t = time.perf_counter()
            est = tables[device].predict(removed, (), widths, size)
            t_table = time.perf_counter() - t
            row[device] = {"reference_ms": ref, "table_ms": est, "error": est / ref - 1, "reference_s": t_ref,
                           "table_s": t_table}
        rows.append(row)
        print(f"{name} {i + 1}/{plans}: " + ", ".join(f"{d} {row[d]['error']:+.4%}" for d in DEVICES), flush=True)
    summary = {}
    for device in DEVICES:
        errs = [abs(r[device]["error"]) for r in rows]
        summary[device] = {"median_error": statistics.median(errs), "worst_error": max(errs),
                           "within_1pct": sum(e <= 0.01 for e in errs) / len(errs),
                           "base_ms": tables[device].predict(), "table_build_s": built[device],
                           "reference_s_per_plan": statistics.median(r[device]["reference_s"] for r in rows),
                           "table_ms_per_plan": 1e3 * statistics.median(r[device]["table_s"] for r in rows)}
    return {"model": name, "input": list(shape), "removable_blocks": len(candidates), "groups": len(groups),
            "plans": plans, "summary": summary, "rows": rows}


def write_doc(results: dict, path: Path) -> None:
    meta = results["meta"]
    lines = ["# The plan latency table against export-and-predict", "",
             f"Command: `{COMMAND}` ({meta['date']}). Machine: {meta['cpu']}, Python {meta['python']}, "
             f"torch {meta['torch']}, 1 thread.", "",
             "A plan's latency is priced from one export of the original (`devices/plan_latency.py`: each kernel's "
             "cost at the plan's kept widths and input size, a sum of table entries) instead of exporting the plan "
             "and predicting its graph. Each row: random plans of the model (each removable block removed with "
             "chance 0.3, each channel group shrunk with chance 0.5 by a uniform number of its steps, with chance "
             "0.3 a smaller input down to half), the plan's model built as the build builds it, exported "
             "(TorchScript, as the joint greedy exported its plans) and predicted: the reference. Both are the "
             "same profile's predictions, so this measures the table's bookkeeping, not the predictor's error "
             "against a board. *host* is the bundled host profile (NCHWc block 16: kept widths padded to it, and a "
             "convolution reading fewer than 16 channels leaves the blocked layout, as the predictor models it).",
             "", "| model | input | plans | device | unpruned ms | median error | worst error | within 1% | "
             "table per plan | export+predict per plan | table built in |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in MODELS:
        r = results["models"].get(name)
        if r is None:
            continue
        for device in DEVICES:
            s = r["summary"][device]
            lines.append(f"| {name} | {r['input'][2]} px | {r['plans']} | {device} | {s['base_ms']:.2f} | "
                         f"{s['median_error']:.3%} | {s['worst_error']:.3%} | {s['within_1pct']:.0%} | "
                         f"{s['table_ms_per_plan']:.2f} ms | {s['reference_s_per_plan']:.2f} s | "
                         f"{s['table_build_s']:.1f} s |")
    missing = [m for m in MODELS if m not in results["models"]]
    if missing:
        lines += ["", f"**Not run yet:** {', '.join(missing)}. The script resumes where it stopped."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--plans", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "plan-latency-table.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "plan-latency-table.md")
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = json.loads(args.results.read_text()) if args.results.exists() and not args.redo else {"models": {}}
    for name in args.models.split(","):
        if name in results["models"]:
            continue
        results["models"][name] = study(name, args.plans, args.seed)
        results["meta"] = {"date": datetime.date.today().isoformat(), "cpu": _cpu(), "python": platform.python_version(),
                           "torch": torch.__version__}
        write_json_atomic(args.results, results)
        write_doc(results, args.doc)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
