"""Top-1 accuracy and cross-entropy loss of a model on a split, on any torch device."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.autocast import OFF, Autocast
from edgeprune.pipeline.distributed import BatchSums, world
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


ACCELERATORS = "cpu, cuda, cuda:N"   # what --accelerator accepts (N below the number of CUDA devices)
_ACCELERATOR = re.compile(r"(cpu|cuda)(?::(\d+))?")


def _probe(dev: torch.device) -> None:
    """Put one value on ``dev`` (raises when the device is there but cannot be used)."""
    torch.zeros(1, device=dev).add_(1).item()


def resolve_device(accelerator: str = "cpu") -> torch.device:
    """Map ``--accelerator cpu|cuda|cuda:N`` to a usable torch device, or explain in one line why not.

    Only the device types the tool supports are accepted: other torch device types (``meta``, ``xla``,
    ``hpu``, ``mps``, ...) are refused even where torch knows them, as are ``cuda`` without a usable CUDA
    device and ``cuda:N`` beyond the devices present."""
    text = str(accelerator).strip().lower()
    m = _ACCELERATOR.fullmatch(text)
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise EdgepruneError(f"unknown accelerator {accelerator!r}; --accelerator accepts {ACCELERATORS} "
                             "(N below the number of CUDA devices)")
    if m.group(1) == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise EdgepruneError(f"--accelerator {text} was asked for but no CUDA device is available here; "
                             f"--accelerator accepts {ACCELERATORS}: use cpu")
    index = int(m.group(2)) if m.group(2) is not None else None
    if index is not None and index >= count:
        present = "cuda:0" if count == 1 else f"cuda:0..cuda:{count - 1}"
        raise EdgepruneError(f"--accelerator {text}: there {'is' if count == 1 else 'are'} only {count} CUDA "
                             f"device{'' if count == 1 else 's'} here ({present}); "
                             f"--accelerator accepts {ACCELERATORS} with N below {count}")
    dev = torch.device("cuda", index) if index is not None else torch.device("cuda")
    try:
        _probe(dev)
    except (RuntimeError, AssertionError) as e:   # torch.cuda raises AssertionError when not compiled with CUDA
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgepruneError(f"--accelerator {text} cannot be used: {detail}") from None
    return dev


def _batch_range(start: int, count: int) -> str:
    return f"image {start}" if count == 1 else f"images {start}-{start + count - 1}"


@torch.no_grad()
def forward(model: nn.Module, x: torch.Tensor, where: str) -> torch.Tensor:
    """``model(x)``; a model that fails on real data is one line naming where, not a traceback."""
    try:
        return model(x)
    except EdgepruneError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a user's model raises
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise EdgepruneError(f"the model fails on {where} of shape {tuple(x.shape)}: {type(e).__name__}: {first}") \
            from None


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | str = "cpu", progress: str | None = None,
             autocast: Autocast = OFF) -> EvalResult:
    """Accuracy and mean loss of ``model`` over ``batches`` (the model is put in eval mode); the forward
    passes run under ``autocast``, accuracy and loss are counted from float32 logits.

    Refuses (one line, exit 2) a batch whose inputs or outputs are not finite: an accuracy or loss
    computed from NaN/inf logits would be a number that cannot be trusted."""
    device = torch.device(device)
    model.eval().to(device)
    sums, here, n = BatchSums(), world(), 0      # under torchrun each rank runs its share of the batches
    if here.size > 1 and hasattr(batches, "only_batches"):
        batches = batches.only_batches(here.runs)   # ... and reads only those (a streamed set: decodes only those)
    total = f" of {len(batches)}" if hasattr(batches, "__len__") else ""
    for i, (x, y) in enumerate(track(batches, progress), 1):
        before, n = n, n + len(y)                # images before this batch (for the messages), and through it
        if not here.runs(i - 1):
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise EdgepruneError(f"the inputs of batch {i}{total} ({_batch_range(before, len(y))}) are not finite (NaN or "
                                 "inf): check the data and its --mean/--std")
        with autocast(device):
            out = forward(model, x, f"batch {i}{total} ({_batch_range(before, len(y))})")
        out = out.float()
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out.reshape(len(out), -1))).any(1).sum()) if out.dim() else len(y)
            raise EdgepruneError(f"the model's outputs on batch {i}{total} ({_batch_range(before, len(y))}) are not finite "
                                 f"(NaN or inf for {bad} of {len(y)} images): no accuracy can be computed from "
                                 "them; check the weights (overflow, a diverged fine-tune) and the data"
                                 + ("; float16 overflows sooner: try --autocast bf16 or off" if autocast.dtype == "fp16"
                                    else ""))
        sums.add(i, "", [(out.argmax(1) == y).sum().item(), F.cross_entropy(out, y, reduction="sum").item(), len(y)])
    correct, loss_sum, images = sums.totals().get("", [0, 0.0, 0])
    if images == 0:
        raise EdgepruneError("no images to evaluate")
    return EvalResult(correct / images, loss_sum / images, int(images))
