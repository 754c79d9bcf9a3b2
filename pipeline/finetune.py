"""Fine-tuning after block removal, optionally distilling from the unpruned model (Hinton et al. 2015).

``finetune(model, train_batches, config, teacher=None) -> model`` trains in place and
returns the model. SGD or AdamW, cosine schedule over epochs or a fixed step count,
seeded; a checkpoint after every epoch lets an interrupted run resume.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.files import save_torch_atomic
from edgeprune.progress import track


@dataclass
class FinetuneConfig:
    epochs: float = 1.0               # may be fractional; ignored when steps is set
    steps: int | None = None
    optimizer: str = "sgd"            # sgd | adamw
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 128
    seed: int = 0
    kd: bool = False
    temperature: float = 4.0
    alpha: float = 0.9                # weight of the soft (distillation) loss
    augment: str = "crop"             # none | crop | crop+flip
    gradual: bool = False             # channels leave over the fine-tune (Zhu & Gupta's cubic schedule), not at once
    checkpoint: str | None = None     # checkpoint file (resume): written each epoch and every checkpoint_every_s
    checkpoint_every_s: float = 120.0  # of training, so an interruption mid-epoch loses at most this much
    max_memory_mb: float = 2048.0     # activations of one forward/backward: larger batches run in micro-batches

    def to_dict(self) -> dict:
        return asdict(self)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student, labels)


def _augment(x: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    if mode == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 16)
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (torch.arange(h)[None] + dy[:, None]).to(x.device)
    cols = (torch.arange(w)[None] + dx[:, None]).to(x.device)
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    if mode == "crop+flip":
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out[flip] = out[flip].flip(-1)
    return out


def _optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise EdgepruneError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")


def activation_mb_per_image(model: nn.Module, example: torch.Tensor) -> float:
    """Megabytes of layer outputs one image produces in a forward pass (what backward keeps, roughly)."""
    total = 0

    def count(_m, _i, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total / 2**20


def micro_batch(model: nn.Module, cfg: FinetuneConfig, example: torch.Tensor, overhead: float = 1.5) -> int:
    """Images per forward/backward so that the activations stay within ``cfg.max_memory_mb``: the whole
    batch when it fits (then training is exactly batch-at-a-time), else gradients accumulate over
    micro-batches (BatchNorm then sees micro-batch statistics). ``overhead`` covers what backward keeps
    beyond the layer outputs (measured 0.9-1.4x on ResNet-56 at 32 px, MobileNetV2 and ResNet-50 at 224)."""
    per_image = activation_mb_per_image(model, example) * overhead
    return max(1, min(cfg.batch_size, int(cfg.max_memory_mb // max(per_image, 1e-9))))


def finetune(model: nn.Module, make_batches: Callable[[int], object], num_images: int, cfg: FinetuneConfig,
             teacher: nn.Module | None = None, device: torch.device | str = "cpu",
             progress: str | None = "fine-tune", warn: Callable[[str], None] | None = None,
             after_step: Callable[[int, int], None] | None = None) -> nn.Module:
    """Train ``model`` for ``cfg.epochs`` (or ``cfg.steps``); ``make_batches(epoch)`` yields (x, y).
    ``after_step(step, total)`` runs before the first step (``step`` 0, or where a resumed run
    goes on) and after every optimizer step: gradual pruning re-applies its masks there.

    A checkpoint that cannot be read (torn, not a checkpoint, another model's) is treated as
    absent: it is removed, ``warn`` (or a Python warning) says so, and training starts afresh."""
    if cfg.kd and teacher is None:
        raise EdgepruneError("knowledge distillation needs the unpruned teacher model")
    if cfg.augment not in ("none", "crop", "crop+flip"):
        raise EdgepruneError(f"unknown augmentation {cfg.augment!r}; use none, crop or crop+flip")
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    opt = _optimizer(model, cfg)
    micro = 0                                 # sized on the first batch
    per_epoch = max(1, math.ceil(num_images / cfg.batch_size))
    total = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * per_epoch))
    if total <= 0:
        return model.eval()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    step, epoch, in_epoch = 0, 0, 0          # in_epoch: batches of the current epoch already trained on
    gen = torch.Generator().manual_seed(cfg.seed)
    gen_state = None
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    if ckpt is not None and ckpt.is_file():
        fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            state = torch.load(ckpt, map_location=device, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            step, epoch, in_epoch = int(state["step"]), int(state["epoch"]), int(state.get("in_epoch", 0))
            gen_state = state.get("gen") if in_epoch else None   # at an epoch boundary the epoch's seed decides
            if gen_state is not None:
                torch.Generator().set_state(gen_state)
            if not 0 <= step <= total or epoch < 0 or in_epoch < 0:
                raise ValueError(f"step {step} of {total}")
        except Exception as e:  # noqa: BLE001 - torch.load raises many types for a torn or foreign file
            model.load_state_dict(fresh)   # a partly loaded checkpoint must not leak into the fresh run
            opt = _optimizer(model, cfg)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
            step, epoch, in_epoch, gen_state = 0, 0, 0, None
            ckpt.unlink(missing_ok=True)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            message = f"discarded a corrupt fine-tune checkpoint {ckpt.name} ({first}): training from the start"
            if warn is not None:
                warn(message)
            else:
                warnings.warn(message, stacklevel=2)

    def save() -> None:
        save_torch_atomic(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                 "step": step, "epoch": epoch, "in_epoch": in_epoch, "gen": gen.get_state()})

    saved_at = time.monotonic()
    if after_step is not None:
        after_step(step, total)
    bar = iter(track(range(step, total), progress, total=total - step))
    while step < total:
        gen.manual_seed(cfg.seed * 7919 + epoch)
        if gen_state is not None:            # resuming mid-epoch: the augmentation stream goes on where it was
            gen.set_state(gen_state)
            gen_state = None
        for i, (x, y) in enumerate(make_batches(epoch)):
            if step >= total:
                break
            if i < in_epoch:                 # trained on before the interruption
                continue
            x = _augment(x.to(device), cfg.augment, gen)
            y = y.to(device)
            micro = micro or micro_batch(model, cfg, x[:1])
            opt.zero_grad(set_to_none=True)
            for xs, ys in zip(x.split(micro), y.split(micro)):   # one chunk unless the batch exceeds the memory bound
                out = model(xs)
                if cfg.kd:
                    with torch.no_grad():
                        t_out = teacher(xs)
                    loss = kd_loss(out, t_out, ys, cfg.temperature, cfg.alpha)
                else:
                    loss = F.cross_entropy(out, ys)
                (loss * (len(ys) / len(y)) if len(ys) < len(y) else loss).backward()
            opt.step()
            sched.step()
            step += 1
            if after_step is not None:
                after_step(step, total)
            in_epoch = i + 1
            next(bar, None)
            if ckpt is not None and time.monotonic() - saved_at >= cfg.checkpoint_every_s and step < total:
                save()
                saved_at = time.monotonic()
        epoch, in_epoch = epoch + 1, 0
        if ckpt is not None:
            save()
            saved_at = time.monotonic()
    for _ in bar:
        pass
    return model.eval()
