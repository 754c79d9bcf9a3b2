"""Progress that reaches whoever is watching: a bar on a terminal, a line now and then in a log.

``track`` wraps a loop: on a terminal it draws a rich bar; on a pipe or a log file (CI, ``nohup``)
it prints a plain line at most every ``LOG_EVERY_S`` seconds with the count, the elapsed time and
an estimate of what remains. ``Heartbeat`` does the same for work whose total is not known in
advance (the plan search). Both stay quiet under ``--json`` (``set_enabled(False)``) and with
``EDGEPRUNE_PROGRESS=0``.
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgeprune.console import err_console

T = TypeVar("T")
LOG_EVERY_S = 30.0
_enabled = os.environ.get("EDGEPRUNE_PROGRESS", "1") != "0"


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = flag


def enabled() -> bool:
    return _enabled


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Heartbeat:
    """``beat(done, total=None)`` prints ``description: done/total, elapsed, ~left`` at most every
    ``every_s`` seconds (and never on a terminal when a bar is shown instead)."""

    def __init__(self, description: str, every_s: float = LOG_EVERY_S, unit: str = "") -> None:
        self.description, self.every_s, self.unit = description, every_s, unit
        self.started = self.last = time.monotonic()

    def beat(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if not _enabled or now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.started
        count = f"{done}/{total}" if total else f"{done}"
        left = ""
        if total and 0 < done < total:
            left = f", ~{duration(elapsed / done * (total - done))} left"
        err_console.print(f"[dim]  {self.description}: {count}{self.unit}, {duration(elapsed)} elapsed{left}[/]",
                          highlight=False)


def track(items: Iterable[T], description: str | None, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with progress on stderr when ``description`` is given and enabled."""
    if not description or not _enabled:
        yield from items
        return
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    if not err_console.is_terminal:  # a pipe or a log file: a plain line now and then
        beat = Heartbeat(description)
        for i, item in enumerate(items, 1):
            yield item
            beat.beat(i, total)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
