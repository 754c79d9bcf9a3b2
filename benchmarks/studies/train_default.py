"""The committed recipe that trains the bundled default model (ResNet-56 on Fashion-MNIST).

    python benchmarks/studies/train_default.py --data /usr/share/datasets/fashion-mnist \
        --epochs 16 --workdir runs/default

Recipe: 28x28 images zero-padded to 32x32, scaled to [0, 1], normalised with the
Fashion-MNIST training mean/std; augmentation = random crop (pad 2) + horizontal flip;
SGD (Nesterov, momentum 0.9, weight decay 5e-4), batch 128, peak LR 0.1 reached by a
linear warm-up over the first epoch, cosine decay to zero; seed 0; 16 epochs; bfloat16
autocast for the forward pass (fp32 master weights; halves the step time on CPUs with
AMX), evaluation in float32. A checkpoint is written
after every epoch and the run resumes from it. The final weights (eval mode, float32) are
written as a plain state_dict, which is what the package bundles.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeprune.files import save_torch_atomic
from edgeprune.pipeline.idx import find_idx_split, read_idx
from edgeprune.pipeline.resnet_cifar import resnet56

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training set, pixels scaled to [0, 1]


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    found = find_idx_split(folder, split)
    if found is None:
        raise SystemExit(f"no {split} idx files in {folder}")
    x = torch.from_numpy(read_idx(found[0]).copy()).float().div_(255).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2))
    x = (x - MEAN) / STD
    y = torch.from_numpy(read_idx(found[1]).astype(np.int64))
    return x, y


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=(0 - MEAN) / STD)
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    rows = (torch.arange(32)[None, :] + dy[:, None])  # n x 32
    cols = (torch.arange(32)[None, :] + dx[:, None])
    idx_n = torch.arange(n)[:, None, None]
    out = padded[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def warmup_cosine(peak: float, warmup: int, total: int):
    """step -> learning rate: a linear warm-up to ``peak`` over ``warmup`` steps, then cosine to zero at ``total``."""
    def lr_at(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * peak * (1 + math.cos(math.pi * t))
    return lr_at


@torch.no_grad()
def evaluate(model, x, y, bs=500):
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), bs):
        out = model(x[i:i + bs].contiguous(memory_format=torch.channels_last))
        loss += F.cross_entropy(out, y[i:i + bs], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x), loss / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/default")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    xtr, ytr = load_split(Path(args.data), "train")
    xte, yte = load_split(Path(args.data), "t10k")
    model = resnet56().to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.wd},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    total = steps_per_epoch * args.epochs

    lr_at = warmup_cosine(args.lr, steps_per_epoch, total)

    start_epoch, history = 0, []
    ckpt = work / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch, history = state["epoch"], json.loads(state["history"])
        print(f"resumed after epoch {start_epoch}", flush=True)
    for epoch in range(start_epoch, args.epochs):
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = torch.randperm(len(xtr), generator=gen)
        model.train()
        t0 = time.time()
        run_loss = 0.0
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            xb = augment(xtr[idx], gen).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item()
        acc, tloss = evaluate(model, xte, yte)
        rec = {"epoch": epoch + 1, "train_loss": run_loss / steps_per_epoch, "test_top1": acc,
               "test_loss": tloss, "seconds": time.time() - t0}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        save_torch_atomic(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                                 "history": json.dumps(history)})
    model.eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, work / "resnet56_fmnist.pt")
    (work / "history.json").write_text(json.dumps({"args": vars(args), "history": history}, indent=1))
    print("done", flush=True)


if __name__ == "__main__":
    main()
