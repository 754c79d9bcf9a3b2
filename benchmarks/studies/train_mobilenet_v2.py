"""The committed recipe that trains the bundled MobileNetV2 (``--model mobilenet_v2_fmnist``).

    python benchmarks/studies/train_mobilenet_v2.py --data /usr/share/datasets/fashion-mnist \
        --epochs 12 --workdir runs/mobilenet_v2

Model: torchvision ``mobilenet_v2(num_classes=10)`` (width 1.0, 3 input channels, dropout 0.2),
random initialisation (torchvision's own), nothing else changed.

Input, exactly what edgeprune's own preprocessing does for this model (the script builds its
batches with ``edgeprune.pipeline.data``, so the two cannot drift apart): the 28x28 grayscale
image replicated to 3 channels, resized to 64x64 (bilinear, antialiased, align_corners=False),
scaled to [0, 1], normalised with the Fashion-MNIST training mean/std (0.2860, 0.3530) on every
channel. 64x64 is the size whose unpruned rpi4 prediction is in the tens of milliseconds
(``edgeprune predict --device rpi4``: 22.4 ms; 96x96 would be 34.9 ms at twice the training cost).

Augmentation on the raw 28x28 image: random crop with 2 pixels of zero padding, horizontal
flip. SGD (Nesterov, momentum 0.9), weight decay 1e-4 on conv/linear weights only, batch 128,
peak LR 0.1 after a linear warm-up over the first epoch, cosine decay to zero; seed 0;
float32 (faster than bfloat16 autocast at this size on the 2-core Xeon used). On a machine
shared with other jobs, ``--threads 1`` keeps two OpenMP threads from waiting on each other.

A checkpoint is written after every epoch and every 10 minutes inside one (the shuffling is
seeded per epoch, so a resumed run takes the same batches). The result is a plain fp16
state_dict (what the package bundles, 4.5 MB) and ``history.json``, with the test top-1 of the
float32 weights and of the fp16 ones as loaded back into a float32 model.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from edgeprune.files import save_torch_atomic
from edgeprune.pipeline.data import FMNIST_MEAN, FMNIST_STD, DataSpec, load_data
from train_default import warmup_cosine  # the same schedule as the bundled ResNet-56 (run from this folder)

SIZE = 64


def augment(raw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 28x28 crop of the zero-padded (2 px) raw uint8 images, then a random horizontal flip."""
    n, _, h, w = raw.shape
    padded = F.pad(raw, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    rows = torch.arange(h)[None, :] + dy[:, None]
    cols = torch.arange(w)[None, :] + dx[:, None]
    out = padded[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def evaluate(model, bundle, bs=500):
    model.eval()
    correct, loss = 0, 0.0
    for x, y in bundle.batches("val", bs):
        out = model(x.contiguous(memory_format=torch.channels_last))
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    n = len(bundle.y_val)
    return correct / n, loss / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/mobilenet_v2")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(path=args.data, channels=3, resize="resize", mean=(FMNIST_MEAN,), std=(FMNIST_STD,))
    bundle = load_data(spec, (1, 3, SIZE, SIZE), 10)
    pre = bundle.preprocess
    torch.manual_seed(args.seed)
    model = torchvision.models.mobilenet_v2(num_classes=10).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.wd},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    n_train = len(bundle.y_train)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total = steps_per_epoch * args.epochs

    lr_at = warmup_cosine(args.lr, steps_per_epoch, total)

    epoch, step_in, history, run_loss, spent = 0, 0, [], 0.0, 0.0
    ckpt = work / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        epoch, step_in, history = state["epoch"], state["step"], json.loads(state["history"])
        run_loss, spent = state["run_loss"], state["spent"]
        print(f"resumed at epoch {epoch} step {step_in}", flush=True)

    def save() -> None:
        save_torch_atomic(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                                 "step": step_in, "history": json.dumps(history), "run_loss": run_loss,
                                 "spent": spent})

    while epoch < args.epochs:
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = torch.randperm(n_train, generator=gen)
        aug = [torch.Generator().manual_seed(args.seed * 1000 + epoch * 10007 + s) for s in range(steps_per_epoch)]
        model.train()
        t0, saved = time.time(), time.time()
        for s in range(step_in, steps_per_epoch):
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps_per_epoch + s)
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            xb = pre.apply(augment(bundle.x_train[idx], aug[s])).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), bundle.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item()
            if time.time() - saved > 600:
                step_in, spent = s + 1, spent + time.time() - t0
                t0 = saved = time.time()
                save()
                print(f"epoch {epoch} step {s + 1}/{steps_per_epoch} loss {run_loss / (s + 1):.4f}", flush=True)
        spent += time.time() - t0
        acc, tloss = evaluate(model, bundle)
        rec = {"epoch": epoch + 1, "train_loss": run_loss / steps_per_epoch, "test_top1": acc,
               "test_loss": tloss, "seconds": spent}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        epoch, step_in, run_loss, spent = epoch + 1, 0, 0.0, 0.0
        save()
    model.eval()
    fp32_acc, _ = evaluate(model, bundle)
    sd16 = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    out = work / "mobilenet_v2_fmnist.pt"
    torch.save(sd16, out)
    check = torchvision.models.mobilenet_v2(num_classes=10)
    check.load_state_dict(torch.load(out, weights_only=True))
    fp16_acc, _ = evaluate(check.eval(), bundle)
    (work / "history.json").write_text(json.dumps(
        {"args": vars(args), "input_size": SIZE, "history": history, "test_top1_fp32": fp32_acc,
         "test_top1_fp16_weights": fp16_acc, "torch": torch.__version__,
         "torchvision": torchvision.__version__}, indent=1))
    print(f"done: test top-1 {fp32_acc:.4f} (fp32), {fp16_acc:.4f} (fp16 weights)", flush=True)


if __name__ == "__main__":
    main()
