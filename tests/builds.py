"""What the end-to-end build tests share: tiny learnable data and the tiny model factories' import path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

TINYNETS = Path(__file__).parent / "edgeprune"      # tinynets.py, named as tinynets:<factory>


def brightness_npz(path: Path, n: int, train: int) -> Path:
    """``n`` 16x16 uint8 images whose brightness encodes the label (learnable), the first ``train`` for training."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    x = (rng.integers(0, 60, (n, 16, 16)) + (y[:, None, None] * 20)).astype(np.uint8)
    np.savez(path, x_train=x[:train], y_train=y[:train], x_val=x[train:], y_val=y[train:])
    return path


def factories_importable() -> None:
    """``tinynets:<factory>`` importable here and in the build subprocesses the tests start."""
    if str(TINYNETS) not in sys.path:
        sys.path.insert(0, str(TINYNETS))
    os.environ["PYTHONPATH"] = f"{TINYNETS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
