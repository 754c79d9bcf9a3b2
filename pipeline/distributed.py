"""Evaluation across processes under ``torchrun``: the same figures on 1 or N processes, to the last bit.

``torchrun --nproc-per-node N -m edgeprune score ...`` (or across hosts with torchrun's rendezvous)
starts N processes with ``RANK``/``WORLD_SIZE`` set; :func:`init_from_env` joins them in one process
group (Gloo on CPUs, NCCL with ``--accelerator cuda``). Every evaluation then splits its batches
across the ranks, whole batches, round robin: batch i runs on rank i mod N, exactly as it would in one
process (same images, same batch, so the same logits), and each rank's per-batch sums (correct
count, summed loss, images) are gathered and added up in batch order (:class:`BatchSums`), the same
additions in the same order as one process makes. So top-1 and loss, and every score and plan built
on them, are the same numbers on 1 and N processes, bit for bit. ``evaluate`` has a rank read only the
batches it runs (``Batches.only_batches``: a streamed ImageFolder decodes only those); the scoring
batches are held in memory, and a fine-tune's rank decodes each whole global batch and trains on its share.

A build under torchrun runs on every rank alike, so every rank reaches the same plans; what must
happen once (a measurement on the host or a board, a calibration) runs on rank 0 and is broadcast
(:func:`on_main`), and the artifact, its timing and its report are rank 0's alone (:func:`alone`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from edgeprune.errors import EdgepruneError

T = TypeVar("T")
# a collective waits this long for the slowest rank: a build's ranks fine-tune side by side between two
GROUP_TIMEOUT = datetime.timedelta(hours=6)
_alone = False                 # inside ``alone()``: this rank acts as the only one


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def runs(self, batch: int) -> bool:
        """Whether batch number ``batch`` (0-based) is this rank's."""
        return batch % self.size == self.rank


def world() -> World:
    """This process's place among the processes of the run (0 of 1 outside torchrun, and inside ``alone``)."""
    if not _alone and dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(accelerator: str = "cpu") -> World:
    """Join the process group torchrun set up (Gloo on CPUs, NCCL for CUDA); a no-op outside torchrun."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise EdgepruneError("this torch build has no torch.distributed: run edgeprune without torchrun")
    backend = "nccl" if accelerator.startswith("cuda") else "gloo"
    try:
        dist.init_process_group(backend, timeout=GROUP_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - a rendezvous that fails: one line
        raise EdgepruneError(f"could not join the torchrun process group ({backend}): {type(e).__name__}: {e}") from None
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return world()


def leave(together: bool) -> None:
    """Leave the process group torchrun's ranks joined (nothing outside torchrun). ``together``: first wait for
    every rank, so that none exits while another still talks to it; a failing rank leaves at once (torchrun
    stops the others)."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Work that one rank does for all (export, timing, the artifact): no collective inside, and every
    evaluation in it runs on all its batches here."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def barrier() -> None:
    """Wait until every rank is here (nothing outside torchrun)."""
    if world().size > 1:
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone and its result given to every rank: a measurement on one machine, a
    calibration, anything that must happen once and be the same for all."""
    here = world()
    value = None
    if here.main:
        with alone():
            value = fn()
    if here.size > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value  # type: ignore[return-value]


@dataclass
class BatchSums:
    """Per-batch sums of named figures (e.g. correct, loss, images per block), totalled in batch order
    over every rank's batches."""

    rows: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, batch: int, key: str, values: list[float]) -> None:
        """Batch ``batch``'s sums for ``key`` (one call per batch and key)."""
        self.rows.setdefault(batch, {})[key] = list(values)

    def totals(self) -> dict[str, list[float]]:
        """Every key's sums over all batches of all ranks, added in batch order (a collective under torchrun:
        every rank must call it)."""
        rows = dict(self.rows)
        if world().size > 1:
            gathered: list[dict | None] = [None] * world().size
            dist.all_gather_object(gathered, self.rows)
            rows = {b: r for part in gathered for b, r in (part or {}).items()}
        out: dict[str, list[float]] = {}
        for b in sorted(rows):
            for key, values in rows[b].items():
                acc = out.get(key)
                out[key] = list(values) if acc is None else [a + v for a, v in zip(acc, values)]
        return out
