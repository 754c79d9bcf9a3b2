"""ImageFolders of real photos (PNG and JPEG files of different sizes and aspect ratios), the
preprocessing recorded for them, and the normalisation statistics: how they are computed, when
they are not, named ImageNet statistics and the mismatch warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline import data as data_mod
from edgeprune.pipeline.data import (NAMED_STATISTICS, RESIZE_MODES, DataSpec, DataWarning, cover_size, crop_box,
                                     load_data, model_statistics)

from photos import SIZES, write_folder  # noqa: E402  (tests/photos.py)


def test_resize_modes_registry_is_what_the_spec_validates():
    assert RESIZE_MODES == ("auto", "pad", "resize", "crop", "none")
    for mode in RESIZE_MODES:
        assert DataSpec(resize=mode).resize == mode
    with pytest.raises(EdgepruneError, match="--resize must be auto, pad, resize, crop or none"):
        DataSpec(resize="stretch")


def test_photos_are_resized_on_the_shorter_side_and_centre_cropped_like_torchvision(tmp_path):
    files = write_folder(tmp_path)
    b = load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2)
    pre = b.preprocess
    assert (pre.geometry, pre.geometry_at, pre.decode, pre.source_size) == ("crop", "load", "RGB", None)
    assert pre.source_sizes == {"distinct": 6, "smallest": [20, 26], "largest": [64, 64]}
    assert b.x_train.shape == (8, 3, 24, 24) and b.x_train.dtype == torch.uint8
    # torchvision's own Resize(s) + CenterCrop(s) on the decoded photo gives the very same pixels
    tv = transforms.Compose([transforms.Resize(24, interpolation=transforms.InterpolationMode.BILINEAR),
                             transforms.CenterCrop(24)])
    for i, f in enumerate(files["val"]):
        with Image.open(f) as im:
            expected = np.asarray(tv(im.convert("RGB"))).transpose(2, 0, 1)
        assert np.array_equal(b.x_val[i].numpy(), expected), f
    # the model input is (x / 255 - mean) / std of those pixels
    x = b.val_images(2)
    want = (b.x_val[:2].float() / 255 - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    assert torch.allclose(x, want, atol=1e-6)


def test_the_recorded_steps_are_the_ones_done(tmp_path):
    write_folder(tmp_path)
    d = load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2).preprocess.to_dict()
    assert [s["op"] for s in d["steps"]] == ["decode", "resize_shorter_side", "center_crop", "scale", "normalize",
                                             "layout"]
    decode, resize, crop = d["steps"][:3]
    assert decode["mode"] == "RGB" and decode["layout"] == "HWC" and decode["dtype"] == "uint8"
    assert resize["size"] == [24, 24] and resize["interpolation"] == "bilinear" and resize["antialias"] is True
    assert resize["at"] == "load" and resize["result_dtype"] == "uint8"
    assert crop["size"] == [24, 24]
    assert d["steps"][-1] == {**d["steps"][-1], "from": "HWC", "to": "NCHW", "channel_order": "RGB"}
    assert d["geometry"] == "crop" and d["interpolation"] == "bilinear, antialiased"


def test_cover_size_and_crop_box_follow_torchvision():
    for h, w in [(40, 60), (60, 40), (33, 47), (64, 64), (31, 45), (20, 26), (223, 301)]:
        img = Image.new("RGB", (w, h))
        resized = transforms.Resize(24)(img)
        assert cover_size((h, w), (24, 24)) == (resized.height, resized.width)
    # odd leftovers: torchvision rounds (h' - H) / 2 half to even
    assert crop_box((25, 24), (24, 24)) == (0, 0, 24, 24)
    assert crop_box((27, 24), (24, 24)) == (0, 2, 24, 26)
    assert crop_box((24, 35), (24, 24)) == (6, 0, 30, 24)
    assert cover_size((40, 60), (24, 32)) == (24, 36) and cover_size((60, 40), (24, 32)) == (48, 32)


def test_stretch_pad_and_none_are_still_there_for_photos(tmp_path):
    write_folder(tmp_path / "mixed")
    b = load_data(DataSpec(str(tmp_path / "mixed"), resize="resize"), (1, 3, 24, 24), 2)
    assert (b.preprocess.geometry, b.preprocess.geometry_at) == ("resize", "load")
    steps = b.preprocess.steps()
    assert steps[1]["op"] == "resize" and steps[1]["aspect_ratio"] == "distorted"
    with Image.open(b.files["val"][0]) as im:
        expected = np.asarray(im.convert("RGB").resize((24, 24), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(b.x_val[0].numpy(), expected)
    for mode in ("pad", "none"):
        with pytest.raises(EdgepruneError, match=f"differ in size .*--resize {mode} needs one size"):
            load_data(DataSpec(str(tmp_path / "mixed"), resize=mode), (1, 3, 24, 24), 2)
    # one size, a small symmetric pad away from the input: padded when the model input is made
    write_folder(tmp_path / "small", sizes=[(28, 28)])
    b = load_data(DataSpec(str(tmp_path / "small")), (1, 3, 32, 32), 2)
    pre = b.preprocess
    assert (pre.geometry, pre.pad, pre.geometry_at, pre.source_size) == ("pad", 2, "apply", (28, 28))
    assert b.x_val.shape[2:] == (28, 28) and b.val_images(1).shape == (1, 3, 32, 32)
    assert [s["op"] for s in pre.steps()] == ["decode", "pad", "scale", "normalize", "layout"]
    # the same size as the input: nothing to do, and none accepts it
    write_folder(tmp_path / "exact", sizes=[(24, 24)])
    pre = load_data(DataSpec(str(tmp_path / "exact"), resize="none"), (1, 3, 24, 24), 2).preprocess
    assert (pre.geometry, pre.source_size) == ("none", (24, 24))
    assert [s["op"] for s in pre.steps()] == ["decode", "scale", "normalize", "layout"]
    # one size that is not a small pad away: auto crops (for a square photo, a plain resize)
    write_folder(tmp_path / "big", sizes=[(48, 48)])
    pre = load_data(DataSpec(str(tmp_path / "big")), (1, 3, 24, 24), 2).preprocess
    assert (pre.geometry, pre.geometry_at) == ("crop", "load")


def test_grayscale_photos_decode_as_L_for_a_one_channel_model(tmp_path):
    files = write_folder(tmp_path, mode="L")
    b = load_data(DataSpec(str(tmp_path)), (1, 1, 24, 24), 2)
    assert b.preprocess.decode == "L" and b.preprocess.channel_order == "gray" and b.x_val.shape[1] == 1
    with Image.open(files["val"][1]) as im:
        expected = np.asarray(transforms.CenterCrop(24)(transforms.Resize(24)(im.convert("L"))))
    assert np.array_equal(b.x_val[1, 0].numpy(), expected)
    # the same folder for an RGB model decodes as RGB (as before)
    assert load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2).preprocess.decode == "RGB"


def test_raw_images_are_the_photos_as_decoded_before_any_resize(tmp_path):
    files = write_folder(tmp_path)
    b = load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2)
    raws = b.raw_images("val", torch.tensor([0, 1, 5]))
    for raw, f in zip(raws, [files["val"][i] for i in (0, 1, 5)]):
        with Image.open(f) as im:
            assert raw.dtype == np.uint8 and np.array_equal(raw, np.asarray(im.convert("RGB")))
    assert [r.shape[:2] for r in raws] == [(SIZES[8 % 6]), SIZES[9 % 6], SIZES[13 % 6]]


def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path, monkeypatch):
    write_folder(tmp_path, sizes=[(40, 40)])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)     # 1600 pixels: over the limit (PIL warns)
    with pytest.raises(EdgepruneError, match=r"image .*00\.png is too large to load: .*decompression-bomb") as e:
        load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)      # over twice the limit (PIL refuses)
    with pytest.raises(EdgepruneError, match=r"00\.png is too large to load"):
        load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2)


def test_a_broken_image_file_is_one_line_naming_it(tmp_path):
    files = write_folder(tmp_path)
    files["train"][2].write_bytes(b"not a picture")
    with pytest.raises(EdgepruneError, match=f"cannot read image {files['train'][2]}"):
        load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2)


# ---------------------------------------------------------------- statistics

def test_statistics_come_from_a_bounded_seeded_sample_of_the_photos(tmp_path, monkeypatch):
    write_folder(tmp_path, per_class=(10, 2))
    monkeypatch.setattr(data_mod, "STATS_SAMPLE", 6)
    b = load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2)
    st = b.preprocess.statistics
    assert (st["sample_images"], st["train_images"], st["sample"], st["seed"]) == (6, 20, "seeded random", 0)
    # spread over both classes (an ImageFolder is in class order), and the same every time
    idx = np.sort(np.random.default_rng(0).choice(20, 6, replace=False))
    assert 0 < (idx < 10).sum() < 6
    sample = b.x_train.numpy()[idx].astype(np.float64) / 255
    assert np.allclose(b.preprocess.mean, sample.mean(axis=(0, 2, 3)), atol=1e-9)
    assert np.allclose(b.preprocess.std, sample.std(axis=(0, 2, 3)), atol=1e-7)
    assert load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2).preprocess.mean == b.preprocess.mean


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_statistics_never_copy_the_sample_to_float(dtype):
    """A chunk at a time: the peak stays far below even a float32 copy of the sample."""
    import tracemalloc

    x = np.random.default_rng(0).integers(0, 256, (2400, 3, 64, 64)).astype(dtype)
    scale = 1 / 255 if dtype == np.uint8 else 1.0
    idx = np.arange(len(x))
    tracemalloc.start()
    try:
        mean, std = data_mod._channel_stats(x, scale, idx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.size, f"peak {peak / 2**20:.0f} MiB, a float32 copy is {x.size * 4 / 2**20:.0f} MiB"
    ref = x[:200].astype(np.float64) * scale     # the figures are right
    assert np.allclose(mean, x.mean(axis=(0, 2, 3), dtype=np.float64) * scale, atol=1e-9)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)), rtol=5e-3)


def test_no_statistics_are_computed_when_mean_and_std_are_given(tmp_path, monkeypatch):
    write_folder(tmp_path)

    def refuse(*args):
        raise AssertionError("statistics computed although --mean and --std were given")
    monkeypatch.setattr(data_mod, "_channel_stats", refuse)
    b = load_data(DataSpec(str(tmp_path), mean="0.5,0.5,0.5", std="0.25,0.25,0.25"), (1, 3, 24, 24), 2)
    assert b.preprocess.mean == (0.5,) * 3 and b.preprocess.statistics["mean"] == "given"
    assert b.preprocess.statistics["data_mean"] is None and b.warnings == []


def test_imagenet_statistics_by_name(tmp_path):
    write_folder(tmp_path)
    spec = DataSpec(str(tmp_path), mean="imagenet", std="ImageNet")
    assert (spec.mean, spec.std) == ("imagenet", "imagenet") and spec.to_dict()["mean"] == "imagenet"
    b = load_data(spec, (1, 3, 24, 24), 2, warn=lambda line: None)
    assert (b.preprocess.mean, b.preprocess.std) == NAMED_STATISTICS["imagenet"]
    assert b.preprocess.statistics["mean"] == b.preprocess.statistics["std"] == "imagenet"
    assert b.preprocess.statistics["compared_with"] == "imagenet"
    write_folder(tmp_path / "gray", mode="L")
    with pytest.raises(EdgepruneError, match="per RGB channel"):
        load_data(DataSpec(str(tmp_path / "gray"), mean="imagenet", std="imagenet"), (1, 1, 24, 24), 2)
    for bad, message in (("imagenett", "comma-separated numbers or imagenet"), ("0.2,nan", "finite"),
                         ("0.2,0", "above 0")):
        with pytest.raises(EdgepruneError, match=message):
            DataSpec(std=bad)


def test_a_marked_mismatch_is_one_warning_line(tmp_path):
    write_folder(tmp_path, dark=True)        # mean about 0.1: far from ImageNet's 0.45
    said = []
    b = load_data(DataSpec(str(tmp_path), mean="imagenet", std="imagenet"), (1, 3, 24, 24), 2, warn=said.append)
    assert len(said) == 1 and "\n" not in said[0] and "std from the imagenet statistics used" in said[0]
    assert b.warnings == said and b.preprocess.statistics["difference_std"] > 0.3
    # the data's own used for a model that expects ImageNet's: the warning says what to pass
    said.clear()
    b = load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2, expects="imagenet", warn=said.append)
    assert len(said) == 1 and "pass --mean imagenet --std imagenet" in said[0]
    assert b.preprocess.mean == tuple(b.preprocess.statistics["data_mean"])
    # without a callback it is a DataWarning
    with pytest.warns(DataWarning, match="presumably expects imagenet"):
        load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2, expects="imagenet")
    # nothing to say: no model expectation, or explicit numbers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_data(DataSpec(str(tmp_path)), (1, 3, 24, 24), 2).warnings == []
        assert load_data(DataSpec(str(tmp_path), mean="0.1,0.1,0.1", std="0.05,0.05,0.05"), (1, 3, 24, 24), 2,
                         expects="imagenet").warnings == []


def test_statistics_close_to_imagenet_say_nothing(tmp_path):
    rng = np.random.default_rng(3)
    mean, std = NAMED_STATISTICS["imagenet"]
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                a = np.clip(rng.normal(np.array(mean) * 255, np.array(std) * 255, (24, 24, 3)), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    said = []
    b = load_data(DataSpec(str(tmp_path), mean="imagenet", std="imagenet"), (1, 3, 24, 24), 2, warn=said.append)
    assert said == [] and b.preprocess.statistics["difference_std"] < 0.3


def test_model_statistics_names_imagenet_for_torchvision_weights():
    assert model_statistics({"model": "resnet18", "weights": "/w/resnet18.pt"}) == "imagenet"
    assert model_statistics({"model": "resnet18", "weights": None}) is None
    assert model_statistics({"model": "default", "weights": "bundled.pt"}) is None
    assert model_statistics({"model": "pkg.mod:factory", "weights": "w.pt"}) is None
