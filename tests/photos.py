"""ImageFolders of photo-like pictures for the tests: PNG and JPEG files of different sizes and aspect ratios."""

from __future__ import annotations

import numpy as np
from PIL import Image

# (height, width) of the photos: landscape, portrait, odd sizes, a square one, smaller than the input
SIZES = [(40, 60), (60, 40), (33, 47), (64, 64), (31, 45), (20, 26)]


def photo(rng, h, w, mode="RGB", dark=False):
    """A smooth random picture (a gradient plus noise) so resizing has something to average."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(yy * 5 + xx * 3) % 256, (xx * 7) % 256, (yy * 11 + 40) % 256], axis=2).astype(np.float64)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255)
    if dark:
        noisy = noisy * 0.2
    img = Image.fromarray(noisy.astype(np.uint8))
    return img.convert("L") if mode == "L" else img


def write_folder(root, sizes=SIZES, per_class=(4, 3), mode="RGB", dark=False, seed=0):
    """train/ and val/ with classes cat and dog, files alternating PNG and JPEG; returns the val files."""
    rng = np.random.default_rng(seed)
    files = {}
    k = 0
    for split, n in zip(("train", "val"), per_class):
        files[split] = []
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = sizes[k % len(sizes)]
                k += 1
                f = root / split / cls / f"{i:02d}.{'jpg' if i % 2 else 'png'}"
                photo(rng, h, w, mode, dark).save(f, quality=90) if f.suffix == ".jpg" else photo(
                    rng, h, w, mode, dark).save(f)
                files[split].append(f)
    return files
