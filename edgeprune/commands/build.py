"""`edgeprune build`: the latency-budgeted block-removal plan, end to end."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from edgeprune import options as o
from edgeprune.cli_util import console, err_console, print_json, user_errors

ORDER = 1


@user_errors
def build_command(
    ctx: typer.Context,
    device: Annotated[str, typer.Option(help="Device profile name or TOML path.")] = "rpi4",
    budget: Annotated[str, typer.Option(help="Latency budget on the device, e.g. 30ms or 0.03s.")] = "30ms",
    model: o.Model = "default", weights: o.Weights = None, num_classes: o.NumClasses = None,
    in_channels: o.InChannels = None, input_size: o.InputSize = None, trust_checkpoint: o.Trust = False,
    data: o.Data = "default", mean: o.Mean = None, std: o.Std = None, channels: o.Channels = None,
    resize: o.Resize = "auto",
    out: Annotated[str, typer.Option("--out", "-o", help="Build folder: artifact/ and cache/ go here.")] = "edgeprune-build",
    metric: Annotated[str, typer.Option(help="p50 or p90 (measured; predicted p90 = upper edge of the band).")] = "p50",
    finetune_epochs: Annotated[float, typer.Option(help="Fine-tune epochs after removal (0: none).")] = 1.0,
    finetune_lr: Annotated[float, typer.Option(help="Fine-tune peak learning rate.")] = 0.01,
    kd: Annotated[bool, typer.Option("--kd", help="Distil from the unpruned model while fine-tuning.")] = False,
    score_images: Annotated[int, typer.Option(help="Validation images that score blocks (the rest measure the result).")] = 500,
    strategy: Annotated[Optional[list[str]], typer.Option(help="Search strategies (repeatable): latency-greedy, accuracy-greedy, knapsack.")] = None,
    select: Annotated[str, typer.Option(help="recovered: fine-tune every short-listed plan and ship the lowest loss on the scoring images; scored: ship the best top-1 before fine-tune.")] = "recovered",
    shortlist: Annotated[int, typer.Option(help="Distinct plans (search strategies' and proxies') fine-tuned with --select recovered.")] = 4,
    proxy: Annotated[Optional[list[str]], typer.Option(help="Proxy rankings that propose plans for the short list (repeatable): norm-ratio, bn-gamma, l1, random.")] = None,
    replace_projection: Annotated[bool, typer.Option("--replace-projection", help="Allow removing projection blocks.")] = False,
    ssh: Annotated[Optional[str], typer.Option(help="Measure on the device over SSH: user@host[:port].")] = None,
    remote_python: Annotated[Optional[str], typer.Option(help="python3 on the device (default: the profile's).")] = None,
    ssh_config: Annotated[Optional[str], typer.Option(help="ssh config file (ssh -F).")] = None,
    verify_arm: Annotated[bool, typer.Option("--verify-arm", help="Last step: run the artifact on aarch64 onnxruntime under qemu.")] = False,
    bench_runs: Annotated[int, typer.Option(help="Timed onnxruntime runs per device figure measured (host or SSH).")] = 100,
    bench_rounds: Annotated[int, typer.Option(help="Interleaved rounds timing the host before/after side by side.")] = 10,
    config: Annotated[Optional[str], typer.Option(help="TOML file with the same keys as these flags.")] = None,
    accelerator: o.Accelerator = "cpu", seed: int = 0, json: o.Json = False,
) -> None:
    """Prune a CNN to a device latency budget: score, plan, fine-tune, export, benchmark, report."""
    from edgeprune.build import BuildConfig, run_build
    from edgeprune.progress import set_enabled

    lists = {"strategies": strategy, "proxies": proxy}
    flags = {k: v for k, v in ctx.params.items() if k not in ("config", "json", "strategy", "proxy", "ctx")}
    given = {k: v for k, v in flags.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
    given.update({k: list(v) for k, v in lists.items() if v})
    cfg = BuildConfig.from_toml(config, given) if config else BuildConfig(**{
        **flags, **{k: list(v) for k, v in lists.items() if v}})
    if json:
        set_enabled(False)
    say = (lambda m: None) if json else (lambda m: err_console.print(f"[dim]> {m}[/]", highlight=False))
    outcome = run_build(cfg, say)
    if json:
        print_json({"exit_code": outcome.exit_code, "message": outcome.message,
                    "artifact": str(outcome.artifact) if outcome.artifact else None, **outcome.summary})
    else:
        _print_summary(outcome)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def _print_summary(outcome) -> None:
    s = outcome.summary
    if outcome.exit_code == 0:
        lat, acc = s["latency"], s["accuracy"]
        t = Table(title=f"edgeprune build: {s['device']}, budget {s['budget_ms']:g} ms ({s['metric']})")
        t.add_column("")
        t.add_column("before", justify="right")
        t.add_column("after", justify="right")
        dev_b, dev_a = lat["device_before"], lat["device_after"]
        t.add_row(f"{s['device']} latency ({dev_a['source']})", f"{dev_b['value_ms']:.2f} ms", f"{dev_a['value_ms']:.2f} ms")
        t.add_row("host latency p50 (measured, interleaved)", f"{lat['host_before']['p50_ms']:.3f} ms",
                  f"{lat['host_after']['p50_ms']:.3f} ms")
        t.add_row(f"top-1 ({acc['images']} held-out images)", f"{acc['before']:.2%}",
                  f"{(acc['after_finetune'] if acc['after_finetune'] is not None else acc['after_removal']):.2%}")
        t.add_row("blocks", str(len(s["blocks"])), str(len(s["blocks"]) - len(s["removed"])))
        t.add_row("parameters", f"{s['params']['before']:,}", f"{s['params']['after']:,}")
        console.print(t)
        r = lat.get("host_ratio")
        if r:
            console.print(f"host speed-up {1 / r['after_over_before']:.2f}x ({100 * r['confidence']:.0f}% interval "
                          f"{1 / r['ci'][1]:.2f}-{1 / r['ci'][0]:.2f}x, {r['rounds']} interleaved rounds)")
        console.print(f"strategy: {s['strategy']}; removed: {', '.join(s['removed']) or 'none'}")
        console.print(f"[green]{outcome.message}[/]")
        console.print(f"artifact: {outcome.artifact} (report.md, front.png, model.onnx, manifest.json)")
    else:
        err_console.print(f"[bold red]{outcome.message}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
