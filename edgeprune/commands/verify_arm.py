"""`edgeprune verify-arm`: run the model on the board's aarch64 onnxruntime, emulated, and compare with x86."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeprune import options as o
from edgeprune.cli_util import console, err_console, print_json, user_errors
from edgeprune.devices.arm_verify import DEFAULT_ORT_VERSION, ArmVerifyConfig, ArmVerifyResult, verify_arm

ORDER = 70


def _say(text: str, to=console, **kw) -> None:
    to.print(text, highlight=False, soft_wrap=True, **kw)


def _print(r: ArmVerifyResult, default_version: bool) -> None:
    colour = "green" if r.verdict == "pass" else "red"
    _say(f"verify-arm [bold {colour}]{r.verdict.upper()}[/]: {r.reason}")
    _say(f"  model        {r.model}")
    _say(f"  board core   {f'{r.device} ({r.qemu_cpu})' if r.device else r.qemu_cpu}, emulated by {r.emulator}")
    _say(f"  onnxruntime  aarch64 {r.onnxruntime_aarch64} (numpy {r.numpy_aarch64}) vs x86 {r.onnxruntime_x86}, "
         f"CPUExecutionProvider, {r.threads} thread(s) each")
    if default_version:
        _say(f"               aarch64 {r.onnxruntime_aarch64} is the default: the newest release, checked to run "
             "under Debian's qemu 7.2; pass --onnxruntime to match your board's")
    _say(f"  inputs       {r.samples} from {r.inputs}")
    if r.max_abs_diff is not None:
        _say(f"  max |diff|   {r.max_abs_diff:.3g} (tolerance {r.tolerance:.3g}; largest |x86 output| "
             f"{r.max_abs_x86:.3g})")
    if r.top1_agreement is not None:
        _say(f"  top-1        {r.top1_agreement:.1%} agreement")
    _say(f"  precision    {r.precision}: pass means {r.criterion}")
    if r.hwcaps:
        _say(f"  core hwcaps  {' '.join(r.hwcaps)}")
    if r.manifest_updated:
        _say(f"  manifest     verify_arm section written to {Path(r.artifact) / 'manifest.json'}")
    _say("  (no latency is reported: timing under emulation means nothing)", style="dim")


@user_errors
def verify_arm_command(
    path: Annotated[str, typer.Argument(metavar="ARTIFACT_OR_MODEL", help="Artifact folder or .onnx model.")],
    device: o.Device = None,
    cpu: Annotated[Optional[str], typer.Option(help="qemu -cpu model to emulate (e.g. cortex-a53); overrides the "
                                               "profile's core.")] = None,
    onnxruntime: Annotated[str, typer.Option("--onnxruntime", help="aarch64 onnxruntime release to run; pick the "
                                             "one your board uses.")] = DEFAULT_ORT_VERSION,
    samples: Annotated[int, typer.Option(help="Inputs to run (golden vectors of an artifact, else random).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    atol: o.Atol = 1e-4,
    rtol: o.Rtol = 1e-4,
    min_top1: Annotated[float, typer.Option(help="Least top-1 agreement (fraction) to pass.")] = 1.0,
    qemu: Annotated[Optional[str], typer.Option(help="Emulator binary [default: qemu-aarch64-static].")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where prepared aarch64 environments are cached "
                                                      "[default: $XDG_CACHE_HOME/edgeprune/arm].")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds allowed for the emulated run.")] = 1800.0,
    no_manifest: Annotated[bool, typer.Option("--no-manifest", help="Do not write the artifact's verify_arm "
                                              "section.")] = False,
    json_out: o.Json = False,
) -> None:
    """Run the model on the aarch64 onnxruntime under qemu with the board's core, and compare with x86.

    The core emulated is the --device profile's (default: rpi4, unless --cpu names one).

    Exit code 0 when the outputs agree, 1 when they do not (or the aarch64 side fails), 2 on bad input.
    """
    config = ArmVerifyConfig(device=device, cpu=cpu, ort_version=onnxruntime, samples=samples, seed=seed,
                             atol=atol, rtol=rtol, min_top1_agreement=min_top1, qemu=qemu, cache_dir=cache_dir,
                             timeout_s=timeout, write_manifest=not no_manifest)
    log = (lambda _msg: None) if json_out else (lambda msg: _say(msg, to=err_console))
    result = verify_arm(path, config, log=log)
    if json_out:
        print_json(result.to_dict())
    else:
        _print(result, default_version=onnxruntime == DEFAULT_ORT_VERSION)
    if result.verdict != "pass":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify-arm")(verify_arm_command)
