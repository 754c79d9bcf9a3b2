"""Channel-group importance: what shrinking each group by one step costs, one signature per criterion.

The block criteria (``edgeprune.pipeline.importance``) score removing each block; these score the
channel lever's move, shrinking a group by one step (the step's channels are the first of the
group's order, ``channel_orders``). Every criterion is ``fn(model, groups, batches, ctx) ->
dict[group name, GroupScore]``; a higher ``importance`` means the step costs more.

* ``direct``: the seed's principle applied to channels (and Li et al.'s 2017 sensitivity analysis):
  shrink the group by one step, re-estimate BatchNorm statistics on ``ctx.bn_batches`` (training
  images), measure top-1 and loss on ``batches`` (the scoring images). Importance is the top-1
  lost against the unpruned model with its statistics re-estimated the same way (re-estimation alone
  moves top-1 on a few hundred images by up to a point), loss breaking ties, as direct removal
  scores a block.
* ``magnitude`` and ``bn-scale``: the mean, over the channels the step removes, of the per-channel
  criterion that orders the group (filter L2 norm; |BatchNorm gamma|). Nothing is run; the values
  of different groups are compared as they are, as a global magnitude pruner compares them.

The joint search measures every move it takes (``edgeprune.pipeline.joint``); these scores are the
same move judged once, from the unpruned model: ``edgeprune score --channels`` prints them, and
``benchmarks/studies/channel_criteria.py`` measures how well the proxies rank the groups.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.autocast import OFF, Autocast
from edgeprune.pipeline.channels import (CHANNEL_CRITERIA, ChannelGroup, channel_importance, prune_channels,
                                         reestimate_batchnorm)
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.progress import track

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class GroupScore:
    group: str
    importance: float
    channels: int                 # before the step
    kept: int                     # after one step
    top1: float | None = None     # accuracy after the step (direct only)
    loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupContext:
    input_shape: tuple[int, ...]
    orders: dict[str, list[int]]                    # group -> channels, least important first
    bn_batches: Sequence[torch.Tensor] = ()         # training images re-estimating BatchNorm (direct)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: str | None = None
    autocast: Autocast = OFF                        # the precision of the evaluations (not of the re-estimation)


GroupCriterion = Callable[[nn.Module, Sequence[ChannelGroup], Sequence[Batch], GroupContext], dict[str, GroupScore]]


def _steppable(groups: Sequence[ChannelGroup]) -> list[ChannelGroup]:
    return [g for g in groups if g.max_steps]


def direct_measurement(model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch],
                       ctx: GroupContext) -> dict[str, GroupScore]:
    if not ctx.bn_batches:
        raise EdgepruneError("direct measurement of channel groups needs training images to re-estimate "
                             "BatchNorm statistics")
    # the baseline is re-estimated on the same images: what re-estimation alone does is not the step's cost
    base = evaluate(reestimate_batchnorm(copy.deepcopy(model), ctx.bn_batches, ctx.device), batches, ctx.device,
                    autocast=ctx.autocast)
    out = {}
    for g in track(_steppable(groups), ctx.progress):
        pruned = prune_channels(model, groups, ctx.orders, {g.name: 1}, ctx.input_shape)
        r = evaluate(reestimate_batchnorm(pruned, ctx.bn_batches, ctx.device), batches, ctx.device,
                     autocast=ctx.autocast)
        out[g.name] = GroupScore(g.name, (base.top1 - r.top1) + 1e-6 * (r.loss - base.loss), g.channels, g.kept(1),
                                 r.top1, r.loss)
    return out


def _proxy(channel_criterion: str) -> GroupCriterion:
    def score(model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch],
              ctx: GroupContext) -> dict[str, GroupScore]:
        steppable = _steppable(groups)
        imp = channel_importance(model, steppable, ctx.input_shape, channel_criterion)
        out = {}
        for g in steppable:
            step = ctx.orders[g.name][:g.channels - g.kept(1)]
            out[g.name] = GroupScore(g.name, float(imp[g.name][step].mean()), g.channels, g.kept(1))
        return out
    score.__doc__ = f"Mean {channel_criterion} importance of the channels one step removes."
    return score


GROUP_CRITERIA: dict[str, GroupCriterion] = {
    "direct": direct_measurement,
    **{name: _proxy(name) for name in CHANNEL_CRITERIA},
}


def score_groups(model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[Batch], ctx: GroupContext,
                 criterion: str = "direct") -> dict[str, GroupScore]:
    """Every group that can shrink, scored by ``criterion``."""
    if criterion not in GROUP_CRITERIA:
        raise EdgepruneError(f"unknown channel-group criterion {criterion!r}; choose from {', '.join(GROUP_CRITERIA)}")
    return GROUP_CRITERIA[criterion](model, groups, batches, ctx)
