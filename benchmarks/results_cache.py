"""A JSON file of a benchmark script's results, rewritten atomically after every new entry,
so an interrupted run resumes where it stopped (when its configuration is unchanged)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from edgeprune.pipeline.record import write_atomic


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
        write_atomic(self.path, (json.dumps(self.data, indent=1) + "\n").encode())

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.data["seconds"][phase] = self.data["seconds"].get(phase, 0.0) + seconds

    def timed(self, phase: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        self.add_seconds(phase, time.perf_counter() - t)
        return out
