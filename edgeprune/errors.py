"""The one exception type that means "the user gave us something we cannot use".

Library code raises :class:`EdgepruneError` with a one-line, actionable message; the CLI
prints it on stderr and exits with ``exit_code`` (2 = bad input, by convention), never
with a traceback.
"""

from __future__ import annotations


class EdgepruneError(Exception):
    """A user-facing error: one clear line, and the process exit code to use."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
