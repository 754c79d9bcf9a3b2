"""Latency-budgeted plans compared: latency-aware search vs the seed's order vs proxies vs random.

Run (the committed figures):

    nice -n 5 .venv/bin/python benchmarks/studies/budget_plans.py

Dry run on random weights with tiny settings (minutes, not the figures):

    .venv/bin/python benchmarks/studies/budget_plans.py --model cifar_resnet56 --budgets 0.9,0.6 --score-images 100 \
        --final-images 200 --finetune-steps 2 --random-seeds 0 --build-args "--finetune-epochs 0.01 --bench-runs 5" \
        --out /tmp/budget-plans.md --plot /tmp/budget-plans.png --cache /tmp/budget-plans.json

For each budget (a fraction of the unpruned model's latency on ``--device`` predicted by the
block table of ``edgeprune.devices.block_latency``), this script builds the block-removal plans that
``edgeprune build`` would consider and the alternatives it should beat, then gives every plan
the same fine-tune and measures top-1 on images no plan was chosen on:

* ``latency-greedy``, ``accuracy-greedy`` (the seed's order) and ``knapsack``: one call of
  ``edgeprune.pipeline.plan.search`` with an ``AccuracyOracle`` on the scoring images and the
  table's ``predict_without`` as the latency model, exactly as ``edgeprune.build`` wires them.
* the build's choice: ``edgeprune.pipeline.select`` as the build calls it: the strategies'
  plans and the build's proxy plans short-listed (``shortlist``), each fine-tuned, and
  ``choose`` takes the lowest loss on the scoring images after fine-tune. (``search``'s own
  winner, the best before fine-tune, is the row of ``--select scored``.)
* proxy rankings (residual-branch norm ratio, BatchNorm gamma, weight L1, from
  ``rank_blocks``): remove blocks in the proxy's order until the predicted latency meets the
  budget; the proxy kept is the one with the best top-1 on the scoring images (the only
  images a plan may be chosen on).
* random orders (several seeds), removed until the budget is met.

Plans are scored and chosen on the first ``--score-images`` validation images; top-1 before and
after fine-tune is measured on the rest (``split_val``). It also times the README's build
command (``edgeprune build --device rpi4 --budget 15ms``) from a clean out folder.

Every search, evaluation and fine-tune result is cached in a JSON file under runs/ as soon as
it is computed, keyed by the configuration, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from edgeprune.devices.block_latency import block_latency_table
from edgeprune.devices.profiles import load_profile
from edgeprune.pipeline.blocks import discover, remove_blocks
from edgeprune.pipeline.data import DataSpec, load_data
from edgeprune.pipeline.evaluate import evaluate, resolve_device
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.importance import ScoreContext, candidates_for
from edgeprune.pipeline.models import ModelSpec, load_model
from edgeprune.pipeline.plan import AccuracyOracle, Plan, search
from edgeprune.pipeline.prune import rank_blocks, split_val
from edgeprune.pipeline.select import proxy_plans, shortlist, until_budget
from edgeprune.files import sha256_json, write_text_atomic
from edgeprune.benchmarks.ort_runner import cpu_model
from results_cache import ResultsCache, data_digest
from edgeprune.progress import set_enabled
from budget_report import BUILD, PROXIES, STRATEGIES, plan_key, plot, report

FT_ORDER = ("shortlist", "latency-greedy", "accuracy-greedy", "knapsack", "best proxy", "random", "proxy")  # most important first
NOT_FINETUNED = ("proxy",)   # proxies not kept: top-1 before fine-tune only


# ---------------------------------------------------------------- cache

# ---------------------------------------------------------------- the experiment

def run(args: argparse.Namespace) -> dict:
    set_enabled(args.progress)
    device = resolve_device(args.accelerator)
    profile = load_profile(args.device)
    loaded = load_model(ModelSpec(args.model, weights=args.weights, trust_code=True))   # named on this command line
    bundle = load_data(DataSpec(args.data), loaded.input_shape, loaded.num_classes)
    held = split_val(bundle, args.score_images)
    final_idx = held.final[: args.final_images] if args.final_images else held.final
    blocks = discover(loaded.model, loaded.input_shape)
    cands = [b.name for b in candidates_for(blocks, replace_projection=False)]
    # the same fine-tune as `edgeprune build` (FinetuneConfig from its flags, shuffled with seed + epoch)
    ft = FinetuneConfig(epochs=args.finetune_epochs, steps=args.finetune_steps, lr=args.lr, seed=args.seed)
    config = {"model": args.model, "weights": loaded.source.get("weights"),
              "weights_sha256": loaded.source.get("weights_sha256"), "data": args.data,
              "data_sha": data_digest(bundle), "device": profile.name, "budgets": args.budgets,
              "score_images": len(held.score), "final_images": len(final_idx), "shared": held.shared,
              "random_seeds": args.random_seeds, "finetune": ft.to_dict(), "seed": args.seed,
              "build_args": args.build_args, "build_budget": args.build_budget, "version": 2}
    digest = sha256_json(config, 10)
    cache_path = Path(args.cache) if args.cache else Path("runs/budget_plans") / f"{args.model}-{digest}.json"
    cache = ResultsCache(cache_path, config, {"memo": {}, "rankings": {}, "budgets": {}, "final": {}, "build": None})
    data = cache.data
    print(f"{args.model}: {len(blocks)} blocks, {len(cands)} identity candidates; planning on {len(held.score)} "
          f"images, final top-1 on {len(final_idx)}; torch threads {torch.get_num_threads()}; cache {cache_path}",
          flush=True)

    # the latency model, exactly as edgeprune.build builds it
    table = cache.timed("latency table", lambda: block_latency_table(
        loaded.model.cpu().eval(), (torch.zeros(loaded.input_shape),), profile, [b.name for b in blocks]))
    latency = table.predict_without
    data["base_ms"] = table.base_ms
    data["floor_ms"] = latency(cands)
    data["block_ms"] = table.block_ms()
    budgets = {f"{f:g}": f * table.base_ms for f in args.budgets}
    print(f"{profile.name}: unpruned {table.base_ms:.2f} ms predicted, all candidates removed "
          f"{data['floor_ms']:.2f} ms; budgets " + ", ".join(f"{k}: {v:.2f} ms" for k, v in budgets.items()),
          flush=True)

    # 0. the default build's wall time, from a clean out folder
    if data["build"] is None and not args.skip_build:
        data["build"] = time_build(args, args.build_budget)
        cache.save()

    score_batches = list(bundle.batches("val", args.batch_size, indices=held.score))
    final_batches = list(bundle.batches("val", args.batch_size, indices=final_idx))
    ctx = ScoreContext(device, args.seed, False)
    oracle = AccuracyOracle(loaded.model, blocks, score_batches, ctx, data["memo"], on_update=cache.save)

    # 1. proxy and random orders (independent of the budget)
    for crit in PROXIES:
        if crit not in data["rankings"]:
            r = cache.timed(f"rank {crit}", lambda: rank_blocks(
                loaded.model, [b for b in blocks if b.name in cands], score_batches, ctx, crit, "oneshot"))
            data["rankings"][crit] = r.order
            cache.save()
    for seed in args.random_seeds:
        order = list(cands)
        random.Random(seed).shuffle(order)
        data["rankings"][f"random:{seed}"] = order

    # 2. plans per budget (loosest first: the oracle's memo carries over)
    for name, budget in sorted(budgets.items(), key=lambda kv: -kv[1]):
        t = time.perf_counter()
        result = cache.timed("search", lambda: search(oracle, latency, cands, budget, STRATEGIES))
        entry = {"budget_ms": budget, "winner": result.winner, "reachable": result.reachable,
                 "considered": [p.to_dict() for p in result.considered], "plans": {}}
        for s, p in result.best.items():
            entry["plans"][s] = p.to_dict()
        for label in [f"proxy:{c}" for c in PROXIES] + [f"random:{s}" for s in args.random_seeds]:
            removed = until_budget(data["rankings"][label.removeprefix("proxy:")], latency, budget)
            top1, loss = cache.timed("score plans", lambda: oracle(removed))
            entry["plans"][label] = Plan(label, removed, latency(removed), top1, loss).to_dict()
        entry["best_proxy"] = max((f"proxy:{c}" for c in PROXIES),
                                  key=lambda k: (entry["plans"][k]["top1"], -entry["plans"][k]["loss"]))
        # the build's short list, from the same calls as edgeprune.build
        pool = [*result.best.values(), *proxy_plans({c: data["rankings"][c] for c in BUILD.search.proxies}, latency,
                                                    budget, oracle)]
        entry["shortlist"] = [c.to_dict() for c in shortlist(pool, BUILD.search.shortlist)]
        data["budgets"][name] = entry
        cache.save()
        print(f"budget {name} ({budget:.2f} ms): winner {result.winner}; " + "; ".join(
            f"{k} -{len(p['removed'])} {p['latency_ms']:.2f} ms {p['top1']:.1%}" for k, p in entry["plans"].items())
            + f" ({time.perf_counter() - t:.0f}s)", flush=True)

    # 3. top-1 on the held-out images before and after the same fine-tune, once per distinct plan
    todo: dict[str, tuple[list[str], bool]] = {plan_key([]): ([], False)}   # plan -> (removed, fine-tune?)
    for group in FT_ORDER:
        for entry in data["budgets"].values():
            if group == "shortlist":
                for c in entry["shortlist"]:
                    pk = plan_key(c["removed"])
                    if pk not in todo:
                        todo[pk] = (c["removed"], bool(c["removed"]) and ft_enabled(ft))
                continue
            for label, p in entry["plans"].items():
                g = ("best proxy" if label == entry["best_proxy"] else "proxy") if label.startswith("proxy:") else \
                    ("random" if label.startswith("random:") else label)
                pk = plan_key(p["removed"])
                if g == group and pk not in todo:
                    todo[pk] = (p["removed"], bool(p["removed"]) and ft_enabled(ft) and group not in NOT_FINETUNED)
    print(f"{len(todo)} distinct plans to evaluate, {sum(f for _, f in todo.values())} to fine-tune", flush=True)
    train = lambda ep: bundle.batches("train", ft.batch_size, shuffle=True, seed=args.seed + ep)  # noqa: E731
    for i, (pk, (removed, tune)) in enumerate(todo.items(), 1):
        res = data["final"].setdefault(pk, {})
        if "before" in res and ("after" in res or not tune):
            continue
        t = time.perf_counter()
        model = remove_blocks(loaded.model, removed, blocks, replace_projection=True) if removed else loaded.model
        if "before" not in res:
            res["before"] = cache.timed("evaluate", lambda: evaluate(model, final_batches, device).top1)
            cache.save()
        if tune and "after" not in res:
            t_ft = time.perf_counter()
            cache.timed("finetune", lambda: finetune(model, train, len(bundle.y_train), ft, None, device,
                                                     progress="fine-tune" if args.progress else None))
            res["finetune_s"] = time.perf_counter() - t_ft
            res["after"] = cache.timed("evaluate", lambda: evaluate(model, final_batches, device).top1)
            rs = cache.timed("evaluate", lambda: evaluate(model, score_batches, device))
            res["after_score"], res["after_score_loss"] = rs.top1, rs.loss    # what the build chooses on
            cache.save()
        print(f"[{i}/{len(todo)}] -{len(removed)} blocks: {res['before']:.2%}"
              + (f" -> {res['after']:.2%} fine-tuned" if "after" in res else "")
              + f" ({time.perf_counter() - t:.0f}s)", flush=True)

    data["env"] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                   "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                   "model_source": loaded.source, "table_source": table.source,
                   "expected_error": table.expected_error,
                   "blocks": {b.name: {"stage": b.stage, "kind": b.kind} for b in blocks}}
    cache.save()
    return data


def ft_enabled(ft: FinetuneConfig) -> bool:
    return (ft.steps if ft.steps is not None else ft.epochs) > 0


def time_build(args: argparse.Namespace, budget_ms: int) -> dict:
    """Run the README's default build command from a clean out folder; wall and CPU time, exit, output."""
    out = Path(args.build_out)
    if out.exists():
        shutil.rmtree(out)
    exe = Path(sys.executable).with_name("edgeprune")
    cmd = [str(exe), "build", "--device", args.device, "--budget", f"{budget_ms}ms", "--out", str(out)]
    if args.model != "default":
        cmd += ["--model", args.model]
    cmd += args.build_args.split()
    shown = " ".join(["edgeprune", *cmd[1:]])
    print(f"timing: {shown}", flush=True)
    load_before = os.getloadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    stamped: list[tuple[float, str]] = []      # (seconds since start, line): where the time goes
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env={**os.environ, "COLUMNS": "110", "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:
            stamped.append((time.perf_counter() - t, line.rstrip("\n")))
            print(f"  [{stamped[-1][0]:6.1f}s] {stamped[-1][1]}", flush=True)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    print(f"build: exit {proc.returncode}, wall {wall:.0f}s, CPU {cpu:.0f}s", flush=True)
    summary = None
    report = out / "artifact" / "manifest.json"
    if report.is_file():
        try:
            summary = json.loads(report.read_text()).get("build")
        except json.JSONDecodeError:
            summary = None
    return {"command": shown, "budget_ms": budget_ms, "exit_code": proc.returncode, "wall_s": wall, "cpu_s": cpu,
            "output": "\n".join(line for _, line in stamped), "stamped": stamped, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "nice": os.nice(0), "cores": os.cpu_count(), "manifest_build": summary}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="model spec (default: the bundled ResNet-56)")
    p.add_argument("--weights", default=None)
    p.add_argument("--data", default="default")
    p.add_argument("--device", default="rpi4", help="device profile whose predicted latency the budgets bound")
    p.add_argument("--budgets", type=lambda s: [float(v) for v in s.split(",")], default=[0.9, 0.75, 0.6, 0.5],
                   help="fractions of the unpruned predicted latency")
    p.add_argument("--score-images", type=int, default=500)
    p.add_argument("--final-images", type=int, default=0, help="cap the held-out set (0: all the rest)")
    p.add_argument("--random-seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--finetune-steps", type=int, default=None, help="overrides --finetune-epochs")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250, help="batch for scoring and evaluation (as the build)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: the machine is shared)")
    p.add_argument("--skip-build", action="store_true", help="do not time the default build")
    p.add_argument("--build-budget", type=int, default=15, help="budget (ms) of the timed build (README's: 15)")
    p.add_argument("--build-args", default="", help="extra flags for the timed build (dry runs)")
    p.add_argument("--build-out", default="/tmp/ep-bench-build")
    p.add_argument("--cache", default=None, help="results JSON (default: runs/budget_plans/<model>-<hash>.json)")
    p.add_argument("--out", default="docs/build-benchmark.md")
    p.add_argument("--plot", default="docs/build-pareto.png")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--replicate", action="append", default=[],
                   help="results JSON of a run with another --seed (repeatable): reported beside this one")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = ".venv/bin/python benchmarks/studies/budget_plans.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = run(args)
    replicas = [json.loads(Path(p).read_text()) for p in args.replicate]
    plot(data, Path(args.plot), replicas=replicas)
    write_text_atomic(Path(args.out), report(data, args, command.strip(), replicas))
    print(f"wrote {args.out} and {args.plot}", flush=True)


if __name__ == "__main__":
    main()
