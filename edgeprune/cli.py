"""The Typer application: a thin layer joining the command modules in one place.

Every module in ``edgeprune/commands/`` defines ``ORDER`` (its place in ``--help``) and
``register(app)``; they are discovered here, so adding a command is adding one module.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from edgeprune import __version__, commands
from edgeprune.cli_util import interrupt_on_sigterm
from edgeprune.console import console, err_console
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.distributed import init_from_env, launched, leave
from edgeprune.progress import set_enabled

app = typer.Typer(
    name="edgeprune",
    help="Make a trained CNN fit an edge device: block pruning, ONNX export, onnxruntime benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """edgeprune: latency-budgeted block pruning for edge CNNs."""


def _command_modules() -> list:
    mods = [importlib.import_module(f"{commands.__name__}.{m.name}")
            for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


for _module in _command_modules():
    _module.register(app)


# Commands whose work splits across torchrun's processes (edgeprune.pipeline.distributed); the others
# would only run N times side by side, so under torchrun they are refused.
DISTRIBUTED = ("build", "score", "eval")


def _join_torchrun(argv: list[str]) -> None:
    """Under ``torchrun`` with several processes: join its process group for a distributed command (rank 0
    alone prints), or refuse any other command in one line (from rank 0; every rank exits 2)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    rank = int(os.environ.get("RANK", "0"))
    if command not in DISTRIBUTED:
        if rank == 0:
            err_console.print(f"[bold red]error:[/] edgeprune {command or ''} does not run across processes yet; under "
                              f"torchrun only {', '.join(DISTRIBUTED)} do (run it without torchrun)",
                              highlight=False, soft_wrap=True)
        raise SystemExit(2)
    accelerator = next((v for a, v in zip(argv, argv[1:]) if a == "--accelerator"),
                       next((a.split("=", 1)[1] for a in argv if a.startswith("--accelerator=")), "cpu"))
    try:
        here = init_from_env(accelerator)
    except EdgepruneError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    if not here.main:               # one voice: rank 0 prints results, progress and warnings
        console.quiet = True
        err_console.quiet = True
        set_enabled(False)


def main() -> None:
    interrupt_on_sigterm()
    if not launched():
        app()
        return
    _join_torchrun(sys.argv[1:])
    try:
        app()
        code = 0
    except SystemExit as e:                    # typer ends every command so
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    _leave_torchrun(code)


def _leave_torchrun(code: int) -> None:
    """End a rank of a torchrun run: leave the process group (with the others, when it succeeded), flush, and
    exit without the interpreter's teardown, in which a Gloo rank was seen to abort after its work was done and
    its output written ("terminate called without an active exception", exit -6, 1 run in 5 to 10 here)."""
    leave(together=code == 0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
