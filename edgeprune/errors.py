"""The one exception type that means "the user gave us something we cannot use".

Library code raises :class:`EdgepruneError` with a one-line, actionable message; the CLI
prints it on stderr and exits with ``exit_code`` (2 = bad input, by convention), never
with a traceback.
"""

from __future__ import annotations

import errno


class EdgepruneError(Exception):
    """A user-facing error: one clear line, and the process exit code to use."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# the disk refused a write: the user's to fix (free space, a writable --out), never an exporter or model fault
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "over the disk quota",
               errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is larger than allowed"}


def disk_error(e: BaseException) -> OSError | None:
    """The disk error behind ``e`` (itself, or anywhere in its cause/context chain), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:
            return e
        e = e.__cause__ or e.__context__
    return None
