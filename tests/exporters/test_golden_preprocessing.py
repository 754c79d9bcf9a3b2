"""golden.npz holds each test vector's raw image next to its model input, and the manifest's
``preprocessing.steps`` alone turn one into the other.

``derive`` below is what a firmware team would write from the manifest: PIL and numpy only,
reading nothing but the manifest's steps (it never calls ``Preprocess.apply``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.artifact import build_artifact
from edgeprune.pipeline.data import DataSpec, load_data
from edgeprune.pipeline.models import randomize_batchnorm

from photos import write_folder  # noqa: E402  (tests/photos.py)


def _pil_resize(x: np.ndarray, h: int, w: int, result_dtype: str) -> np.ndarray:
    """Bilinear resize of an (H, W, C) image with PIL: 8-bit images as they are, float images a
    channel at a time as PIL "F" images (Pillow's bilinear widens its filter when shrinking)."""
    if result_dtype == "uint8":
        assert x.dtype == np.uint8
        img = Image.fromarray(x[:, :, 0] if x.shape[2] == 1 else x)
        out = np.asarray(img.resize((w, h), Image.BILINEAR))
        return out[:, :, None] if out.ndim == 2 else out
    planes = [np.asarray(Image.fromarray(x[:, :, c].astype(np.float32)).resize((w, h), Image.BILINEAR))
              for c in range(x.shape[2])]
    return np.stack(planes, axis=2)


def derive(raw: np.ndarray, steps: list[dict]) -> np.ndarray:
    """The model input (1, C, H, W) from a raw image (H, W, C), following the manifest's steps."""
    x = raw
    for step in steps:
        op = step["op"]
        if op == "decode":
            assert step["layout"] == "HWC" and x.dtype == np.uint8 and x.shape[2] == {"RGB": 3, "L": 1}[step["mode"]]
        elif op == "input":
            assert step["layout"] == "HWC" and x.dtype.name == step["dtype"] and x.shape[2] == step["channels"]
        elif op == "replicate_channels":
            x = np.repeat(x, step["channels"], axis=2)
        elif op == "pad":
            p = step["pixels"]
            x = np.pad(x, ((p, p), (p, p), (0, 0)), constant_values=step["value"])
        elif op == "resize":
            assert step["interpolation"] == "bilinear" and step["antialias"]
            x = _pil_resize(x, *step["size"], step["result_dtype"])
        elif op == "resize_shorter_side":
            assert step["interpolation"] == "bilinear" and step["antialias"]
            (th, tw), (h, w) = step["size"], x.shape[:2]
            if th / h >= tw / w:
                nh, nw = th, int(th * w / h)
            else:
                nh, nw = int(tw * h / w), tw
            x = _pil_resize(x, nh, nw, step["result_dtype"])
        elif op == "center_crop":
            (th, tw), (h, w) = step["size"], x.shape[:2]
            top, left = round((h - th) / 2), round((w - tw) / 2)      # halves to even, as the rule says
            x = x[top:top + th, left:left + tw]
        elif op == "scale":
            x = x.astype(np.float32) * np.float32(step["factor"])
        elif op == "normalize":
            x = (x - np.array(step["mean"], np.float32)) / np.array(step["std"], np.float32)
        elif op == "layout":
            assert (step["from"], step["to"], step["dtype"]) == ("HWC", "NCHW", "float32")
            x = x.transpose(2, 0, 1)[None].astype(np.float32)
        else:
            raise AssertionError(f"unknown step {op!r}")
    return x


def _tiny(channels: int, size: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return randomize_batchnorm(model), (1, channels, size, size)


def _artifact(tmp_path, spec: DataSpec, channels: int, size: int, n: int = 6):
    model, shape = _tiny(channels, size)
    bundle = load_data(spec, shape, None, warn=lambda line: None)
    images, labels = bundle.val_images(n), bundle.val_labels(n)
    raws = bundle.raw_images("val", range(n))
    result = build_artifact(model, shape, tmp_path / "artifact", images=images, labels=labels, raw_images=raws,
                            preprocess={**bundle.preprocess.to_dict(), "data": spec.path}, classes=bundle.classes)
    manifest = json.loads((result.path / "manifest.json").read_text())
    return result.path, manifest, bundle


def _check_derivable(path, manifest, atol):
    steps = manifest["preprocessing"]["steps"]
    golden = np.load(path / "golden.npz")
    count = manifest["golden"]["count"]
    assert manifest["golden"]["raw"]["count"] == count and manifest["golden"]["raw"]["layout"] == "HWC"
    for i in range(count):
        raw = golden[f"raw_{i}"]
        assert manifest["golden"]["arrays"][f"raw_{i}"] == {"shape": list(raw.shape), "dtype": raw.dtype.name}
        np.testing.assert_allclose(derive(raw, steps), golden["input"][i:i + 1], atol=atol, rtol=0)
    return golden


def test_photos_of_different_sizes_rederive_from_the_manifest(tmp_path):
    files = write_folder(tmp_path / "photos")
    path, manifest, bundle = _artifact(tmp_path, DataSpec(str(tmp_path / "photos")), 3, 24)
    pre = manifest["preprocessing"]
    assert pre["geometry"] == "crop" and pre["geometry_at"] == "load" and pre["source_size"] is None
    golden = _check_derivable(path, manifest, atol=1e-5)
    # the raw images are the photos as decoded, of their own sizes, 8-bit
    shapes = {golden[f"raw_{i}"].shape for i in range(6)}
    assert len(shapes) > 2 and all(s[2] == 3 for s in shapes)
    for i in range(6):
        with Image.open(files["val"][i]) as im:
            assert np.array_equal(golden[f"raw_{i}"], np.asarray(im.convert("RGB")))
    assert golden["raw_0"].dtype == np.uint8 and np.allclose(golden["input"], bundle.val_images(6).numpy())


def test_stretched_photos_rederive_from_the_manifest(tmp_path):
    write_folder(tmp_path / "photos")
    path, manifest, _ = _artifact(tmp_path, DataSpec(str(tmp_path / "photos"), resize="resize"), 3, 24)
    assert manifest["preprocessing"]["steps"][1]["op"] == "resize"
    _check_derivable(path, manifest, atol=1e-5)


def test_gray_photos_padded_for_a_one_channel_model_rederive(tmp_path):
    write_folder(tmp_path / "photos", sizes=[(20, 20)], mode="L")
    path, manifest, _ = _artifact(tmp_path, DataSpec(str(tmp_path / "photos")), 1, 24)
    assert [s["op"] for s in manifest["preprocessing"]["steps"]][:2] == ["decode", "pad"]
    _check_derivable(path, manifest, atol=1e-5)


def test_bundled_data_rederives_from_the_manifest(tmp_path):
    path, manifest, _ = _artifact(tmp_path, DataSpec("default", channels=3), 3, 32)
    assert [s["op"] for s in manifest["preprocessing"]["steps"]][:3] == ["input", "replicate_channels", "pad"]
    _check_derivable(path, manifest, atol=1e-5)


@pytest.mark.parametrize("resize", ["resize", "crop"])
def test_array_data_resized_in_float_rederives_from_the_manifest(tmp_path, resize):
    x = np.random.default_rng(0).integers(0, 255, (8, 20, 30)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(8) % 2, x_val=x, y_val=np.arange(8) % 2)
    path, manifest, _ = _artifact(tmp_path, DataSpec(str(tmp_path / "d.npz"), resize=resize), 1, 16)
    assert manifest["preprocessing"]["steps"][1]["result_dtype"] == "float32"
    # torch's antialiased bilinear and PIL's agree to about 1e-3 of a gray level
    _check_derivable(path, manifest, atol=1e-4)


def _documented_model_input():
    """The reference implementation in docs/manifest.md, run as it is written there."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "manifest.md").read_text()
    block = text.split("A reference implementation with PIL and numpy", 1)[1].split("```python\n", 1)[1]
    namespace: dict = {}
    exec(compile(block.split("```", 1)[0], "docs/manifest.md", "exec"), namespace)  # noqa: S102
    return namespace["model_input"]


@pytest.mark.parametrize("kind", ["photos", "bundled"])
def test_the_documented_reference_implementation_rederives_the_inputs(tmp_path, kind):
    if kind == "photos":
        write_folder(tmp_path / "photos")
        path, manifest, _ = _artifact(tmp_path, DataSpec(str(tmp_path / "photos")), 3, 24)
    else:
        path, manifest, _ = _artifact(tmp_path, DataSpec("default"), 1, 32)
    model_input = _documented_model_input()
    golden = np.load(path / "golden.npz")
    for i in range(manifest["golden"]["count"]):
        np.testing.assert_allclose(model_input(golden[f"raw_{i}"], manifest["preprocessing"]["steps"]),
                                   golden["input"][i:i + 1], atol=1e-5, rtol=0)


def test_raw_images_must_cover_the_test_vectors(tmp_path):
    model, shape = _tiny(1, 8)
    images = np.zeros((8, 1, 8, 8), np.float32)
    with pytest.raises(EdgepruneError, match="2 raw images for 8 test vectors"):
        build_artifact(model, shape, tmp_path / "a", images=images, raw_images=[np.zeros((8, 8, 1))] * 2)
    assert not (tmp_path / "a").exists()
