"""``edgeprune predict``: predicted latency of an ONNX model on a device, with its error band.

When the profile names an SSH target, or ``--ssh`` gives one, the model is also measured
on the device and the measured figure is printed beside the prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgeprune.benchmarks.latency import parse_shapes
from edgeprune.cli_util import console, print_json, user_errors
from edgeprune.devices.predictor import predict
from edgeprune.devices.profiles import load_profile
from edgeprune.devices.ssh import measure_over_ssh, resolve_ssh

ORDER = 41


@user_errors
def predict_command(
    model: Path = typer.Argument(..., help="ONNX model."),
    device: str = typer.Option("host", "--device", help="Device profile: name or TOML path."),
    top: int = typer.Option(10, "--top", help="Heaviest kernels to list."),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="Input shape NAME=1x3x32x32 "
                                              "(repeatable); dynamic dims default to 1."),
    ssh: Optional[str] = typer.Option(None, "--ssh", help="Also measure on this device: user@host[:port] "
                                      "(default: the profile's ssh, if any)."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Measure over SSH when a target is known."),
    remote_python: Optional[str] = typer.Option(None, "--remote-python", help="python3 on the device "
                                                "(default: the profile's, or python3)."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh config file (ssh -F)."),
    runs: int = typer.Option(100, "--runs", help="Timed runs on the device."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs first on the device."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Predict latency on a device: total, error band, heaviest kernels (and measure over SSH)."""
    profile = load_profile(device)
    shapes = parse_shapes(shape)
    pred = predict(model, profile, shapes or None)
    cfg = resolve_ssh(ssh, profile, remote_python=remote_python, ssh_config=ssh_config)
    measured = None
    if cfg is not None and measure:
        measured = measure_over_ssh(model, cfg, profile.name, profile.threads, profile.providers,
                                    warmup=warmup, runs=runs, shapes=shapes or None)
    if json_out:
        out = {"model": str(model), "prediction": pred.to_dict(top)}
        if measured is not None:
            out["measured"] = measured.to_dict()
            out["prediction_error"] = pred.latency_ms / measured.p50_ms - 1
        print_json(out)
        return
    console.print(f"[bold]{model.name}[/] on [bold]{profile.name}[/] ({profile.threads} thread(s), "
                  f"{', '.join(profile.providers)}): predicted [bold]{pred.latency_ms:.3f} ms[/] "
                  f"(+-{pred.expected_error:.0%}: {pred.low_ms:.3f} - {pred.high_ms:.3f} ms)",
                  highlight=False)
    console.print(f"  basis: {pred.basis}", highlight=False)
    t = Table(title=f"Heaviest kernels ({len(pred.kernels)} in all)")
    for col in ("kernel", "class", "fused", "MMACs", "ms", "share"):
        t.add_column(col, overflow="fold")
    for k in pred.heaviest(top):
        t.add_row(k.name, k.kind, "+".join(k.fused) or "-", f"{k.mmacs:.2f}", f"{k.cost_ms:.3f}",
                  f"{k.share:.1%}")
    console.print(t)
    if measured is not None:
        console.print(f"measured on {profile.name} via {cfg.target}: p50 [bold]{measured.p50_ms:.3f} ms[/] "
                      f"(p90 {measured.p90_ms:.3f}, {measured.runs} runs, {measured.provider_used}, "
                      f"onnxruntime {measured.ort_version}, {measured.cpu}); prediction "
                      f"{pred.latency_ms / measured.p50_ms - 1:+.1%}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
