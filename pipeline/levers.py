"""Plan levers and the one representation of a plan that combines them.

A plan is a list of *tokens*, each naming one thing done to the original model:

* ``layer1.3``                        the block is removed (a bare block name, as always)
* ``channels:features.3.conv.0.0=2``  that channel group is shrunk by two steps
* ``resolution:48``                   the model is fed 48x48 images instead of its own size

A plan is a state, not a history: each group appears once with its total steps, so the same
model always has the same tokens (sorted, the plan's key). :class:`PlanState` parses and writes
them. The levers a build may pull are named in :data:`LEVERS`; ``blocks`` and ``channels`` keep
the model's input contract, ``resolution`` changes what the firmware must feed (opt-in). ``int8``
is no plan token: it quantizes the fine-tuned plan's file (:data:`AFTER_TRAINING`), and the search
plans against the budget that int8 leaves the float plan (``edgeprune.build.int8``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from edgeprune.errors import EdgepruneError

# lever -> what it does (the CLI's help and the unknown-lever message list these)
LEVERS: dict[str, str] = {
    "blocks": "remove whole residual blocks (direct removal, the seed method)",
    "channels": "shrink groups of coupled channels (Torch-Pruning's dependency graph)",
    "resolution": "feed smaller images (changes the input the firmware must send)",
    "int8": "quantize the fine-tuned plan to 8-bit integers (onnxruntime static QDQ), where the device's latency falls",
}
DEFAULT_LEVERS = ("blocks", "channels")
AFTER_TRAINING = ("int8",)      # levers applied to the fine-tuned plan's file, not moves of the plan search
CHANNELS, RESOLUTION = "channels:", "resolution:"


def parse_levers(levers: Iterable[str]) -> list[str]:
    """The levers named (``--levers blocks,channels`` or a list), validated, in :data:`LEVERS` order."""
    names = [p.strip() for item in levers for p in str(item).split(",") if p.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if unknown or not names:
        raise EdgepruneError(f"unknown lever{'s' if len(unknown) > 1 else ''} {', '.join(unknown) or '(none given)'}; "
                             f"known: {', '.join(LEVERS)}")
    return [lever for lever in LEVERS if lever in names]


def plan_levers(levers: Sequence[str]) -> list[str]:
    """The levers that are moves of the plan search (``int8`` is applied after fine-tune instead)."""
    return [lever for lever in levers if lever not in AFTER_TRAINING]


@dataclass(frozen=True)
class PlanState:
    """What a plan does to the original model: blocks removed, channel steps per group, input size."""

    blocks: frozenset[str] = frozenset()
    channels: tuple[tuple[str, int], ...] = ()      # (group, steps), sorted, steps > 0
    resolution: int | None = None                   # None: the model's own input size

    @classmethod
    def from_tokens(cls, tokens: Sequence[str]) -> "PlanState":
        blocks, channels, resolution = set(), {}, None
        for t in tokens:
            if t.startswith(CHANNELS):
                group, sep, steps = t[len(CHANNELS):].rpartition("=")
                if not sep or not group or not steps.isdigit():
                    raise ValueError(f"bad channel token {t!r}")
                channels[group] = int(steps)
            elif t.startswith(RESOLUTION):
                size = t[len(RESOLUTION):]
                if not size.isdigit():
                    raise ValueError(f"bad resolution token {t!r}")
                resolution = int(size)
            else:
                blocks.add(t)
        return cls(frozenset(blocks), tuple(sorted((g, s) for g, s in channels.items() if s > 0)), resolution)

    def tokens(self) -> list[str]:
        return sorted([*self.blocks, *(f"{CHANNELS}{g}={s}" for g, s in self.channels),
                       *([f"{RESOLUTION}{self.resolution}"] if self.resolution is not None else [])])

    @property
    def steps(self) -> dict[str, int]:
        return dict(self.channels)

    def with_block(self, name: str) -> "PlanState":
        return PlanState(self.blocks | {name}, self.channels, self.resolution)

    def with_channel_step(self, group: str) -> "PlanState":
        steps = self.steps
        steps[group] = steps.get(group, 0) + 1
        return PlanState(self.blocks, tuple(sorted(steps.items())), self.resolution)

    def with_resolution(self, size: int) -> "PlanState":
        return PlanState(self.blocks, self.channels, size)

    def levers(self) -> list[str]:
        """The levers this plan pulls, in :data:`LEVERS` order."""
        used = {"blocks": bool(self.blocks), "channels": bool(self.channels), "resolution": self.resolution is not None}
        return [lever for lever in LEVERS if used.get(lever)]

    def describe(self) -> str:
        parts = []
        if self.blocks:
            parts.append(f"{len(self.blocks)} block{'s' if len(self.blocks) > 1 else ''} removed")
        if self.channels:
            total = sum(s for _, s in self.channels)
            parts.append(f"{len(self.channels)} channel group{'s' if len(self.channels) > 1 else ''} shrunk "
                         f"({total} step{'s' if total > 1 else ''})")
        if self.resolution is not None:
            parts.append(f"input {self.resolution}x{self.resolution}")
        return ", ".join(parts) or "unchanged"


def is_block_only(tokens: Sequence[str]) -> bool:
    return not any(t.startswith((CHANNELS, RESOLUTION)) for t in tokens)


def resolution_steps(size: int, floor: int, step: int) -> list[int]:
    """Candidate input sizes below ``size``, ``step`` pixels apart, down to ``floor`` (inclusive)."""
    if floor > size:
        raise EdgepruneError(f"--min-resolution {floor} is above the model's input size {size}")
    if step < 1:
        raise EdgepruneError(f"--resolution-step must be at least 1, got {step}")
    return list(range(size - step, floor - 1, -step))

