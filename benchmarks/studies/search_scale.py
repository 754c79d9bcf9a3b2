"""What the default joint search costs at 224 px: wall time, measurements and image passes to rpi4 budgets.

    OMP_NUM_THREADS=2 nice -n 5 .venv/bin/python benchmarks/studies/search_scale.py \\
        --runs mobilenet_v2:30,resnet50:100

For each (torchvision model, rpi4 budget in ms) the build's search stage runs in this process on an
ImageFolder of real photos (Fashion-MNIST test images upscaled to random sizes of 160-320 px, RGB JPEG:
``build_224.make_folder``, ``--per-class`` train and val photos per class; 500 of the val photos score plans)
with ``--levers blocks,channels --strategy table`` (the default joint search, alone) at 224 px. The models
have **random weights** (10 classes): the search's cost is structural (rounds x moves x images) and is what
this measures, not the plans' accuracy, which needs a model trained at 224 px. In the same run one evaluation of
the scoring photos (torch, the build's batch size) is timed, so the search's wall time is also given as a
number of such evaluations, which holds on a loaded machine. Results go to ``--results`` after each run
(rerun to resume); the table to ``--doc``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_224 import make_folder  # noqa: E402  (a sibling study script)

from edgeprune.build import stages  # noqa: E402
from edgeprune.build.config import BuildConfig  # noqa: E402
from edgeprune.files import write_json_atomic  # noqa: E402
from edgeprune.pipeline.evaluate import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def one(model: str, budget_ms: float, data: Path, work: Path) -> dict:
    flags = {"model": model, "num_classes": 10, "data": str(data), "device": "rpi4", "levers": ["blocks,channels"],
             "strategies": ["table"], "budget": f"{budget_ms}ms", "out": str(work / f"{model}-{budget_ms:g}"),
             "shortlist": 1}
    say = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)   # noqa: E731
    cfg = BuildConfig.from_flags(flags)
    inputs = stages.load_inputs(cfg, say)
    t = time.perf_counter()
    space = stages.plan_space(inputs, say)
    space_s = time.perf_counter() - t
    t = time.perf_counter()
    evaluate(inputs.loaded.model, inputs.bundle.batches("val", cfg.search.batch_size, indices=inputs.held.score),
             inputs.torch_device)
    eval_s = time.perf_counter() - t
    t = time.perf_counter()
    fit = stages.fit_budget(inputs, space, say)
    search_s = time.perf_counter() - t
    chosen = fit.outcome.fitting[0] if fit.outcome.fitting else None
    return {"model": model, "budget_ms": budget_ms, "unpruned_ms": space.latency([]), "space_s": space_s,
            "search_s": search_s, "evaluation_s": eval_s, "scoring_images": len(inputs.held.score),
            "search_in_evaluations": search_s / eval_s, "reached": chosen is not None,
            "plan_ms": chosen.final_ms if chosen else None, "plan": chosen.removed if chosen else None,
            "moves": len(space.moves(stages.PlanState())), **fit.search_record(),
            "image_passes_in_evaluations": fit.image_passes / len(inputs.held.score)}


def write_doc(results: dict, path: Path) -> None:
    m = results["meta"]
    lines = ["# The joint search at 224 px: what it costs", "",
             f"Command: `{m['command']}` ({m['date']}). Machine: {m['cpu']}, {m['threads']} torch threads, Python "
             f"{m['python']}, torch {m['torch']}; the machine was shared with other work, so the wall times are "
             "loaded ones: *in evaluations* divides each by one evaluation of the 500 scoring photos timed in the "
             "same run.", "",
             "Each row: the build's search stage (`--levers blocks,channels --strategy table`, the default joint "
             "search alone) on a torchvision model with **random weights** (10 classes) at 224 px, on an ImageFolder "
             "of Fashion-MNIST photos upscaled to 160-320 px; the cost is structural (rounds x moves x images), the "
             "plans' accuracy is not measured here. *measured* are whole plans on the 500 scoring photos (BatchNorm "
             "re-estimated on 256 training photos), *screened* moves on 128 (and 128); *image passes* counts every "
             "photo run through the model." + (f" Searched at commit {m['commit']}." if m.get("commit") else ""), "",
             "| model | unpruned rpi4 ms | budget | moves | rounds | measured | screened | image passes | search s | "
             "in evaluations | image passes in evaluations | plan ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"].values():
        j = r["joint"]["table"]
        lines.append(f"| {r['model']} | {r['unpruned_ms']:.1f} | {r['budget_ms']:g} ms | {r['moves']} | {j['rounds']} | "
                     f"{j['measured']} | {j['screened']} | {r['image_passes']:,} | {r['search_s']:.0f} | "
                     f"{r['search_in_evaluations']:.1f} | {r['image_passes_in_evaluations']:.1f} | "
                     + (f"{r['plan_ms']:.1f} |" if r["reached"] else "unreachable |"))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="mobilenet_v2:30,resnet50:100")
    ap.add_argument("--per-class", type=int, default=70)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "search_scale")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "search-scale.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "search-scale.md")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = make_folder(args.workdir / "photos", args.per_class)
    results = json.loads(args.results.read_text()) if args.results.exists() else {"runs": {}}
    for item in args.runs.split(","):
        model, budget = item.split(":")
        key = f"{model}:{float(budget):g}"
        if key in results["runs"]:
            continue
        results["runs"][key] = one(model, float(budget), data, args.workdir)
        results["meta"] = {"date": datetime.date.today().isoformat(), "cpu": _cpu(), "threads": torch.get_num_threads(),
                           "commit": _commit(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "command": f"OMP_NUM_THREADS=2 nice -n 5 .venv/bin/python benchmarks/studies/search_scale.py "
                                      f"--runs {args.runs}"}
        write_json_atomic(args.results, results)
        write_doc(results, args.doc)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
