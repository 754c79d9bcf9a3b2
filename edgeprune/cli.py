"""The Typer application: a thin layer joining the command modules in one place.

Every module in ``edgeprune/commands/`` defines ``ORDER`` (its place in ``--help``) and
``register(app)``; they are discovered here, so adding a command is adding one module.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from edgeprune import __version__, commands
from edgeprune.cli_util import interrupt_on_sigterm

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


def main() -> None:
    interrupt_on_sigterm()
    app()
