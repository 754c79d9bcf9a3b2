"""A streamed ImageFolder (images decoded batch by batch by DataLoader workers) gives the figures the
in-memory reader gives, bit for bit, holds far less than the decoded tree, and fails in one line."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import edgeprune.pipeline.data as data_mod
from edgeprune.build.space import bn_batches
from edgeprune.cli import app
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.blocks import discover
from edgeprune.pipeline.channels import reestimate_batchnorm
from edgeprune.pipeline.data import DEFAULT_DATA, DataSpec, load_data
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.pipeline.imagefolder import ImageFiles
from edgeprune.pipeline.importance import ScoreContext
from edgeprune.pipeline.models import ModelSpec, load_model
from edgeprune.pipeline.prune import candidates, rank_blocks, split_val

runner = CliRunner()


def fmnist_folder(root, size=(28, 28), train=6, val=5):
    """An ImageFolder of grayscale PNGs from the bundled Fashion-MNIST subset (``train``/``val`` per class),
    resized to ``size`` (H, W) when it is not 28x28."""
    with np.load(DEFAULT_DATA) as z:
        arrays = {"train": (z["x_train"], z["y_train"]), "val": (z["x_val"], z["y_val"])}
    for split, n in (("train", train), ("val", val)):
        x, y = arrays[split]
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i, k in enumerate(np.flatnonzero(y == c)[:n]):
                im = Image.fromarray(x[k])
                if size != (28, 28):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                im.save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model(ModelSpec("default"))


# 28x28 photos are padded to the model's 32x32 by Preprocess.apply; 40x36 ones are cropped as they are read
@pytest.mark.parametrize("size", [(28, 28), (40, 36)], ids=["pad-at-apply", "crop-at-load"])
def test_streamed_figures_are_the_in_memory_ones_bit_for_bit(tmp_path, model, size):
    root = fmnist_folder(tmp_path, size)
    shape = model.input_shape
    held = load_data(DataSpec(str(root), load="memory"), shape, 10)
    streamed = {w: load_data(DataSpec(str(root), load="stream", workers=w), shape, 10) for w in (0, 2)}
    assert not held.streamed and isinstance(held.x_train, torch.Tensor)
    for w, st in streamed.items():
        assert st.streamed and isinstance(st.x_val, ImageFiles) and st.x_val.workers == w
        # the recorded preprocessing (statistics from the same sample, exactly) and the cache key's data
        assert st.preprocess.to_dict() == held.preprocess.to_dict() and st.describe() == held.describe()
        assert st.preprocess.statistics["data_mean"] is not None
        assert st.x_train.shape == tuple(held.x_train.shape) and torch.equal(st.y_val, held.y_val)
    st = streamed[2]
    assert held.preprocess.geometry_at == ("apply" if size == (28, 28) else "load")

    split, split_st = split_val(held, 20), split_val(st, 20)
    assert torch.equal(split.score, split_st.score) and torch.equal(split.final, split_st.final)
    # evaluation, in batches of 4 over the held-out images (several batches per worker), in that order
    for data in streamed.values():
        a = evaluate(model.model, held.batches("val", 4, indices=split.final))
        b = evaluate(model.model, data.batches("val", 4, indices=split.final))
        assert (a.top1, a.loss, a.images) == (b.top1, b.loss, b.images) and a.top1 > 0.3
    # direct-removal scores of a few blocks
    blocks = candidates(discover(model.model, shape), False)[:4]
    ctx = ScoreContext(reuse_prefix=True)
    ra = rank_blocks(model.model, blocks, list(held.batches("val", 8, indices=split.score)), ctx)
    rb = rank_blocks(model.model, blocks, list(st.batches("val", 8, indices=split.score)), ctx)
    assert ra.order == rb.order and {k: v.to_dict() for k, v in ra.scores.items()} == \
        {k: v.to_dict() for k, v in rb.scores.items()}
    # BatchNorm re-estimation on the seeded training sample, at the model's size and at a smaller one
    for bundle_a, bundle_b in ((held, st), (held.at_size((24, 24)), st.at_size((24, 24)))):
        ma = reestimate_batchnorm(copy.deepcopy(model.model), bn_batches(bundle_a, 32))
        mb = reestimate_batchnorm(copy.deepcopy(model.model), bn_batches(bundle_b, 32))
        assert all(torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mb.state_dict().values()))
    # fine-tune batches: a seeded shuffle of the training images, the same tensors in the same order
    for (xa, ya), (xb, yb) in zip(held.batches("train", 16, shuffle=True, seed=3),
                                  st.batches("train", 16, shuffle=True, seed=3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # golden vectors: the model inputs and the raw images of the first held-out images
    golden = split.final[:7]
    assert torch.equal(held.preprocess.apply(held.x_val[golden]), st.preprocess.apply(st.x_val[golden]))
    assert torch.equal(held.val_images(5, offset=2), st.val_images(5, offset=2))
    assert all(np.array_equal(a, b) for a, b in zip(held.raw_images("val", golden), st.raw_images("val", golden)))


def test_streamed_statistics_come_from_the_seeded_sample(tmp_path, monkeypatch):
    root = fmnist_folder(tmp_path, train=4, val=1)
    monkeypatch.setattr(data_mod, "STATS_SAMPLE", 13)        # 13 of the 40 training images, in 3 chunks
    monkeypatch.setattr(data_mod, "STATS_FIRST", 13)
    st = load_data(DataSpec(str(root), load="stream", workers=2), (1, 1, 28, 28), 10)
    idx = data_mod._stats_sample(40, photos=True)
    ref = data_mod._channel_stats(st.x_train[torch.arange(40)].numpy(), 1 / 255, idx)   # the in-memory figures
    assert (st.preprocess.mean, st.preprocess.std) == ref and st.preprocess.statistics["sample_images"] == 13


def test_auto_streams_a_tree_larger_than_the_limit(tmp_path, monkeypatch):
    root = fmnist_folder(tmp_path, train=2, val=1)
    assert not load_data(DataSpec(str(root)), (1, 1, 32, 32), 10).streamed
    monkeypatch.setattr(data_mod, "STREAM_ABOVE", 20 * 28 * 28)     # 30 images of 784 bytes
    assert load_data(DataSpec(str(root)), (1, 1, 32, 32), 10).streamed
    monkeypatch.setattr(data_mod, "STREAM_ABOVE", 30 * 28 * 28)
    assert not load_data(DataSpec(str(root)), (1, 1, 32, 32), 10).streamed


def _one_line(r, *needles):
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output and "DataLoader" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def _eval(root, *extra):
    return runner.invoke(app, ["eval", "--data", str(root), "--batch-size", "4", *extra])


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_truncated_image_fails_in_one_line_when_its_batch_is_read(tmp_path, workers):
    root = fmnist_folder(tmp_path, train=2, val=3)
    bad = root / "val" / "class7" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])     # the header still reads: only decoding fails
    _one_line(_eval(root, "--data-load", "stream", "--data-workers", workers), f"cannot read image {bad}")
    _one_line(_eval(root, "--data-load", "memory"), f"cannot read image {bad}")     # read at load, as before


def test_an_image_changed_after_the_tree_was_read_is_one_line(tmp_path):
    root = fmnist_folder(tmp_path, train=2, val=3)
    st = load_data(DataSpec(str(root), load="stream", workers=2), (1, 1, 32, 32), 10)
    changed = root / "val" / "class9" / "002.png"
    Image.fromarray(np.zeros((30, 30), dtype=np.uint8)).save(changed)
    with pytest.raises(EdgepruneError, match=f"image {changed} decodes to 30x30, not the 28x28") as e:
        list(st.batches("val", 4))
    assert "\n" not in str(e.value)


def test_bad_data_load_and_workers_are_one_line(tmp_path):
    root = fmnist_folder(tmp_path, train=1, val=1)
    _one_line(_eval(root, "--data-load", "lazy"), "--data-load must be auto, memory or stream, got 'lazy'")
    _one_line(_eval(root, "--data-workers", "-1"), "--data-workers must be a whole number >= 0, got -1")
    r = _eval(root, "--data-load", "stream", "--data-workers", "2", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["images"] == 10, r.output


# ---------------------------------------------------------------- memory

PROBE = r"""
import json, resource, sys
import torch
from torch import nn
import PIL.Image, torch.utils.data
from edgeprune.pipeline.data import DataSpec, load_data
from edgeprune.pipeline.evaluate import evaluate

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
with torch.no_grad():
    model(torch.zeros(8, 3, 128, 128))
try:
    open("/proc/self/clear_refs", "w").write("5")     # the peak restarts from here
except OSError:
    pass
base = rss("VmRSS:")
bundle = load_data(DataSpec(sys.argv[1], load=sys.argv[2], workers=2), (1, 3, 128, 128), 2)
r = evaluate(model, bundle.batches("val", 8))
for x, y in bundle.batches("train", 8, shuffle=True):    # an epoch of fine-tune batches
    pass
print(json.dumps({"base": base, "peak": rss("VmHWM:"), "top1": r.top1, "loss": r.loss, "images": r.images}))
"""


# A fixed mmap threshold: glibc otherwise raises it after the first large free and then keeps freed batch
# buffers on its heap for a while (up to ~150 MB here, varying run to run), which would measure the allocator,
# not what the process holds. Both paths run with it.
PROBE_ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MALLOC_MMAP_THRESHOLD_": "131072"}


def test_a_streamed_tree_larger_than_the_memory_cap_is_evaluated_within_it(tmp_path):
    """2000 PNGs of 128x128 RGB: 98 MB decoded. Loading them, evaluating the val split and one epoch of
    training batches streamed stays within a 40 MB cap over what the process held before; the in-memory
    reader holds them all (it fails the cap)."""
    n_train, n_val, hw = 1600, 400, 128
    decoded = (n_train + n_val) * 3 * hw * hw
    yy, xx = np.mgrid[0:hw, 0:hw]
    for split, n in (("train", n_train), ("val", n_val)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
        for i in range(n):
            k = i % 256                               # smooth pictures: small files, full-size decoded images
            im = np.stack([(yy + k) % 256, (xx + 2 * k) % 256, (yy + xx + k) % 256], axis=2).astype(np.uint8)
            Image.fromarray(im).save(tmp_path / split / "ab"[i % 2] / f"{i:05d}.png", compress_level=1)
    cap = 40 * 2 ** 20
    out = {}
    for mode in ("stream", "memory"):
        p = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), mode], capture_output=True, text=True,
                           timeout=300, env=PROBE_ENV)
        assert p.returncode == 0, p.stderr
        out[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    grown = {mode: r["peak"] - r["base"] for mode, r in out.items()}
    assert grown["stream"] < cap < decoded, grown
    assert grown["memory"] > 0.9 * decoded, grown           # the old path: the whole tree in memory
    assert {k: out["stream"][k] for k in ("top1", "loss", "images")} == \
        {k: out["memory"][k] for k in ("top1", "loss", "images")}


def test_a_rank_reads_only_the_batches_it_runs(tmp_path, model):
    """Under torchrun each rank evaluates batches i with i mod N == rank; its streamed Batches decode only those:
    an image it would fail on, in another rank's batch, is never read, and its own batches are the same."""
    from edgeprune.pipeline.distributed import World
    root = fmnist_folder(tmp_path, train=2, val=3)               # 30 validation images: batches of 4, 8 of them
    st = load_data(DataSpec(str(root), load="stream", workers=2), model.input_shape, 10)
    whole = list(st.batches("val", 4))
    bad = st.x_val.files[int(st.batches("val", 4).indices[4 * 1])]   # an image of batch 1: rank 1's of 2
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(EdgepruneError, match="cannot read image"):
        list(st.batches("val", 4))
    mine = list(st.batches("val", 4).only_batches(World(0, 2).runs))
    assert len(mine) == len(whole) and all(torch.equal(a[1], b[1]) for a, b in zip(mine, whole))   # every label
    for i, ((x, _), (x_all, _)) in enumerate(zip(mine, whole)):
        assert (x is None) == (i % 2 == 1) and (x is None or torch.equal(x, x_all))


def test_a_fine_tune_rank_reads_only_its_share_of_each_batch(tmp_path, model):
    """A fine-tune's rank trains on its share of every global batch (``finetune.shard``): its streamed Batches
    decode only those rows, give every label, and an image in the other rank's share is never read."""
    from edgeprune.pipeline.distributed import World
    from edgeprune.pipeline.finetune import shard
    root = fmnist_folder(tmp_path, train=3, val=1)                # 30 training images: batches of 8, the last 6
    st = load_data(DataSpec(str(root), load="stream", workers=2), model.input_shape, 10)
    whole = list(st.batches("train", 8))
    rank1 = World(1, 2)
    bad = st.x_train.files[int(st.batches("train", 8).indices[2])]    # in batch 0's first half: rank 0's rows
    bad.write_bytes(bad.read_bytes()[:40])
    mine = list(st.batches("train", 8).rows_of(lambda n: shard(n, rank1)[0]))
    assert [len(y) for _, y in mine] == [len(y) for _, y in whole] == [8, 8, 8, 6]
    for (x, y), (x_all, y_all) in zip(mine, whole):
        rows = shard(len(y), rank1)[0]
        assert torch.equal(y, y_all) and torch.equal(x, x_all[rows])
