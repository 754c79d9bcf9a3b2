"""``edgeprune predict``: predicted latency of an ONNX model on a device, with its error band.

When the profile names an SSH target, or ``--ssh`` gives one, the model is also measured
on the device and the measured figure is printed beside the prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeprune import options as o
from edgeprune.benchmarks.latency import BenchConfig, parse_shapes
from edgeprune.cli_util import console, err_console, print_json, user_errors, warn
from edgeprune.devices.calibrate import ensure_host_calibrated
from edgeprune.devices.fingerprint import mismatch_note
from edgeprune.devices.predictor import HOST
from edgeprune.devices.profiles import load_profile
from edgeprune.devices.ssh import SSH_TIMEOUT_S
from edgeprune.devices.targets import PredictedTarget, bench_config, resolve_target

ORDER = 41


@user_errors
def predict_command(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    device: o.Device = "host",
    top: Annotated[int, typer.Option("--top", help="Heaviest kernels to list.")] = 10,
    shape: o.Shape = None,
    ssh: o.Ssh = None,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="Measure over SSH when a target is "
                                          "known.")] = True,
    remote_python: o.RemotePython = None,
    ssh_config: o.SshConfigFile = None,
    ssh_timeout: o.SshTimeout = SSH_TIMEOUT_S,
    runs: o.Runs = 100,
    warmup: o.Warmup = 10,
    calibrate: o.Calibrate = True,
    json_out: o.Json = False,
) -> None:
    """Predict latency on a device: total, error band, heaviest kernels (and measure over SSH).

    When --ssh or the profile's ssh line names the device, the model is also measured there.
    """
    if device == HOST:
        ensure_host_calibrated(calibrate, lambda m: err_console.print(f"[dim]{m}[/]", highlight=False))
    profile = load_profile(device)
    shapes = parse_shapes(shape)
    pred = PredictedTarget(profile).prediction(model, shapes or None)
    target = resolve_target(profile, ssh, remote_python=remote_python, ssh_config=ssh_config,
                            ssh_timeout_s=ssh_timeout)
    measured = None
    if measure and target.remote:
        cfg = bench_config(BenchConfig(warmup=warmup, runs=runs, shapes=dict(shapes)), profile)
        measured = target.latency(model, cfg)
    if json_out:
        out = {"model": str(model), "prediction": pred.to_dict(top)}
        if measured is not None:
            out["measured"] = measured.to_dict()
            out["prediction_error"] = pred.latency_ms / measured.p50_ms - 1
        print_json(out)
        return
    console.print(f"[bold]{model.name}[/] on [bold]{profile.name}[/] ({profile.threads} thread(s), "
                  f"{', '.join(profile.providers)}): predicted [bold]{pred.latency_ms:.3f} ms[/] "
                  f"(+-{pred.expected_error:.0%}: {pred.low_ms:.3f} - {pred.high_ms:.3f} ms)"
                  + (f", {pred.precision} ({pred.int8_mac_share:.0%} of MACs in int8)" if pred.precision != "fp32" else ""),
                  highlight=False)
    console.print(f"  basis: {pred.basis}", highlight=False)
    if pred.fitted_elsewhere:
        warn(mismatch_note(profile.name, pred.fitted_elsewhere))
    t = Table(title=f"Heaviest kernels ({len(pred.kernels)} in all)")
    for col in ("module (or ONNX node)", "class", "fused", "MMACs", "ms", "share"):
        t.add_column(col, overflow="fold")
    for k in pred.heaviest(top):
        t.add_row(k.label, k.kind, "+".join(k.fused) or "-", f"{k.mmacs:.2f}", f"{k.cost_ms:.3f}",
                  f"{k.share:.1%}")
    console.print(t)
    if measured is not None:
        console.print(f"measured on {profile.name} via {target.address}: p50 [bold]{measured.p50_ms:.3f} ms[/] "
                      f"(p90 {measured.p90_ms:.3f}, {measured.runs} runs, {measured.provider_used}, "
                      f"onnxruntime {measured.ort_version}, {measured.cpu}); prediction "
                      f"{pred.latency_ms / measured.p50_ms - 1:+.1%}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
