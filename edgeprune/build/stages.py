"""The stages of ``edgeprune build``, each a function with typed inputs and a dataclass result.

    load_inputs -> block_space -> fit_budget -> finetune_and_choose -> assemble_artifact
                -> before_after -> (report, publish: edgeprune.build.run)

Everything expensive is cached in the build's :class:`BuildCache` (one file per stage and
stage configuration), so rerunning the same command resumes.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import onnx
import torch
from torch import nn

from edgeprune.benchmarks.compare import CompareConfig, Comparison, compare
from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.targets import LatencyFigure, Target
from edgeprune.build.cache import BuildCache, str_lists
from edgeprune.build.config import BuildConfig, SearchConfig
from edgeprune.build.fitting import FitOutcome, search_until_fits
from edgeprune.build.result import AccuracySection, LatencySection, Selection, plan_key
from edgeprune.devices.block_latency import BlockLatencyTable, block_latency_table
from edgeprune.devices.predictor import Prediction, predict
from edgeprune.devices.profiles import DeviceProfile, load_profile
from edgeprune.devices.targets import resolve_target
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.artifact import ArtifactConfig, ArtifactResult, build_artifact, update_manifest
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.files import save_torch_atomic
from edgeprune.pipeline.blocks import Block, discover, remove_blocks, shortcut_modules
from edgeprune.pipeline.data import DataBundle, load_data_for
from edgeprune.pipeline.evaluate import evaluate, resolve_device
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.importance import ScoreContext, candidates_for
from edgeprune.pipeline.models import LoadedModel, load_model, state_fingerprint
from edgeprune.pipeline.plan import AccuracyOracle, Plan, SearchResult, search
from edgeprune.pipeline.prune import HeldOut, rank_blocks, split_val
from edgeprune.pipeline.select import Candidate, choose, proxy_plans, shortlist
from edgeprune.progress import Heartbeat

Say = Callable[[str], None]
GOLDEN_IMAGES = 256          # held-out images that verify the export and become the test vectors


# ---------------------------------------------------------------- 1. inputs

@dataclass
class Inputs:
    """The model, its data and blocks, where the budget is judged, and the cache."""

    cfg: BuildConfig
    loaded: LoadedModel
    bundle: DataBundle
    blocks: list[Block]
    candidates: list[str]               # removable blocks
    held: HeldOut                       # scoring images / held-out images
    profile: DeviceProfile              # the budget's device
    target: Target                      # where its figures come from (predicted, or measured)
    host: DeviceProfile
    torch_device: torch.device
    cache: BuildCache
    score_batches: list = field(default_factory=list)

    def final_batches(self):
        return self.bundle.batches("val", self.cfg.search.batch_size, indices=self.held.final)


def load_inputs(cfg: BuildConfig, say: Say) -> Inputs:
    out = Path(cfg.out)              # a folder: run.build_lock checked and holds it
    m = cfg.measure
    profile = load_profile(m.device)
    target = resolve_target(profile, ssh=m.ssh, remote_python=m.remote_python, ssh_config=m.ssh_config,
                            ssh_timeout_s=m.ssh_timeout)
    torch_device = resolve_device(cfg.accelerator)
    say("loading model and data")
    loaded = load_model(cfg.model)
    bundle = load_data_for(cfg.data, loaded, warn=lambda line: say(f"warning: {line}"))
    blocks = discover(loaded.model, loaded.input_shape)
    candidates = [b.name for b in candidates_for(blocks, cfg.search.replace_projection)]
    held = split_val(bundle, cfg.search.score_images, seed=cfg.seed)
    cache = BuildCache.for_inputs(out, {
        "model": loaded.spec.to_dict(), "weights": state_fingerprint(loaded.model),
        "data": {k: v for k, v in bundle.describe().items() if k != "classes"},
        "n_train": len(bundle.y_train), "n_val": len(bundle.y_val), "score_images": cfg.search.score_images,
        "replace_projection": cfg.search.replace_projection, "seed": cfg.seed, "split": held.to_dict(),
        "version": 4}, say=say)
    cache.sweep()
    say(f"cache {cache.folder}")
    return Inputs(cfg, loaded, bundle, blocks, candidates, held, profile, target, load_profile("host"),
                  torch_device, cache, list(bundle.batches("val", cfg.search.batch_size, indices=held.score)))


# ---------------------------------------------------------------- 2. the plan space

@dataclass
class BlockSpace:
    """Block removal as the search sees it: the predicted latency of "the model minus S" on
    the budget's device (one export, per-block costs) and the model a plan gives."""

    model: nn.Module
    blocks: list[Block]
    table: BlockLatencyTable
    metric: str
    shortcuts: dict[str, list[str]]     # a removed projection block leaves its shortcut path behind

    def latency(self, removed: Sequence[str]) -> float:
        keep = [m for r in removed for m in self.shortcuts.get(r, [])]
        if self.metric == "p90":
            return self.table.estimate_without(removed, keep).high_ms
        return self.table.predict_without(removed, keep)

    def apply(self, removed: Sequence[str]) -> nn.Module:
        if not removed:
            return self.model
        return remove_blocks(self.model, list(removed), self.blocks, replace_projection=True)


def block_space(inputs: Inputs, say: Say) -> BlockSpace:
    say(f"predicting per-block latency on {inputs.profile.name}")
    model = inputs.loaded.model.cpu().eval()
    shortcuts = {b.name: shortcut_modules(model, b.name) for b in inputs.blocks
                 if b.kind == "projection" and inputs.cfg.search.replace_projection}
    names = [b.name for b in inputs.blocks] + [m for ms in shortcuts.values() for m in ms]
    table = block_latency_table(model, (torch.zeros(inputs.loaded.input_shape),), inputs.profile, names)
    return BlockSpace(model, inputs.blocks, table, inputs.cfg.search.metric, shortcuts)


# ---------------------------------------------------------------- 3. plans that fit

@dataclass
class Fit:
    outcome: FitOutcome
    oracle: AccuracyOracle


def fit_budget(inputs: Inputs, space: BlockSpace, say: Say) -> Fit:
    """Search plans (strategies + proxy rankings), short-list them, judge each on its own
    exported graph, re-search with a tighter internal budget while none fits."""
    scfg, cache = inputs.cfg.search, inputs.cache
    memo = cache.load("accuracy-memo", valid=AccuracyOracle.valid_memo) or {}
    ctx = ScoreContext(inputs.torch_device, inputs.cfg.seed, scfg.replace_projection)
    beat = Heartbeat("searching", unit=" plans scored")

    def on_update() -> None:
        cache.save("accuracy-memo", memo)
        beat.beat(oracle.evaluations)

    oracle = AccuracyOracle(inputs.loaded.model, inputs.blocks, inputs.score_batches, ctx, memo, on_update)
    floor_ms = space.latency(inputs.candidates)
    if floor_ms > scfg.budget_ms:    # answered before any accuracy is measured
        base = Plan("none", [], space.latency([]), None, None)  # type: ignore[arg-type]
        floor = Plan("all", list(inputs.candidates), floor_ms, None, None)  # type: ignore[arg-type]
        return Fit(FitOutcome(SearchResult(scfg.budget_ms, base, {}, [base, floor], None, False, floor), [], []),
                   oracle)
    say(f"searching plans: {len(inputs.candidates)} removable blocks, budget {scfg.budget_ms:g} ms "
        f"({scfg.metric}) on {inputs.profile.name}")
    orders = proxy_orders(inputs, scfg)

    def search_at(budget_ms: float) -> tuple[SearchResult, list[Candidate]]:
        result = search(oracle, space.latency, inputs.candidates, budget_ms, scfg.strategies)
        cache.save("plans", result.to_dict(), {"budget_ms": budget_ms, "strategies": scfg.strategies,
                                               "metric": scfg.metric})
        if result.winner == "none":
            return result, shortlist([result.base], 1)
        pool = [*result.best.values(), *proxy_plans(orders, space.latency, budget_ms, oracle)]
        return result, shortlist(pool, scfg.shortlist_size)

    def figure(c: Candidate) -> tuple[float, str]:
        path = cache.path("plan", sorted(c.removed), ".onnx")
        cached_onnx(cache, path, lambda: space.apply(c.removed).cpu().eval(), inputs.loaded.input_shape)
        fig = inputs.target.figure(path, scfg.metric, inputs.cfg.measure.bench_runs)
        return fig.value_ms, fig.source

    outcome = search_until_fits(search_at, figure, scfg.budget_ms, on_retry=lambda ms: say(
        f"final figure {ms:.2f} ms exceeds the budget; tightening the search"))
    return Fit(outcome, oracle)


def proxy_orders(inputs: Inputs, scfg: SearchConfig) -> dict[str, list[str]]:
    """Each proxy's one-shot order of the candidate blocks (least important first), cached."""
    names = set(inputs.candidates)
    orders = inputs.cache.load("proxy-orders", valid=lambda o: str_lists(o) and all(
        set(v) <= names for v in o.values())) or {}
    blocks = [b for b in inputs.blocks if b.name in inputs.candidates]
    ctx = ScoreContext(inputs.torch_device, inputs.cfg.seed, scfg.replace_projection)
    for crit in scfg.proxies:
        if crit not in orders:
            orders[crit] = rank_blocks(inputs.loaded.model, blocks, inputs.score_batches, ctx, crit, "oneshot").order
            inputs.cache.save("proxy-orders", orders)
    return {c: orders[c] for c in scfg.proxies}


# ---------------------------------------------------------------- 4. fine-tune and choose

@dataclass
class Tuned:
    selection: Selection
    model: nn.Module                    # the chosen plan, fine-tuned when the build fine-tunes
    accuracy: AccuracySection
    finetune: FinetuneConfig | None


def finetune_and_choose(inputs: Inputs, space: BlockSpace, fit: FitOutcome, say: Say) -> Tuned:
    """Fine-tune every short-listed plan that fits (with ``select = recovered``), ship the lowest
    loss on the scoring images afterwards; measure the chosen model on the held-out images."""
    cfg, fitting = inputs.cfg, fit.fitting
    ft = cfg.finetune if cfg.finetune.epochs > 0 and fitting[0].removed else None
    tuned: dict[str, nn.Module] = {}
    if ft is not None and len(fitting) > 1:
        for c in fitting:
            tuned[plan_key(c.removed)] = m = finetuned(inputs, space, c, ft, say)
            try:
                r = evaluate(m, inputs.score_batches, inputs.torch_device)
                c.recovered_top1, c.recovered_loss = r.top1, r.loss
            except EdgepruneError as e:     # this plan's fine-tune diverged (non-finite outputs): drop it
                say(f"dropping {c.label}: after fine-tune {e}")
                c.recovered_top1, c.recovered_loss = 0.0, math.inf
        if all(math.isinf(c.recovered_loss) for c in fitting):
            raise EdgepruneError(f"every short-listed plan's fine-tune diverged (lr {ft.lr:g}); lower --finetune-lr")
    chosen = choose(fitting)
    mode = cfg.search.select if ft is not None and len(fitting) > 1 else "single"
    selection = Selection(mode, fit.shortlist, chosen)
    say(f"plan: {selection.label}, remove {len(chosen.removed)} blocks, {chosen.final_ms:.2f} ms on "
        f"{inputs.profile.name}, top-1 on scoring images {chosen.top1:.2%}"
        + (f" ({chosen.recovered_top1:.2%}, loss {chosen.recovered_loss:.4f} after fine-tune)"
           if chosen.recovered_loss is not None else ""))
    dev = inputs.torch_device
    before = evaluate(inputs.loaded.model, inputs.final_batches(), dev, "eval (original)").top1
    model = space.apply(chosen.removed)
    after_removal = evaluate(model, inputs.final_batches(), dev, "eval (pruned)").top1 if chosen.removed else before
    after_ft = None
    if ft is not None:
        model = tuned.get(plan_key(chosen.removed)) or finetuned(inputs, space, chosen, ft, say)
        after_ft = evaluate(model, inputs.final_batches(), dev, "eval (fine-tuned)").top1
    held = inputs.held
    accuracy = AccuracySection(len(held.final), len(held.score), held.shared, before, after_removal, after_ft,
                               held.describe())
    return Tuned(selection, model.cpu().eval(), accuracy, ft)


def finetuned(inputs: Inputs, space: BlockSpace, c: Candidate, ft: FinetuneConfig, say: Say) -> nn.Module:
    """The plan's model after the build's fine-tune; cached per plan and fine-tune config,
    checkpointed per epoch so an interrupted fine-tune resumes."""
    stage_cfg = {"removed": sorted(c.removed), "finetune": {**ft.to_dict(), "checkpoint": None}}
    done = inputs.cache.path("finetuned", stage_cfg, ".pt")
    m = space.apply(c.removed)
    if done.exists():
        try:
            state = torch.load(done, map_location="cpu", weights_only=True)
            m.load_state_dict(state)
        except Exception:  # noqa: BLE001 - torch.load raises many types for a torn or foreign file
            inputs.cache.discard(done)
            m = space.apply(c.removed)      # a partly loaded state must not leak into the fine-tune
        else:
            say(f"fine-tuned weights for {c.label} found in the cache")
            return m
    say(f"fine-tuning {c.label} (remove {len(c.removed)} blocks)")
    run = replace(ft, checkpoint=str(inputs.cache.path("finetune", stage_cfg, ".ckpt")))
    bundle = inputs.bundle
    finetune(m, lambda ep: bundle.batches("train", run.batch_size, shuffle=True, seed=inputs.cfg.seed + ep),
             len(bundle.y_train), run, teacher=inputs.loaded.model if run.kd else None, device=inputs.torch_device,
             warn=say)
    save_torch_atomic(done, m.state_dict())
    return m


# ---------------------------------------------------------------- 5. the artifact

def assemble_artifact(inputs: Inputs, tuned: Tuned, say: Say) -> ArtifactResult:
    """Export, simplify, verify and package the chosen model in the cache's staging folder."""
    say("exporting, simplifying and verifying the artifact")
    held, bundle = inputs.held, inputs.bundle
    golden = held.final[:min(GOLDEN_IMAGES, len(held.final))]
    raw = bundle.raw_images("val", golden[:ArtifactConfig().golden_count])
    source = {**inputs.loaded.source, "removed_blocks": tuned.selection.chosen.removed,
              "replace_projection": inputs.cfg.search.replace_projection}
    return build_artifact(tuned.model, inputs.loaded.input_shape, inputs.cache.path("artifact", suffix=""),
                          ArtifactConfig(force=True), images=bundle.preprocess.apply(bundle.x_val[golden]),
                          labels=bundle.y_val[golden], raw_images=raw, preprocess=bundle.preprocess.to_dict(),
                          classes=bundle.classes, source=source, accuracy=tuned.accuracy.to_dict(), progress=say)


# ---------------------------------------------------------------- 6. before and after

def before_after(inputs: Inputs, artifact: ArtifactResult, say: Say) -> LatencySection:
    """The device figure of the original and the artifact, and both timed side by side on the host."""
    say("benchmarking on the host (onnxruntime)")
    original = inputs.cache.path("original", suffix=".onnx")
    cached_onnx(inputs.cache, original, lambda: inputs.loaded.model.cpu().eval(), inputs.loaded.input_shape)
    final = artifact.path / "model.onnx"
    m, scfg, host = inputs.cfg.measure, inputs.cfg.search, inputs.host
    bench = BenchConfig(threads=host.threads, providers=list(host.providers), warmup=10, runs=m.bench_runs,
                        device="host")
    # interleaved (A B B A rounds): both models see the same drift of a shared machine
    side: Comparison = compare(final, original, bench, CompareConfig(rounds=m.bench_rounds,
                                                                     max_rounds=m.bench_rounds))
    after: LatencyFigure = inputs.target.figure(final, scfg.metric, m.bench_runs)
    before: LatencyFigure = inputs.target.figure(original, scfg.metric, m.bench_runs)
    host_pred: Prediction = predict(final, host)
    section = LatencySection(scfg.budget_ms, scfg.metric, inputs.profile.name, after, before, side, host_pred)
    update_manifest(artifact.path, "latency", section.to_dict())
    return section


# ---------------------------------------------------------------- cached ONNX files

def cached_onnx(cache: BuildCache, path: Path, model: Callable[[], nn.Module], input_shape: Sequence[int]) -> Path:
    """``path`` when it holds a readable ONNX model, else ``model()`` exported there atomically (a
    file that does not parse is discarded first, with one line)."""
    if path.exists():
        if readable_onnx(path):
            return path
        cache.discard(path)
    return export_onnx_atomic(model(), input_shape, path)


def readable_onnx(path: Path) -> bool:
    """Whether onnx parses ``path`` into a model with a graph, its outputs and an opset."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf raises several types for a torn file
        return False
    return bool(proto.graph.node) and bool(proto.graph.output) and bool(proto.opset_import)


def export_onnx_atomic(model: nn.Module, input_shape: Sequence[int], path: Path) -> Path:
    """``export_onnx`` into a temporary folder beside ``path``, then renamed into place: an
    interrupted export never leaves a torn file under the final name. A model over 2 GB comes
    with external data files (named relative to the model); they are moved beside ``path``
    first, the model last, so a model under its final name always has its data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        export_onnx(model, input_shape, tmp, ExportConfig())
        for extra in sorted(tmp_dir.iterdir()):
            if extra != tmp:
                os.replace(extra, path.parent / extra.name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def static_memory(artifact: ArtifactResult) -> dict[str, Any] | None:
    return artifact.manifest.get("memory") or artifact.manifest.get("static_memory")
