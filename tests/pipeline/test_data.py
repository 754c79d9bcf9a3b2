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


def _old_statistics(x, scale):
    """What load_data computed before statistics were chunked: float64 over the first 10,000 images."""
    sample = x[: min(len(x), 10000)].astype(np.float64) * scale
    return tuple(float(v) for v in sample.mean(axis=(0, 2, 3))), \
        tuple(float(v) for v in sample.std(axis=(0, 2, 3)) + 1e-8)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_array_data_gives_the_same_tensors_as_before(tmp_path, dtype):
    """Chunked statistics of array data agree with the old float64 figures to float32 precision,
    so the model inputs are bit for bit those of before."""
    x = RNG.integers(0, 256, (10500, 3, 8, 8)).astype(np.uint8)
    if dtype == np.float32:
        x = x.astype(np.float32) / 255
    y = np.arange(len(x)) % 10
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:50], y_val=y[:50])
    b = load_data(DataSpec(str(tmp_path / "d.npz")), (1, 3, 8, 8), 10)
    mean, std = _old_statistics(x, 1 / 255 if dtype == np.uint8 else 1.0)
    assert np.array_equal(np.float32(b.preprocess.mean), np.float32(mean))
    assert np.array_equal(np.float32(b.preprocess.std), np.float32(std))
    st = b.preprocess.statistics
    assert (st["sample"], st["sample_images"], st["mean"]) == ("first", 10000, "data")
    raw = torch.from_numpy(x[:50]).float()
    old = ((raw * (1 / 255 if dtype == np.uint8 else 1.0) - torch.tensor(mean).view(1, 3, 1, 1))
           / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.equal(b.val_images(50), old)


def test_bundled_data_tensors_and_steps():
    b = load_data(DataSpec("default"), (1, 1, 32, 32), 10)
    pre = b.preprocess
    assert (pre.mean, pre.std, pre.geometry, pre.pad, pre.source_size) == ((0.2860,), (0.3530,), "pad", 2, (28, 28))
    assert pre.statistics["mean"] == "bundled" and pre.statistics["data_mean"] is None
    raw = b.x_val[:4].float()
    old = (torch.nn.functional.pad(raw, (2,) * 4) * (1 / 255) - 0.2860) / 0.3530
    assert torch.equal(b.val_images(4), old)
    assert [s["op"] for s in pre.steps()] == ["input", "pad", "scale", "normalize", "layout"]
    assert pre.steps()[0] == {"op": "input", "dtype": "uint8", "layout": "HWC", "channels": 1, "size": [28, 28]}
    raws = b.raw_images("val", [0, 1])
    assert raws[0].shape == (28, 28, 1) and np.array_equal(raws[1][:, :, 0], b.x_val[1, 0].numpy())


def test_crop_of_array_data(tmp_path):
    x = RNG.integers(0, 255, (6, 20, 30, 3)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 2, x_val=x, y_val=np.arange(6) % 2)
    b = load_data(DataSpec(str(tmp_path / "d.npz"), resize="crop"), (1, 3, 16, 16), 2)
    assert (b.preprocess.geometry, b.preprocess.geometry_at) == ("crop", "apply")
    got = b.val_images(2)
    # shorter side 20 -> 16, longer 30 -> int(16 * 30 / 20) = 24, then the centre 16 columns: 4..20
    resized = torch.nn.functional.interpolate(b.x_val[:2].float(), size=(16, 24), mode="bilinear",
                                              antialias=True, align_corners=False)[:, :, :, 4:20]
    mean = torch.tensor(b.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(b.preprocess.std).view(1, 3, 1, 1)
    assert torch.allclose(got, (resized / 255 - mean) / std, atol=1e-6)
    # auto keeps stretching array data (as always)
    assert load_data(DataSpec(str(tmp_path / "d.npz")), (1, 3, 16, 16), 2).preprocess.geometry == "resize"


def test_npz_member_too_large_to_allocate_is_one_line(tmp_path):
    import io
    import zipfile
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (2 ** 24, 2 ** 24)})     # 256 TiB
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("x_train.npy", header.getvalue() + b"\0" * 64)
        for k in ("y_train", "x_val", "y_val"):
            buf = io.BytesIO()
            np.save(buf, np.zeros(3))
            z.writestr(f"{k}.npy", buf.getvalue())
    with pytest.raises(EdgepruneError, match=r"big\.npz: array x_train \(16777216x16777216 uint8, 262144\.0 GiB\) "
                                             "is too large to load into memory"):
        load_data(DataSpec(str(tmp_path / "big.npz")), (1, 1, 8, 8), None)


# ---------------------------------------------------------------- numbers that cannot be trusted, silent nonsense
from typer.testing import CliRunner  # noqa: E402

from edgeprune.cli import app  # noqa: E402
from edgeprune.pipeline import data as data_mod  # noqa: E402

runner = CliRunner()


def _npz(path, x, y=None, **extra):
    y = np.arange(len(x)) % 2 if y is None else y
    arrays = {"x_train": x, "y_train": y, "x_val": x, "y_val": y, **extra}
    np.savez(path, **arrays)
    return str(path)


def _eval(data, *flags):
    """`edgeprune eval` of the 1-channel 32x32 cifar_resnet20 (10 classes) on ``data``."""
    return runner.invoke(app, ["eval", "--model", "cifar_resnet20", "--data", data, *flags])


def _one_line(r, *needles):
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.stderr
    assert "top-1" not in r.stdout
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_two_nan_pixels_in_a_float_npz_are_refused_naming_the_file(tmp_path):
    x = RNG.random((20, 32, 32)).astype(np.float32)
    x[4, 1, 2] = x[9, 3, 3] = np.nan
    _one_line(_eval(_npz(tmp_path / "two.npz", x, np.arange(20) % 10)),
              "two.npz", "x_train holds 2 non-finite pixel values", "first in image 4")
    with pytest.raises(EdgepruneError, match=r"two\.npz: x_train holds 2 non-finite"):       # given stats too
        load_data(DataSpec(str(tmp_path / "two.npz"), mean=(0.5,), std=(0.25,)), (1, 1, 32, 32), 10)


def test_nan_pixels_only_in_val_are_refused(tmp_path):
    x = RNG.random((10, 32, 32)).astype(np.float32)
    xv = x.copy()
    xv[7, 0, 0] = np.inf
    np.savez(tmp_path / "v.npz", x_train=x, y_train=np.arange(10), x_val=xv, y_val=np.arange(10))
    _one_line(_eval(str(tmp_path / "v.npz")), "v.npz", "x_val holds 1 non-finite pixel value", "image 7")


def test_an_all_nan_dataset_is_refused(tmp_path):
    x = np.full((10, 32, 32), np.nan, dtype=np.float32)
    _one_line(_eval(_npz(tmp_path / "allnan.npz", x, np.arange(10))), "allnan.npz", "x_train holds 10240 non-finite")


def test_float64_pixels_beyond_float32_are_refused(tmp_path):
    x = RNG.random((10, 32, 32))
    x[2, 0, 0] = 1e300                       # finite as float64, inf once held as float32
    _one_line(_eval(_npz(tmp_path / "big.npz", x, np.arange(10))), "big.npz", "non-finite pixel value")


def test_preprocessed_sample_that_overflows_is_refused(tmp_path):
    x = RNG.random((10, 32, 32)).astype(np.float32)
    _one_line(_eval(_npz(tmp_path / "s.npz", x, np.arange(10)), "--mean", "0", "--std", "1e-40"),
              "s.npz", "the preprocessed train images are not finite")


def test_non_finite_statistics_are_refused(tmp_path, monkeypatch):
    x = RNG.random((10, 8, 8)).astype(np.float32)
    monkeypatch.setattr(data_mod, "_channel_stats", lambda *a: ((float("nan"),), (float("nan"),)))
    with pytest.raises(EdgepruneError, match=r"st\.npz: the normalisation statistics are not finite"):
        load_data(DataSpec(_npz(tmp_path / "st.npz", x)), (1, 1, 8, 8), 2)


def test_uint16_pixels_are_scaled_by_their_range_and_recorded(tmp_path):
    x = RNG.integers(0, 65536, (12, 3, 8, 8)).astype(np.uint16)
    b = load_data(DataSpec(_npz(tmp_path / "u16.npz", x)), (1, 3, 8, 8), 2)
    pre = b.preprocess
    assert pre.scale == 1 / 65535 and pre.source_dtype == "uint16"
    steps = pre.steps()
    assert steps[0]["dtype"] == "uint16" and next(s for s in steps if s["op"] == "scale")["factor"] == 1 / 65535
    assert torch.equal(b.x_train.long(), torch.from_numpy(x.astype(np.int64)))     # held exactly, not truncated
    ref = x.astype(np.float64) / 65535
    assert np.allclose(pre.mean, ref.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(pre.std, ref.std(axis=(0, 2, 3)), atol=1e-6)
    got = b.val_images(12)
    assert torch.isfinite(got).all() and abs(float(got.mean())) < 1e-3 and abs(float(got.std()) - 1) < 1e-2
    assert b.raw_images("val", [0])[0].max() == x[0].max()


def test_uint8_and_in_range_int64_pixels_keep_1_over_255(tmp_path):
    x = RNG.integers(0, 256, (6, 8, 8))
    assert load_data(DataSpec(_npz(tmp_path / "i64.npz", x)), (1, 1, 8, 8), 2).preprocess.scale == 1 / 255
    assert load_data(DataSpec(_npz(tmp_path / "u8.npz", x.astype(np.uint8))), (1, 1, 8, 8), 2).preprocess.scale \
        == 1 / 255


def test_signed_pixels_outside_8_bit_are_refused(tmp_path):
    x = RNG.integers(0, 1000, (6, 8, 8)).astype(np.int16)
    with pytest.raises(EdgepruneError, match=r"int16 images hold values 0\.\.9\d\d; signed integer pixels"):
        load_data(DataSpec(_npz(tmp_path / "i16.npz", x)), (1, 1, 8, 8), 2)


def test_float_labels_that_are_not_whole_are_refused(tmp_path):
    x = RNG.random((10, 32, 32)).astype(np.float32)
    y = (np.arange(10) % 10).astype(np.float64)
    y[3] = 2.5
    _one_line(_eval(_npz(tmp_path / "fl.npz", x, y)), "fl.npz", "y_train holds non-integer labels",
              "2.5 at index 3")
    y[3] = np.nan
    with pytest.raises(EdgepruneError, match="non-integer labels .*nan at index 3"):
        load_data(DataSpec(_npz(tmp_path / "fl.npz", x, y)), (1, 1, 32, 32), 10)


def test_whole_float_labels_are_class_indices(tmp_path):
    x = RNG.random((10, 8, 8)).astype(np.float32)
    b = load_data(DataSpec(_npz(tmp_path / "w.npz", x, (np.arange(10) % 2).astype(np.float32))), (1, 1, 8, 8), 2)
    assert b.y_train.dtype == torch.int64 and b.y_train.tolist() == [0, 1] * 5


def test_string_labels_are_refused(tmp_path):
    x = RNG.random((4, 8, 8)).astype(np.float32)
    with pytest.raises(EdgepruneError, match=r"y_train has dtype <U3; labels must be integer class indices"):
        load_data(DataSpec(_npz(tmp_path / "s.npz", x, np.array(["cat", "dog", "cat", "dog"]))), (1, 1, 8, 8), 2)


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_class_folder_is_refused_naming_it(tmp_path, split):
    from PIL import Image
    for s in ("train", "val"):
        for cls in ("cat", "dog", "emu"):
            (tmp_path / s / cls).mkdir(parents=True)
            if s == split and cls == "emu":
                (tmp_path / s / cls / "notes.txt").write_text("not an image")
                continue
            for i in range(2):
                Image.fromarray(RNG.integers(0, 255, (32, 32)).astype(np.uint8)).save(tmp_path / s / cls / f"{i}.png")
    r = runner.invoke(app, ["eval", "--model", "cifar_resnet20", "--num-classes", "3", "--data", str(tmp_path)])
    _one_line(r, f"class folder {tmp_path / split / 'emu'} holds no images")


def test_an_npz_that_is_not_a_zip_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from edgeprune.cli import app
    (tmp_path / "bad.npz").write_text("not a zip")
    r = CliRunner().invoke(app, ["eval", "--data", str(tmp_path / "bad.npz")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "not a zip archive" in r.stderr, r.output
