"""Prune = rank blocks, pick the plan, remove, optionally fine-tune: model in, model out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.blocks import Block, remove_blocks
from edgeprune.pipeline.data import DataBundle
from edgeprune.pipeline.importance import (Score, ScoreContext, candidates_for, get_criterion, rank_iterative)


@dataclass
class HeldOut:
    """Validation images split in two: one part scores blocks and picks plans, the other is only
    used for the final figure, so the reported accuracy is not the one the plan was chosen on."""

    score: torch.Tensor
    final: torch.Tensor
    shared: bool = False           # too few images: both parts are the same set


def split_val(bundle: DataBundle, score_images: int) -> HeldOut:
    n = len(bundle.y_val)
    if score_images <= 0:
        raise EdgepruneError("--score-images must be positive")
    if n < score_images + 100:
        idx = torch.arange(min(n, score_images))
        return HeldOut(idx, torch.arange(n), shared=True)
    return HeldOut(torch.arange(score_images), torch.arange(score_images, n))


@dataclass
class Ranking:
    criterion: str
    mode: str                                   # oneshot | iterative
    order: list[str]                            # least important first
    scores: dict[str, Score]                    # one-shot scores (first step of iterative)
    steps: list[dict] = field(default_factory=list)  # iterative: what each step removed and saw

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "mode": self.mode, "order": self.order,
                "scores": {k: v.to_dict() for k, v in self.scores.items()}, "steps": self.steps}


def rank_blocks(model: nn.Module, blocks: Sequence[Block], batches: Sequence, ctx: ScoreContext,
                criterion: str = "direct", mode: str = "oneshot", k: int | None = None) -> Ranking:
    """Order the candidate blocks from least to most important."""
    if mode == "oneshot":
        scores = get_criterion(criterion)(model, blocks, batches, ctx)
        order = sorted(scores, key=lambda n: (scores[n].importance, n))
        return Ranking(criterion, mode, order, scores)
    if mode == "iterative":
        steps = rank_iterative(model, blocks, batches, ctx, criterion, k)
        order = [s.removed for s in steps]
        return Ranking(criterion, mode, order, steps[0].scores if steps else {},
                       [{"removed": s.removed, "importance": s.scores[s.removed].importance,
                         "top1": s.scores[s.removed].top1} for s in steps])
    raise EdgepruneError(f"unknown mode {mode!r}; use oneshot or iterative")


@dataclass
class PrunePlan:
    removed: list[str]
    replace_projection: bool = False

    def apply(self, model: nn.Module, blocks: Sequence[Block]) -> nn.Module:
        return remove_blocks(model, self.removed, list(blocks), self.replace_projection)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_remove_k(ranking: Ranking, k: int, replace_projection: bool) -> PrunePlan:
    if k < 0 or k > len(ranking.order):
        raise EdgepruneError(f"--remove {k}: there are {len(ranking.order)} removable blocks")
    return PrunePlan(ranking.order[:k], replace_projection)


def candidates(blocks: Sequence[Block], replace_projection: bool) -> list[Block]:
    return candidates_for(blocks, replace_projection)
