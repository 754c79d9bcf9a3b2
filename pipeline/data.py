"""Data input: the bundled subset, idx folders, CIFAR python folders, ImageFolder trees, .npz.

``load_data(DataSpec(...), input_shape, num_classes)`` returns a :class:`DataBundle` holding
the raw train/val images in memory (uint8 where the source is 8-bit) and the explicit
:class:`Preprocess` that turns them into the model's input. The preprocessing is recorded
as a plain dict and later copied into the artifact manifest, so firmware reproduces it
exactly. Nothing is ever downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.idx import find_idx_split, read_idx

ASSETS = Path(__file__).parent / "assets"
DEFAULT_DATA = ASSETS / "fmnist_subset.npz"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # the bundled model's training normalisation
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


RESIZE_MODES = ("auto", "pad", "resize", "none")


@dataclass
class DataSpec:
    """What the user asked for with ``--data`` and the preprocessing flags."""

    path: str = "default"
    mean: tuple[float, ...] | None = None      # None: the dataset's own (computed on train)
    std: tuple[float, ...] | None = None
    channels: int | None = None                # None: must match the model
    resize: str = "auto"                       # one of RESIZE_MODES
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise EdgepruneError(f"--resize must be {', '.join(RESIZE_MODES[:-1])} or {RESIZE_MODES[-1]}, "
                                 f"got {self.resize!r}")
        for name in ("mean", "std"):       # numbers, or the flag's comma-separated text
            value = getattr(self, name)
            if value is None:
                continue
            try:
                setattr(self, name, tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value)))
            except (TypeError, ValueError):
                raise EdgepruneError(f"--{name} takes comma-separated numbers, got {value!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Preprocess:
    """Raw image (N, C, H, W) -> model input, in this order: channels, pad/resize, scale, normalise."""

    source_size: tuple[int, int]
    size: tuple[int, int]
    geometry: str                   # none | pad | resize (bilinear, antialiased)
    pad: int                        # zero pixels added on each side before scaling (geometry=pad)
    scale: float                    # multiply raw values by this (1/255 for 8-bit images)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_channels: int
    channels: int
    channel_order: str              # "gray", "RGB", or "gray->RGB (replicated)"
    layout: str = "NCHW"
    dtype: str = "float32"

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.float()
        if self.source_channels == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.geometry == "pad":
            x = F.pad(x, (self.pad,) * 4)
        elif self.geometry == "resize":
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        x = x * self.scale
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DataBundle:
    name: str
    format: str
    x_train: torch.Tensor          # raw, (N, C, H, W)
    y_train: torch.Tensor          # int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    preprocess: Preprocess
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "train":
            return self.x_train, self.y_train
        if name in ("val", "test"):
            return self.x_val, self.y_val
        raise EdgepruneError(f"unknown split {name!r}; use train or val")

    def batches(self, split: str = "val", batch_size: int = 256, *, indices: torch.Tensor | None = None,
                shuffle: bool = False, seed: int = 0) -> "Batches":
        x, y = self.split(split)
        idx = torch.arange(len(y)) if indices is None else indices
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
        return Batches(x, y, idx, batch_size, self.preprocess)

    def val_images(self, n: int, offset: int = 0) -> torch.Tensor:
        return self.preprocess.apply(self.x_val[offset:offset + n])

    def val_labels(self, n: int, offset: int = 0) -> torch.Tensor:
        return self.y_val[offset:offset + n]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "train_images": len(self.y_train),
                "val_images": len(self.y_val), "classes": self.classes,
                "preprocess": self.preprocess.to_dict(), **self.info}


@dataclass
class Batches:
    """A sized iterator of preprocessed (x, y) batches over an in-memory split."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    batch_size: int
    preprocess: Preprocess

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.indices), self.batch_size):
            idx = self.indices[i:i + self.batch_size]
            yield self.preprocess.apply(self.x[idx]), self.y[idx]

    @property
    def num_images(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------- format readers
# Each reader returns (x_train, y_train, x_val, y_val, classes or None, info) as numpy arrays.

Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, "list[str] | None", dict]


def _read_default(path: Path, target: tuple[int, int]) -> Raw:
    if not DEFAULT_DATA.is_file():
        raise EdgepruneError(f"bundled data missing: {DEFAULT_DATA} (reinstall edgeprune)")
    with np.load(DEFAULT_DATA, allow_pickle=False) as z:
        arrays = [z[k] for k in ("x_train", "y_train", "x_val", "y_val")]
    return (*arrays, FASHION_MNIST_CLASSES,
            {"source": "Fashion-MNIST subset bundled with edgeprune (train: first 600 per class of the "
                       "training set; val: first 200 per class of the test set)"})


def _read_idx(path: Path, target: tuple[int, int]) -> Raw:
    splits = []
    for split in ("train", "t10k"):
        found = find_idx_split(path, split)
        if found is None:
            raise EdgepruneError(f"{path} lacks {split}-images/-labels idx files (plain or .gz)")
        try:
            x, y = read_idx(found[0]), read_idx(found[1])
        except ValueError as e:
            raise EdgepruneError(str(e)) from None
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise EdgepruneError(f"{found[0].name} / {found[1].name}: images {x.shape} and labels "
                                 f"{y.shape} do not pair up")
        splits += [x, y]
    classes = FASHION_MNIST_CLASSES if "fashion" in str(path).lower() else None
    return (*splits, classes, {"source": str(path)})


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing that can run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _unpickle_arrays(file: Path) -> dict:
    try:
        with open(file, "rb") as f:
            d = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise EdgepruneError(f"cannot read CIFAR batch {file}: {e}") from None
    if not isinstance(d, dict):
        raise EdgepruneError(f"{file} is not a CIFAR batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_cifar(path: Path, target: tuple[int, int]) -> Raw:
    if (path / "data_batch_1").is_file():          # CIFAR-10
        train_files = sorted(path.glob("data_batch_*"))
        test_file, meta_file, label_key, names_key = path / "test_batch", path / "batches.meta", "labels", "label_names"
    else:                                          # CIFAR-100
        train_files = [path / "train"]
        test_file, meta_file, label_key, names_key = path / "test", path / "meta", "fine_labels", "fine_label_names"
    if not test_file.is_file():
        raise EdgepruneError(f"{path} lacks {test_file.name} (CIFAR python format)")

    def read(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            d = _unpickle_arrays(f)
            if "data" not in d or label_key not in d:
                raise EdgepruneError(f"{f} lacks 'data'/'{label_key}' (CIFAR python format)")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = read(train_files)
    xva, yva = read([test_file])
    classes = None
    if meta_file.is_file():
        names = _unpickle_arrays(meta_file).get(names_key)
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return xtr, ytr, xva, yva, classes, {"source": str(path)}


def _read_imagefolder(path: Path, target: tuple[int, int]) -> Raw:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(d.name for d in (path / "train").iterdir() if d.is_dir())
    if not classes:
        raise EdgepruneError(f"{path / 'train'} has no class folders (ImageFolder layout: train/<class>/*.png)")
    out = []
    for split in ("train", "val"):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            folder = path / split / cls
            files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
            for f in files:
                try:
                    with Image.open(f) as im:
                        im = im.convert("RGB").resize((target[1], target[0]), Image.BILINEAR)
                        xs.append(np.asarray(im).transpose(2, 0, 1))
                except (UnidentifiedImageError, OSError) as e:
                    raise EdgepruneError(f"cannot read image {f}: {e}") from None
                ys.append(label)
        extra = sorted({d.name for d in (path / split).iterdir() if d.is_dir()} - set(classes))
        if extra:
            raise EdgepruneError(f"{path / split} has classes not in train/: {', '.join(extra[:3])}")
        if not xs:
            raise EdgepruneError(f"{path / split} holds no images")
        out += [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    return (*out, classes, {"source": str(path), "resized_on_load": list(target)})


def _read_npz(path: Path, target: tuple[int, int]) -> Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_val", "y_val") if k not in z.files]
            if missing:
                raise EdgepruneError(f"{path} lacks arrays {', '.join(missing)} (needs x_train, y_train, x_val, y_val)")
            arrays = [z[k] for k in ("x_train", "y_train", "x_val", "y_val")]
    except EdgepruneError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise EdgepruneError(f"cannot read {path}: {e}") from None
    return (*arrays, None, {"source": str(path)})


@dataclass
class Format:
    detect: Callable[[Path], bool]
    read: Callable[[Path, tuple[int, int]], Raw]


FORMATS: dict[str, Format] = {
    "npz": Format(lambda p: p.is_file() and p.suffix == ".npz", _read_npz),
    "idx": Format(lambda p: p.is_dir() and find_idx_split(p, "train") is not None, _read_idx),
    "cifar": Format(lambda p: p.is_dir() and ((p / "data_batch_1").is_file() or (p / "train").is_file()),
                    _read_cifar),
    "imagefolder": Format(lambda p: p.is_dir() and (p / "train").is_dir() and (p / "val").is_dir(),
                          _read_imagefolder),
}


def _to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3):
            return x
        if x.shape[3] in (1, 3):
            return x.transpose(0, 3, 1, 2)
    raise EdgepruneError(f"{what} has shape {x.shape}; expected (N,H,W), (N,C,H,W) or (N,H,W,C) with C in 1, 3")


def _geometry(src: tuple[int, int], dst: tuple[int, int], mode: str) -> tuple[str, int]:
    if src == dst:
        return "none", 0
    diff = (dst[0] - src[0], dst[1] - src[1])
    can_pad = diff[0] == diff[1] and diff[0] > 0 and diff[0] % 2 == 0
    if mode == "pad" or (mode == "auto" and can_pad and diff[0] <= 8):
        if not can_pad:
            raise EdgepruneError(f"cannot pad {src} to {dst} symmetrically; use --resize resize")
        return "pad", diff[0] // 2
    if mode == "none":
        raise EdgepruneError(f"data images are {src[0]}x{src[1]}, the model expects {dst[0]}x{dst[1]}: "
                             "pass --resize pad|resize or --input-size")
    return "resize", 0


def load_data(spec: DataSpec, input_shape: tuple[int, ...], num_classes: int | None = None) -> DataBundle:
    """Read the data ``spec`` names and fit its preprocessing to a model's ``input_shape``."""
    target = (int(input_shape[2]), int(input_shape[3]))
    if spec.path == "default":
        fmt, path = "default", Path(DEFAULT_DATA)
        raw = _read_default(path, target)
    else:
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise EdgepruneError(
                f"data path not found: {path}; pass --data default, a folder of MNIST/Fashion-MNIST idx files "
                "(e.g. `apt-get install dataset-fashion-mnist` -> /usr/share/datasets/fashion-mnist), a CIFAR "
                "python folder, an ImageFolder tree with train/ and val/, or an .npz")
        fmt = next((name for name, f in FORMATS.items() if f.detect(path)), None)
        if fmt is None:
            raise EdgepruneError(f"{path} is not a known data format (idx folder, CIFAR python folder, "
                                 "ImageFolder train/+val/, or .npz with x_train, y_train, x_val, y_val)")
        raw = FORMATS[fmt].read(path, target)
    xtr, ytr, xva, yva, classes, info = raw
    xtr, xva = _to_nchw(np.asarray(xtr), "x_train"), _to_nchw(np.asarray(xva), "x_val")
    ytr, yva = np.asarray(ytr).astype(np.int64).reshape(-1), np.asarray(yva).astype(np.int64).reshape(-1)
    if len(xtr) != len(ytr) or len(xva) != len(yva):
        raise EdgepruneError(f"{path}: images and labels differ in count "
                             f"(train {len(xtr)} vs {len(ytr)}, val {len(xva)} vs {len(yva)})")
    if xtr.shape[1:] != xva.shape[1:]:
        raise EdgepruneError(f"{path}: train images {xtr.shape[1:]} and val images {xva.shape[1:]} differ")
    n_labels = int(max(ytr.max(initial=0), yva.max(initial=0))) + 1
    if min(ytr.min(initial=0), yva.min(initial=0)) < 0:
        raise EdgepruneError(f"{path}: negative labels")
    classes = spec.classes or classes or [str(i) for i in range(n_labels)]
    if num_classes is not None and num_classes != len(classes):
        raise EdgepruneError(f"the model has {num_classes} outputs but the data has {len(classes)} classes: "
                             f"pass --num-classes {len(classes)} (a new head) or matching data")
    if n_labels > len(classes):
        raise EdgepruneError(f"{path}: label {n_labels - 1} is out of range for {len(classes)} classes")

    src_channels, want = xtr.shape[1], int(input_shape[1])
    channels = spec.channels or want
    if channels != want:
        raise EdgepruneError(f"--channels {channels} disagrees with the model's {want} input channels")
    if src_channels != channels and not (src_channels == 1 and channels == 3 and spec.channels == 3):
        hint = ("pass --channels 3 to replicate grayscale into RGB, or --in-channels 1 to change the model's stem"
                if src_channels == 1 else f"pass --in-channels {src_channels} to change the model's stem")
        raise EdgepruneError(f"the data has {src_channels} channel(s), the model expects {want}: {hint}")
    geometry, pad = _geometry((xtr.shape[2], xtr.shape[3]), target, spec.resize)
    integer = np.issubdtype(xtr.dtype, np.integer)
    scale = 1 / 255 if integer else 1.0
    if spec.path == "default":
        mean, std = (FMNIST_MEAN,), (FMNIST_STD,)
    else:
        sample = xtr[: min(len(xtr), 10000)].astype(np.float64) * scale
        mean = tuple(float(v) for v in sample.mean(axis=(0, 2, 3)))
        std = tuple(float(v) for v in sample.std(axis=(0, 2, 3)) + 1e-8)
    mean, std = spec.mean or mean, spec.std or std
    if channels == 3 and src_channels == 1 and len(mean) == 1:
        mean, std = mean * 3, std * 3
    if len(mean) != channels or len(std) != channels:
        raise EdgepruneError(f"--mean/--std need {channels} values, got {len(mean)} and {len(std)}")
    pre = Preprocess(source_size=(int(xtr.shape[2]), int(xtr.shape[3])), size=target, geometry=geometry,
                     pad=pad, scale=scale, mean=tuple(mean), std=tuple(std), source_channels=int(src_channels),
                     channels=channels,
                     channel_order="gray" if channels == 1 else ("gray->RGB (replicated)" if src_channels == 1 else "RGB"))
    dtype = torch.uint8 if integer else torch.float32
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)  # noqa: E731
    return DataBundle(name=spec.path, format=fmt, x_train=as_t(xtr), y_train=torch.from_numpy(ytr),
                      x_val=as_t(xva), y_val=torch.from_numpy(yva), preprocess=pre, classes=list(classes),
                      info=info)
