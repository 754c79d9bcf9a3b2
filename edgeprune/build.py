"""`edgeprune build`: the one place that knows the whole order of a latency-budgeted build.

    discover -> score (direct removal) -> search plans -> remove -> fine-tune -> export,
    simplify, verify -> bench on the host -> predict / measure on the device -> artifact

Each stage is a library call with plain values. Everything expensive (one-shot scores,
every accuracy the search measured, the chosen plan, fine-tune checkpoints) is cached under
``<out>/cache/<key>/``, where the key hashes the model, the data and the settings that
change the result, so running the same command again resumes where it stopped. The
artifact is assembled in that cache folder and renamed to ``<out>/artifact`` at the very
end: an interrupted build never leaves a partial artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import torch

from edgeprune import __version__
from edgeprune.errors import EdgepruneError

EXIT_OK, EXIT_UNREACHABLE = 0, 3
SEARCH_ATTEMPTS = 4        # re-searches with a tighter internal budget when no exported plan fits


@dataclass
class BuildConfig:
    device: str = "rpi4"
    budget: str = "30ms"
    model: str = "default"
    weights: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    input_size: int | None = None
    trust_checkpoint: bool = False
    data: str = "default"
    mean: str | None = None
    std: str | None = None
    channels: int | None = None
    resize: str = "auto"
    out: str = "edgeprune-build"
    metric: str = "p50"                    # p50 | p90 of measured latency (p90: band's upper edge if predicted)
    finetune_epochs: float = 1.0
    finetune_lr: float = 0.01
    kd: bool = False
    temperature: float = 4.0
    alpha: float = 0.9
    score_images: int = 500
    strategies: list[str] = field(default_factory=lambda: ["latency-greedy", "accuracy-greedy", "knapsack"])
    proxies: list[str] = field(default_factory=lambda: ["norm-ratio", "bn-gamma"])   # extra plans for the short list
    select: str = "recovered"              # recovered: fine-tune each short-listed plan, ship the best; scored: best before
    shortlist: int = 4                     # distinct plans fine-tuned when select = recovered
    replace_projection: bool = False
    ssh: str | None = None
    remote_python: str | None = None       # python3 on the device (default: the profile's)
    ssh_config: str | None = None          # ssh config file (ssh -F)
    bench_runs: int = 100                  # timed runs of a device/host figure
    bench_rounds: int = 10                 # interleaved before/after rounds on the host (~0.2 s each)
    verify_arm: bool = False
    accelerator: str = "cpu"
    seed: int = 0

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any]) -> "BuildConfig":
        """Keys of ``path`` (the same names as the flags, with _ or -), then ``overrides``."""
        p = Path(path)
        if not p.is_file():
            raise EdgepruneError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise EdgepruneError(f"{p} is not valid TOML: {e}") from None
        data = data.get("build", data)
        known = {f.name for f in fields(cls)}
        norm = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(norm) - known)
        if unknown:
            raise EdgepruneError(f"{p}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{**norm, **overrides})

    def to_toml(self) -> str:
        lines = ["# the resolved configuration of this build; `edgeprune build --config` accepts it", "[build]"]
        for k, v in asdict(self).items():
            if v is None:
                continue
            lines.append(f"{k} = {json.dumps(v)}")
        return "\n".join(lines) + "\n"


@dataclass
class BuildOutcome:
    exit_code: int
    message: str
    summary: dict[str, Any]
    artifact: Path | None = None


Say = Callable[[str], None]


def _key(loaded, bundle, cfg: BuildConfig) -> str:
    from edgeprune.pipeline.models import state_fingerprint

    ident = {"model": loaded.spec.to_dict(), "weights": state_fingerprint(loaded.model), "data": {
        k: v for k, v in bundle.describe().items() if k != "classes"},
        "n_train": len(bundle.y_train), "n_val": len(bundle.y_val),
        "score_images": cfg.score_images, "replace_projection": cfg.replace_projection, "seed": cfg.seed,
        "version": 1}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Cache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / name

    def load(self, name: str) -> Any:
        p = self.path(name)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None  # a torn write from an interrupted run: recompute

    def save(self, name: str, obj: Any) -> None:
        tmp = self.path(name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1, default=str))
        tmp.replace(self.path(name))


def _measured_ms(result, metric: str) -> float:
    return result.p90_ms if metric == "p90" else result.p50_ms


def run_build(cfg: BuildConfig, say: Say = lambda _m: None) -> BuildOutcome:
    """Run the whole build; return the exit code, a one-line message and the summary figures."""
    from edgeprune import options as o
    from edgeprune.benchmarks.compare import CompareConfig, compare
    from edgeprune.benchmarks.latency import BenchConfig
    from edgeprune.benchmarks.units import parse_duration_ms
    from edgeprune.devices.blocks import block_latency_table
    from edgeprune.devices.predictor import predict
    from edgeprune.devices.profiles import load_profile
    from edgeprune.devices.ssh import resolve_ssh
    from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
    from edgeprune.pipeline.blocks import discover, remove_blocks, shortcut_modules
    from edgeprune.pipeline.data import load_data
    from edgeprune.pipeline.evaluate import evaluate, resolve_device
    from edgeprune.pipeline.finetune import FinetuneConfig, finetune
    from edgeprune.pipeline.importance import ScoreContext, candidates_for
    from edgeprune.pipeline.models import load_model
    from edgeprune.pipeline.plan import AccuracyOracle, SearchResult, search
    from edgeprune.pipeline.prune import split_val
    from edgeprune.pipeline.select import Candidate, choose, proxy_plans, shortlist

    t_start = time.time()
    budget_ms = parse_duration_ms(cfg.budget)
    if cfg.metric not in ("p50", "p90"):
        raise EdgepruneError(f"--metric must be p50 or p90, got {cfg.metric!r}")
    unknown = [s for s in cfg.strategies if s not in ("latency-greedy", "accuracy-greedy", "knapsack")]
    if unknown or not cfg.strategies:
        raise EdgepruneError(f"unknown strategies {unknown}; use latency-greedy, accuracy-greedy, knapsack")
    if cfg.select not in ("recovered", "scored"):
        raise EdgepruneError(f"--select must be recovered or scored, got {cfg.select!r}")
    if cfg.shortlist < 1:
        raise EdgepruneError(f"--shortlist must be at least 1, got {cfg.shortlist}")
    from edgeprune.pipeline.importance import CRITERIA
    bad = [c for c in cfg.proxies if c not in CRITERIA or c == "direct"]
    if bad:
        raise EdgepruneError(f"unknown proxies {bad}; use any of {', '.join(c for c in CRITERIA if c != 'direct')}")
    profile = load_profile(cfg.device)
    host = load_profile("host")
    # where the device figure comes from: None = predicted (or measured here for `host`)
    ssh = resolve_ssh(cfg.ssh, profile, remote_python=cfg.remote_python, ssh_config=cfg.ssh_config)
    device = resolve_device(cfg.accelerator)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise EdgepruneError(f"--out {out} exists and is not a folder")

    say("loading model and data")
    loaded = load_model(o.model_spec(cfg.model, cfg.weights, cfg.num_classes, cfg.in_channels, cfg.input_size,
                                     cfg.trust_checkpoint))
    bundle = load_data(o.data_spec(cfg.data, cfg.mean, cfg.std, cfg.channels, cfg.resize), loaded.input_shape,
                       loaded.num_classes)
    blocks = discover(loaded.model, loaded.input_shape)
    cands = [b.name for b in candidates_for(blocks, cfg.replace_projection)]
    key = _key(loaded, bundle, cfg)
    cache = _Cache(out / "cache" / key)
    say(f"cache {cache.folder}")

    # latency model: the device's predictor, exported once, per block
    say(f"predicting per-block latency on {profile.name}")
    example = torch.zeros(loaded.input_shape)
    # a removed projection block leaves its shortcut path behind: the table keeps that cost
    shortcuts = {b.name: shortcut_modules(loaded.model, b.name) for b in blocks
                 if b.kind == "projection" and cfg.replace_projection}
    table = block_latency_table(loaded.model.cpu().eval(), (example,), profile,
                                [b.name for b in blocks] + [m for ms in shortcuts.values() for m in ms])

    def latency(removed) -> float:
        keep = [m for r in removed for m in shortcuts.get(r, [])]
        if cfg.metric == "p90":
            return table.estimate_without(removed, keep).high_ms
        return table.predict_without(removed, keep)

    held = split_val(bundle, cfg.score_images)
    score_batches = list(bundle.batches("val", 250, indices=held.score))
    memo = cache.load("accuracy-memo.json") or {}
    ctx = ScoreContext(device, cfg.seed, cfg.replace_projection)
    oracle = AccuracyOracle(loaded.model, blocks, score_batches, ctx, memo,
                            on_update=lambda: cache.save("accuracy-memo.json", memo))

    def _pruned(removed):
        return remove_blocks(loaded.model, removed, blocks, replace_projection=True) if removed else loaded.model

    say(f"searching plans: {len(cands)} removable blocks, budget {budget_ms:g} ms ({cfg.metric}) on {profile.name}")
    orders = _proxy_orders(cache, loaded.model, [b for b in blocks if b.name in cands], score_batches, ctx,
                           cfg.proxies)
    internal_budget = budget_ms
    attempts = []
    for attempt in range(SEARCH_ATTEMPTS):
        result: SearchResult = search(oracle, latency, cands, internal_budget, cfg.strategies)
        cache.save("plans.json", result.to_dict())
        if not result.reachable:
            floor = result.floor
            msg = (f"budget {budget_ms:g} ms is unreachable by block removal on {profile.name}: removing all "
                   f"{len(cands)} removable blocks gives {floor.latency_ms:.2f} ms predicted "
                   f"(+{floor.latency_ms - budget_ms:.2f} ms, {100 * (floor.latency_ms / budget_ms - 1):.0f}% over) "
                   f"at top-1 {floor.top1:.2%} on the scoring images")
            return BuildOutcome(EXIT_UNREACHABLE, msg, {"search": result.to_dict(), "budget_ms": budget_ms,
                                                       "search_evaluations": oracle.evaluations,
                                                       "device": profile.name, "best_reachable_ms": floor.latency_ms,
                                                       "best_reachable_top1": floor.top1})
        pool = [result.base] if result.winner == "none" else \
            [*result.best.values(), *proxy_plans(orders, latency, internal_budget, oracle)]
        short = shortlist(pool, cfg.shortlist if cfg.select == "recovered" else 1)
        # the final figure: export each short-listed plan and predict/measure its own graph
        for c in short:
            onnx_path = cache.path(f"plan-{_plan_key(c.removed)}.onnx")
            if not onnx_path.is_file():
                export_onnx(_pruned(c.removed).cpu().eval(), loaded.input_shape, onnx_path, ExportConfig())
            fig = _device_figure(onnx_path, profile, ssh, cfg, predict)
            c.final_ms = fig["value_ms"]
            attempts.append({"attempt": attempt, "removed": c.removed, "planned_ms": c.latency_ms,
                             "final_ms": fig["value_ms"], "source": fig["source"]})
        fitting = [c for c in short if c.final_ms <= budget_ms]
        if fitting:
            break
        closest = min(c.final_ms for c in short)
        say(f"final figure {closest:.2f} ms exceeds the budget; tightening the search")
        internal_budget *= budget_ms / closest * 0.99
    else:
        return BuildOutcome(EXIT_UNREACHABLE, f"no plan's final figure met {budget_ms:g} ms after "
                            f"{SEARCH_ATTEMPTS} attempts (closest {closest:.2f} ms)",
                            {"attempts": attempts, "budget_ms": budget_ms})

    # fine-tune (checkpointed per epoch in the cache); with several plans on the short list each
    # gets the same fine-tune and the lowest loss on the scoring images ships
    tune = cfg.finetune_epochs > 0 and bool(fitting[0].removed)
    ft_cfg = FinetuneConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, kd=cfg.kd, temperature=cfg.temperature,
                            alpha=cfg.alpha, seed=cfg.seed) if tune else None
    tuned: dict[str, Any] = {}

    def finetuned(c: Candidate):
        key_c = _plan_key(c.removed, cfg.finetune_epochs, cfg.finetune_lr, cfg.kd, cfg.temperature, cfg.alpha)
        m = _pruned(c.removed)
        done = cache.path(f"finetuned-{key_c}.pt")
        if done.is_file():
            m.load_state_dict(torch.load(done, map_location="cpu", weights_only=True))
            say(f"fine-tuned weights for {c.label} found in the cache")
        else:
            say(f"fine-tuning {c.label} (remove {len(c.removed)} blocks)")
            run_cfg = replace(ft_cfg, checkpoint=str(cache.path(f"finetune-{key_c}.ckpt")))
            finetune(m, lambda ep: bundle.batches("train", run_cfg.batch_size, shuffle=True, seed=cfg.seed + ep),
                     len(bundle.y_train), run_cfg, teacher=loaded.model if cfg.kd else None, device=device)
            torch.save(m.state_dict(), done.with_suffix(".tmp"))
            done.with_suffix(".tmp").replace(done)
        return m

    if tune and len(fitting) > 1:
        for c in fitting:
            tuned[_plan_key(c.removed)] = m = finetuned(c)
            r = evaluate(m, score_batches, device)
            c.recovered_top1, c.recovered_loss = r.top1, r.loss
    chosen = choose(fitting)
    plan_label = "+".join(chosen.proposed_by)
    say(f"plan: {plan_label}, remove {len(chosen.removed)} blocks, {chosen.final_ms:.2f} ms on {profile.name}, "
        f"top-1 on scoring images {chosen.top1:.2%}"
        + (f" ({chosen.recovered_top1:.2%}, loss {chosen.recovered_loss:.4f} after fine-tune)"
           if chosen.recovered_loss is not None else ""))
    final_batches = bundle.batches("val", 250, indices=held.final)
    acc_before = evaluate(loaded.model, final_batches, device, "eval (original)").top1
    pruned = _pruned(chosen.removed)
    acc_removed = evaluate(pruned, final_batches, device, "eval (pruned)").top1 if chosen.removed else acc_before
    acc_ft = None
    if tune:
        pruned = tuned.get(_plan_key(chosen.removed)) or finetuned(chosen)
        acc_ft = evaluate(pruned, final_batches, device, "eval (fine-tuned)").top1
    pruned = pruned.cpu().eval()

    # artifact, assembled in the cache and renamed into place at the end
    say("exporting, simplifying and verifying the artifact")
    from edgeprune.exporters.artifact import ArtifactConfig, build_artifact, update_manifest
    stage = cache.path("artifact")
    n_real = min(256, len(held.final))
    accuracy = {"images": len(held.final), "scoring_images": len(held.score), "shared": held.shared,
                "before": acc_before, "after_removal": acc_removed, "after_finetune": acc_ft}
    source = {**loaded.source, "removed_blocks": chosen.removed, "replace_projection": cfg.replace_projection}
    art = build_artifact(pruned, loaded.input_shape, stage, ArtifactConfig(force=True),
                         images=bundle.preprocess.apply(bundle.x_val[held.final[:n_real]]),
                         labels=bundle.y_val[held.final[:n_real]], preprocess=bundle.preprocess.to_dict(),
                         classes=bundle.classes, source=source, accuracy=accuracy, progress=say)
    model_onnx = stage / "model.onnx"
    # host latency before/after, measured; device figure of the final artifact
    say("benchmarking on the host (onnxruntime)")
    base_onnx = cache.path("original.onnx")
    if not base_onnx.is_file():
        export_onnx(loaded.model.cpu().eval(), loaded.input_shape, base_onnx, ExportConfig())
    bench = BenchConfig(threads=host.threads, providers=list(host.providers), warmup=10, runs=cfg.bench_runs,
                        device="host")
    # interleaved (A B B A rounds): both models see the same drift of a shared machine, so the
    # speed-up holds even when the absolute figures wander
    side = compare(model_onnx, base_onnx, bench, CompareConfig(rounds=cfg.bench_rounds, max_rounds=cfg.bench_rounds))
    host_after, host_before = side.a, side.b
    final_fig = _device_figure(model_onnx, profile, ssh, cfg, predict)
    before_fig = _device_figure(base_onnx, profile, None if final_fig["source"].startswith("predicted") else ssh,
                                cfg, predict)
    host_pred = predict(model_onnx, host)
    met = final_fig["value_ms"] <= budget_ms
    latency_section = {
        "budget_ms": budget_ms, "metric": cfg.metric, "device": profile.name, "within_budget": met,
        "device_after": final_fig, "device_before": before_fig,
        "host_after": host_after.to_dict(), "host_before": host_before.to_dict(),
        "host_ratio": {"after_over_before": side.ratio, "ci": [side.ci_low, side.ci_high],
                       "confidence": side.confidence, "rounds": side.rounds},
        "host_predicted_after_ms": host_pred.latency_ms, "host_predicted_band": [host_pred.low_ms, host_pred.high_ms],
    }
    update_manifest(stage, "latency", latency_section)
    summary = {
        "device": profile.name, "budget_ms": budget_ms, "metric": cfg.metric, "within_budget": met,
        "removed": chosen.removed, "strategy": plan_label, "search": result.to_dict(), "attempts": attempts,
        "selection": {"mode": cfg.select if len(fitting) > 1 and tune else "single",
                      "candidates": [c.to_dict() for c in short], "chosen": _plan_key(chosen.removed)},
        "accuracy": accuracy, "latency": latency_section, "blocks": [b.to_dict() for b in blocks],
        "params": {"before": sum(p.numel() for p in loaded.model.parameters()),
                   "after": sum(p.numel() for p in pruned.parameters())},
        "static_memory": art.manifest.get("memory") or art.manifest.get("static_memory"),
        "finetune": ft_cfg.to_dict() if ft_cfg else None,
        "edgeprune": __version__,
        "search_evaluations": oracle.evaluations,   # accuracies measured in this run (0 when all cached)
    }
    if cfg.verify_arm:
        from edgeprune.devices.arm_verify import ArmVerifyConfig, verify_arm
        say("verifying on the aarch64 onnxruntime under qemu")
        arm = verify_arm(stage, ArmVerifyConfig(device=profile.name), log=say)
        summary["verify_arm"] = arm.to_dict()
        if arm.verdict != "pass":
            raise EdgepruneError(f"ARM verification failed: {arm.reason}", exit_code=1)
    from edgeprune.report import write_report
    summary["wall_s"] = time.time() - t_start
    write_report(stage, summary, cfg)
    (stage / "build-config.toml").write_text(cfg.to_toml())
    update_manifest(stage, "build", {"config": asdict(cfg), "strategy": plan_label, "removed": chosen.removed,
                                     "wall_s": summary["wall_s"]})
    target = out / "artifact"
    _replace_dir(stage, target)
    msg = (f"budget met without removing anything: {final_fig['value_ms']:.2f} ms ({final_fig['source']}) "
           f"<= {budget_ms:g} ms" if not chosen.removed else
           f"budget met: {final_fig['value_ms']:.2f} ms ({final_fig['source']}) <= {budget_ms:g} ms after removing "
           f"{len(chosen.removed)} blocks")
    if not met:  # cannot happen: the loop above only exits with a plan that fits
        raise EdgepruneError("internal error: final model exceeds the budget", exit_code=1)
    return BuildOutcome(EXIT_OK, msg, summary, target)


def _plan_key(removed, *settings) -> str:
    return hashlib.sha256(json.dumps([sorted(removed), *settings]).encode()).hexdigest()[:12]


def _proxy_orders(cache: _Cache, model, blocks, batches, ctx, proxies) -> dict[str, list[str]]:
    """Each proxy's one-shot order of the candidate blocks (least important first), cached."""
    from edgeprune.pipeline.prune import rank_blocks

    orders = cache.load("proxy-orders.json") or {}
    for crit in proxies:
        if crit not in orders:
            orders[crit] = rank_blocks(model, blocks, batches, ctx, crit, "oneshot").order
            cache.save("proxy-orders.json", orders)
    return {c: orders[c] for c in proxies}


def _device_figure(onnx_path: Path, profile, ssh, cfg: BuildConfig, predict) -> dict[str, Any]:
    """The latency that decides the budget: measured over SSH when reachable, else predicted."""
    if profile.name == "host" and ssh is None:
        from edgeprune.benchmarks.latency import BenchConfig, measure
        r = measure(onnx_path, BenchConfig(threads=profile.threads, providers=list(profile.providers),
                                           runs=cfg.bench_runs, device="host"))
        return {"value_ms": _measured_ms(r, cfg.metric), "source": "measured:host", "p50_ms": r.p50_ms,
                "p90_ms": r.p90_ms, "threads": r.threads, "provider": r.provider_used}
    if ssh is not None:
        from edgeprune.devices.ssh import measure_over_ssh
        r = measure_over_ssh(onnx_path, ssh, profile.name, profile.threads, profile.providers, runs=cfg.bench_runs)
        return {"value_ms": _measured_ms(r, cfg.metric), "source": r.source, "p50_ms": r.p50_ms,
                "p90_ms": r.p90_ms, "threads": r.threads, "provider": r.provider_used}
    p = predict(onnx_path, profile)
    value = p.high_ms if cfg.metric == "p90" else p.latency_ms
    return {"value_ms": value, "source": p.source, "predicted_ms": p.latency_ms, "low_ms": p.low_ms,
            "high_ms": p.high_ms, "expected_error": p.expected_error}


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` replacing any previous ``dst`` with two renames."""
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)
