"""Shared plumbing for the Typer commands: error handling, consoles, JSON output."""

from __future__ import annotations

import functools
import json
import signal
import sys
from typing import Any, Callable

import typer

from edgeprune.console import console, err_console
from edgeprune.errors import DISK_ERRORS, EdgepruneError, disk_error

__all__ = ["Interrupted", "console", "err_console", "fail", "interrupt_on_sigterm", "print_json",
           "user_errors", "warn"]


class Interrupted(KeyboardInterrupt):
    """A termination signal raised like Ctrl-C's KeyboardInterrupt, so every ``finally`` runs on the way
    out (staged folders here, the temporary folder and the runner on a device)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM end the command like SIGINT does (unless whoever started us ignores it)."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupted)


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command so that bad input ends as one line on stderr and exit code 2.

    EdgepruneError carries its own exit code; a few OS errors that always mean bad
    input (a missing file, a directory given for a file) are mapped to exit code 2.
    Ctrl-C (and SIGTERM, see :func:`interrupt_on_sigterm`) ends with 128 + the signal's number.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgepruneError as e:
            fail(str(e), e.exit_code)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
            fail(f"{e.strerror}: {e.filename}", 2)
        except Exception as e:  # noqa: BLE001 - only a disk refusal is handled here; anything else propagates
            d = disk_error(e)
            if d is None:
                raise
            where = f" {d.filename}" if d.filename else ""
            fail(f"cannot write{where}: {d.strerror} ({DISK_ERRORS[d.errno]})", 2)
        except KeyboardInterrupt as e:
            signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
            fail(f"interrupted by {signal.Signals(signum).name}", 128 + signum)

    return wrapper


def print_json(obj: Any) -> None:
    """Print JSON on stdout, bypassing rich markup so machines can parse it (rank 0 alone under torchrun)."""
    if console.quiet:
        return
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """One warning line on stderr (library code hands its warnings to this through a callback)."""
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)
