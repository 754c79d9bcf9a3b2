"""The stages of ``edgeprune build``, each a function with typed inputs and a dataclass result.

    load_inputs -> plan_space -> fit_budget -> finetune_and_choose -> assemble_artifact
                -> before_after -> (report, publish: edgeprune.build.run)

Everything expensive is cached in the build's :class:`BuildCache` (one file per stage and
stage configuration), so rerunning the same command resumes.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
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
from edgeprune.build.int8 import INT8, Int8Choice, Int8Lever, int8_lever, quantize_chosen, quantized_file
from edgeprune.build.result import AccuracySection, LatencySection, Selection, plan_key
from edgeprune.build.space import SCREEN_IMAGES, PlanSpace, StateOracle
from edgeprune.devices.block_latency import export_for_blocks, table_from_onnx as block_table
from edgeprune.devices.calibrate import ensure_host_calibrated
from edgeprune.devices.plan_latency import table_from_onnx as plan_table
from edgeprune.devices.fingerprint import mismatch_note
from edgeprune.devices.predictor import HOST, host_differences, Prediction, predict
from edgeprune.devices.profiles import DeviceProfile, load_profile
from edgeprune.devices.targets import resolve_target
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.artifact import ArtifactConfig, ArtifactResult, build_artifact, update_manifest
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.exporters.quantize import Quantization, onnx_accuracy
from edgeprune.exporters.simplify import simplify_onnx
from edgeprune.exporters.verify import VerifyConfig, random_inputs
from edgeprune.files import save_torch_atomic
from edgeprune.pipeline.autocast import Autocast, resolve_autocast
from edgeprune.pipeline.blocks import Block, discover, shortcut_modules
from edgeprune.pipeline.channels import ChannelGroup, channel_groups, channel_orders, producers
from edgeprune.pipeline.data import DataBundle, load_data_for
from edgeprune.pipeline.distributed import barrier, on_main, world
from edgeprune.pipeline.evaluate import evaluate, resolve_device
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.importance import ScoreContext, candidates_for
from edgeprune.pipeline.table_search import JOINT_STRATEGIES, Progress, TableOutcome, TableSpace
from edgeprune.pipeline.levers import PlanState, plan_levers, resolution_steps
from edgeprune.pipeline.models import LoadedModel, load_model, state_fingerprint
from edgeprune.pipeline.plan import STRATEGIES, AccuracyOracle, Plan, SearchResult, search
from edgeprune.pipeline.prune import HeldOut, rank_blocks, split_val
from edgeprune.pipeline.select import Candidate, choose, proxy_plans, shortlist
from edgeprune.progress import Heartbeat

Say = Callable[[str], None]
GOLDEN_IMAGES = 256          # held-out images that verify the export and become the test vectors
STATE_MEMO = {"batchnorm": "re-estimated for every plan"}   # what the joint search's memos measured


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
    autocast: Autocast                  # the precision of scoring, fine-tuning and evaluation (resolved once)
    cache: BuildCache
    score_batches: list = field(default_factory=list)

    def final_batches(self):
        return self.bundle.batches("val", self.cfg.search.batch_size, indices=self.held.final)

    def torch_record(self) -> dict[str, Any]:
        """Where scoring, fine-tuning and evaluation ran and in what precision (the report, JSON and manifest)."""
        return self.autocast.record(self.torch_device)


def load_inputs(cfg: BuildConfig, say: Say) -> Inputs:
    out = Path(cfg.out)              # a folder: run.build_lock checked and holds it
    m = cfg.measure
    torch_device = resolve_device(cfg.accelerator)       # a device that cannot be used fails before any work
    autocast = resolve_autocast(cfg.autocast, torch_device)
    if m.device == HOST:           # under torchrun: rank 0 calibrates, once, for all
        on_main(lambda: ensure_host_calibrated(m.calibrate, say))
    profile = load_profile(m.device)
    target = resolve_target(profile, ssh=m.ssh, remote_python=m.remote_python, ssh_config=m.ssh_config,
                            ssh_timeout_s=m.ssh_timeout)
    say(f"torch on {torch_device} in {autocast.used} (--autocast {autocast.choice})")    # why: in the report
    say("loading model and data")
    loaded = load_model(cfg.model)
    bundle = load_data_for(cfg.data, loaded, warn=lambda line: say(f"warning: {line}"))
    blocks = discover(loaded.model, loaded.input_shape)
    try:
        candidates = [b.name for b in candidates_for(blocks, cfg.search.replace_projection)]
    except EdgepruneError:          # no removable block: only a build that pulls other levers goes on
        if plan_levers(cfg.search.levers) == ["blocks"]:
            raise
        candidates = []
    held = split_val(bundle, cfg.search.score_images, seed=cfg.seed)
    cache = BuildCache.for_inputs(out, {
        "model": loaded.spec.to_dict(), "weights": state_fingerprint(loaded.model),
        "data": {k: v for k, v in bundle.describe().items() if k != "classes"},
        "n_train": len(bundle.y_train), "n_val": len(bundle.y_val), "score_images": cfg.search.score_images,
        "replace_projection": cfg.search.replace_projection, "seed": cfg.seed, "split": held.to_dict(),
        # a channel token's meaning (which channels, how many a step) depends on these two
        "channel_multiple": cfg.search.channel_multiple, "channel_criterion": cfg.search.channel_criterion,
        # every accuracy, plan and fine-tune depends on the precision it was measured in (fp32 builds keep their key)
        **({"autocast": autocast.used} if autocast.dtype else {}),
        "version": 5}, say=say)
    if world().main:
        cache.sweep()
    barrier()                        # no rank writes into the cache before rank 0 has swept it
    say(f"cache {cache.folder}")
    return Inputs(cfg, loaded, bundle, blocks, candidates, held, profile, target, load_profile("host"),
                  torch_device, autocast, cache, list(bundle.batches("val", cfg.search.batch_size, indices=held.score)))


# ---------------------------------------------------------------- 2. the plan space

def plan_space(inputs: Inputs, say: Say) -> PlanSpace:
    """The levers the build may pull (``--levers``) over the loaded model, with their latency model."""
    scfg = inputs.cfg.search
    say(f"predicting per-block latency on {inputs.profile.name}")
    elsewhere = host_differences(inputs.profile)
    if elsewhere:
        say(mismatch_note(inputs.profile.name, elsewhere))
    model = inputs.loaded.model.cpu().eval()
    shortcuts = {b.name: shortcut_modules(model, b.name) for b in inputs.blocks
                 if b.kind == "projection" and scfg.replace_projection}
    names = [b.name for b in inputs.blocks] + [m for ms in shortcuts.values() for m in ms]
    shape = inputs.loaded.input_shape
    groups: list[ChannelGroup] = []
    try:                             # the groups are found even when the lever is off: the unreachable
        groups = channel_groups(model, shape, scfg.channel_multiple)    # message says what it would reach
    except EdgepruneError:
        if "channels" in scfg.levers:
            raise
    orders = channel_orders(model, groups, shape, scfg.channel_criterion) if groups else {}
    if "channels" in scfg.levers:
        say(f"channel lever: {len(groups)} groups of coupled channels (steps of about 1/8, kept counts multiples "
            f"of {scfg.channel_multiple}, {scfg.channel_criterion} order)")
    exported = export_for_blocks(model, (torch.zeros(shape),))      # the one export both tables are read from
    table = block_table(exported, inputs.profile, names)
    plans = plan_table(exported, inputs.profile, names, producers(groups))
    size = min(shape[2], shape[3])
    floor = scfg.min_resolution if "resolution" in scfg.levers and scfg.min_resolution else max(1, size // 2)
    sizes = resolution_steps(size, floor, scfg.resolution_step)
    memo_cfg = {"device": inputs.profile.name, "metric": scfg.metric, "version": 1,
                **({"confidence": scfg.confidence} if scfg.confidence is not None else {})}
    memo = inputs.cache.load("plan-latency", memo_cfg, valid=_number_dict) or {}
    space = PlanSpace(model, shape, inputs.bundle, inputs.blocks, inputs.candidates, table, scfg.metric, shortcuts,
                      inputs.profile, plan_levers(scfg.levers), groups, orders, sizes, confidence=scfg.confidence,
                      latency_memo=memo, plans=plans)
    space.on_latency = lambda: inputs.cache.save("plan-latency", memo, memo_cfg)
    return space


def _number_dict(obj: object) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and type(v) in (int, float) for k, v in obj.items())


# ---------------------------------------------------------------- 3. plans that fit

@dataclass
class Anchor:
    """The original model measured on the build's target against the search's prediction of it."""

    figure: LatencyFigure        # the budget's figure of the original, measured on the target
    predicted_ms: float          # the search's figure of the original (the profile's judged prediction)

    @property
    def measured_ms(self) -> float:
        return self.figure.value_ms

    @property
    def source(self) -> str:     # where it was measured: measured:host, measured:ssh:<device>
        return self.figure.source

    @property
    def scale(self) -> float:
        return self.measured_ms / self.predicted_ms

    def to_dict(self) -> dict[str, Any]:
        return {"measured_ms": self.measured_ms, "predicted_ms": self.predicted_ms, "scale": self.scale,
                "source": self.source}


def anchor(inputs: Inputs, space: PlanSpace, say: Say) -> Anchor | None:
    """Where the budget is measured (the host, a board over SSH): the original timed there once, and every
    prediction the search makes read at its measured / predicted ratio (``space.scale``). A profile fitted on
    another machine, or on this one before its speed moved, then plans for the figures the target gives now:
    the profile only has to rank plans and price their savings relative to the original (on block-removal
    variants of four families, 97-100% within 10% where the absolute predictions held 0-3%:
    ``benchmarks/studies/anchored_prediction.py``, docs/calibration-epyc.md). None on a predicted target, or
    with ``--no-anchor``."""
    if not (inputs.target.measures and inputs.cfg.measure.anchor):
        return None
    original = on_main(lambda: original_onnx(inputs))
    space.scale = 1.0
    predicted = space.latency([])
    found = Anchor(judge(inputs, original), predicted)
    space.scale = found.scale
    say(f"anchored on the original: {found.measured_ms:.3f} ms {found.source} against {predicted:.3f} ms "
        f"predicted; the search reads its predictions x{found.scale:.2f}")
    return found


@dataclass
class Fit:
    outcome: FitOutcome
    oracle: AccuracyOracle
    states: StateOracle | None = None           # the joint search's measurements (levers beyond blocks)
    reach: dict[str, float] = field(default_factory=dict)   # lever combination -> its fastest plan (ms)
    int8: Int8Lever | None = None               # with the int8 lever: whether it pays, and the ratio
    anchor: Anchor | None = None                # a measuring target's reading of the predictions
    screen: StateOracle | None = None           # the joint searches' screening measurements
    searches: dict[str, TableOutcome] = field(default_factory=dict)   # each joint search's rounds and counts
    seconds: float = 0.0                        # wall time of the search stage in this run (run.py)

    @property
    def anchor_record(self) -> dict[str, Any] | None:
        return self.anchor.to_dict() if self.anchor is not None else None

    @property
    def uses_int8(self) -> bool:
        return self.int8 is not None and self.int8.taken

    @property
    def evaluations(self) -> int:
        """Plans and moves measured (accuracy on scoring images), every oracle together."""
        return sum(o.evaluations for o in (self.oracle, self.states, self.screen) if o is not None)

    @property
    def image_passes(self) -> int:
        """Images those measurements ran through the model (BatchNorm re-estimation and scoring)."""
        return sum(o.images for o in (self.oracle, self.states, self.screen) if o is not None)

    def search_record(self) -> dict[str, Any]:
        """What the search cost: the JSON's and the report's ``search_cost``."""
        return {"evaluations": self.evaluations, "image_passes": self.image_passes,
                "joint": {name: {"rounds": o.rounds, "stopped": o.stopped, "measured": o.measured,
                                 "screened": o.screened} for name, o in self.searches.items()}}


def fit_budget(inputs: Inputs, space: PlanSpace, say: Say) -> Fit:
    """Search plans (block strategies + proxy rankings, and the joint greedy when levers beyond
    blocks are enabled), short-list them, judge each on its own exported graph, re-search with a
    tighter internal budget while none fits."""
    scfg, cache = inputs.cfg.search, inputs.cache
    memo = cache.load("accuracy-memo", valid=AccuracyOracle.valid_memo) or {}
    ctx = ScoreContext(inputs.torch_device, inputs.cfg.seed, scfg.replace_projection, autocast=inputs.autocast)
    beat = Heartbeat("searching", unit=" plans scored")
    joint = bool(space.levers) and space.levers != ["blocks"]

    def on_update() -> None:
        cache.save("accuracy-memo", memo)
        if states is not None and screen is not None:
            cache.save("plan-accuracy", states.memo, STATE_MEMO)
            cache.save("plan-screen", screen.memo, STATE_MEMO)
        beat.beat(oracle.evaluations + sum(o.evaluations for o in (states, screen) if o is not None))

    oracle = AccuracyOracle(inputs.loaded.model, inputs.blocks, inputs.score_batches, ctx, memo, on_update)
    states = screen = None
    if joint:
        states = StateOracle(space, inputs.held.score, scfg.batch_size, inputs.torch_device,
                             cache.load("plan-accuracy", STATE_MEMO, valid=AccuracyOracle.valid_memo) or {}, on_update,
                             autocast=inputs.autocast)
        screen = StateOracle(space, inputs.held.score[:SCREEN_IMAGES], scfg.batch_size, inputs.torch_device,
                             cache.load("plan-screen", STATE_MEMO, valid=AccuracyOracle.valid_memo) or {}, on_update,
                             bn_images=SCREEN_IMAGES, autocast=inputs.autocast)
    anchored = anchor(inputs, space, say)
    lever8 = None
    if INT8 in scfg.levers:
        original = on_main(lambda: original_onnx(inputs))
        lever8 = int8_lever(inputs, space, original, lambda path: judge(inputs, path), say, host_ratio(inputs),
                            fp32=anchored.figure if anchored is not None else None)
    int8 = lever8 is not None and lever8.taken
    plan_budget = scfg.budget_ms / lever8.ratio if int8 else scfg.budget_ms   # what int8 leaves the float plan
    fastest = space.limit(space.levers).tokens()
    floor_ms = space.latency(fastest)
    if floor_ms > plan_budget:       # answered before any accuracy is measured
        base = Plan("none", [], space.latency([]), None, None)  # type: ignore[arg-type]
        floor = Plan("all", fastest, floor_ms, None, None)  # type: ignore[arg-type]
        return Fit(FitOutcome(SearchResult(scfg.budget_ms, base, {}, [base, floor], None, False, floor), [], []),
                   oracle, states, lever_reach(space), lever8, anchored)
    say(f"searching plans with {', '.join(space.levers) or 'no plan lever'}:"
        + (f" {len(space.candidates)} removable blocks" if "blocks" in space.levers else "")
        + (f", {len(space.groups)} channel groups" if "channels" in space.levers else "")
        + (f", input sizes down to {space.sizes[-1]}" if "resolution" in space.levers and space.sizes else "")
        + f"; budget {scfg.budget_ms:g} ms ("
        + (f"the figure met with {scfg.confidence:.0%} chance" if scfg.confidence is not None else scfg.metric)
        + f") on {inputs.profile.name}"
        + (f", {plan_budget:.2f} ms in fp32 terms with int8 ({lever8.ratio:.2f}x)" if int8 else ""))
    blocks = "blocks" in space.levers and bool(space.candidates)
    orders = proxy_orders(inputs, scfg) if blocks else {}
    blocks_floor = space.table_latency(space.candidates)
    block_names = [s for s in scfg.strategies if s in STRATEGIES]
    joint_names = [s for s in scfg.strategies if s in JOINT_STRATEGIES]
    clock = lambda: on_main(time.monotonic)      # noqa: E731 - rank 0's clock: every rank stops in the same round
    deadline = clock() + 60 * scfg.search_minutes
    searches: dict[str, TableOutcome] = {}

    def progress(p: Progress) -> None:
        say(f"search round {p.round}/{p.rounds}: {p.measured} plans measured whole, {p.screened} moves screened"
            + (f", about {p.eta_s / 60:.1f} min left" if p.eta_s else ""))

    def search_at(budget_ms: float) -> tuple[SearchResult, list[Candidate]]:
        base = Plan("none", [], space.table_latency([]), *oracle([]))
        if base.latency_ms <= budget_ms:
            result = SearchResult(budget_ms, base, {"none": base}, [base], "none")
        elif blocks and blocks_floor <= budget_ms and block_names:
            result = search(oracle, space.table_latency, space.candidates, budget_ms, block_names)
        else:                        # blocks alone cannot reach it: only the joint search can
            result = SearchResult(budget_ms, base, {}, [base])
        if result.winner != "none" and states is not None:
            for name in joint_names:
                outcome = JOINT_STRATEGIES[name](name, TableSpace(
                    space.moves, lambda st: space.latency(st.tokens()), states.measure, screen.measure, budget_ms,
                    result.considered, deadline=deadline, clock=clock, on_progress=progress))
                searches[name] = outcome
                if outcome.stopped:
                    say(f"{name} search: --search-minutes {scfg.search_minutes:g} ran out after {outcome.rounds} "
                        f"round{'s' * (outcome.rounds != 1)}; the best measured plan that fits is used")
                if outcome.plan is not None:
                    result.best[name] = outcome.plan
                    result.considered.append(outcome.plan)
        if result.best:
            result.winner = max(result.best, key=lambda k: (result.best[k].top1, -result.best[k].loss,
                                                            -result.best[k].latency_ms))
        result.reachable = bool(result.best)
        if not result.reachable:
            result.floor = Plan("all", fastest, floor_ms, *(states or oracle)(fastest))
        cache.save("plans", result.to_dict(), {"budget_ms": budget_ms, "strategies": scfg.strategies,
                                               "metric": scfg.metric, "levers": space.levers,
                                               **({"confidence": scfg.confidence} if scfg.confidence else {})})
        if result.winner == "none" or not result.reachable:
            return result, shortlist([result.base], 1)
        pool = [*result.best.values()]
        if blocks and blocks_floor <= budget_ms:
            pool += proxy_plans(orders, space.table_latency, budget_ms, oracle)
        return result, shortlist(pool, scfg.shortlist_size)

    def figure(c: Candidate) -> tuple[float, str]:
        path = cache.path("plan", sorted(c.removed), ".onnx")
        cached_onnx(cache, path, lambda: space.apply(c.removed).cpu().eval(), space.input_shape_of(c.removed))
        if int8:                     # judged as the int8 file it will become
            fp32 = path
            path = on_main(lambda: quantized_file(inputs, space, c.removed, fp32, "plan-int8"))
        fig = judge(inputs, path)
        return fig.value_ms, fig.source

    outcome = search_until_fits(search_at, figure, scfg.budget_ms, start_ms=plan_budget, on_retry=lambda ms: say(
        f"final figure {ms:.2f} ms exceeds the budget; tightening the search"))
    return Fit(outcome, oracle, states, {} if outcome.fitting else lever_reach(space), lever8, anchored,
               screen, searches)


def host_ratio(inputs: Inputs) -> Callable[[Path, Path], float] | None:
    """When the budget's figures are measured on this machine: a/b timed interleaved (``bench --vs``)."""
    if inputs.profile.name != HOST or inputs.cfg.measure.ssh:
        return None
    m, host = inputs.cfg.measure, inputs.host
    bench = BenchConfig(threads=host.threads, providers=list(host.providers), warmup=10, runs=m.bench_runs,
                        device="host")
    return lambda a, b: compare(a, b, bench, CompareConfig(rounds=m.bench_rounds, max_rounds=m.bench_rounds)).ratio


def judge(inputs: Inputs, path: Path) -> LatencyFigure:
    """The budget's figure of an ONNX file on the build's target (measured on rank 0 alone, for all ranks)."""
    scfg = inputs.cfg.search

    def measure() -> LatencyFigure:
        return inputs.target.figure(path, scfg.metric, inputs.cfg.measure.bench_runs, scfg.confidence)
    return on_main(measure) if inputs.target.measures else measure()


def lever_reach(space: PlanSpace) -> dict[str, float]:
    """The fastest plan (predicted ms) of each enabled lever alone, of all of them together, and of
    all of them with each other lever as well (what the unreachable message reports)."""
    enabled = list(space.levers)
    combos = [[lever] for lever in enabled] if len(enabled) > 1 else []
    combos.append(enabled)
    combos += [[*enabled, other] for other in space.available() if other not in enabled]
    return {"+".join(c): space.latency(space.limit(c).tokens()) for c in combos}


def proxy_orders(inputs: Inputs, scfg: SearchConfig) -> dict[str, list[str]]:
    """Each proxy's one-shot order of the candidate blocks (least important first), cached."""
    names = set(inputs.candidates)
    orders = inputs.cache.load("proxy-orders", valid=lambda o: str_lists(o) and all(
        set(v) <= names for v in o.values())) or {}
    blocks = [b for b in inputs.blocks if b.name in inputs.candidates]
    ctx = ScoreContext(inputs.torch_device, inputs.cfg.seed, scfg.replace_projection, autocast=inputs.autocast)
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
    seconds: float = 0.0                # wall time of fine-tune and choice in this run (run.py)


def finetune_and_choose(inputs: Inputs, space: PlanSpace, fit: FitOutcome, say: Say) -> Tuned:
    """Fine-tune every short-listed plan that fits (with ``select = recovered``), ship the lowest
    loss on the scoring images afterwards; measure the chosen model on the held-out images."""
    cfg, fitting = inputs.cfg, fit.fitting
    ft = cfg.finetune if cfg.finetune.epochs > 0 and fitting[0].removed else None
    tuned: dict[str, nn.Module] = {}
    if ft is not None and len(fitting) > 1:
        for c in fitting:
            tuned[plan_key(c.removed)] = m = finetuned(inputs, space, c, ft, say)
            try:
                r = evaluate(m, space.data_of(c.removed).batches("val", cfg.search.batch_size, indices=inputs.held.score),
                             inputs.torch_device, autocast=inputs.autocast)
                c.recovered_top1, c.recovered_loss = r.top1, r.loss
            except EdgepruneError as e:     # this plan's fine-tune diverged (non-finite outputs): drop it
                say(f"dropping {c.label}: after fine-tune {e}")
                c.recovered_top1, c.recovered_loss = 0.0, math.inf
        if all(math.isinf(c.recovered_loss) for c in fitting):
            raise EdgepruneError(f"every short-listed plan's fine-tune diverged (lr {ft.lr:g}); lower --finetune-lr")
    chosen = choose(fitting)
    mode = cfg.search.select if ft is not None and len(fitting) > 1 else "single"
    selection = Selection(mode, fit.shortlist, chosen)
    say(f"plan: {selection.label}, {PlanState.from_tokens(chosen.removed).describe()}, {chosen.final_ms:.2f} ms on "
        f"{inputs.profile.name}, top-1 on scoring images {chosen.top1:.2%}"
        + (f" ({chosen.recovered_top1:.2%}, loss {chosen.recovered_loss:.4f} after fine-tune)"
           if chosen.recovered_loss is not None else ""))
    dev, amp = inputs.torch_device, inputs.autocast
    before = evaluate(inputs.loaded.model, inputs.final_batches(), dev, "eval (original)", amp).top1
    model = space.model_for(chosen.removed, dev)
    held_out = space.data_of(chosen.removed).batches("val", cfg.search.batch_size, indices=inputs.held.final)
    after_removal = evaluate(model, held_out, dev, "eval (pruned)", amp).top1 if chosen.removed else before
    after_ft = None
    if ft is not None:
        model = tuned.get(plan_key(chosen.removed)) or finetuned(inputs, space, chosen, ft, say)
        after_ft = evaluate(model, held_out, dev, "eval (fine-tuned)", amp).top1
    held = inputs.held
    accuracy = AccuracySection(len(held.final), len(held.score), held.shared, before, after_removal, after_ft,
                               held.describe())
    return Tuned(selection, model.cpu().eval(), accuracy, ft)


def finetuned(inputs: Inputs, space: PlanSpace, c: Candidate, ft: FinetuneConfig, say: Say) -> nn.Module:
    """The plan's model after the build's fine-tune; cached per plan and fine-tune config,
    checkpointed per epoch so an interrupted fine-tune resumes."""
    stage_cfg = {"removed": sorted(c.removed), "finetune": {**ft.to_dict(), "checkpoint": None}}
    done = inputs.cache.path("finetuned", stage_cfg, ".pt")
    m = space.model_for(c.removed, inputs.torch_device)
    state = on_main(lambda: _read_weights(inputs.cache, done))   # rank 0 reads: all ranks fine-tune, or none
    if state is not None:
        try:
            m.load_state_dict(state)
        except Exception:  # noqa: BLE001 - a foreign state dict: fine-tune afresh
            if world().main:
                inputs.cache.discard(done)
            m = space.model_for(c.removed, inputs.torch_device)   # a partly loaded state must not leak in
        else:
            say(f"fine-tuned weights for {c.label} found in the cache")
            return m
    gradual = ft.gradual and bool(PlanState.from_tokens(c.removed).channels)
    say(f"fine-tuning {c.label} ({PlanState.from_tokens(c.removed).describe()}"
        + (", channels removed gradually" if gradual else "") + ")")
    run = replace(ft, checkpoint=str(inputs.cache.path("finetune", stage_cfg, ".ckpt")))
    bundle = space.data_of(c.removed)
    masks = None
    if gradual:
        m, masks = space.gradual(c.removed)
    finetune(m, lambda ep: bundle.batches("train", run.batch_size, shuffle=True, seed=inputs.cfg.seed + ep),
             len(bundle.y_train), run, teacher=inputs.loaded.model if run.kd else None, device=inputs.torch_device,
             warn=say, after_step=masks.after_step if masks is not None else None, autocast=inputs.autocast)
    if masks is not None:
        m = space.finish_gradual(m, masks, c.removed)
    if world().main:                 # every rank holds the same weights (the DDP fine-tune)
        save_torch_atomic(done, m.state_dict())
    return m


def _read_weights(cache: BuildCache, path: Path) -> dict | None:
    """The state dict cached at ``path``, or None (absent, or torn: then it is discarded)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch.load raises many types for a torn or foreign file
        cache.discard(path)
        return None


# ---------------------------------------------------------------- 4b. int8

def quantize_plan(inputs: Inputs, space: PlanSpace, tuned: Tuned, say: Say) -> Int8Choice:
    """The chosen, fine-tuned plan as a float file (exported and simplified as the artifact's) and the mixed
    precision that keeps int8's drop on the scoring images within ``--max-int8-drop`` while it fits."""
    tokens = tuned.selection.chosen.removed
    shape = space.input_shape_of(tokens)
    fp32 = inputs.cache.path("chosen", {"removed": sorted(tokens), "weights": state_fingerprint(tuned.model)}, ".onnx")
    if not readable_onnx(fp32):
        with tempfile.TemporaryDirectory(prefix=".chosen-", dir=fp32.parent) as tmp:
            raw = export_onnx_atomic(tuned.model, shape, Path(tmp) / "exported.onnx")
            vc = VerifyConfig()
            simplify_onnx(raw, Path(tmp) / fp32.name, random_inputs(shape, vc.random_inputs, vc.seed), vc.atol, vc.rtol,
                          vc.threads)
            os.replace(Path(tmp) / fp32.name, fp32)
    budget = inputs.cfg.search.budget_ms
    return quantize_chosen(inputs, space, tokens, fp32, lambda path: judge(inputs, path).value_ms <= budget, say)


# ---------------------------------------------------------------- 5. the artifact

def assemble_artifact(inputs: Inputs, space: PlanSpace, tuned: Tuned, say: Say,
                      int8: Int8Choice | None = None) -> ArtifactResult:
    """Export, simplify, verify and package the chosen model in the cache's staging folder (quantized as
    ``int8`` says, when the build uses int8); the golden vectors and the manifest's preprocessing are
    those of the plan's input size."""
    say("exporting, simplifying and verifying the artifact")
    tokens = tuned.selection.chosen.removed
    held, bundle, state = inputs.held, space.data_of(tokens), PlanState.from_tokens(tokens)
    golden = held.final[:min(GOLDEN_IMAGES, len(held.final))]
    raw = bundle.raw_images("val", golden[:ArtifactConfig().golden_count])
    source = {**inputs.loaded.source, "removed_blocks": sorted(state.blocks),
              "replace_projection": inputs.cfg.search.replace_projection,
              "plan": {"tokens": tokens, "levers": state.levers(), "channel_steps": state.steps,
                       "input_size": list(space.input_shape_of(tokens)[2:])}}
    return build_artifact(tuned.model, space.input_shape_of(tokens), inputs.cache.path("artifact", suffix=""),
                          ArtifactConfig(force=True), images=bundle.preprocess.apply(bundle.x_val[golden]),
                          labels=bundle.y_val[golden], raw_images=raw, preprocess=bundle.preprocess.to_dict(),
                          classes=bundle.classes, source=source, accuracy=tuned.accuracy.to_dict(), progress=say,
                          quantize=Quantization(int8.config, int8.precision, int8.calibration, inputs.cache.folder)
                          if int8 is not None else None)


def shipped_accuracy(inputs: Inputs, space: PlanSpace, tuned: Tuned, artifact: ArtifactResult,
                     int8: Int8Choice | None) -> AccuracySection:
    """The accuracy section with onnxruntime's top-1 of the shipped file (and, for int8, of its float file) on
    the held-out images: the figure a user reads is the artifact's, not torch's."""
    tokens = tuned.selection.chosen.removed
    held_out = space.data_of(tokens).batches("val", inputs.cfg.search.batch_size, indices=inputs.held.final)
    shipped = onnx_accuracy(artifact.path / "model.onnx", held_out).top1
    if int8 is None:
        return replace(tuned.accuracy, onnx_fp32=shipped, precision="fp32")
    return replace(tuned.accuracy, onnx_fp32=onnx_accuracy(int8.fp32_file, held_out).top1, onnx_int8=shipped,
                   precision=artifact.manifest["precision"]["model"])


# ---------------------------------------------------------------- 6. before and after

def before_after(inputs: Inputs, artifact: ArtifactResult, say: Say) -> LatencySection:
    """The device figure of the original and the artifact, and both timed side by side on the host."""
    say("benchmarking on the host (onnxruntime)")
    original = original_onnx(inputs)
    final = artifact.path / "model.onnx"
    m, scfg, host = inputs.cfg.measure, inputs.cfg.search, inputs.host
    bench = BenchConfig(threads=host.threads, providers=list(host.providers), warmup=10, runs=m.bench_runs,
                        device="host")
    # interleaved (A B B A rounds): both models see the same drift of a shared machine
    side: Comparison = compare(final, original, bench, CompareConfig(rounds=m.bench_rounds,
                                                                     max_rounds=m.bench_rounds))
    after: LatencyFigure = inputs.target.figure(final, scfg.metric, m.bench_runs, scfg.confidence)
    before: LatencyFigure = inputs.target.figure(original, scfg.metric, m.bench_runs, scfg.confidence)
    host_pred: Prediction = predict(final, host)
    section = LatencySection(scfg.budget_ms, scfg.metric, inputs.profile.name, after, before, side, host_pred)
    update_manifest(artifact.path, "latency", section.to_dict())
    return section


# ---------------------------------------------------------------- cached ONNX files

def original_onnx(inputs: Inputs) -> Path:
    """The original model exported once into the build's cache (what the anchor, int8 and before/after time)."""
    return cached_onnx(inputs.cache, inputs.cache.path("original", suffix=".onnx"),
                       lambda: inputs.loaded.model.cpu().eval(), inputs.loaded.input_shape)


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
