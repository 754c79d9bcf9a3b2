"""Every data format, read from small files the tests write, plus the bad-input paths."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.data import DataSpec, load_data
from edgeprune.pipeline.idx import read_idx

RNG = np.random.default_rng(0)


def write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.fixture(params=[False, True], ids=["plain", "gz"])
def idx_folder(tmp_path, request):
    ext = ".gz" if request.param else ""
    xtr, ytr = RNG.integers(0, 255, (20, 28, 28)), RNG.integers(0, 10, 20)
    xva, yva = RNG.integers(0, 255, (8, 28, 28)), RNG.integers(0, 10, 8)
    ytr[:10] = np.arange(10)
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", xtr, request.param)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", ytr, request.param)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", xva, request.param)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", yva, request.param)
    return tmp_path, xtr, ytr, xva, yva


def test_idx_roundtrip_and_padding(idx_folder):
    path, xtr, ytr, xva, yva = idx_folder
    b = load_data(DataSpec(str(path)), (1, 1, 32, 32), 10)
    assert b.format == "idx"
    assert torch.equal(b.x_train[:, 0], torch.from_numpy(xtr.astype(np.uint8)))
    assert torch.equal(b.y_val, torch.from_numpy(yva))
    assert b.preprocess.geometry == "pad" and b.preprocess.pad == 2
    x = b.val_images(3)
    assert x.shape == (3, 1, 32, 32)
    # padded border is raw zero, normalised
    assert torch.allclose(x[:, :, 0, :], torch.full_like(x[:, :, 0, :], -b.preprocess.mean[0] / b.preprocess.std[0]))
    expected = (xva[0].astype(np.float32) / 255 - b.preprocess.mean[0]) / b.preprocess.std[0]
    assert np.allclose(x[0, 0, 2:30, 2:30].numpy(), expected, atol=1e-5)


def test_idx_truncated_file_is_clear_error(idx_folder):
    path = idx_folder[0]
    f = next(path.glob("train-images*"))
    raw = (gzip.open if f.suffix == ".gz" else open)(f, "rb").read()
    (gzip.open if f.suffix == ".gz" else open)(f, "wb").write(raw[:-100])
    with pytest.raises(EdgepruneError, match="truncated"):
        load_data(DataSpec(str(path)), (1, 1, 28, 28), 10)


def test_read_idx_rejects_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04" + b"\0" * 20)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "x")


def _cifar_batch(path, n, label_key="labels"):
    d = {b"data": RNG.integers(0, 255, (n, 3072)).astype(np.uint8),
         label_key.encode(): list(RNG.integers(0, 10, n))}
    d[label_key.encode()][:10] = list(range(10)) if n >= 10 else d[label_key.encode()][:n]
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return d


def test_cifar10_python_folder(tmp_path):
    b1 = _cifar_batch(tmp_path / "data_batch_1", 12)
    _cifar_batch(tmp_path / "data_batch_2", 12)
    tb = _cifar_batch(tmp_path / "test_batch", 10)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    b = load_data(DataSpec(str(tmp_path)), (1, 3, 32, 32), 10)
    assert b.format == "cifar" and len(b.y_train) == 24 and len(b.y_val) == 10
    assert b.classes[3] == "c3"
    assert torch.equal(b.x_train[0], torch.from_numpy(b1[b"data"][0].reshape(3, 32, 32)))
    assert b.y_val.tolist() == [int(v) for v in tb[b"labels"]]
    assert b.preprocess.channel_order == "RGB" and len(b.preprocess.mean) == 3


def test_cifar_refuses_code_in_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    _cifar_batch(tmp_path / "test_batch", 10)
    with pytest.raises(EdgepruneError, match="refusing to unpickle"):
        load_data(DataSpec(str(tmp_path)), (1, 3, 32, 32), 10)


def test_cifar100_python_folder(tmp_path):
    _cifar_batch(tmp_path / "train", 12, "fine_labels")
    _cifar_batch(tmp_path / "test", 10, "fine_labels")
    b = load_data(DataSpec(str(tmp_path)), (1, 3, 32, 32), None)
    assert b.format == "cifar" and len(b.y_train) == 12


def test_imagefolder(tmp_path):
    from PIL import Image
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(RNG.integers(0, 255, (40, 50, 3)).astype(np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    b = load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2)
    assert b.format == "imagefolder" and b.classes == ["cat", "dog"]
    assert b.x_train.shape == (6, 3, 24, 24) and b.y_val.tolist() == [0, 0, 1, 1]
    assert b.val_images(2).shape == (2, 3, 24, 24)


@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc"])
def test_npz_layouts(tmp_path, layout):
    shape = {"nhw": (10, 16, 16), "nchw": (10, 3, 16, 16), "nhwc": (10, 16, 16, 3)}[layout]
    x = RNG.integers(0, 255, shape).astype(np.uint8)
    y = np.arange(10)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:4], y_val=y[:4])
    channels = 1 if layout == "nhw" else 3
    b = load_data(DataSpec(str(tmp_path / "d.npz")), (1, channels, 16, 16), 10)
    assert b.x_train.shape == (10, channels, 16, 16)
    assert b.preprocess.geometry == "none"
    # mean/std are computed from the training split (per channel) and recorded
    assert len(b.preprocess.mean) == channels
    assert np.allclose(b.preprocess.mean, x.mean() / 255, atol=0.02)
    assert np.allclose(b.preprocess.std, (x / 255).std(), atol=0.02)


def test_npz_resize_and_explicit_normalisation(tmp_path):
    x = RNG.random((6, 20, 20)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 2, x_val=x, y_val=np.arange(6) % 2)
    b = load_data(DataSpec(str(tmp_path / "d.npz"), mean=(0.5,), std=(0.25,), resize="resize"), (1, 1, 32, 32), 2)
    assert b.preprocess.geometry == "resize" and b.preprocess.scale == 1.0
    assert b.preprocess.mean == (0.5,) and b.val_images(1).shape == (1, 1, 32, 32)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 4, 4)))
    with pytest.raises(EdgepruneError, match="lacks arrays"):
        load_data(DataSpec(str(tmp_path / "d.npz")), (1, 1, 4, 4), None)


def test_missing_path_says_what_to_pass(tmp_path):
    with pytest.raises(EdgepruneError, match="dataset-fashion-mnist"):
        load_data(DataSpec(str(tmp_path / "nope")), (1, 1, 32, 32), 10)


def test_channel_and_class_disagreement(idx_folder):
    path = idx_folder[0]
    with pytest.raises(EdgepruneError, match="channel"):
        load_data(DataSpec(str(path)), (1, 3, 32, 32), 10)
    with pytest.raises(EdgepruneError, match="1000 outputs"):
        load_data(DataSpec(str(path)), (1, 1, 32, 32), 1000)
    # explicit replication makes it work and is recorded
    b = load_data(DataSpec(str(path), channels=3), (1, 3, 32, 32), 10)
    assert b.preprocess.channel_order.startswith("gray->RGB") and b.val_images(1).shape[1] == 3


def test_bundled_subset():
    b = load_data(DataSpec("default"), (1, 1, 32, 32), 10)
    assert len(b.y_train) == 6000 and len(b.y_val) == 2000
    assert torch.bincount(b.y_val).tolist() == [200] * 10
    assert b.classes[0] == "T-shirt/top" and b.preprocess.mean == (0.2860,)
