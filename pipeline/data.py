"""Data input: the bundled subset, idx folders, CIFAR python folders, ImageFolder trees, .npz.

``load_data(DataSpec(...), input_shape, num_classes)`` returns a :class:`DataBundle` holding
the train/val images (uint8 where the source is 8-bit) and the explicit :class:`Preprocess`
that turns them into the model's input. Array formats are held in memory as read; an
ImageFolder's photos are decoded and, when their size differs from the model's input, resized
(and centre-cropped) as they are read, either all when the data is read (memory stays at one
model-sized 8-bit image per photo) or, streamed (``--data-load``, ``imagefolder.py``), when a
batch needs them, by DataLoader workers: then only labels and file names are held, and every
figure is the same. ``Preprocess.steps()`` lists every step from the raw image (the file as
decoded, or the array as stored) to the model input, including those the reader did; it is
copied into the artifact manifest so firmware reproduces it exactly. Nothing is ever
downloaded.

Normalisation statistics are the data's own (per channel, from a seeded sample of at most
``STATS_SAMPLE`` training images, in float32 chunks), the bundled model's for ``--data
default``, numbers given with ``--mean``/``--std`` (then nothing is computed), or a named set
(``--mean imagenet --std imagenet``). A mismatch worth knowing about (the data's own
statistics far from the ImageNet ones used, or from those a model is known to expect) is
reported through the ``warn`` callback of :func:`load_data` (default: ``warnings.warn``).
"""

from __future__ import annotations

import math
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.idx import find_idx_split, read_idx
from edgeprune.pipeline.imagefolder import (GRAY_MODES, IMAGE_EXTENSIONS, ImageFiles, cover_size, crop_box,  # noqa: F401
                                            decode_image, default_workers, list_tree, scan_headers)

ASSETS = Path(__file__).parent / "assets"
DEFAULT_DATA = ASSETS / "fmnist_subset.npz"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # the bundled model's training normalisation
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# How images whose size differs from the model input are fitted to it:
#   auto    pick one: none when the sizes match; pad for a small symmetric pad (at most 8 pixels, e.g.
#           28x28 -> 32x32); for array data otherwise resize; for an ImageFolder of photos otherwise crop
#   pad     zero pixels added on each side (the size difference must be even and the same on both axes)
#   resize  stretch to the input size, aspect ratio distorted (bilinear, antialiased)
#   crop    resize so the image covers the input, the shorter side becoming the input size (bilinear,
#           antialiased), then centre-crop: torchvision's Resize(s) + CenterCrop(s)
#   none    refuse data of another size
RESIZE_MODES = ("auto", "pad", "resize", "crop", "none")
# Named normalisation statistics (``--mean imagenet --std imagenet``), per RGB channel.
NAMED_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# How an ImageFolder's images are held (``--data-load``):
#   memory  decoded whole when the data is read (array formats always are: their files are read whole)
#   stream  decoded when a batch needs them, by --data-workers DataLoader workers: only labels and file names
#           are held, so a tree of any size fits
#   auto    memory when the decoded images take at most STREAM_ABOVE bytes, else stream
LOAD_MODES = ("auto", "memory", "stream")
STREAM_ABOVE = 2 ** 30
STATS_SAMPLE = 2000       # photos (ImageFolder): the data's own mean/std come from a seeded sample of these
STATS_SEED = 0
STATS_FIRST = 10000       # array data: from the first images, as always
MISMATCH_STD = 0.3        # warn when statistics differ by more than this many (used) standard deviations


class DataWarning(UserWarning):
    """A data-preprocessing mismatch worth knowing about (``load_data``'s default ``warn``)."""


@dataclass
class DataSpec:
    """What the user asked for with ``--data`` and the preprocessing flags."""

    path: str = "default"
    mean: tuple[float, ...] | str | None = None  # None: the dataset's own (sampled from train); or a name
    std: tuple[float, ...] | str | None = None   # of NAMED_STATISTICS ("imagenet")
    channels: int | None = None                # None: must match the model
    resize: str = "auto"                       # one of RESIZE_MODES
    classes: list[str] | None = None
    load: str = "auto"                         # one of LOAD_MODES: an ImageFolder held in memory or streamed
    workers: int | None = None                 # DataLoader workers decoding streamed images (None: default_workers())

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise EdgepruneError(f"--resize must be {', '.join(RESIZE_MODES[:-1])} or {RESIZE_MODES[-1]}, "
                                 f"got {self.resize!r}")
        if self.load not in LOAD_MODES:
            raise EdgepruneError(f"--data-load must be {', '.join(LOAD_MODES[:-1])} or {LOAD_MODES[-1]}, "
                                 f"got {self.load!r}")
        if self.workers is not None and (type(self.workers) is not int or self.workers < 0):
            raise EdgepruneError(f"--data-workers must be a whole number >= 0, got {self.workers!r}")
        for name in ("mean", "std"):       # numbers, the flag's comma-separated text, or a name
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) and value.strip().lower() in NAMED_STATISTICS:
                setattr(self, name, value.strip().lower())
                continue
            try:
                numbers = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
            except (TypeError, ValueError):
                raise EdgepruneError(f"--{name} takes comma-separated numbers or "
                                     f"{' or '.join(NAMED_STATISTICS)}, got {value!r}") from None
            if not numbers or not all(math.isfinite(v) for v in numbers) or \
                    (name == "std" and min(numbers) <= 0):
                raise EdgepruneError(f"--{name} needs finite numbers{' above 0' if name == 'std' else ''}, "
                                     f"got {value!r}")
            setattr(self, name, numbers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Preprocess:
    """Raw image -> model input, in this order: decode (image files), channels, pad / resize / crop,
    scale, normalise, layout. ``geometry_at`` says who did the geometry: ``apply`` here, on the held
    images; ``load`` the reader, on each decoded 8-bit photo (the images held are already model-sized).
    ``steps()`` is the same as an ordered list, what the manifest's ``preprocessing.steps`` holds."""

    source_size: tuple[int, int] | None   # [H, W] of the raw images; None when they differ (photos)
    size: tuple[int, int]
    geometry: str                   # none | pad | resize (stretch) | crop (cover + centre crop)
    pad: int                        # zero pixels added on each side before scaling (geometry=pad)
    scale: float                    # multiply raw values by this (1/255 for 8-bit images)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_channels: int
    channels: int
    channel_order: str              # "gray", "RGB", or "gray->RGB (replicated)"
    layout: str = "NCHW"
    dtype: str = "float32"
    decode: str | None = None       # image files: the PIL mode they are converted to (RGB or L); arrays: None
    source_dtype: str = "uint8"     # dtype of the raw images
    geometry_at: str = "apply"      # apply | load
    interpolation: str | None = None  # resize / crop: "bilinear, antialiased"
    source_sizes: dict[str, Any] | None = None   # image files: {distinct, smallest, largest} [H, W]
    statistics: dict[str, Any] = field(default_factory=dict)   # where mean/std came from
    resample: tuple[int, int] | None = None   # a last resize to this size (the resolution lever), see at_size

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the model input this produces."""
        return self.resample or self.size

    def at_size(self, size: tuple[int, int]) -> "Preprocess":
        """This preprocessing for a model fed ``size`` images (the resolution lever). A resize or crop
        done here targets the new size directly; otherwise (a pad, no geometry, photos resized as
        they were read) a bilinear, antialiased resize to ``size`` follows the geometry step."""
        size = (int(size[0]), int(size[1]))
        if size == self.input_size:
            return self
        if self.geometry_at == "apply" and self.geometry in ("resize", "crop"):
            return replace(self, size=size, resample=None)
        return replace(self, resample=size, interpolation="bilinear, antialiased")

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.float()
        if self.source_channels == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.geometry_at == "apply":
            if self.geometry == "pad":
                x = F.pad(x, (self.pad,) * 4)
            elif self.geometry == "resize":
                x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
            elif self.geometry == "crop":
                covered = cover_size((x.shape[2], x.shape[3]), self.size)
                x = F.interpolate(x, size=covered, mode="bilinear", antialias=True, align_corners=False)
                left, top, right, bottom = crop_box(covered, self.size)
                x = x[:, :, top:bottom, left:right]
        if self.resample is not None:
            x = F.interpolate(x, size=self.resample, mode="bilinear", antialias=True, align_corners=False)
        x = x * self.scale
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def steps(self) -> list[dict[str, Any]]:
        """Every step from the raw image (HWC, as decoded or stored) to the model input, in order."""
        size = list(self.size)
        if self.decode is not None:
            out: list[dict[str, Any]] = [{
                "op": "decode", "mode": self.decode, "dtype": "uint8", "layout": "HWC",
                "how": f"PIL: Image.open(file).convert({self.decode!r})"
                       + (" (L = ITU-R 601-2 luma)" if self.decode == "L" else "")
                       + "; no EXIF rotation is applied"}]
        else:
            out = [{"op": "input", "dtype": self.source_dtype, "layout": "HWC", "channels": self.source_channels,
                    "size": list(self.source_size) if self.source_size else None}]
        if self.source_channels == 1 and self.channels == 3:
            out.append({"op": "replicate_channels", "channels": 3})
        if self.geometry == "pad":
            out.append({"op": "pad", "pixels": self.pad, "value": 0,
                        "how": "the same number of zero pixels on each of the four sides, before scaling"})
        elif self.geometry in ("resize", "crop"):
            if self.geometry_at == "load":
                how = ("PIL: image.resize((w', h'), Image.BILINEAR) on the decoded 8-bit image, when the reader "
                       "reads it (Pillow widens the bilinear filter when shrinking: antialiased); the result "
                       "is 8-bit (rounded)")
                result = "uint8"
            else:
                how = ("torch.nn.functional.interpolate(mode='bilinear', antialias=True, align_corners=False) "
                       "on float32 values (PIL's bilinear resize of a float image agrees to about 1e-3)")
                result = "float32"
            common = {"interpolation": "bilinear", "antialias": True, "at": self.geometry_at,
                      "result_dtype": result, "how": how}
            if self.geometry == "resize":
                out.append({"op": "resize", "size": size, "aspect_ratio": "distorted", **common})
            else:
                out.append({"op": "resize_shorter_side", "size": size,
                            "rule": "scale by max(H/h, W/w): the side that limits becomes exactly H (or W), the "
                                    "other int(H * w / h) (or int(W * h / w)), truncated; for a square input "
                                    "the shorter side becomes the input size (torchvision Resize(s))",
                            **common})
                out.append({"op": "center_crop", "size": size, "at": self.geometry_at,
                            "rule": "top = round((h' - H) / 2), left = round((w' - W) / 2), halves rounded to "
                                    "even (Python round; torchvision CenterCrop)"})
        if self.resample is not None:
            out.append({"op": "resize", "size": list(self.resample), "aspect_ratio": "distorted",
                        "interpolation": "bilinear", "antialias": True, "at": "apply", "result_dtype": "float32",
                        "how": "torch.nn.functional.interpolate(mode='bilinear', antialias=True, align_corners=False) "
                               "on float32 values, after the step above: the model's input size chosen by the "
                               "resolution lever"})
        out.append({"op": "scale", "factor": self.scale, "dtype": "float32",
                    "how": "x = float32(raw) * factor"})
        out.append({"op": "normalize", "mean": list(self.mean), "std": list(self.std),
                    "how": "x[c] = (x[c] - mean[c]) / std[c]"})
        out.append({"op": "layout", "from": "HWC", "to": self.layout, "channel_order": self.channel_order,
                    "dtype": self.dtype, "how": "transpose to C, H, W and add the batch dimension"})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": self.steps()}


@dataclass
class DataBundle:
    """A dataset's two splits and the preprocessing that turns their raw images into model inputs.

    ``x_train`` / ``x_val`` are the raw (N, C, H, W) images: a tensor held in memory, or, for a streamed
    ImageFolder, an :class:`~edgeprune.pipeline.imagefolder.ImageFiles` that decodes them when read. Both
    answer ``len``, ``shape`` and ``x[indices]`` (the raw images as a tensor) alike, and the consumers use
    what is built on them: :meth:`batches` (preprocessed batches over given indices in a given order,
    decoded by DataLoader workers when streamed), :meth:`val_images`, :meth:`raw_images` (golden vectors).
    Labels (``y_train``, ``y_val``), class names and file lists are always in memory."""

    name: str
    format: str
    x_train: torch.Tensor | ImageFiles   # raw, (N, C, H, W)
    y_train: torch.Tensor          # int64
    x_val: torch.Tensor | ImageFiles
    y_val: torch.Tensor
    preprocess: Preprocess
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)   # image files of each split, in order
    warnings: list[str] = field(default_factory=list)            # what load_data warned about

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

    @property
    def streamed(self) -> bool:
        """Whether the images are decoded when a batch needs them (a streamed ImageFolder)."""
        return isinstance(self.x_train, ImageFiles)

    def at_size(self, size: tuple[int, int]) -> "DataBundle":
        """The same images preprocessed for a model fed ``size`` images (``Preprocess.at_size``)."""
        pre = self.preprocess.at_size(size)
        return self if pre is self.preprocess else replace(self, preprocess=pre)

    def val_images(self, n: int, offset: int = 0) -> torch.Tensor:
        return self.preprocess.apply(self.x_val[offset:offset + n])

    def val_labels(self, n: int, offset: int = 0) -> torch.Tensor:
        return self.y_val[offset:offset + n]

    def sample(self, split: str, n: int, seed: int = 0) -> torch.Tensor:
        """The first ``n`` (at most all) indices of one seeded shuffle of ``split``: a fixed draw of its images."""
        size = len(self.split(split)[1])
        return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:min(n, size)]

    def raw_images(self, split: str, indices: Sequence[int] | torch.Tensor) -> list[np.ndarray]:
        """The raw images ``indices`` of ``split`` as ``Preprocess.steps()`` starts from: (H, W, C),
        an image file as decoded (``preprocess.decode`` mode, 8-bit, before any resize), an array
        image as stored. Photos are decoded again from their files."""
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        key = "val" if split in ("val", "test") else split
        if key in self.files:
            return [decode_image(self.files[key][i], self.preprocess.decode or "RGB") for i in idx]
        x, _ = self.split(split)
        return [x[i].numpy().transpose(1, 2, 0).copy() for i in idx]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "train_images": len(self.y_train),
                "val_images": len(self.y_val), "classes": self.classes,
                "preprocess": self.preprocess.to_dict(), **self.info}


@dataclass
class Batches:
    """A sized iterator of preprocessed (x, y) batches of a split's images ``indices``, in that order:
    sliced from the tensor held in memory, or decoded by DataLoader workers (``ImageFiles.stream``) and
    preprocessed here, the same batches either way. With ``only`` (batch number -> bool; see
    :meth:`only_batches`), a batch it rejects comes as ``(None, y)``: its images are neither decoded nor
    preprocessed, only its labels given, so a rank under torchrun reads just the batches it runs. With
    ``rows`` (batch size -> slice; :meth:`rows_of`), only those rows of each batch's images are read, and the
    labels still come whole: a fine-tune's rank reads its share of every global batch."""

    x: torch.Tensor | ImageFiles
    y: torch.Tensor
    indices: torch.Tensor
    batch_size: int
    preprocess: Preprocess
    only: Callable[[int], bool] | None = None
    rows: Callable[[int], slice] | None = None

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def only_batches(self, keep: Callable[[int], bool]) -> "Batches":
        """These batches with the images of those ``keep`` rejects left unread (0-based batch numbers)."""
        return replace(self, only=keep)

    def rows_of(self, rows: Callable[[int], slice]) -> "Batches":
        """These batches with only ``rows(len(batch))`` of each batch's images read; the labels whole."""
        return replace(self, rows=rows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, torch.Tensor]]:
        chunks = [self.indices[i:i + self.batch_size] for i in range(0, len(self.indices), self.batch_size)]
        read = [c if self.rows is None else c[self.rows(len(c))]
                for i, c in enumerate(chunks) if self.only is None or self.only(i)]
        raws = iter(self.x.stream(read) if isinstance(self.x, ImageFiles) else (self.x[idx] for idx in read))
        for i, chunk in enumerate(chunks):
            if self.only is not None and not self.only(i):
                yield None, self.y[chunk]
            else:
                yield self.preprocess.apply(next(raws)), self.y[chunk]

    @property
    def num_images(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------- format readers
# Each reader returns (x_train, y_train, x_val, y_val, classes or None, info) as numpy arrays, and
# the ImageFolder reader also what it did to the photos as it read them (a PhotoLoad).


@dataclass
class Wanted:
    """What the model takes and the user asked for: what a reader that fits images needs."""

    size: tuple[int, int]
    channels: int
    resize: str
    load: str = "auto"              # LOAD_MODES: how an ImageFolder's images are held
    workers: int = 0                # DataLoader workers that decode them


@dataclass
class PhotoLoad:
    """How the ImageFolder reader decoded (and maybe resized) its photos."""

    decode: str                     # PIL mode: RGB or L
    geometry: str
    pad: int
    geometry_at: str                # load: done by the reader; apply: left to Preprocess.apply
    source_size: tuple[int, int] | None
    source_sizes: dict[str, Any]
    files: dict[str, list[Path]]


class Raw(NamedTuple):
    x_train: np.ndarray | ImageFiles      # ImageFiles: a streamed ImageFolder
    y_train: np.ndarray
    x_val: np.ndarray | ImageFiles
    y_val: np.ndarray
    classes: list[str] | None
    info: dict
    photos: PhotoLoad | None = None


def _read_default(path: Path, want: Wanted) -> Raw:
    if not DEFAULT_DATA.is_file():
        raise EdgepruneError(f"bundled data missing: {DEFAULT_DATA} (reinstall edgeprune)")
    with np.load(DEFAULT_DATA, allow_pickle=False) as z:
        arrays = [z[k] for k in ("x_train", "y_train", "x_val", "y_val")]
    return (*arrays, FASHION_MNIST_CLASSES,
            {"source": "Fashion-MNIST subset bundled with edgeprune (train: first 600 per class of the "
                       "training set; val: first 200 per class of the test set)"})


def _read_idx(path: Path, want: Wanted) -> Raw:
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


def _read_cifar(path: Path, want: Wanted) -> Raw:
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


def _read_imagefolder(path: Path, want: Wanted) -> Raw:
    classes, files, labels = list_tree(path)
    heads = scan_headers(files["train"] + files["val"], want.workers)
    sizes = heads.sizes
    decode = "L" if want.channels == 1 and heads.all_gray else "RGB"
    if len(sizes) == 1:
        source_size: tuple[int, int] | None = sizes[0]
        geometry, pad = _geometry(sizes[0], want.size, want.resize, photos=True)
    else:
        if want.resize in ("pad", "none"):
            raise EdgepruneError(f"{path}: the images differ in size (e.g. {sizes[0][0]}x{sizes[0][1]} and "
                                 f"{sizes[-1][0]}x{sizes[-1][1]}); --resize {want.resize} needs one size: use "
                                 "--resize crop (or resize, which stretches them)")
        source_size, geometry, pad = None, ("resize" if want.resize == "resize" else "crop"), 0
    at = "load" if geometry in ("resize", "crop") else "apply"
    held = want.size if at == "load" else sizes[0]
    images = {split: ImageFiles(files[split], decode, geometry if at == "load" else "none", held, want.workers)
              for split in ("train", "val")}
    stream = want.load == "stream" or (want.load == "auto" and sum(x.nbytes for x in images.values()) > STREAM_ABOVE)
    out: list[Any] = []
    for split in ("train", "val"):
        out += [images[split] if stream else images[split].read_all(str(path / split)),
                np.asarray(labels[split], dtype=np.int64)]
    photos = PhotoLoad(decode, geometry, pad, at, source_size,
                       {"distinct": len(sizes), "smallest": list(sizes[0]), "largest": list(sizes[-1])}, files)
    info = {"source": str(path)}
    if at == "load":
        info["resized_on_load"] = list(want.size)
    return Raw(*out, classes, info, photos)


def _npz_member(z: Any, key: str) -> str:
    """shape and dtype of an .npz member from its header, without loading it ("" if unreadable)."""
    try:
        with z.zip.open(f"{key}.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        return f"{'x'.join(map(str, shape))} {dtype}, {math.prod(shape) * dtype.itemsize / 2**30:.1f} GiB"
    except Exception:  # noqa: BLE001 - only for the message
        return ""


def _read_npz(path: Path, want: Wanted) -> Raw:
    if not zipfile.is_zipfile(path):     # np.load would take it for a pickle and say so
        raise EdgepruneError(f"{path} is not an .npz file (not a zip archive of arrays x_train, y_train, x_val, y_val)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_val", "y_val") if k not in z.files]
            if missing:
                raise EdgepruneError(f"{path} lacks arrays {', '.join(missing)} (needs x_train, y_train, x_val, y_val)")
            arrays = []
            for k in ("x_train", "y_train", "x_val", "y_val"):
                try:
                    arrays.append(z[k])
                except MemoryError:
                    desc = _npz_member(z, k)
                    raise EdgepruneError(f"{path}: array {k}{f' ({desc})' if desc else ''} is too large to "
                                         "load into memory") from None
    except EdgepruneError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise EdgepruneError(f"cannot read {path}: {e}") from None
    return (*arrays, None, {"source": str(path)})


@dataclass
class Format:
    detect: Callable[[Path], bool]
    read: Callable[[Path, Wanted], Raw]


FORMATS: dict[str, Format] = {
    "npz": Format(lambda p: p.is_file() and p.suffix == ".npz", _read_npz),
    "idx": Format(lambda p: p.is_dir() and find_idx_split(p, "train") is not None, _read_idx),
    "cifar": Format(lambda p: p.is_dir() and ((p / "data_batch_1").is_file() or (p / "train").is_file()),
                    _read_cifar),
    "imagefolder": Format(lambda p: p.is_dir() and (p / "train").is_dir() and (p / "val").is_dir(),
                          _read_imagefolder),
}


# torch dtype the images are held as -> the numpy dtype they are converted to first
HELD_AS = {torch.uint8: np.uint8, torch.int32: np.int32, torch.int64: np.int64, torch.float32: np.float32}
SAMPLE_CHECKED = 64     # images of each split preprocessed at load to check the model inputs are finite


def _labels(y: Any, what: str, path: Path) -> np.ndarray:
    """Labels as int64 class indices, or one line: float labels must be whole numbers (never truncated)."""
    y = np.asarray(y)
    flat = y.reshape(-1)
    if y.dtype == np.bool_ or np.issubdtype(y.dtype, np.integer):
        if y.dtype == np.uint64 and flat.size and int(flat.max()) > np.iinfo(np.int64).max:
            raise EdgepruneError(f"{path}: {what} holds labels too large for class indices (up to {int(flat.max())})")
        return flat.astype(np.int64)
    if not np.issubdtype(y.dtype, np.floating):
        raise EdgepruneError(f"{path}: {what} has dtype {y.dtype}; labels must be integer class indices")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(flat) | (flat != np.round(flat)) | (np.abs(flat) > 2 ** 31)
    if bad.any():
        i = int(np.argmax(bad))
        raise EdgepruneError(f"{path}: {what} holds non-integer labels ({int(bad.sum())} of {flat.size}, the first "
                             f"{float(flat[i])!r} at index {i}); labels must be whole class indices, never truncated")
    return flat.astype(np.int64)


def _pixel_dtype(xtr: np.ndarray, xva: np.ndarray, path: Path) -> tuple[float, str, torch.dtype]:
    """(scale, source dtype recorded in the preprocessing, torch dtype the images are held as).

    Unsigned integers are scaled by their dtype's range (1/255 for uint8, 1/65535 for uint16, ...);
    signed integers are taken as 8-bit values, as always, and must lie in 0..255; floats as they are."""
    if xtr.dtype != xva.dtype and not (np.issubdtype(xtr.dtype, np.floating) and np.issubdtype(xva.dtype, np.floating)):
        raise EdgepruneError(f"{path}: train images are {xtr.dtype}, val images {xva.dtype}: store both alike")
    dt = xtr.dtype
    if dt == np.bool_ or np.issubdtype(dt, np.floating):
        return 1.0, "float32", torch.float32
    if np.issubdtype(dt, np.unsignedinteger):
        if dt.itemsize > 4:
            raise EdgepruneError(f"{path}: images are {dt}; use uint8, uint16, uint32 or float pixels")
        top = int(np.iinfo(dt).max)
        held = {1: torch.uint8, 2: torch.int32, 4: torch.int64}[dt.itemsize]
        return 1 / top, str(dt), held
    if np.issubdtype(dt, np.signedinteger):
        lo = min(int(a.min()) for a in (xtr, xva) if a.size) if xtr.size or xva.size else 0
        hi = max(int(a.max()) for a in (xtr, xva) if a.size) if xtr.size or xva.size else 0
        if lo < 0 or hi > 255:
            raise EdgepruneError(f"{path}: {dt} images hold values {lo}..{hi}; signed integer pixels are read as "
                                 "8-bit values (0..255): store uint8, uint16 or float images")
        return 1 / 255, str(dt), torch.uint8
    raise EdgepruneError(f"{path}: images have dtype {dt}; use unsigned integer (uint8, uint16) or float pixels")


def _non_finite(x: torch.Tensor) -> tuple[int, int | None]:
    """(how many values of ``x`` (N, ...) are NaN or inf, the first image holding one), a chunk at a time."""
    if not x.is_floating_point() or not len(x):
        return 0, None
    step = max(1, (1 << 20) // max(1, x[0].numel()))
    bad, first = 0, None
    for i in range(0, len(x), step):
        per_image = (~torch.isfinite(x[i:i + step])).reshape(len(x[i:i + step]), -1).sum(1)
        count = int(per_image.sum())
        if count and first is None:
            first = i + int(torch.nonzero(per_image)[0])
        bad += count
    return bad, first


def _refuse_non_finite_pixels(path: Path, x_train: torch.Tensor, x_val: torch.Tensor) -> None:
    """One line naming ``path`` when an image holds NaN or inf (checked before any statistics): every
    accuracy or latency computed from it would be a number that cannot be trusted."""
    for what, x in (("x_train", x_train), ("x_val", x_val)):
        bad, first = _non_finite(x)
        if bad:
            raise EdgepruneError(f"{path}: {what} holds {bad} non-finite pixel value{'s' if bad > 1 else ''} (NaN, "
                                 f"inf, or beyond float32's 3.4e38; the first in image {first}), which make the "
                                 "data's statistics and the model's inputs NaN: fix or drop those images")


def _refuse_non_finite_inputs(path: Path, x_train: torch.Tensor, x_val: torch.Tensor, pre: Preprocess) -> None:
    """One line naming ``path`` when the normalisation statistics or a preprocessed sample (the first
    ``SAMPLE_CHECKED`` images of each split) are not finite."""
    if not all(math.isfinite(v) for v in (*pre.mean, *pre.std)):
        raise EdgepruneError(f"{path}: the normalisation statistics are not finite (mean {list(pre.mean)}, std "
                             f"{list(pre.std)}): pass --mean/--std, or fix the data")
    step = max(1, (1 << 20) // max(1, int(np.prod(x_train.shape[1:]))))    # a few MB of float32 at a time
    for what, x in (("train", x_train), ("val", x_val)):
        n = min(SAMPLE_CHECKED, len(x))
        if not all(bool(torch.isfinite(pre.apply(x[i:min(i + step, n)])).all()) for i in range(0, n, step)):
            raise EdgepruneError(f"{path}: the preprocessed {what} images are not finite (NaN or inf) with mean "
                                 f"{list(pre.mean)}, std {list(pre.std)}: check --mean/--std and the pixel values")


def _to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3):
            return x
        if x.shape[3] in (1, 3):
            return x.transpose(0, 3, 1, 2)
    raise EdgepruneError(f"{what} has shape {x.shape}; expected (N,H,W), (N,C,H,W) or (N,H,W,C) with C in 1, 3")


def _geometry(src: tuple[int, int], dst: tuple[int, int], mode: str, photos: bool = False) -> tuple[str, int]:
    """(geometry, pad) that fits images of size ``src`` to ``dst`` for ``--resize mode``; ``auto``
    picks crop for photos (ImageFolder), resize for array data, when no small pad fits."""
    if src == dst:
        return "none", 0
    diff = (dst[0] - src[0], dst[1] - src[1])
    can_pad = diff[0] == diff[1] and diff[0] > 0 and diff[0] % 2 == 0
    if mode == "pad" or (mode == "auto" and can_pad and diff[0] <= 8):
        if not can_pad:
            raise EdgepruneError(f"cannot pad {src} to {dst} symmetrically; use --resize resize or crop")
        return "pad", diff[0] // 2
    if mode == "none":
        raise EdgepruneError(f"data images are {src[0]}x{src[1]}, the model expects {dst[0]}x{dst[1]}: "
                             "pass --resize pad|resize|crop or --input-size")
    if mode == "crop" or (mode == "auto" and photos):
        return "crop", 0
    return "resize", 0


def _stats_sample(n: int, photos: bool) -> np.ndarray:
    """Which training images the data's own statistics are computed on: for photos a seeded random
    sample of at most ``STATS_SAMPLE`` (an ImageFolder is in class order), for array data the
    first ``STATS_FIRST`` (as always: array files are shuffled, and their statistics stay the same)."""
    if photos:
        if n <= STATS_SAMPLE:
            return np.arange(n)
        return np.sort(np.random.default_rng(STATS_SEED).choice(n, STATS_SAMPLE, replace=False))
    return np.arange(min(n, STATS_FIRST))


def _channel_stats(x: np.ndarray, scale: float, idx: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``x[idx] * scale`` for ``x`` (N, C, H, W), a chunk
    of at most 2**20 values at a time, never a copy of the whole sample: 8-bit images are summed
    exactly (int64 sums of the values and their squares); other images in two passes (mean, then
    squared deviations) with float64 sums, which gives numpy's figures."""
    step = max(1, (1 << 20) // max(1, int(np.prod(x.shape[1:]))))
    parts = [idx[i:i + step] for i in range(0, len(idx), step)]

    def chunks() -> Iterator[np.ndarray]:      # x[part] for every part (a streamed split: decoded by its workers)
        if isinstance(x, ImageFiles):
            return (c.numpy() for c in x.stream(parts))
        return (x[part] for part in parts)

    count = max(1, len(idx) * x.shape[2] * x.shape[3])
    if np.issubdtype(x.dtype, np.integer) and x.dtype.itemsize == 1:
        total = np.zeros(x.shape[1], dtype=np.int64)
        squares = np.zeros(x.shape[1], dtype=np.int64)
        for c in chunks():
            c = c.astype(np.int16)
            total += c.sum(axis=(0, 2, 3), dtype=np.int64)
            squares += np.square(c, dtype=np.int64).sum(axis=(0, 2, 3), dtype=np.int64)
        mean = total / count
        var = np.maximum(squares / count - mean ** 2, 0.0)
    else:
        total = np.zeros(x.shape[1], dtype=np.float64)
        for c in chunks():
            total += c.sum(axis=(0, 2, 3), dtype=np.float64)
        mean = total / count
        deviations = np.zeros(x.shape[1], dtype=np.float64)
        for c in chunks():
            d = c - mean.reshape(1, -1, 1, 1)            # float64, one chunk
            deviations += np.square(d, out=d).sum(axis=(0, 2, 3))
        var = deviations / count
    return (tuple(float(v) for v in mean * scale),
            tuple(float(v) for v in np.sqrt(var) * scale + 1e-8))


def _difference(a_mean: Sequence[float], a_std: Sequence[float], mean: Sequence[float], std: Sequence[float]) -> float:
    """How far statistics (a_mean, a_std) are from (mean, std), in units of ``std``: the largest
    per-channel shift of the mean or change of the std."""
    return max(max(abs(am - m), abs(as_ - s)) / s for am, as_, m, s in zip(a_mean, a_std, mean, std))


def _numbers(values: Sequence[float]) -> str:
    return ",".join(f"{v:.3f}" for v in values)


def model_statistics(source: dict[str, Any]) -> str | None:
    """The named statistics a model presumably expects, from its loader's ``source``: ``imagenet``
    for a torchvision architecture loaded with weights (torchvision's own are trained with them)."""
    if not source.get("weights") or not isinstance(source.get("model"), str):
        return None
    import torchvision

    return "imagenet" if source["model"] in torchvision.models.list_models(module=torchvision.models) else None


def _statistics(spec: DataSpec, xtr: np.ndarray, scale: float, channels: int, src_channels: int,
                expects: str | None, photos: bool
                ) -> tuple[tuple[float, ...], tuple[float, ...], dict[str, Any], str | None]:
    """(mean, std, how they were chosen, a warning or None) for the model input."""
    used: dict[str, tuple[float, ...] | None] = {}
    origin: dict[str, str] = {}
    for i, name in enumerate(("mean", "std")):
        value = getattr(spec, name)
        if isinstance(value, str):
            used[name], origin[name] = NAMED_STATISTICS[value][i], value
        elif value is not None:
            used[name], origin[name] = tuple(value), "given"
        elif spec.path == "default":
            used[name], origin[name] = ((FMNIST_MEAN,), (FMNIST_STD,))[i], "bundled"
        else:
            used[name], origin[name] = None, "data"
    named = sorted({o for o in origin.values() if o in NAMED_STATISTICS})
    data_used = "data" in origin.values()
    compare = named[0] if named else (expects if data_used and expects in NAMED_STATISTICS else None)
    info: dict[str, Any] = {"mean": origin["mean"], "std": origin["std"], "data_mean": None, "data_std": None,
                            "sample_images": None, "sample": None, "train_images": int(len(xtr)), "seed": None,
                            "compared_with": None, "difference_std": None}
    if spec.path == "default" or not (data_used or compare):     # given numbers: nothing computed
        data_mean = data_std = None
    else:
        idx = _stats_sample(len(xtr), photos)
        data_mean, data_std = _channel_stats(xtr, scale, idx)
        info.update(data_mean=list(data_mean), data_std=list(data_std), sample_images=int(len(idx)),
                    sample=("all" if len(idx) == len(xtr) else "seeded random" if photos else "first"),
                    seed=STATS_SEED if photos and len(idx) < len(xtr) else None)
    mean = used["mean"] if used["mean"] is not None else data_mean
    std = used["std"] if used["std"] is not None else data_std
    if channels == 3 and src_channels == 1:
        mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
    if len(mean) != channels or len(std) != channels:
        if named and channels != 3:
            raise EdgepruneError(f"--mean/--std {named[0]} are per RGB channel, the model takes {channels} "
                                 "channel(s): pass numbers, or --channels 3 for grayscale data")
        raise EdgepruneError(f"--mean/--std need {channels} values, got {len(mean)} and {len(std)}")
    warning = None
    if compare and data_mean is not None:
        ref_mean, ref_std = NAMED_STATISTICS[compare]
        dm, ds = (data_mean * 3, data_std * 3) if len(data_mean) == 1 else (data_mean, data_std)
        if len(dm) == len(ref_mean):
            diff = _difference(dm, ds, ref_mean, ref_std)
            info.update(compared_with=compare, difference_std=round(diff, 4))
            if diff > MISMATCH_STD and named:
                warning = (f"the data's own statistics (mean {_numbers(dm)}, std {_numbers(ds)}) are {diff:.2f} "
                           f"std from the {compare} statistics used (mean {_numbers(ref_mean)}, std "
                           f"{_numbers(ref_std)}): check the model was trained on data like this")
            elif diff > MISMATCH_STD:
                warning = (f"the model presumably expects {compare} statistics (mean {_numbers(ref_mean)}, std "
                           f"{_numbers(ref_std)}), but the data's own are used (mean {_numbers(dm)}, std "
                           f"{_numbers(ds)}; {diff:.2f} std apart): pass --mean {compare} --std {compare} if it "
                           "was trained with them")
    return tuple(mean), tuple(std), info, warning


def load_data(spec: DataSpec, input_shape: tuple[int, ...], num_classes: int | None = None, *,
              expects: str | None = None, warn: Callable[[str], None] | None = None) -> DataBundle:
    """Read the data ``spec`` names and fit its preprocessing to a model's ``input_shape``.

    ``expects``: the named statistics the model is known to expect (see :func:`model_statistics`),
    checked against the data's own when those are used. ``warn`` receives a one-line warning
    when the statistics used and the data's own differ markedly (default: ``warnings.warn`` with
    :class:`DataWarning`); the warnings are also kept in ``DataBundle.warnings``.
    """
    target = (int(input_shape[2]), int(input_shape[3]))
    want = Wanted(target, spec.channels or int(input_shape[1]), spec.resize, spec.load,
                  default_workers() if spec.workers is None else spec.workers)
    if spec.path == "default":
        fmt, path = "default", Path(DEFAULT_DATA)
        raw = Raw(*_read_default(path, want))
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
        raw = Raw(*FORMATS[fmt].read(path, want))
    xtr, ytr, xva, yva, classes, info, photos = raw
    streamed = isinstance(xtr, ImageFiles)       # 8-bit images decoded when a batch needs them
    if not streamed:
        xtr, xva = _to_nchw(np.asarray(xtr), "x_train"), _to_nchw(np.asarray(xva), "x_val")
    ytr, yva = _labels(ytr, "y_train", path), _labels(yva, "y_val", path)
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

    src_channels, model_channels = xtr.shape[1], int(input_shape[1])
    channels = spec.channels or model_channels
    if channels != model_channels:
        raise EdgepruneError(f"--channels {channels} disagrees with the model's {model_channels} input channels")
    if src_channels != channels and not (src_channels == 1 and channels == 3 and spec.channels == 3):
        hint = ("pass --channels 3 to replicate grayscale into RGB, or --in-channels 1 to change the model's stem"
                if src_channels == 1 else f"pass --in-channels {src_channels} to change the model's stem")
        raise EdgepruneError(f"the data has {src_channels} channel(s), the model expects {model_channels}: {hint}")
    if photos is not None:
        geometry, pad, at, source_size = photos.geometry, photos.pad, photos.geometry_at, photos.source_size
    else:
        source_size = (int(xtr.shape[2]), int(xtr.shape[3]))
        (geometry, pad), at = _geometry(source_size, target, spec.resize), "apply"
    scale, source_dtype, dtype = _pixel_dtype(xtr, xva, path)
    if streamed:                             # 8-bit pixels: always finite
        x_train, x_val = xtr, xva
    else:
        with np.errstate(over="ignore"):    # float64 beyond float32 becomes inf: refused just below
            x_train, x_val = (torch.from_numpy(np.ascontiguousarray(a, dtype=HELD_AS[dtype])).to(dtype) for a in (xtr, xva))
        _refuse_non_finite_pixels(path, x_train, x_val)
    with np.errstate(over="ignore", invalid="ignore"):   # an overflow gives inf statistics: refused below
        mean, std, statistics, warning = _statistics(spec, xtr, scale, channels, int(src_channels), expects,
                                                      photos is not None)
    pre = Preprocess(source_size=source_size, size=target, geometry=geometry,
                     pad=pad, scale=scale, mean=mean, std=std, source_channels=int(src_channels),
                     channels=channels,
                     channel_order="gray" if channels == 1 else ("gray->RGB (replicated)" if src_channels == 1 else "RGB"),
                     decode=photos.decode if photos else None, source_dtype=source_dtype,
                     geometry_at=at, interpolation="bilinear, antialiased" if geometry in ("resize", "crop") else None,
                     source_sizes=photos.source_sizes if photos else None, statistics=statistics)
    _refuse_non_finite_inputs(path, x_train, x_val, pre)
    said = [warning] if warning else []
    for line in said:
        if warn is not None:
            warn(line)
        else:
            warnings.warn(line, DataWarning, stacklevel=2)
    return DataBundle(name=spec.path, format=fmt, x_train=x_train, y_train=torch.from_numpy(ytr),
                      x_val=x_val, y_val=torch.from_numpy(yva), preprocess=pre, classes=list(classes),
                      info=info, files=photos.files if photos else {}, warnings=said)


def load_data_for(spec: DataSpec, loaded: Any, warn: Callable[[str], None] | None = None) -> DataBundle:
    """:func:`load_data` fitted to a loaded model (its input shape, classes and the statistics
    its weights presumably expect; for bundled weights the preprocessing they were trained with,
    where the user did not set it): what every command calls."""
    hints = getattr(loaded, "data_hints", {}) or {}
    spec = replace(spec, **{k: v for k, v in hints.items() if getattr(spec, k) in (None, "auto")})
    return load_data(spec, loaded.input_shape, loaded.num_classes, expects=model_statistics(loaded.source),
                     warn=warn)
