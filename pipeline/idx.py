"""Reader for the MNIST/Fashion-MNIST idx format (plain or gzip), with no download."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (``.gz`` or plain) into a numpy array; raise ValueError if malformed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for truncated/corrupt files
        raise ValueError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated (header)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path} is truncated or corrupt: header promises {count * dtype.itemsize} bytes of data, "
            f"file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_split(folder: Path, split: str) -> tuple[Path, Path] | None:
    """Locate the images/labels files of ``split`` ("train" or "t10k") in ``folder``."""
    for img_suffix, lbl_suffix in (("-images-idx3-ubyte", "-labels-idx1-ubyte"),
                                   ("-images.idx3-ubyte", "-labels.idx1-ubyte")):
        for ext in ("", ".gz"):
            img = folder / f"{split}{img_suffix}{ext}"
            lbl = folder / f"{split}{lbl_suffix}{ext}"
            if img.is_file() and lbl.is_file():
                return img, lbl
    return None
