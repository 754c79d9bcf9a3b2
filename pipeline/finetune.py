"""Fine-tuning after block removal, optionally distilling from the unpruned model (Hinton et al. 2015).

``finetune(model, train_batches, config, teacher=None) -> model`` trains in place and
returns the model. SGD or AdamW, cosine schedule over epochs or a fixed step count,
seeded; a checkpoint after every epoch lets an interrupted run resume.

Under ``torchrun`` with several processes it trains with DistributedDataParallel: every rank reads
the same global batches (the one-process order) and trains on its contiguous share of each
(:func:`shard`), gradients averaged by DDP's all-reduce and each rank's loss weighted by its share,
so a step is the one-process step on the whole batch (same effective batch, same schedule) up to the
order of floating-point additions. The augmentation's random draws are made for the whole global
batch on every rank, so an image is shifted and flipped as in one process. BatchNorm normalises with
the statistics of the rank's share (as a micro-batch does in one process; on CUDA torch's
SyncBatchNorm uses the whole global batch instead); the running statistics are averaged over the
ranks after every step, so every rank holds, checkpoints and returns the same model, bit for bit.
Rank 0 alone reads and writes the checkpoint; what it read is broadcast, so the ranks resume alike.

With an ``autocast`` (:mod:`edgeprune.pipeline.autocast`) the forward passes, the teacher's too, run under
``torch.autocast``; the loss is computed from float32 logits and the weights stay float32. float16 scales
the loss (``torch.amp.GradScaler``, its state checkpointed with the rest); bfloat16 needs no scaling. Under
DDP every rank sees the same all-reduced gradients, so every rank's scaler skips or takes a step alike.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from edgeprune.errors import EdgepruneError
from edgeprune.files import save_torch_atomic
from edgeprune.pipeline.autocast import OFF, Autocast
from edgeprune.pipeline.distributed import World, on_main, world
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


def shard(n: int, here: World) -> tuple[slice, float]:
    """This rank's contiguous share of a global batch of ``n`` images (the first ``n % size`` ranks one
    more), and the weight of its loss: its share of the batch times the number of ranks, so DDP's
    average of the ranks' gradients is the gradient of the whole batch's mean loss. A rank left without
    an image (a last batch smaller than the world) runs the first one at weight 0: the all-reduce still
    meets, and adds nothing."""
    chunk, extra = divmod(n, here.size)
    start = here.rank * chunk + min(here.rank, extra)
    stop = start + chunk + (here.rank < extra)
    if stop == start:
        return slice(0, 1), 0.0
    return slice(start, stop), (stop - start) / n * here.size


def _augment(x: torch.Tensor, mode: str, gen: torch.Generator, rows: slice = slice(None),
             device: torch.device | str = "cpu", n: int | None = None) -> torch.Tensor:
    """Images ``rows`` of a batch of ``n`` (default ``len(x)``), randomly shifted (and flipped), on ``device``;
    ``x`` is the whole batch, or already just those rows. The random draws are made for the whole batch, so
    an image gets the same augmentation whichever rank trains on it."""
    n = len(x) if n is None else n
    _, _, h, w = x.shape
    x = (x[rows] if len(x) == n else x).to(device)
    if mode == "none":
        return x
    pad = max(1, h // 16)
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)[rows]
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)[rows]
    top = (torch.arange(h)[None] + dy[:, None]).to(x.device)      # each image's rows and columns of the pad
    left = (torch.arange(w)[None] + dx[:, None]).to(x.device)
    out = padded[torch.arange(len(x), device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                 top[:, None, :, None], left[:, None, None, :]]
    if mode == "crop+flip":
        flip = (torch.rand(n, generator=gen) < 0.5)[rows].to(x.device)
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
             after_step: Callable[[int, int], None] | None = None, autocast: Autocast = OFF) -> nn.Module:
    """Train ``model`` for ``cfg.epochs`` (or ``cfg.steps``); ``make_batches(epoch)`` yields (x, y),
    the global batches (the same on every rank under torchrun, which trains on its share of each).
    The forward passes run under ``autocast`` (float16 with loss scaling).
    ``after_step(step, total)`` runs before the first step (``step`` 0, or where a resumed run
    goes on) and after every optimizer step: gradual pruning re-applies its masks there.

    A checkpoint that cannot be read (torn, not a checkpoint, another model's) is treated as
    absent: it is removed, ``warn`` (or a Python warning) says so, and training starts afresh."""
    if cfg.kd and teacher is None:
        raise EdgepruneError("knowledge distillation needs the unpruned teacher model")
    if cfg.augment not in ("none", "crop", "crop+flip"):
        raise EdgepruneError(f"unknown augmentation {cfg.augment!r}; use none, crop or crop+flip")
    device, here = torch.device(device), world()
    torch.manual_seed(cfg.seed + here.rank)      # rank 0 draws dropout as one process does, rank r its own stream
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    opt, scaler = _optimizer(model, cfg), autocast.scaler(device)
    micro, net = 0, None                      # sized on the first batch; net: the model, or DDP over it
    per_epoch = max(1, math.ceil(num_images / cfg.batch_size))
    total = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * per_epoch))
    if total <= 0:
        return model.eval()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    step, epoch, in_epoch = 0, 0, 0          # in_epoch: batches of the current epoch already trained on
    gen = torch.Generator().manual_seed(cfg.seed)
    gen_state = None
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    state = on_main(lambda: _read_checkpoint(ckpt)) if ckpt is not None else None   # rank 0 reads, for all
    if state is not None:
        fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            if isinstance(state, str):
                raise ValueError(state)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            if state.get("scaler"):              # float16's loss scale (a disabled scaler has no state)
                scaler.load_state_dict(state["scaler"])
            step, epoch, in_epoch = int(state["step"]), int(state["epoch"]), int(state.get("in_epoch", 0))
            gen_state = state.get("gen") if in_epoch else None   # at an epoch boundary the epoch's seed decides
            if gen_state is not None:
                torch.Generator().set_state(gen_state)
            if not 0 <= step <= total or epoch < 0 or in_epoch < 0:
                raise ValueError(f"step {step} of {total}")
        except Exception as e:  # noqa: BLE001 - torch.load raises many types for a torn or foreign file
            model.load_state_dict(fresh)   # a partly loaded checkpoint must not leak into the fresh run
            opt, scaler = _optimizer(model, cfg), autocast.scaler(device)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
            step, epoch, in_epoch, gen_state = 0, 0, 0, None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            message = f"discarded a corrupt fine-tune checkpoint {ckpt.name} ({first}): training from the start"
            if here.main:                     # every rank decided alike, on what rank 0 read
                ckpt.unlink(missing_ok=True)
                if warn is not None:
                    warn(message)
                else:
                    warnings.warn(message, stacklevel=2)

    def save() -> None:                      # rank 0 alone: every rank holds the same state
        if here.main:
            save_torch_atomic(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(),
                                     "sched": sched.state_dict(), "step": step, "epoch": epoch,
                                     "in_epoch": in_epoch, "gen": gen.get_state(), "scaler": scaler.state_dict()})

    saved_at = time.monotonic()
    if after_step is not None:
        after_step(step, total)
    bar = iter(track(range(step, total), progress, total=total - step))
    with _sync_batchnorm(model, device.type == "cuda" and here.size > 1):
        while step < total:
            gen.manual_seed(cfg.seed * 7919 + epoch)
            if gen_state is not None:            # resuming mid-epoch: the augmentation stream goes on where it was
                gen.set_state(gen_state)
                gen_state = None
            batches = make_batches(epoch)
            if hasattr(batches, "rows_of"):      # a split's Batches: read only this rank's rows of each global batch,
                done = in_epoch                  # and nothing of the batches trained on before an interruption
                batches = batches.only_batches(lambda j: j >= done)
                if here.size > 1:
                    batches = batches.rows_of(lambda n: shard(n, here)[0])
            for i, (x, y) in enumerate(batches):
                if step >= total:
                    break
                if i < in_epoch:                 # trained on before the interruption
                    continue
                rows, weight = shard(len(y), here)   # the whole batch in one process
                x = _augment(x, cfg.augment, gen, rows, device, n=len(y))
                y = y[rows].to(device)
                if not micro:                    # sized in the precision the activations are held in
                    with autocast(device):
                        micro = micro_batch(model, cfg, x[:1])
                if net is None:
                    net = _parallel(model, x[:1], device, here)
                opt.zero_grad(set_to_none=True)
                chunks = list(zip(x.split(micro), y.split(micro)))  # one unless the share exceeds the memory bound
                for k, (xs, ys) in enumerate(chunks):
                    with _accumulating(net, last=k == len(chunks) - 1):   # DDP all-reduces at the last backward
                        with autocast(device):
                            out = net(xs).float()
                            if cfg.kd:
                                with torch.no_grad():
                                    t_out = teacher(xs).float()
                        loss = (kd_loss(out, t_out, ys, cfg.temperature, cfg.alpha) if cfg.kd
                                else F.cross_entropy(out, ys))
                        scaler.scale(loss * (weight * len(ys) / len(y))).backward()   # 1.0: the whole batch, one process
                scaler.step(opt)                 # float16: unscaled first, skipped when a gradient overflowed
                scaler.update()
                sched.step()
                if here.size > 1:
                    _average_batchnorm(model, here)
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
    if here.size > 1:
        _same_buffers(model)
    return model.eval()


def _read_checkpoint(ckpt: Path) -> dict | str | None:
    """The checkpoint's contents, None when there is none, or why it could not be read."""
    if not ckpt.is_file():
        return None
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a torn or foreign file
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _parallel(model: nn.Module, example: torch.Tensor, device: torch.device, here: World) -> nn.Module:
    """The model itself in one process; across ranks, DistributedDataParallel over it (which first gives
    every rank rank 0's parameters and buffers). Buffers are not broadcast at every forward: BatchNorm's
    running statistics are averaged after every step instead (:func:`_average_batchnorm`)."""
    if here.size == 1:
        return model
    ids = None
    if device.type == "cuda":            # init_from_env set this rank's device (LOCAL_RANK)
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False,
                                   find_unused_parameters=_leaves_out(model, example))


def _leaves_out(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether a forward pass (eval mode: no statistics change) leaves a trainable parameter out of the
    graph: DDP must then look for the unused ones at every step, or its all-reduce never completes."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        grads = torch.autograd.grad(model(example).float().sum(), params, allow_unused=True)
    finally:
        model.train()
    return any(g is None for g in grads)


def _accumulating(net: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Under DDP, a backward that is not the batch's last only accumulates (no all-reduce)."""
    return net.no_sync() if isinstance(net, DistributedDataParallel) and not last else contextlib.nullcontext()


@contextlib.contextmanager
def _sync_batchnorm(model: nn.Module, on: bool) -> Iterator[None]:
    """With ``on`` (CUDA and several ranks: torch's SyncBatchNorm is CUDA-only), BatchNorm normalises with
    the whole global batch's statistics. The SyncBatchNorm layers share their parameters and buffers
    with the originals, which are put back afterwards: the optimizer, gradual masks, export and pruning
    know those. The tests check the swap on the CPU; training with it needs CUDA, which they lack."""
    if not on:
        yield
        return
    originals = {name: m for name, m in model.named_modules() if name and isinstance(m, _BatchNorm)}
    nn.SyncBatchNorm.convert_sync_batchnorm(model)          # replaces the children in place
    try:
        yield
    finally:
        for name, m in originals.items():
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, m)


def _average_batchnorm(model: nn.Module, here: World) -> None:
    """BatchNorm's running statistics averaged over the ranks (one all-reduce of them all), after every
    step: each rank's come from its shares, and averaged they are the same on every rank, so rank 0's
    checkpoint holds what all hold and a resumed run goes on exactly. The running mean is then the one
    process's (the mean of the shares' means, for equal shares); the running variance lacks the spread
    between the shares' means (a little smaller)."""
    stats = [b for m in model.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None
             for b in (m.running_mean, m.running_var)]
    if stats:
        flat = torch.cat([b.flatten() for b in stats])
        dist.all_reduce(flat)
        flat.div_(here.size)
        for b, v in zip(stats, flat.split([b.numel() for b in stats])):
            b.copy_(v.view_as(b))


def _same_buffers(model: nn.Module) -> None:
    """Rank 0's buffers given to every rank after training (a guarantee: they already agree), so every
    rank holds the same model to the last bit (the parameters already do: the same averaged gradients,
    the same steps)."""
    for b in model.buffers():
        dist.broadcast(b, src=0)
