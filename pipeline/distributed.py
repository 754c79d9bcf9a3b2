"""Evaluation across processes under ``torchrun``: the same figures on 1 or N processes, to the last bit.

``torchrun --nproc-per-node N -m edgeprune score ...`` (or across hosts with torchrun's rendezvous)
starts N processes with ``RANK``/``WORLD_SIZE`` set; :func:`init_from_env` joins them in one process
group (Gloo on CPUs, NCCL with ``--accelerator cuda``). Every evaluation then splits its batches
across the ranks, whole batches, round robin: batch i runs on rank i mod N, exactly as it would in one
process (same images, same batch, so the same logits), and each rank's per-batch sums (correct
count, summed loss, images) are gathered and added up in batch order (:class:`BatchSums`), the same
additions in the same order as one process makes. So top-1 and loss, and every score and plan built
on them, are the same numbers on 1 and N processes, bit for bit. Each rank still reads every batch
(cheap beside the forward pass it skips).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from edgeprune.errors import EdgepruneError


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
    """This process's place among the processes of the run (0 of 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
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
        dist.init_process_group(backend)
    except Exception as e:  # noqa: BLE001 - a rendezvous that fails: one line
        raise EdgepruneError(f"could not join the torchrun process group ({backend}): {type(e).__name__}: {e}") from None
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return world()


@dataclass
class BatchSums:
    """Per-batch sums of named figures (e.g. correct, loss, images per block), totalled in batch order
    over every rank's batches."""

    rows: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, batch: int, key: str, values: list[float]) -> None:
        row = self.rows.setdefault(batch, {})
        old = row.get(key)
        row[key] = list(values) if old is None else [a + b for a, b in zip(old, values)]

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
