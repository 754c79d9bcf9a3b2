"""Tiny fine-tunes run by ``test_distributed.py`` in one process or under ``torchrun`` (a script, not a test).

``python finetune_ranks.py OUT`` or ``torchrun --nproc-per-node 2 finetune_ranks.py OUT``: every rank
runs every scenario below and saves ``OUT/rank<r>.pt``: {scenario: {"state": state_dict, "loss": float}}
(the loss of the fine-tuned model, eval mode, on the training images).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.pipeline.channels import ChannelMasks, channel_groups, channel_orders
from edgeprune.pipeline.distributed import barrier, init_from_env
from edgeprune.pipeline.finetune import FinetuneConfig, activation_mb_per_image, finetune
from edgeprune.pipeline.resnet_cifar import CifarResNet

SHAPE = (1, 1, 16, 16)
BASE = dict(epochs=2, batch_size=16, lr=0.05, augment="crop+flip", seed=3)


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images whose brightness gives the label (learnable in a few steps)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    return torch.randn(n, *SHAPE[1:], generator=g) + (y * 2.0 - 1)[:, None, None, None] * 0.5, y


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 16):
    """The global batches of an epoch, shuffled per epoch as the build's are (the same on every rank)."""
    def make(epoch: int):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(100 + epoch))
        return [(x[idx[i:i + size]], y[idx[i:i + size]]) for i in range(0, len(y), size)]
    return make


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return CifarResNet(8, 2, 1)


def no_batchnorm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def result(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    with torch.no_grad():
        loss = F.cross_entropy(model.eval()(x), y).item()
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "loss": loss}


def main(out: Path) -> None:
    here = init_from_env("cpu")
    out.mkdir(parents=True, exist_ok=True)
    x, y = data(64)
    runs: dict[str, dict] = {}

    cfg = FinetuneConfig(**BASE)
    runs["plain"] = result(finetune(resnet(), batches(x, y), len(y), cfg, progress=None), x, y)

    teacher = CifarResNet(8, 2, 1).eval()
    kd = FinetuneConfig(**BASE, kd=True, temperature=2.0, alpha=0.7)
    runs["kd"] = result(finetune(resnet(), batches(x, y), len(y), kd, teacher=teacher, progress=None), x, y)

    # 4-image micro-batches: 4 per batch in one process, 2 per rank's share of 8 on two
    per_image = activation_mb_per_image(resnet(), x[:1])
    micro = FinetuneConfig(**BASE, max_memory_mb=per_image * 1.5 * 4.5)
    runs["micro"] = result(finetune(resnet(), batches(x, y), len(y), micro, progress=None), x, y)

    # 49 images: the last batch holds 1, so on two ranks the second has none (it runs at weight 0)
    xr, yr = data(49)
    ragged = FinetuneConfig(**{**BASE, "augment": "crop"})
    runs["ragged"] = result(finetune(no_batchnorm(), batches(xr, yr), len(yr), ragged, progress=None), xr, yr)

    # checkpoint after every step, interrupted in the middle of the second epoch, resumed
    ck = out / f"ft-{here.size}.ckpt"
    resumable = FinetuneConfig(**BASE, checkpoint=str(ck), checkpoint_every_s=0)

    def interrupted(epoch: int):
        for i, batch in enumerate(batches(x, y)(epoch)):
            if epoch == 1 and i == 2:
                raise KeyboardInterrupt
            yield batch

    try:
        finetune(resnet(), interrupted, len(y), resumable, progress=None)
    except KeyboardInterrupt:
        pass
    runs["resume"] = result(finetune(resnet(), batches(x, y), len(y), resumable, progress=None), x, y)

    # a torn checkpoint: rank 0 reads it, every rank discards it alike and trains from the start
    torn = out / "torn.ckpt"                     # (each world size has its own OUT)
    if here.main:
        torn.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    barrier()
    warned: list[str] = []
    model = finetune(resnet(), batches(x, y), len(y), FinetuneConfig(**BASE, checkpoint=str(torn)),
                     progress=None, warn=warned.append)
    runs["torn"] = {**result(model, x, y), "warned": warned}

    # gradual pruning: the first group's channels masked over the fine-tune (after_step)
    model = resnet()
    groups = channel_groups(model, SHAPE, 2)
    orders = channel_orders(model, groups, SHAPE, "magnitude")
    masks = ChannelMasks(model, groups, orders, {groups[0].name: groups[0].max_steps}, SHAPE)
    finetune(model, batches(x, y), len(y), cfg, progress=None, after_step=masks.after_step)
    runs["gradual"] = {**result(model, x, y), "root": groups[0].name, "dead": masks.removed[groups[0].name]}

    torch.save(runs, out / f"rank{here.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
