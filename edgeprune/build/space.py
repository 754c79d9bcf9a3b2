"""The build's plan space: the levers it may pull, and what any plan gives.

A plan is a list of tokens (``edgeprune.pipeline.levers``). :class:`PlanSpace` answers, for any
plan: its predicted latency on the budget's device, its model, its input shape and its data.
Each lever registers in :data:`LEVER_MOVES` what moves it offers from a plan and in
:data:`LEVER_LIMIT` the plan with everything it can do done (the fastest it reaches); the joint
search and the unreachable message only go through these two registries.

Latency: the block strategies read a plan of removed blocks from the per-block table; every other plan
is priced by the plan latency table (``devices.plan_latency``: each layer's cost at the plan's kept
widths and input size, a sum of table entries), built from the same one export, so no plan is
exported to be priced; short-listed plans are then exported and judged on their own graphs
(``stages.fit_budget``). Accuracy of a plan that changes
channels or resolution is measured after re-estimating BatchNorm statistics on a fixed, seeded
set of training images at the plan's input size (``StateOracle``); a plan of removed blocks only
keeps today's direct removal, except in the joint search, which re-estimates every plan's statistics so
that all its moves are measured alike. The joint searches screen moves with a second oracle on
:data:`SCREEN_IMAGES` scoring images and measure whole plans on all of them.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from edgeprune.benchmarks.targets import judged_prediction
from edgeprune.devices.block_latency import BlockLatencyTable
from edgeprune.devices.plan_latency import PlanLatencyTable
from edgeprune.devices.predictor import Prediction, predict
from edgeprune.devices.profiles import DeviceProfile
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.pipeline.autocast import OFF, Autocast
from edgeprune.pipeline.blocks import Block, remove_blocks
from edgeprune.pipeline.channels import ChannelGroup, ChannelMasks, prune_channels, reestimate_batchnorm
from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.pipeline.levers import PlanState, is_block_only

BN_IMAGES = 256            # training images that re-estimate BatchNorm statistics after a plan's change
SCREEN_IMAGES = 128        # the joint searches screen moves on this many scoring images (and BN images)


@dataclass
class PlanSpace:
    model: nn.Module                    # the original, eval mode, on the CPU
    input_shape: tuple[int, int, int, int]
    bundle: DataBundle
    blocks: list[Block]
    candidates: list[str]               # removable blocks (moves only when "blocks" is among the levers)
    table: BlockLatencyTable
    metric: str
    shortcuts: dict[str, list[str]]     # a removed projection block leaves its shortcut path behind
    profile: DeviceProfile
    levers: list[str]
    groups: list[ChannelGroup] = field(default_factory=list)
    orders: dict[str, list[int]] = field(default_factory=dict)     # group -> channels, least important first
    sizes: list[int] = field(default_factory=list)                 # resolution steps below the input, descending
    confidence: float | None = None     # plan on the figure the device meets with this chance (else metric)
    latency_memo: dict[str, float] = field(default_factory=dict)   # the profile's judged predictions
    on_latency: Callable[[], None] = lambda: None
    scale: float = 1.0                  # the target's reading of a prediction (``stages.anchor``): measured / predicted
    plans: PlanLatencyTable | None = None   # any plan's latency without exporting it (None: export and predict)

    # ------------------------------------------------------------ what a plan gives

    def input_shape_of(self, tokens: Sequence[str]) -> tuple[int, int, int, int]:
        r = PlanState.from_tokens(tokens).resolution
        n, c, h, w = self.input_shape
        return (n, c, h, w) if r is None else (n, c, r, r)

    def data_of(self, tokens: Sequence[str]) -> DataBundle:
        shape = self.input_shape_of(tokens)
        return self.bundle.at_size((shape[2], shape[3]))

    def apply(self, tokens: Sequence[str]) -> nn.Module:
        """The plan's structure (BatchNorm statistics as the original's): what is exported and timed."""
        if not tokens:
            return self.model
        s = PlanState.from_tokens(tokens)
        model = self.model
        if s.channels:
            model = prune_channels(model, self.groups, self.orders, s.steps, self.input_shape_of(tokens))
        if s.blocks:
            model = remove_blocks(model, sorted(s.blocks), self.blocks, replace_projection=True)
        return model

    def model_for(self, tokens: Sequence[str], device: torch.device, bn_images: int = BN_IMAGES,
                  reestimate: bool | None = None) -> nn.Module:
        """The plan's model as it is fine-tuned (and measured, with ``reestimate=True``): a plan that
        changes channels or the input size (or any plan, with ``reestimate``) gets BatchNorm statistics
        re-estimated on ``bn_images`` training images at its size (the first of one seeded shuffle, the
        same for every plan). The original is never changed."""
        model = self.apply(tokens)
        if not (not is_block_only(tokens) if reestimate is None else reestimate):
            return model
        if model is self.model:
            model = copy.deepcopy(model)
        return reestimate_batchnorm(model, bn_batches(self.data_of(tokens), bn_images), device)

    def table_latency(self, removed: Sequence[str]) -> float:
        """Predicted ms of the model minus ``removed`` blocks from the per-block table (fast): what the
        block strategies plan with (``metric`` p90: the band's upper edge; with ``confidence``, the figure
        the device meets with that chance), read at the target's ``scale``."""
        ms = self.table.predict_without(removed, self.kept_shortcuts(removed))
        return self.scale * judged_prediction(ms, self.table.expected_error, self.metric, self.confidence)

    def kept_shortcuts(self, removed: Iterable[str]) -> list[str]:
        """What removed projection blocks leave behind: their shortcut paths (the latency tables' ``keep``)."""
        return [m for r in removed for m in self.shortcuts.get(r, [])]

    def gradual(self, tokens: Sequence[str]) -> tuple[nn.Module, ChannelMasks]:
        """The plan's blocks removed, its channels still there but masked (``ChannelMasks``), for a
        fine-tune that removes them gradually; :meth:`finish_gradual` then prunes them."""
        s = PlanState.from_tokens(tokens)
        model = (remove_blocks(self.model, sorted(s.blocks), self.blocks, replace_projection=True) if s.blocks
                 else copy.deepcopy(self.model))
        return model, ChannelMasks(model, self.groups, self.orders, s.steps, self.input_shape_of(tokens))

    def finish_gradual(self, model: nn.Module, masks: ChannelMasks, tokens: Sequence[str]) -> nn.Module:
        """The gradually fine-tuned model with its masked channels removed: the plan's structure."""
        masks.apply(1.0)
        return prune_channels(model, masks.groups, masks.orders, masks.steps, self.input_shape_of(tokens))

    def latency(self, tokens: Sequence[str]) -> float:
        """Predicted ms of the plan on the budget's device. With block removal the only lever, the
        per-block table; otherwise every plan, the original included, from the plan latency table (or,
        without one, exported and predicted), so the joint searches compare savings from one source.
        Read at the target's ``scale``."""
        if self.levers == ["blocks"] and is_block_only(tokens):
            return self.table_latency(tokens)
        if self.plans is not None:
            s = PlanState.from_tokens(tokens)
            widths = {g.name: g.kept(n) for g in self.groups if (n := s.steps.get(g.name))}
            try:
                ms = self.plans.predict(s.blocks, self.kept_shortcuts(s.blocks), widths, s.resolution)
            except EdgepruneError:     # the graph does not infer at that input size: export the plan instead
                self.plans = None
            else:
                return self.scale * judged_prediction(ms, self.plans.expected_error, self.metric, self.confidence)
        key = ",".join(sorted(tokens))
        if key not in self.latency_memo:
            p = plan_prediction(self.apply(tokens), self.input_shape_of(tokens), self.profile)
            self.latency_memo[key] = judged_prediction(p.latency_ms, p.expected_error, self.metric, self.confidence)
            self.on_latency()
        return self.scale * self.latency_memo[key]

    # ------------------------------------------------------------ the levers

    def moves(self, state: PlanState) -> dict[str, PlanState]:
        """Every move the enabled levers offer from ``state``, by label."""
        out: dict[str, PlanState] = {}
        for lever in self.levers:
            out.update(LEVER_MOVES[lever](self, state))
        return out

    def available(self) -> list[str]:
        """The levers this model offers anything to (removable blocks, channel groups, smaller sizes)."""
        parts = {"blocks": self.candidates, "channels": self.groups, "resolution": self.sizes}
        return [lever for lever in LEVER_MOVES if parts[lever]]

    def limit(self, levers: Sequence[str], state: PlanState = PlanState()) -> PlanState:
        """``state`` with everything ``levers`` can do done: the fastest plan they reach."""
        for lever in levers:
            state = LEVER_LIMIT[lever](self, state)
        return state


def bn_batches(data: DataBundle, images: int = BN_IMAGES) -> list[torch.Tensor]:
    """The training images that re-estimate a changed model's BatchNorm statistics: the first ``images``
    of one seeded shuffle (the same for every plan), in batches of 64."""
    return [x for x, _ in data.batches("train", 64, indices=data.sample("train", images))]


def plan_prediction(model: nn.Module, input_shape: Sequence[int], device: DeviceProfile | str) -> Prediction:
    """``model`` exported as the joint search exports its plans (TorchScript, a temporary file) and predicted."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-plan-") as tmp:
        path = Path(tmp) / "plan.onnx"
        export_onnx(model.cpu().eval(), input_shape, path, ExportConfig(dynamo=False))
        return predict(path, device)


def _block_moves(space: PlanSpace, state: PlanState) -> dict[str, PlanState]:
    return {f"remove {b}": state.with_block(b) for b in space.candidates if b not in state.blocks}


def _channel_moves(space: PlanSpace, state: PlanState) -> dict[str, PlanState]:
    steps = state.steps
    return {f"shrink {g.name}": state.with_channel_step(g.name) for g in space.groups
            if steps.get(g.name, 0) < g.max_steps}


def _resolution_moves(space: PlanSpace, state: PlanState) -> dict[str, PlanState]:
    lower = [s for s in space.sizes if state.resolution is None or s < state.resolution]
    return {"lower input": state.with_resolution(lower[0])} if lower else {}


def _blocks_limit(space: PlanSpace, state: PlanState) -> PlanState:
    return PlanState(state.blocks | set(space.candidates), state.channels, state.resolution)


def _channels_limit(space: PlanSpace, state: PlanState) -> PlanState:
    return PlanState(state.blocks, tuple(sorted((g.name, g.max_steps) for g in space.groups if g.max_steps)),
                     state.resolution)


def _resolution_limit(space: PlanSpace, state: PlanState) -> PlanState:
    return state.with_resolution(space.sizes[-1]) if space.sizes else state


LEVER_MOVES: dict[str, Callable[[PlanSpace, PlanState], dict[str, PlanState]]] = {
    "blocks": _block_moves, "channels": _channel_moves, "resolution": _resolution_moves}
LEVER_LIMIT: dict[str, Callable[[PlanSpace, PlanState], PlanState]] = {
    "blocks": _blocks_limit, "channels": _channels_limit, "resolution": _resolution_limit}


class StateOracle:
    """Top-1 and loss of any plan on the scoring images, measured on the plan's own model
    (``PlanSpace.model_for``) with BatchNorm statistics re-estimated for every plan, the unpruned and
    block-only ones included: re-estimation alone moves top-1 on a few hundred scoring images by up
    to a point (docs/channel-criteria.md), which would otherwise count for whichever move first
    changes channels. Memoised by the plan's key (plain JSON, cached with the build)."""

    def __init__(self, space: PlanSpace, score: torch.Tensor, batch_size: int, device: torch.device,
                 memo: dict[str, list[float]] | None = None, on_update: Callable[[], None] = lambda: None,
                 bn_images: int = BN_IMAGES, autocast: Autocast = OFF):
        self.space, self.score, self.batch_size, self.device = space, score, batch_size, device
        self.bn_images, self.autocast = bn_images, autocast
        self.memo = memo if memo is not None else {}
        self.on_update = on_update
        self.evaluations = 0
        self.images = 0                 # images run through the model: BatchNorm re-estimation and scoring

    def __call__(self, tokens: Sequence[str]) -> tuple[float, float]:
        key = ",".join(sorted(tokens))
        if key not in self.memo:
            model = self.space.model_for(tokens, self.device, self.bn_images, reestimate=True)
            batches = self.space.data_of(tokens).batches("val", self.batch_size, indices=self.score)
            r = evaluate(model, batches, self.device, autocast=self.autocast)
            self.memo[key] = [r.top1, r.loss]
            self.evaluations += 1
            self.images += min(self.bn_images, len(self.space.bundle.y_train)) + len(self.score)
            self.on_update()
        top1, loss = self.memo[key]
        return top1, loss

    def measure(self, states: Sequence[PlanState]) -> list[tuple[float, float]]:
        return [self(s.tokens()) for s in states]
