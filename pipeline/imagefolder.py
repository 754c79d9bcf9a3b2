"""ImageFolder trees: the file list, decoding, and images read on demand through DataLoader workers.

``list_tree`` finds the classes and files (``train/<class>/*``, ``val/<class>/*``); ``scan_headers``
reads every file's size and mode from its header; ``decode_image`` turns one file into the 8-bit
(H, W, C) array the reader holds, resized (or resized and centre-cropped) to the model's size when
that is done as the images are read. :class:`ImageFiles` is one split's images decoded when asked
for: ``images[indices]`` gives the raw (N, C, H, W) uint8 tensor an in-memory split would give, and
``images.stream(chunks)`` gives one such tensor per chunk of indices, in order, decoded by
``workers`` DataLoader worker processes (0: in this process). A :class:`~edgeprune.pipeline.data.DataBundle`
holds one in place of a tensor when an ImageFolder is streamed (``--data-load stream``, or ``auto``
for a tree too large to hold), so only labels and file names stay in memory.

A file that cannot be read fails as one line naming it (:class:`EdgepruneError`) wherever it is
read, in a worker too: a worker returns the message as a value and this process raises it, so a
DataLoader traceback never reaches the user.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgeprune.errors import EdgepruneError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA")   # PIL modes of grayscale photos (decoded as L for a one-channel model)
HEADER_CHUNK = 256              # files whose headers one worker reads at a time
READ_CHUNK = 64                 # images one worker decodes at a time when a split is read whole


def default_workers() -> int:
    """DataLoader workers that decode streamed images when ``--data-workers`` is not given: one core
    is left to the model, at most 4 decode (0, decoding in this process, on a single core)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


# ---------------------------------------------------------------- geometry of a photo resized as it is read

def cover_size(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int]:
    """(h, w) an image of size ``src`` is resized to before a centre crop to ``dst``: scaled by
    max(H/h, W/w), the side that limits becomes exactly its target and the other is truncated
    (``int``), as torchvision's ``Resize(s)`` does with the shorter side for a square ``dst``."""
    (h, w), (th, tw) = src, dst
    if th * w >= tw * h:                       # th/h >= tw/w: the height limits
        return th, max(tw, int(th * w / h))
    return max(th, int(tw * h / w)), tw


def crop_box(size: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centre crop of ``dst`` from an image of ``size``:
    offsets ``round((size - dst) / 2)``, halves to even (Python's ``round``, torchvision's
    ``CenterCrop``)."""
    top, left = int(round((size[0] - dst[0]) / 2.0)), int(round((size[1] - dst[1]) / 2.0))
    return left, top, left + dst[1], top + dst[0]


# ---------------------------------------------------------------- one file

@contextlib.contextmanager
def image_errors(f: Path) -> Iterator[None]:
    """Turn what PIL raises for a bad or too large file into one line naming it."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise EdgepruneError(f"image {f} is too large to load: {e} (PIL's decompression-bomb limit, "
                                 f"{Image.MAX_IMAGE_PIXELS} pixels)") from None
        except MemoryError:
            raise EdgepruneError(f"image {f} is too large to load: not enough memory to decode it") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise EdgepruneError(f"cannot read image {f}: {e}") from None


def image_header(f: Path) -> tuple[int, int, str]:
    """(height, width, PIL mode) of an image file, from its header."""
    from PIL import Image

    with image_errors(f), Image.open(f) as im:
        return im.height, im.width, im.mode


def decode_image(f: Path, mode: str, geometry: str = "none", size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as (H, W, C) uint8 in PIL ``mode``, resized (``resize``) or resized to cover
    and centre-cropped (``crop``) to ``size`` with PIL's bilinear filter; ``none`` as decoded."""
    from PIL import Image

    with image_errors(f), Image.open(f) as opened:
        im = opened.convert(mode)
        if geometry == "resize":
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        elif geometry == "crop":
            covered = cover_size((im.height, im.width), size)
            im = im.resize((covered[1], covered[0]), Image.BILINEAR).crop(crop_box(covered, size))
        a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


# ---------------------------------------------------------------- the tree

def list_tree(path: Path) -> tuple[list[str], dict[str, list[Path]], dict[str, list[int]]]:
    """(classes, files of each split, labels of each split) of an ImageFolder tree, in class order then
    file name order; one line for a tree that cannot be used."""
    classes = sorted(d.name for d in (path / "train").iterdir() if d.is_dir())
    if not classes:
        raise EdgepruneError(f"{path / 'train'} has no class folders (ImageFolder layout: train/<class>/*.png)")
    files: dict[str, list[Path]] = {}
    labels: dict[str, list[int]] = {}
    for split in ("train", "val"):
        files[split], labels[split] = [], []
        for label, cls in enumerate(classes):
            folder = path / split / cls
            found = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
            if folder.is_dir() and not found:
                raise EdgepruneError(f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                                     "add images or remove the folder")
            files[split] += found
            labels[split] += [label] * len(found)
        extra = sorted({d.name for d in (path / split).iterdir() if d.is_dir()} - set(classes))
        if extra:
            raise EdgepruneError(f"{path / split} has classes not in train/: {', '.join(extra[:3])}")
        if not files[split]:
            raise EdgepruneError(f"{path / split} holds no images")
    return classes, files, labels


@dataclass
class Headers:
    """What the headers of a tree's files say, without holding one entry per file."""

    sizes: list[tuple[int, int]]    # distinct (H, W), smallest area first
    all_gray: bool                  # every file is grayscale (GRAY_MODES)


def scan_headers(files: Sequence[Path], workers: int) -> Headers:
    """The distinct sizes of ``files`` and whether all are grayscale, read from their headers by ``workers``
    DataLoader workers."""
    chunks = [list(range(i, min(i + HEADER_CHUNK, len(files)))) for i in range(0, len(files), HEADER_CHUNK)]
    sizes: set[tuple[int, int]] = set()
    gray = True
    for heads in ordered_map(image_header, files, chunks, workers, list):
        sizes.update((h, w) for h, w, _ in heads)
        gray = gray and all(m in GRAY_MODES for _, _, m in heads)
    return Headers(sorted(sizes, key=lambda hw: (hw[0] * hw[1], hw)), gray)


# ---------------------------------------------------------------- one split's images, decoded on demand

@dataclass
class ImageFiles:
    """One split of an ImageFolder as raw 8-bit images decoded when read: ``len``, ``shape``, ``dtype``
    and ``[indices]`` (an int, a slice, a sequence or tensor of indices) like the (N, C, H, W) uint8
    tensor the in-memory reader holds, and :meth:`stream` for batches decoded by DataLoader workers."""

    files: list[Path]
    decode: str                     # PIL mode: RGB or L
    geometry: str                   # none | resize | crop: what decoding does (resize/crop: to ``size``)
    size: tuple[int, int]           # (H, W) of every decoded image
    workers: int = 0                # DataLoader workers of :meth:`stream` (0: decode in this process)

    dtype = np.dtype(np.uint8)

    @property
    def channels(self) -> int:
        return 1 if self.decode == "L" else 3

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, *self.size)

    @property
    def nbytes(self) -> int:
        """Bytes the split takes decoded (what the in-memory reader holds)."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as (C, H, W) uint8."""
        return self.read_file(self.files[i])

    def read_file(self, f: Path) -> np.ndarray:
        """The file ``f`` as (C, H, W) uint8; one line if it no longer decodes to the size the tree was
        read with."""
        a = decode_image(f, self.decode, self.geometry, self.size).transpose(2, 0, 1)
        if a.shape != self.shape[1:]:
            raise EdgepruneError(f"image {f} decodes to {a.shape[1]}x{a.shape[2]}, not the {self.size[0]}x"
                                 f"{self.size[1]} of the other images: was it changed since the data was read?")
        return a

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return torch.from_numpy(self.read(int(index)).copy())
        if isinstance(index, slice):
            idx = list(range(len(self)))[index]
        elif isinstance(index, torch.Tensor):
            idx = [int(i) for i in index.reshape(-1).tolist()]
        else:
            idx = [int(i) for i in np.asarray(index).reshape(-1)]
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = self.read(i)
        return torch.from_numpy(out)

    def stream(self, chunks: Iterable[Sequence[int]]) -> Iterator[torch.Tensor]:
        """One (len(chunk), C, H, W) uint8 tensor per chunk of indices, in the order given, decoded by
        ``workers`` DataLoader workers (the order does not depend on how many)."""
        parts = [np.asarray(c.tolist() if isinstance(c, torch.Tensor) else c, dtype=np.int64).reshape(-1)
                 for c in chunks]
        if not parts:
            return iter(())
        # the workers are given only the files these chunks read, numbered 0.. in file order
        needed, position = np.unique(np.concatenate(parts), return_inverse=True)
        files = [self.files[i] for i in needed.tolist()]
        ends = np.cumsum([len(p) for p in parts])
        return ordered_map(self.read_file, files, np.split(position, ends[:-1]), self.workers, _stack)

    def read_all(self, what: str) -> np.ndarray:
        """The whole split as one (N, C, H, W) uint8 array (the in-memory reader), decoded by the workers."""
        try:
            x = np.empty(self.shape, dtype=np.uint8)
        except MemoryError:
            raise EdgepruneError(f"{what}: {len(self)} images of {self.channels}x{self.size[0]}x{self.size[1]} need "
                                 f"{self.nbytes / 2**30:.1f} GiB, more memory than is free: pass --data-load stream") from None
        starts = range(0, len(self), READ_CHUNK)
        for start, part in zip(starts, self.stream([range(s, min(s + READ_CHUNK, len(self))) for s in starts])):
            x[start:start + len(part)] = part.numpy()
        return x


# ---------------------------------------------------------------- work spread over DataLoader workers

@dataclass
class _Failed:
    """What a worker returns instead of raising: the one line this process raises."""

    message: str


class _Calls(Dataset):
    """``fn(items[i])`` for a DataLoader: a failure becomes a :class:`_Failed` value (one line naming the item)."""

    def __init__(self, fn: Callable[[Any], Any], items: Sequence[Any]):
        self.fn, self.items = fn, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.fn(self.items[i])
        except EdgepruneError as e:
            return _Failed(str(e))
        except Exception as e:  # noqa: BLE001 - whatever decoding raises: one line, not a worker traceback
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            return _Failed(f"cannot read {self.items[i]}: {type(e).__name__}: {first}")


def _stack(arrays: list) -> Any:
    failed = next((a for a in arrays if isinstance(a, _Failed)), None)
    return failed or torch.from_numpy(np.stack(arrays))


def ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], chunks: Sequence[Sequence[int]], workers: int,
                collate: Callable[[list], Any]) -> Iterator[Any]:
    """``collate([fn(items[i]) for i in chunk])`` for every chunk, in order, computed by ``workers`` DataLoader
    worker processes (none for a single chunk: it is done here). A failure is one :class:`EdgepruneError`
    line, from a worker too."""
    workers = min(workers, len(chunks) - 1) if len(chunks) > 1 else 0
    loader = DataLoader(_Calls(fn, items), batch_sampler=chunks, num_workers=workers,
                        collate_fn=collate, in_order=True)
    return _results(loader)


def _results(loader: DataLoader) -> Iterator[Any]:
    it = iter(loader)
    try:
        while True:
            try:
                out = next(it)
            except StopIteration:
                return
            except RuntimeError as e:      # a worker that died (killed for memory, say): one line
                if "DataLoader worker" not in str(e):
                    raise
                first = str(e).strip().splitlines()[0][:200]
                raise EdgepruneError(f"a data worker stopped while reading images: {first}; pass fewer "
                                     "--data-workers, or 0 to decode in this process") from None
            if isinstance(out, _Failed):
                raise EdgepruneError(out.message)
            if isinstance(out, list):
                failed = next((o for o in out if isinstance(o, _Failed)), None)
                if failed:
                    raise EdgepruneError(failed.message)
            yield out
    finally:
        del it                              # stops the workers now, also when the caller stops early
