"""Top-1 accuracy and cross-entropy loss of a model on a split, on any torch device."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.progress import track

# Images per evaluation/scoring batch. Memory grows with it (a forward pass holds a few of the
# largest activations of the batch; direct-removal scoring about two passes), throughput on a
# CPU hardly does. At 32, direct-removal scoring of a 224-px ResNet-50 adds about 0.5 GiB
# (MobileNetV2: 0.4 GiB) to the process, at 64 about 0.8 GiB (docs/scoring-memory.md); the
# activations themselves scale with the batch, so 250 would take roughly eight times 32's.
EVAL_BATCH_SIZE = 32


@dataclass
class EvalResult:
    top1: float
    loss: float
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(accelerator: str = "cpu") -> torch.device:
    """Map ``--accelerator cpu|cuda[:N]|mps`` to a torch device, or explain why not."""
    try:
        dev = torch.device(accelerator)
    except RuntimeError:
        raise EdgepruneError(f"unknown accelerator {accelerator!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EdgepruneError("--accelerator cuda was asked for but no CUDA device is available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise EdgepruneError("--accelerator mps was asked for but MPS is not available")
    return dev


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | str = "cpu", progress: str | None = None) -> EvalResult:
    """Accuracy and mean loss of ``model`` over ``batches`` (the model is put in eval mode)."""
    device = torch.device(device)
    model.eval().to(device)
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in track(batches, progress):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    if n == 0:
        raise EdgepruneError("no images to evaluate")
    return EvalResult(correct / n, loss_sum / n, n)
