"""Blocks only vs channels only (Torch-Pruning, as a user would run it) vs the joint search, at rpi4 budgets.

    python benchmarks/studies/levers_benchmark.py --model default --seeds 0,1,2
    python benchmarks/studies/levers_benchmark.py --model mobilenet_v2_fmnist --seeds 0,1,2

For one model, at budgets of 75%, 50% and 35% of its unpruned rpi4 prediction:

* ``blocks``: the build's block strategies (``--levers blocks``), the best-scored plan;
* ``channels-tp``: Torch-Pruning's global magnitude pruning (``MagnitudePruner``, filter L2 norm,
  ``global_pruning=True``, ``round_to`` = the build's channel multiple, the classifier ignored) at the
  smallest pruning ratio whose exported graph the predictor puts within the budget (bisection);
* ``joint``: the joint greedy over blocks and channels (``--levers blocks,channels --strategy joint-greedy``; rows
  searched before the table search existed ran the block strategies beside it, whose plans never won);
* ``table``: the table search over blocks and channels (``--strategy table`` alone: the default joint search),
  in its own build folder so it reuses none of the others' measurements;
* ``joint-gradual``: the joint plan again, its channels removed over the fine-tune by Zhu & Gupta's
  cubic schedule (``--gradual``) instead of at once before it.

Every plan gets the same fine-tune (the library's ``finetune``, ``--finetune-epochs`` of the full
Fashion-MNIST training set, one run per seed), is exported with the artifact's exporter, and its
top-1 is onnxruntime's output of that file on the held-out test images (those that took no part in
scoring or choosing). The predicted rpi4 latency is that of the exported file. Each (budget, method,
seed) result is written to ``--results`` as it is done, so the script resumes; the doc is rewritten
from the results at the end (``--doc``).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from edgeprune.build import stages
from edgeprune.build.config import BuildConfig
from edgeprune.build.space import plan_prediction
from edgeprune.devices.predictor import predict
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.exporters.runtime import run, session
from edgeprune.files import write_json_atomic
from edgeprune.pipeline.channels import output_layers
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.levers import PlanState

FRACTIONS = (0.75, 0.5, 0.35)
METHODS = ("blocks", "channels-tp", "joint", "joint-gradual", "table")
STRATEGIES = {"blocks": ["latency-greedy", "accuracy-greedy", "knapsack"],
              "joint": ["joint-greedy"], "table": ["table"]}
SEEDS = (0, 1, 2)


def predicted_ms(model: torch.nn.Module, shape, device: str) -> float:
    """The device prediction of ``model``'s graph, exported as the joint search exports its plans."""
    return plan_prediction(model, shape, device).latency_ms


def tp_prune(model, shape, ratio: float, multiple: int) -> torch.nn.Module:
    """A copy of ``model`` after Torch-Pruning's global magnitude pruning at ``ratio``."""
    m = copy.deepcopy(model).eval()
    names = {mod: n for n, mod in model.named_modules()}
    ignored = [m.get_submodule(names[i]) for i in output_layers(model, shape)]
    pruner = tp.pruner.MagnitudePruner(m, torch.zeros(shape), importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       global_pruning=True, pruning_ratio=ratio, ignored_layers=ignored,
                                       round_to=multiple)
    pruner.step()
    return m.eval()


def tp_global_magnitude(model, shape, budget_ms, device, multiple) -> tuple[float | None, float]:
    """The smallest global pruning ratio (bisection, 8 steps) whose exported graph meets the budget, and its ms;
    (None, the fastest ms of a sweep) when no ratio meets it."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):
        mid = (lo + hi) / 2
        ms = predicted_ms(tp_prune(model, shape, mid, multiple), shape, device)
        if ms <= budget_ms:
            hi, best = mid, (mid, ms)
        else:
            lo = mid
    if best is None:     # latency need not fall with the ratio (round_to): the fastest of a coarse sweep
        sweep = {r: predicted_ms(tp_prune(model, shape, r, multiple), shape, device) for r in
                 (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)}
        r, ms = min(sweep.items(), key=lambda kv: kv[1])
        return (r, ms) if ms <= budget_ms else (None, ms)
    return best


def ort_top1(model, shape, bundle, indices, folder: Path) -> tuple[float, float]:
    path = folder / "model.onnx"
    export_onnx(model.cpu().eval(), shape, path, ExportConfig())
    sess = session(path, threads=1)
    correct = 0
    for x, y in bundle.batches("val", 256, indices=indices):
        logits = np.concatenate(run(sess, x.numpy()))
        correct += int((logits.argmax(1) == y.numpy()).sum())
    return correct / len(indices), predict(path, "rpi4").latency_ms


def breakdown(tokens: list[str]) -> dict:
    s = PlanState.from_tokens(tokens)
    return {"blocks_removed": len(s.blocks), "channel_groups": len(s.channels),
            "channel_steps": sum(n for _, n in s.channels), "resolution": s.resolution, "tokens": tokens}


def _mean(entry: dict | None) -> float | None:
    tops = [v["ort_top1"] for v in (entry or {}).get("seeds", {}).values()]
    return sum(tops) / len(tops) if tops else None


def summary(r: dict) -> list[str]:
    """Per budget: the joint plan against the best single lever, and gradual against one-shot (means over
    the seeds run so far; the seeds run differ between rows until every row has all three)."""
    out = []
    for frac in FRACTIONS:
        runs = {m: r["runs"].get(f"{frac}/{m}") for m in METHODS}
        joint, gradual = _mean(runs["joint"]), _mean(runs["joint-gradual"])
        singles = {m: _mean(runs[m]) for m in ("blocks", "channels-tp")}
        singles = {m: v for m, v in singles.items() if v is not None}
        if joint is None:
            continue
        parts = []
        if singles:
            best = max(singles, key=singles.get)
            parts.append(f"joint {joint:.2%} against the best single lever ({best}) {singles[best]:.2%}: "
                         f"{100 * (joint - singles[best]):+.2f} points")
        else:
            parts.append(f"joint {joint:.2%}; neither single lever reaches it")
        if gradual is not None:
            parts.append(f"gradual {gradual:.2%} against one-shot {joint:.2%}: {100 * (gradual - joint):+.2f} points")
        table = _mean(runs["table"])
        if table is not None:
            seeds = sorted(set(runs["table"]["seeds"]) & set(runs["joint"]["seeds"]))
            paired = sum(runs["table"]["seeds"][s]["ort_top1"] - runs["joint"]["seeds"][s]["ort_top1"]
                         for s in seeds) / max(1, len(seeds))
            parts.append(f"table search {table:.2%} against the joint greedy: {100 * paired:+.2f} points on the same "
                         f"seed{'s' * (len(seeds) > 1)} ({', '.join(seeds)}); against the best single lever "
                         f"{100 * (table - max(singles.values())):+.2f}" if singles else
                         f"table search {table:.2%} against the joint greedy: {100 * paired:+.2f} points on the same "
                         f"seed{'s' * (len(seeds) > 1)} ({', '.join(seeds)})")
        out.append(f"- {frac:.0%}: " + "; ".join(parts))
    return out


def write_doc(results_files: list[Path], doc: Path) -> None:
    """The benchmark's doc from the results of every model run so far."""
    lines = ["# Levers benchmark: blocks, channels (Torch-Pruning) and the joint search at rpi4 budgets", "",
             "Written by `benchmarks/studies/levers_benchmark.py` from its results "
             f"({', '.join(f'`{f}`' for f in results_files)}). Top-1 is onnxruntime's output of the exported, "
             "fine-tuned model on the held-out test images (none scored a plan); ms is the rpi4 prediction of "
             "that file (the predictor's band is about ±31%: [devices.md](devices.md)). *search s* is the wall time of the "
             "run that completed the plan (a search resumed from its cache after an interruption took longer in "
             "all); the joint search's later budgets reuse the earlier ones' measurements. *joint-gradual* is the "
             "joint plan fine-tuned with its channels removed over the fine-tune (Zhu & Gupta's cubic schedule, "
             "`--gradual`): its search s is 0. The joint plans here were searched before commit fe6a035, which "
             "measured the unpruned and block-only plans without re-estimating BatchNorm (every plan with "
             "channels was re-estimated): re-estimation alone moves top-1 on the 500 scoring images by up to "
             "+0.8 points ([channel-criteria.md](channel-criteria.md)), so the first channel move of each "
             "search had that much in hand; the search now re-estimates every plan. The MobileNetV2 joint-gradual rows "
             "were rerun after commit 6970fec: before it, a channel group named by a layer inside a removed block "
             "(a residual stage's) was dropped from the gradual fine-tune, so those models shipped less pruned "
             "(17.01 ms against 16.63 ms at 75%). *table* rows are the table search (`--strategy table`, the default "
             "joint search since it came) searched afresh in a build folder of their own, on an AMD EPYC shared with "
             "other benchmark processes; the joint and other rows' search s were recorded earlier, on other "
             "machines and loads, so the search times of *table* and *joint* rows are not comparable; the side-by-side "
             "figure is below the tables where one was run.", ""]
    for f in results_files:
        r = json.loads(f.read_text())
        lines += [f"## {r['model']}", "",
                  f"Unpruned rpi4 prediction {r['base_rpi4_ms']:.2f} ms; {r['score_images']} scoring images, "
                  f"{r['held_out_images']} held-out test images; fine-tune {r['finetune_epochs']:g} epoch of the "
                  f"full training set per seed (SGD, the library's defaults); channel multiple {r['multiple']}; "
                  f"torch {r['torch']}, 1 thread, on {r['host']}.", "",
                  "| budget | method | rpi4 ms | plan | top-1 per seed | mean | search s | fine-tune s |",
                  "|---|---|---:|---|---|---:|---:|---:|"]
        order = lambda key: (-float(key.split("/")[0]), METHODS.index(key.split("/")[1]))   # noqa: E731
        for key in sorted(r["runs"], key=order):
            entry = r["runs"][key]
            frac, method = key.split("/")
            plan, seeds = entry["plan"], entry["seeds"]
            if plan.get("unreachable"):
                lines.append(f"| {float(frac):.0%} | {method} | - | unreachable: "
                             + ", ".join(f"{k} {v:.1f} ms" for k, v in plan["reach"].items()) + " | | | | |")
                continue
            what = (f"global ratio {plan['pruning_ratio']:.3f}" if method == "channels-tp" else
                    f"{plan['blocks_removed']} blocks, {plan['channel_groups']} groups / {plan['channel_steps']} steps")
            tops = [v["ort_top1"] for v in seeds.values()]
            ms = next(iter(seeds.values()))["rpi4_ms"] if seeds else plan.get("final_ms") or plan["planned_ms"]
            ft = sum(v["finetune_s"] for v in seeds.values()) / max(1, len(seeds))
            lines.append(f"| {float(frac):.0%} | {method} | {ms:.2f} | {what} | "
                         f"{', '.join(f'{t:.2%}' for t in tops) or '-'} | "
                         f"{(sum(tops) / len(tops)) if tops else float('nan'):.2%} | {plan['search_s']:.0f} | {ft:.0f} |")
        lines += ["", *summary(r)]
        for sbs in r.get("side_by_side", []):     # search times of both searches measured in one run of the machine
            lines += ["", f"**Side by side** ({sbs['date']}, {sbs['machine']}): at {sbs['fraction']:.0%} the table search "
                          f"took {sbs['table_s']:.0f} s ({sbs['table_evaluations']} accuracy measurements) and the joint "
                          f"greedy {sbs['joint_s']:.0f} s ({sbs['joint_evaluations']}), "
                          f"{sbs['table_s'] / sbs['joint_s']:.2f}x, each in a fresh build folder, started together and run "
                          f"concurrently on the same machine ({sbs['note']})."]
        missing = [f"{frac:.0%} {m} seed {seed}" for frac in FRACTIONS for m in METHODS for seed in SEEDS
                   if str(seed) not in r["runs"].get(f"{frac}/{m}", {}).get("seeds", {})
                   and not r["runs"].get(f"{frac}/{m}", {}).get("plan", {}).get("unreachable")]
        if missing:
            lines += ["", f"**Not run yet** ({len(missing)} of {len(FRACTIONS) * len(METHODS) * len(SEEDS)}): "
                      + ", ".join(missing) + ". The script resumes where it stopped."]
        lines.append("")
    doc.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--finetune-epochs", type=float, default=0.25)
    ap.add_argument("--score-images", type=int, default=500)
    ap.add_argument("--workdir", default="runs/levers")
    ap.add_argument("--results", default=None)
    ap.add_argument("--doc", default="docs/levers-benchmark.md")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the doc from the results files and stop")
    args = ap.parse_args()
    if args.doc_only:
        write_doc(sorted(Path("docs").glob("levers-benchmark-*.json")), Path(args.doc))
        return
    torch.set_num_threads(1)
    work = Path(args.workdir) / args.model
    work.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results or f"docs/levers-benchmark-{args.model}.json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    say = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)   # noqa: E731

    def build_cfg(levers: str, budget_ms: float = 1000.0, method: str = "joint") -> BuildConfig:
        return BuildConfig.from_flags({"model": args.model, "data": args.data, "levers": [levers],
                                       "score_images": args.score_images, "shortlist": 1,
                                       "strategies": STRATEGIES.get(method, STRATEGIES["joint"]),
                                       "budget": f"{budget_ms:.4f}ms",
                                       "out": str(work / ("build-table" if method == "table" else "build"))})

    cfg = build_cfg("blocks,channels")
    inputs = stages.load_inputs(cfg, say)
    space = stages.plan_space(inputs, say)
    base_ms = space.latency([])
    results.update(model=args.model, base_rpi4_ms=base_ms, host=platform.processor() or platform.machine(),
                   torch=torch.__version__, finetune_epochs=args.finetune_epochs, score_images=args.score_images,
                   held_out_images=len(inputs.held.final), multiple=cfg.search.channel_multiple)
    for frac in [float(f) for f in args.fractions.split(",")]:
        budget = frac * base_ms
        for method in args.methods.split(","):
            plan_key = f"{frac}/{method}"
            plan = results["runs"].get(plan_key, {}).get("plan")
            if plan is None:
                t0 = time.time()
                if method == "joint-gradual":      # the joint plan, fine-tuned another way
                    joint = results["runs"].get(f"{frac}/joint", {}).get("plan")
                    if joint is None:
                        raise SystemExit(f"{frac:.0%} joint-gradual needs the joint plan: run --methods joint first")
                    plan = {**joint, "search_s": 0.0}
                elif method == "channels-tp":
                    ratio, ms = tp_global_magnitude(inputs.loaded.model, inputs.loaded.input_shape, budget,
                                                       "rpi4", cfg.search.channel_multiple)
                    plan = ({"pruning_ratio": ratio, "planned_ms": ms} if ratio is not None else
                            {"unreachable": True, "reach": {"fastest swept ratio": ms}})
                else:
                    inputs.cfg = build_cfg("blocks" if method == "blocks" else "blocks,channels", budget, method)
                    if method == "table":       # its own cache: none of the other searches' measurements
                        own = work / "build-table" / "cache" / inputs.cache.folder.name
                        inputs.cache = stages.BuildCache(own, say)
                    sp = stages.plan_space(inputs, say) if method == "blocks" else space
                    fit = stages.fit_budget(inputs, sp, say)
                    if not fit.outcome.fitting:
                        plan = {"unreachable": True, "reach": fit.reach}
                    else:
                        chosen = fit.outcome.fitting[0]
                        plan = {"planned_ms": chosen.latency_ms, "final_ms": chosen.final_ms,
                                "scoring_top1": chosen.top1, "search_cost": fit.search_record(),
                                **breakdown(chosen.removed)}
                plan.setdefault("search_s", time.time() - t0)
                results["runs"][plan_key] = {"plan": plan, "seeds": {}}
                write_json_atomic(results_path, results, indent=1)
                say(f"{plan_key}: {plan}")
            if plan.get("unreachable"):
                continue
            for seed in [int(s) for s in args.seeds.split(",")]:
                if str(seed) in results["runs"][plan_key]["seeds"]:
                    continue
                masks = None
                if method == "channels-tp":      # deterministic: the same ratio gives the same model
                    model = tp_prune(inputs.loaded.model, inputs.loaded.input_shape, plan["pruning_ratio"],
                                     cfg.search.channel_multiple)
                elif method == "joint-gradual":
                    model, masks = space.gradual(plan["tokens"])
                else:
                    model = space.model_for(plan["tokens"], torch.device("cpu"))
                t0 = time.time()
                ft = FinetuneConfig(epochs=args.finetune_epochs, seed=seed)
                bundle = inputs.bundle
                finetune(model, lambda ep: bundle.batches("train", ft.batch_size, shuffle=True, seed=seed + ep),
                         len(bundle.y_train), ft, progress=None, after_step=masks.after_step if masks else None)
                if masks is not None:
                    model = space.finish_gradual(model, masks, plan["tokens"])
                with tempfile.TemporaryDirectory() as tmp:
                    top1, ms = ort_top1(model, inputs.loaded.input_shape, bundle, inputs.held.final, Path(tmp))
                results["runs"][plan_key]["seeds"][str(seed)] = {"ort_top1": top1, "rpi4_ms": ms,
                                                                 "finetune_s": time.time() - t0}
                write_json_atomic(results_path, results, indent=1)
                say(f"{plan_key} seed {seed}: top-1 {top1:.4f}, {ms:.2f} ms")
    write_doc(sorted(Path("docs").glob("levers-benchmark-*.json")), Path(args.doc))
    say("done")


if __name__ == "__main__":
    main()
