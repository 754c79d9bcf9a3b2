"""``edgeprune calibrate``: measure the calibration suite on a device, write a fitted profile."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeprune.cli_util import console, err_console, print_json, user_errors
from edgeprune.devices.calibrate import CalibrationConfig, calibrate

ORDER = 42


@user_errors
def calibrate_command(
    device: str = typer.Option(..., "--device", help="Profile to calibrate: name or TOML path "
                               "('host' measures this machine)."),
    ssh: Optional[str] = typer.Option(None, "--ssh", help="Measure this device: user@host[:port]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Fitted profile to write "
                                       "(default <device>-calibrated.toml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out."),
    synthetic: int = typer.Option(48, "--synthetic", help="Synthetic networks in the suite."),
    architectures: bool = typer.Option(True, "--architectures/--no-architectures",
                                       help="Add the torchvision architectures to the suite."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic networks."),
    max_mmacs: float = typer.Option(250.0, "--max-mmacs", help="Size cap of a synthetic network "
                                    "(million MACs)."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Cache of suite ONNX files "
                                           "(default ~/.cache/edgeprune/calibration)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads (default: the profile's)."),
    remote_python: Optional[str] = typer.Option(None, "--remote-python", help="python3 on the device."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh config file (ssh -F)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Fit a device's latency model from measurements and write the profile; report the fit error."""
    cfg = CalibrationConfig(device=device, out=out, force=force, ssh=ssh, remote_python=remote_python,
                            ssh_config=ssh_config,
                            synthetic=synthetic, seed=seed, max_mmacs=max_mmacs,
                            architectures=architectures,
                            workdir=workdir, threads=threads)
    progress = None if json_out else (lambda m: err_console.print(f"[dim]{m}[/]", highlight=False))
    res = calibrate(cfg, progress)
    if json_out:
        print_json(res.to_dict())
        return
    fit, cv = res.fit, res.cross_validated
    console.print(f"wrote [bold]{res.path}[/] ({res.mode}, {len(res.models)} models)", highlight=False)
    console.print(f"  fit error:            median {fit['median_abs_rel_err']:.1%}, "
                  f"{fit['within_10pct']:.0%} within +-10%, worst {fit['max_abs_rel_err']:.1%}", highlight=False)
    console.print(f"  cross-validated error: median {cv['median_abs_rel_err']:.1%}, "
                  f"{cv['within_10pct']:.0%} within +-10%, p90 {cv['p90_abs_rel_err']:.1%} "
                  f"-> expected error +-{res.profile.expected_error:.0%}", highlight=False)
    console.print(f"  use it with --device {res.path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
