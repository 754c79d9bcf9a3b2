"""Peak memory and throughput of an ImageFolder held in memory or streamed (``--data-load``).

Run (the committed table, a few minutes on 2 cores; the ImageFolders are written once under --root):

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/studies/streaming_memory.py

Quick check (not the table):

    .venv/bin/python benchmarks/studies/streaming_memory.py --sizes 600,1200 --finetune-steps 2 \
        --out /tmp/streaming.md

Fashion-MNIST (``/usr/share/datasets/fashion-mnist``, `apt-get install dataset-fashion-mnist`) written as
an ImageFolder of RGB PNGs upscaled to ``--image-size`` (train/ from the training set, val/ from the test
set, one sixth of the images), at each of ``--sizes`` images. For each size and each way of holding the
images (``memory``: decoded whole when the data is read; ``stream``: decoded batch by batch by
``--workers`` DataLoader workers), a fresh process loads the data for a CIFAR ResNet-20 (3 channels, 10
classes, random weights: memory and speed do not depend on them), evaluates the whole val split and
fine-tunes ``--finetune-steps`` steps, and reports its peak resident set (``ru_maxrss``), its resident set
before loading (the interpreter, torch, the model), the largest peak of its worker processes, the wall
time of each phase, and the top-1, which must be the same both ways.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from edgeprune.benchmarks.ort_runner import cpu_model
from edgeprune.files import write_json_atomic, write_text_atomic
from edgeprune.pipeline.data import FASHION_MNIST_CLASSES, DataSpec, load_data
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.idx import find_idx_split, read_idx
from edgeprune.pipeline.imagefolder import default_workers
from edgeprune.pipeline.models import ModelSpec, load_model

ROOT = Path(__file__).resolve().parents[2]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- the ImageFolders

def write_folder(root: Path, n: int, size: int) -> Path:
    """``n`` Fashion-MNIST images (5/6 train, 1/6 val) as RGB PNGs of ``size`` x ``size`` under ``root``,
    written once (a ``done`` file marks a complete tree)."""
    from PIL import Image

    folder = root / f"fmnist-{n}-{size}"
    if (folder / "done").exists():
        return folder
    n_val = n // 6
    for split, part, count in (("train", "train", n - n_val), ("val", "t10k", n_val)):
        images, labels = (read_idx(p) for p in find_idx_split(FMNIST, part))
        if count > len(images):
            raise SystemExit(f"{count} {split} images asked for, Fashion-MNIST has {len(images)}")
        names = [f"{i}-{c.replace('/', '-')}" for i, c in enumerate(FASHION_MNIST_CLASSES)]
        for name in names:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            im = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert("RGB")
            im.save(folder / split / names[int(labels[i])] / f"{i:06d}.png", compress_level=1)
    (folder / "done").write_text("")
    return folder


# ---------------------------------------------------------------- one measurement (a fresh process)

def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _restart_peak() -> None:
    """VmHWM starts again from the current resident set (Linux: /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def worker(folder: str, load: str, workers: int, size: int, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    loaded = load_model(ModelSpec("cifar_resnet20", num_classes=10, in_channels=3, input_size=size))
    before = _status_mb("VmRSS")
    _restart_peak()
    t0 = time.perf_counter()
    bundle = load_data(DataSpec(folder, load=load, workers=workers), loaded.input_shape, 10)
    t1 = time.perf_counter()
    held, load_peak = _status_mb("VmRSS"), _status_mb("VmHWM")
    _restart_peak()
    result = evaluate(loaded.model, bundle.batches("val", batch))
    t2 = time.perf_counter()
    eval_peak = _status_mb("VmHWM")
    _restart_peak()
    cfg = FinetuneConfig(steps=steps, batch_size=64, augment="none")
    finetune(loaded.model, lambda ep: bundle.batches("train", cfg.batch_size, shuffle=True, seed=ep),
             len(bundle.y_train), cfg, progress=None)
    t3 = time.perf_counter()
    finetune_peak = _status_mb("VmHWM")
    return {"load": load, "workers": workers, "streamed": bundle.streamed, "train_images": len(bundle.y_train),
            "val_images": len(bundle.y_val), "decoded_mb": (len(bundle.y_train) + len(bundle.y_val)) * 3 * size * size / 2**20,
            "rss_before_mb": before, "held_mb": held, "load_peak_mb": load_peak, "eval_peak_mb": eval_peak,
            "finetune_peak_mb": finetune_peak, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "load_s": t1 - t0, "eval_s": t2 - t1, "finetune_s": t3 - t2,
            "eval_images_per_s": result.images / (t2 - t1), "finetune_images_per_s": steps * cfg.batch_size / (t3 - t2),
            "top1": result.top1, "loss": result.loss, "threads": torch.get_num_threads()}


def measure(folder: Path, load: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(folder), load, str(args.workers), str(args.image_size),
           str(args.finetune_steps), str(args.batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the table

def report(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    lines = [
        "# Streaming an ImageFolder: memory and throughput",
        "",
        "An ImageFolder is read whole into memory (`--data-load memory`: every image decoded, 8-bit, when the "
        "data is read) or streamed (`--data-load stream`: decoded batch by batch by `--data-workers` DataLoader "
        "worker processes; only labels and file names are held); `auto`, the default, streams a tree whose "
        "decoded images exceed 1 GiB. Fashion-MNIST as RGB PNGs upscaled to "
        f"{args.image_size}x{args.image_size} ({3 * args.image_size ** 2 / 1024:.0f} KiB an image decoded), "
        "one sixth of the images in val/. Each row is a fresh process: load the data for a CIFAR ResNet-20 (3 "
        f"channels, 10 classes, random weights), evaluate the whole val split (batches of {args.batch_size}), "
        f"fine-tune {args.finetune_steps} steps (batches of 64). *Before* is its resident set before loading the "
        "data (Python, torch, the model); *held* what loading added to it (what stays for the rest of the run); "
        "*load + eval peak* and *fine-tune peak* the most each phase added at any moment (VmHWM over the "
        "phase, restarted through `/proc/self/clear_refs`; the fine-tune's activations and gradients dominate "
        "its column, the same both ways); *ru_maxrss* the process's peak over the whole run; *workers' peak* "
        "the largest `ru_maxrss` of its DataLoader workers (forked from it, so it counts the pages they share "
        "with it, torch's above all). Throughput is images a second of the evaluation and of the fine-tune "
        "(forward and backward), on cores shared with other work "
        f"(load average {args.loadavg[0]:.1f} at the start, {args.loadavg[1]:.1f} at the end): a rough guide. "
        "Top-1 and loss are the same both ways at every size (the study checks, to the last bit).",
        "",
        "| images | decoded MiB | images held | before MiB | held MiB | load + eval peak MiB | fine-tune peak MiB | "
        "ru_maxrss MiB | workers' peak MiB | load s | eval img/s | fine-tune img/s | top-1 |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        held = f"stream ({r['workers']} workers)" if r["streamed"] else "memory"
        b = r["rss_before_mb"]
        lines.append(f"| {r['train_images'] + r['val_images']} | {r['decoded_mb']:.0f} | {held} | {b:.0f} | "
                     f"{r['held_mb'] - b:.0f} | {max(r['load_peak_mb'], r['eval_peak_mb']) - b:.0f} | "
                     f"{r['finetune_peak_mb'] - b:.0f} | {r['peak_mb']:.0f} | {r['workers_peak_mb']:.0f} | "
                     f"{r['load_s']:.1f} | {r['eval_images_per_s']:.0f} | {r['finetune_images_per_s']:.0f} | "
                     f"{r['top1']:.2%} |")
    mem = [r for r in rows if not r["streamed"]]
    st = [r for r in rows if r["streamed"]]
    lines += [
        "",
        "What it shows:",
        "",
        "- **In memory**, what the data holds grows with the tree: its decoded size ("
        + ", ".join(f"{r['decoded_mb']:.0f} MiB decoded: {r['held_mb'] - r['rss_before_mb']:.0f} MiB held" for r in mem)
        + "), for the whole run, fine-tune included. An ImageNet-size tree (1.28 M images, 147 KiB each at "
        "224x224) would need about 180 GiB.",
        "- **Streamed**, it stays flat whatever the number of images ("
        + ", ".join(f"{r['held_mb'] - r['rss_before_mb']:.0f}" for r in st)
        + " MiB held; load + eval peaks "
        + ", ".join(f"{max(r['load_peak_mb'], r['eval_peak_mb']) - r['rss_before_mb']:.0f}" for r in st)
        + " MiB): a few batches in flight, the statistics' and the load check's chunks of about 2**20 "
        "values, the labels and the file names. glibc keeps some freed batch buffers on its heap for a while, "
        "so these peaks vary by some tens of MiB from run to run (tests/pipeline/test_streaming.py fixes "
        "`MALLOC_MMAP_THRESHOLD_` to assert a cap).",
        "- **Time**: the in-memory reader decodes every image once, when the data is read (its *load s* grows "
        "with the tree); streaming decodes only what a pass reads, every pass, so a search that evaluates the "
        "same scoring images many times decodes them again each time. The workers decode while the model runs, "
        "so on free cores that costs little; on these 2 busy cores the workers compete with the model.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {rows[0]['threads']} torch thread(s), {args.workers} DataLoader worker(s) "
        f"(`default_workers()` here: {default_workers()}). Date: {datetime.date.today().isoformat()}. "
        "Figures also in `docs/streaming.json`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3000,9000,24000", help="images in each ImageFolder (train + val)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=default_workers(), help="DataLoader workers when streamed")
    ap.add_argument("--finetune-steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--root", default="/tmp/edgeprune-streaming", help="where the ImageFolders are written")
    ap.add_argument("--out", default=str(ROOT / "docs" / "streaming.md"))
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        folder, load, workers, size, steps, batch = args.worker
        print(json.dumps(worker(folder, load, int(workers), int(size), int(steps), int(batch))))
        return
    loadavg, rows = [os.getloadavg()[0]], []
    for n in [int(s) for s in args.sizes.split(",")]:
        folder = write_folder(Path(args.root), n, args.image_size)
        pair = {}
        for load in ("memory", "stream"):
            r = measure(folder, load, args)
            print(f"{n} images, {load}: peak {r['peak_mb']:.0f} MiB (before {r['rss_before_mb']:.0f}), load "
                  f"{r['load_s']:.1f} s, eval {r['eval_images_per_s']:.0f} img/s, fine-tune "
                  f"{r['finetune_images_per_s']:.0f} img/s", flush=True)
            pair[load] = r
            rows.append({"images": n, **r})
        if (pair["memory"]["top1"], pair["memory"]["loss"]) != (pair["stream"]["top1"], pair["stream"]["loss"]):
            raise SystemExit(f"{n} images: memory and stream give different figures")
    loadavg.append(os.getloadavg()[0])
    args.loadavg = loadavg
    command = "python benchmarks/studies/streaming_memory.py" + "".join(f" {a}" for a in sys.argv[1:])
    write_text_atomic(args.out, report(rows, args, command))
    write_json_atomic(Path(args.out).with_suffix(".json"),
                      {"command": command, "cpu": cpu_model(), "cores": os.cpu_count(), "workers": args.workers,
                       "image_size": args.image_size, "finetune_steps": args.finetune_steps,
                       "batch_size": args.batch_size, "loadavg": loadavg, "torch": torch.__version__,
                       "date": datetime.date.today().isoformat(), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
