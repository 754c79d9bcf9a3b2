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
    used for the final figure, so the reported accuracy is not the one the plan was chosen on.

    Both parts are stratified by class (see :func:`split_val`); ``score_counts`` and
    ``final_counts`` hold each part's number of images per class, keyed by class name.
    """

    score: torch.Tensor
    final: torch.Tensor
    shared: bool = False           # too few images: both parts are the same set
    seed: int = 0
    score_counts: dict[str, int] = field(default_factory=dict)
    final_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """What the split is, for reports and manifests: sizes, seed and per-class counts."""
        return {"method": "stratified", "seed": self.seed, "shared": self.shared,
                "score_images": len(self.score), "final_images": len(self.final),
                "per_class": {c: {"score": self.score_counts.get(c, 0), "final": self.final_counts.get(c, 0)}
                              for c in dict.fromkeys([*self.score_counts, *self.final_counts])}}

    def describe(self) -> str:
        """One line: e.g. ``500 scoring images (50 per class) / 1500 held out (150 per class), stratified
        over 10 classes, seed 0``."""
        n_classes = len(set(self.score_counts) | set(self.final_counts))
        if self.shared:
            return (f"{len(self.score)} scoring images ({_per_class(self.score_counts)}), final figure on all "
                    f"{len(self.final)} ({_per_class(self.final_counts)}, shared: the set is small), "
                    f"stratified over {n_classes} classes, seed {self.seed}")
        return (f"{len(self.score)} scoring images ({_per_class(self.score_counts)}) / {len(self.final)} held out "
                f"({_per_class(self.final_counts)}), stratified over {n_classes} classes, seed {self.seed}")


def _per_class(counts: dict[str, int]) -> str:
    values = list(counts.values())
    if not values:
        return "none"
    if min(values) == max(values):
        return f"{values[0]} per class"
    return f"{min(values)}-{max(values)} per class: " + ", ".join(f"{c} {n}" for c, n in counts.items())


def _quotas(sizes: list[int], total: int) -> list[int]:
    """``total`` shared out in proportion to ``sizes`` by largest remainder (ties: the larger class,
    then the lower label), so the quotas sum to exactly ``total``; no quota exceeds its size."""
    n = sum(sizes)
    floors = [total * s // n for s in sizes]
    rest = total - sum(floors)
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(total * sizes[i] % n), -sizes[i], i))
    for i in by_remainder[:rest]:
        floors[i] += 1
    return floors


def _interleave(groups: list[torch.Tensor]) -> torch.Tensor:
    """Merge per-class index lists so that every prefix holds each class in proportion to its share
    (within one image): the j-th image of a class of m images sits at (j + 1/2) / m."""
    keys, order, ids = [], [], []
    for c, g in enumerate(groups):
        m = len(g)
        if m == 0:
            continue
        keys.append((torch.arange(m, dtype=torch.float64) + 0.5) / m)
        order.append(torch.full((m,), c, dtype=torch.int64))
        ids.append(g)
    if not ids:
        return torch.zeros(0, dtype=torch.int64)
    key, cls, idx = torch.cat(keys), torch.cat(order), torch.cat(ids)
    # sort by (key, class): the class breaks ties, so the order is fully determined
    rank = torch.argsort(cls, stable=True)
    rank = rank[torch.argsort(key[rank], stable=True)]
    return idx[rank]


def split_val(bundle: DataBundle, score_images: int, seed: int = 0) -> HeldOut:
    """Split the validation images into a scoring part of ``score_images`` and a held-out rest.

    Per class, from a seeded shuffle: each class gives the scoring part its share of
    ``score_images`` (largest-remainder rounding, so the total is exact) and the rest of its
    images to the held-out part. Both parts are interleaved across classes, so any prefix of
    either (the first 256 held-out images used for golden vectors, say) is stratified too.
    With fewer than ``score_images + 100`` images both parts share the set (``shared``): the
    scoring part is a stratified ``score_images`` of them and the final figure uses them all.
    """
    labels = bundle.y_val.to(torch.int64)
    n = len(labels)
    if score_images <= 0:
        raise EdgepruneError("--score-images must be positive")
    present = torch.unique(labels).tolist()
    g = torch.Generator().manual_seed(seed)
    per_class = []
    for c in present:
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        per_class.append(idx[torch.randperm(len(idx), generator=g)])
    shared = n < score_images + 100
    quotas = _quotas([len(i) for i in per_class], min(n, score_images))
    score_parts = [i[:q] for i, q in zip(per_class, quotas)]
    final_parts = per_class if shared else [i[q:] for i, q in zip(per_class, quotas)]
    names = [bundle.classes[c] if 0 <= c < len(bundle.classes) else str(c) for c in present]
    return HeldOut(_interleave(score_parts), _interleave(final_parts), shared, seed,
                   {k: len(v) for k, v in zip(names, score_parts)},
                   {k: len(v) for k, v in zip(names, final_parts)})


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
