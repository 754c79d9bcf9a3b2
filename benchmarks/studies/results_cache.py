"""A JSON file of a benchmark script's results, rewritten atomically after every new entry,
so an interrupted run resumes where it stopped (when its configuration is unchanged)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from edgeprune.files import write_bytes_atomic, write_json_atomic


class ResultsCache:
    def __init__(self, path: Path, config: dict, empty: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"config": config, **empty, "seconds": {}}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("config") == config:
                self.data.update(old)
                print(f"resuming from {path}", flush=True)

    def save(self) -> None:
        write_json_atomic(self.path, self.data, indent=1)

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.data["seconds"][phase] = self.data["seconds"].get(phase, 0.0) + seconds

    def timed(self, phase: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        self.add_seconds(phase, time.perf_counter() - t)
        return out


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Write a matplotlib figure to ``path`` atomically (format from the suffix), then close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip(".") or None)
    write_bytes_atomic(path, buf.getvalue())
    plt.close(fig)


def data_digest(bundle) -> str:
    """A short sha256 of a DataBundle's arrays (of a streamed ImageFolder's file names instead of its
    images): results are only reused on the same data."""
    h = hashlib.sha256()
    for t in (bundle.x_train, bundle.y_train, bundle.x_val, bundle.y_val):
        h.update(t.numpy().tobytes() if hasattr(t, "numpy") else "\n".join(map(str, t.files)).encode())
    return h.hexdigest()[:16]


def relative_path(path: str | None) -> str | None:
    """``path`` relative to the working folder when it lies inside it (for docs), else as given."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path
