"""Validate the latency gate (``edgeprune check``) on this machine with known slowdowns.

Models: the bundled ResNet-56 (random weights: latency does not depend on them) at
1x1x32x32, exported with ``torch.onnx.export(dynamo=True)``, and copies of it with some
identity-shortcut blocks replaced by ``nn.Identity()``. The full model is the candidate;
a pruned variant is the baseline, so the candidate is slower by full/pruned.

Steps:

1. **Calibrate**: time the full model against variants with 1..K blocks removed
   (round-robin over the three stages) and pick, for each target slowdown (5%, 10%, 20%),
   the variant whose ratio is closest.
2. **True ratios**: measure each chosen pair again at length (many interleaved rounds).
3. **Trials**: ``--trials`` rounds of: for each scenario (A/A = the full model against a
   copy of itself, and each slowdown), record a baseline exactly as CI would
   (``bench --save-baseline``: figures + the baseline model beside it) and run the gate
   (``check --tolerance 5%``) in ratio mode. The scenario order is shuffled each trial.
   The same baseline is also judged in absolute mode (baseline model not at hand:
   candidate p50 vs the stored p50), to show what that fallback is worth here.

Run (long; nice it on a shared machine)::

    nice -n 10 .venv/bin/python benchmarks/studies/validate_gate.py --out docs/gate_validation
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgeprune.benchmarks.baseline import make_baseline, save_baseline
from edgeprune.benchmarks.compare import CompareConfig, compare
from edgeprune.benchmarks.gate import GateConfig, run_check
from edgeprune.benchmarks.latency import BenchConfig, measure
from edgeprune.benchmarks.modelfile import inspect_model
from edgeprune.benchmarks.ort_runner import cpu_model
from edgeprune.pipeline.resnet_cifar import resnet56

# Identity-shortcut blocks, round-robin over the stages so each removal costs about the same.
REMOVAL_ORDER = [f"layer{s}.{b}" for b in range(1, 9) for s in (1, 2, 3)]


def export_variant(path: Path, removed: list[str], device: str = "cpu") -> Path:
    torch.manual_seed(0)
    model = resnet56().eval()
    for name in removed:
        stage, idx = name.split(".")
        getattr(model, stage)[int(idx)] = nn.Identity()
    model = model.to(device)
    x = torch.randn(1, 1, 32, 32, device=device)
    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False,
                      input_names=["input"], output_names=["logits"], verbose=False)
    return path


@dataclass
class Trial:
    scenario: str
    trial: int
    ratio: float
    ci_low: float
    ci_high: float
    rounds: int
    verdict: str                   # ratio mode: "pass" or "fail"
    absolute_x: float              # absolute mode: candidate p50 / stored p50
    absolute_verdict: str
    seconds: float


def run_trial(scenario: str, i: int, candidate: Path, baseline_model: Path, work: Path,
              bench: BenchConfig, tol: float) -> Trial:
    t0 = time.perf_counter()
    safe = "".join(ch if ch.isalnum() else "_" for ch in scenario)
    d = Path(tempfile.mkdtemp(prefix=f"{safe}_{i}_", dir=work))
    base_copy = d / "baseline.onnx"
    shutil.copy(baseline_model, base_copy)
    latency = measure(base_copy, bench)                    # what `bench --save-baseline` does
    base = make_baseline(inspect_model(base_copy), d / "baseline.json", bench, latency, None)
    save_baseline(base, d / "baseline.json")
    gate = GateConfig(tolerance=tol, check_memory=False)
    res = run_check(candidate, d / "baseline.json", gate)
    assert res.mode == "ratio" and res.comparison is not None
    base.model_path = "not-at-hand.onnx"                   # the fallback: stored figures only
    save_baseline(base, d / "absolute.json")
    res_abs = run_check(candidate, d / "absolute.json", gate)
    assert res_abs.mode == "absolute"
    shutil.rmtree(d)
    c = res.comparison
    return Trial(scenario, i, c.ratio, c.ci_low, c.ci_high, c.rounds,
                 "pass" if res.passed else "fail",
                 res_abs.latency.p50_ms / latency.p50_ms,
                 "pass" if res_abs.passed else "fail", time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/gate_validation", help="prefix of .json/.md/.png")
    ap.add_argument("--work", default=None, help="folder for the exported models (default: temp)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--targets", default="1.05,1.10,1.20")
    ap.add_argument("--max-removed", type=int, default=10)
    ap.add_argument("--calib-rounds", type=int, default=40)
    ap.add_argument("--true-rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="edgeprune_gate_"))
    work.mkdir(parents=True, exist_ok=True)
    bench = BenchConfig(threads=1, providers=["CPUExecutionProvider"], warmup=10, runs=100)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()

    log(f"exporting ResNet-56 and {args.max_removed} pruned variants to {work}")
    full = export_variant(work / "resnet56.onnx", [])
    variants = {k: export_variant(work / f"resnet56_minus{k}.onnx", REMOVAL_ORDER[:k])
                for k in range(1, args.max_removed + 1)}

    log("calibrating: full / pruned for each variant")
    calib = {}
    for k, path in variants.items():
        c = compare(full, path, bench, CompareConfig(rounds=args.calib_rounds,
                                                     max_rounds=args.calib_rounds))
        calib[k] = c.ratio
        log(f"  minus {k:2d} blocks: full/pruned = {c.ratio:.4f}")
    chosen = {t: min(calib, key=lambda k: abs(calib[k] - t)) for t in targets}

    log("true ratios at length")
    true = {}
    for t, k in chosen.items():
        c = compare(full, variants[k], bench, CompareConfig(
            rounds=args.true_rounds, max_rounds=args.true_rounds, round_ms=400))
        true[t] = {"removed": REMOVAL_ORDER[:k], "ratio": c.ratio, "ci_low": c.ci_low,
                   "ci_high": c.ci_high, "rounds": c.rounds,
                   "p50_full_ms": c.a.p50_ms, "p50_pruned_ms": c.b.p50_ms}
        log(f"  target {t:.2f}: minus {k} blocks, true ratio {c.ratio:.4f} "
            f"(95% CI {c.ci_low:.4f}-{c.ci_high:.4f}, {c.rounds} rounds)")

    scenarios = {"A/A": full, **{f"{(t - 1) * 100:.0f}% slower": variants[k]
                                 for t, k in chosen.items()}}
    rng = random.Random(args.seed)
    trials: list[Trial] = []
    for i in range(args.trials):
        order = list(scenarios)
        rng.shuffle(order)
        for name in order:
            tr = run_trial(name, i, full, scenarios[name], work, bench, args.tolerance)
            trials.append(tr)
            log(f"  trial {i:2d} {name:>11}: ratio {tr.ratio:.4f} [{tr.ci_low:.4f}, "
                f"{tr.ci_high:.4f}] {tr.rounds:2d} rounds -> {tr.verdict}; absolute "
                f"x{tr.absolute_x:.3f} -> {tr.absolute_verdict} ({tr.seconds:.1f} s)")

    summary = {}
    for name in scenarios:
        ts = [t for t in trials if t.scenario == name]
        ratios = np.array([t.ratio for t in ts])
        summary[name] = {
            "trials": len(ts),
            "fails": sum(t.verdict == "fail" for t in ts),
            "absolute_fails": sum(t.absolute_verdict == "fail" for t in ts),
            "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()),
            "rounds_median": float(np.median([t.rounds for t in ts])),
            "seconds_median": float(np.median([t.seconds for t in ts])),
        }
    facts = {"cpu": cpu_model(), "ort_version": ort.__version__, "torch": torch.__version__,
             "python": platform.python_version(), "threads": bench.threads,
             "providers": bench.providers, "tolerance": args.tolerance,
             "trials": args.trials, "elapsed_s": time.time() - started,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"facts": facts, "calibration": {str(k): v for k, v in calib.items()},
              "true_ratios": {f"{t:.2f}": v for t, v in true.items()},
              "summary": summary, "trials": [asdict(t) for t in trials]}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result, scenarios, true, targets))
    plot(trials, scenarios, args.tolerance, out.with_suffix(".png"))
    log(f"wrote {out.with_suffix('.json')}, .md, .png in {facts['elapsed_s']:.0f} s")
    print(out.with_suffix(".md").read_text())
    return 0


def markdown(result: dict, scenarios: dict, true: dict, targets: list[float]) -> str:
    f, s = result["facts"], result["summary"]
    tol = f["tolerance"]
    lines = [
        f"Measured {f['date']} on {f['cpu']} (shared, 2 vCPU), onnxruntime {f['ort_version']}, "
        f"{', '.join(f['providers'])}, {f['threads']} intra-op thread, tolerance "
        f"{tol * 100:.0f}% (gate fails when candidate/baseline > {1 + tol:.2f}); "
        f"{f['trials']} trials per scenario, {f['elapsed_s'] / 60:.0f} min in all.",
        "",
        "| scenario | true ratio (at length) | gate fails (ratio mode) | median measured ratio "
        "[min, max] | median rounds | median s/trial | fails if judged on stored p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    true_by_name = {f"{(t - 1) * 100:.0f}% slower": true[t] for t in targets}
    for name in scenarios:
        v = s[name]
        tr = true_by_name.get(name)
        truth = "1 (same model)" if tr is None else (
            f"{tr['ratio']:.3f} [{tr['ci_low']:.3f}, {tr['ci_high']:.3f}], "
            f"{len(tr['removed'])} blocks removed")
        lines.append(f"| {name} | {truth} | {v['fails']}/{v['trials']} | "
                     f"{v['ratio_median']:.3f} [{v['ratio_min']:.3f}, {v['ratio_max']:.3f}] | "
                     f"{v['rounds_median']:.0f} | {v['seconds_median']:.1f} | "
                     f"{v['absolute_fails']}/{v['trials']} |")
    return "\n".join(lines) + "\n"


def plot(trials: list[Trial], scenarios: dict, tol: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for x, name in enumerate(scenarios):
        ts = [t for t in trials if t.scenario == name]
        jitter = np.linspace(-0.25, 0.25, len(ts))
        for j, t in zip(jitter, ts):
            ax.errorbar(x + j, t.ratio, yerr=[[t.ratio - t.ci_low], [t.ci_high - t.ratio]],
                        fmt="o", ms=3, color="tab:red" if t.verdict == "fail" else "tab:blue",
                        elinewidth=0.8)
    ax.axhline(1 + tol, color="k", ls="--", lw=1, label=f"limit {1 + tol:.2f}")
    ax.set_xticks(range(len(scenarios)), list(scenarios))
    ax.set_ylabel("candidate / baseline (95% CI)")
    ax.set_title("edgeprune check on this machine: blue pass, red fail")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
