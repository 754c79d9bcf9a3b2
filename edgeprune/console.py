"""The two rich consoles edgeprune prints through: results on stdout, progress and errors on stderr.

Library code (progress bars) and the CLI (``edgeprune.cli_util``) share them, so this module
imports nothing of the CLI.
"""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
