"""Rich progress bars that stay quiet when nobody is watching (pipes, tests, --json)."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgeprune.console import err_console

T = TypeVar("T")
_enabled = os.environ.get("EDGEPRUNE_PROGRESS", "1") != "0"


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = flag


def track(items: Iterable[T], description: str | None, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr when ``description`` is given and enabled."""
    if not description or not _enabled:
        yield from items
        return
    if not err_console.is_terminal:  # a pipe or a log file: no bars, no blank lines
        yield from items
        return
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
