"""``edgeprune calibrate``: measure the calibration suite on a device, write a fitted profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeprune import options as o
from edgeprune.cli_util import console, err_console, print_json, user_errors
from edgeprune.devices.calibrate import CalibrationConfig, calibrate

ORDER = 42


@user_errors
def calibrate_command(
    device: o.Device,
    ssh: o.Ssh = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Fitted profile to write "
                                                "(default <device>-calibrated.toml).")] = None,
    force: o.Force = False,
    quick: Annotated[bool, typer.Option("--quick", help="The quick suite: 24 small synthetic networks, minutes "
                                        "here, 30 measurements on a board (docs/calibration.md).")] = False,
    synthetic: Annotated[Optional[int], typer.Option("--synthetic", help="Synthetic networks in the suite "
                                                     "(48; --quick 24).")] = None,
    architectures: Annotated[Optional[bool], typer.Option("--architectures/--no-architectures",
                                                          help="Add the torchvision architectures to the suite "
                                                          "(yes; --quick over SSH no).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic networks.")] = 0,
    max_mmacs: Annotated[Optional[float], typer.Option("--max-mmacs", help="Size cap of a synthetic network "
                                                       "(million MACs; 250).")] = None,
    int8: Annotated[Optional[int], typer.Option("--int8", help="Synthetic networks also measured as int8 QDQ "
                                                "(onnxruntime's types for the CPU measured; with six of the "
                                                "architectures where the suite has them) to fit the int8 "
                                                "kernels: 24; --quick 12, over SSH 6; 0 keeps the profile's own "
                                                "int8 figures.")] = None,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Cache of suite ONNX files "
                                                    "(default ~/.cache/edgeprune/calibration).")] = None,
    threads: o.Threads = None,
    remote_python: o.RemotePython = None,
    ssh_config: o.SshConfigFile = None,
    json_out: o.Json = False,
) -> None:
    """Fit a device's latency model from measurements and write the profile; report the fit error.

    --device host (or a TOML file of this machine) is measured here; any other over SSH.
    """
    cfg = CalibrationConfig(device=device, out=out, force=force, ssh=ssh, remote_python=remote_python,
                            ssh_config=ssh_config, quick=quick,
                            synthetic=synthetic, seed=seed, max_mmacs=max_mmacs,
                            architectures=architectures, int8=int8,
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
    if res.int8 is not None:
        i8, cv8 = res.int8, res.int8.cross_validated
        how = f"int8/fp32 ratio {i8.ratio:.2f}, " if i8.ratio is not None else ""
        console.print(f"  int8 ({len(i8.models)} models, {i8.precision.activations} activations): {how}"
                      f"cross-validated median {cv8['median_abs_rel_err']:.1%}, {cv8['within_10pct']:.0%} within "
                      f"+-10% -> int8 expected error +-{i8.expected_error:.0%}", highlight=False)
    console.print(f"  use it with --device {res.path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
