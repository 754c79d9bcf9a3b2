"""`edgeprune build`: the latency-budgeted pruning plan (blocks, channels, resolution), end to end.

A thin layer: every flag maps onto a field of :class:`BuildConfig` (``config.FLAGS``) and
takes its default from ``BuildConfig()``; ``--config FILE`` starts from the file instead,
and flags given on the command line override it. ``--dry-run`` prints the resolved
configuration as the TOML ``--config`` accepts.
"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from edgeprune import options as o
from edgeprune.build import BuildConfig, BuildOutcome, BuildResult, run_build
from edgeprune.build.config import default_of as d
from edgeprune.cli_util import console, err_console, print_json, user_errors
from edgeprune.pipeline.levers import PlanState
from edgeprune.progress import duration, set_enabled

ORDER = 1
NOT_SETTINGS = ("config", "json_out", "dry_run")   # parameters that are not build settings


@user_errors
def build_command(
    ctx: typer.Context,
    device: o.Device = d("device"),
    budget: Annotated[str, typer.Option(help="Latency budget on the device, e.g. 30ms or 0.03s.")] = d("budget"),
    model: o.Model = d("model"), weights: o.Weights = d("weights"), num_classes: o.NumClasses = d("num_classes"),
    in_channels: o.InChannels = d("in_channels"), input_size: o.InputSize = d("input_size"),
    trust_checkpoint: o.Trust = d("trust_checkpoint"), trust_code: o.TrustCode = d("trust_code"),
    data: o.Data = d("data"), mean: o.Mean = d("mean"), std: o.Std = d("std"), channels: o.Channels = d("channels"),
    resize: o.Resize = d("resize"), data_load: o.DataLoad = d("data_load"), data_workers: o.DataWorkers = d("data_workers"),
    out: Annotated[str, typer.Option("--out", "-o", help="Build folder: artifact/ and cache/ go here.")] = d("out"),
    metric: Annotated[str, typer.Option(help="p50 or p90 (measured; predicted p90 = upper edge of the band).")] = d("metric"),
    confidence: Annotated[Optional[float], typer.Option(help="Plan for the figure the device meets with this chance, "
                                                        "e.g. 0.9 (from the prediction's band; a measurement's runs).")] = d("confidence"),
    finetune_epochs: o.FinetuneEpochs = d("finetune_epochs"),
    finetune_lr: Annotated[float, typer.Option(help="Fine-tune peak learning rate.")] = d("finetune_lr"),
    kd: o.Kd = d("kd"),
    temperature: o.Temperature = d("temperature"), alpha: o.Alpha = d("alpha"),
    gradual: Annotated[bool, typer.Option("--gradual", help="Remove a plan's channels over the fine-tune (Zhu & Gupta's cubic schedule over its first 3/4) instead of at once.")] = d("gradual"),
    score_images: o.ScoreImages = d("score_images"), batch_size: o.BatchSize = d("batch_size"),
    max_accuracy_drop: Annotated[float, typer.Option(help="Points of held-out top-1 the shipped plan may lose after fine-tune; a plan beyond it is not shipped (exit 3).")] = d("max_accuracy_drop"),
    strategies: Annotated[list[str], typer.Option("--strategy", help="Search strategies (repeatable): block removal's latency-greedy, accuracy-greedy, knapsack; over every lever: table (measured move tables, solved under the budget, a few rounds), joint-greedy (every move measured at every step: slow).")] = d("strategies"),
    search_minutes: Annotated[float, typer.Option(help="Time for the joint search: past it, it solves for the budget with what it has measured and returns the best measured plan that fits.")] = d("search_minutes"),
    select: Annotated[str, typer.Option(help="recovered: fine-tune every short-listed plan and ship the lowest loss on the scoring images; scored: ship the best top-1 before fine-tune.")] = d("select"),
    shortlist: Annotated[int, typer.Option(help="Distinct plans (search strategies' and proxies') fine-tuned with --select recovered.")] = d("shortlist"),
    proxies: Annotated[list[str], typer.Option("--proxy", help="Proxy rankings that propose plans for the short list (repeatable): norm-ratio, bn-gamma, l1, random.")] = d("proxies"),
    replace_projection: o.ReplaceProjection = d("replace_projection"),
    levers: Annotated[list[str], typer.Option("--levers", help="Plan levers, comma-separated: blocks (remove residual blocks), channels (shrink coupled channel groups), resolution (feed smaller images: changes the firmware's input), int8 (quantize the fine-tuned plan where the device's latency falls).")] = d("levers"),
    max_int8_drop: Annotated[float, typer.Option(help="With int8: points of top-1 on the scoring images int8 may cost against the float file; layers that cost more are kept in fp32 (exit 3 when none meet it).")] = d("max_int8_drop"),
    int8_calibration: Annotated[str, typer.Option(help="With int8: how activation ranges are calibrated: minmax, entropy or percentile.")] = d("int8_calibration"),
    calibration_images: Annotated[int, typer.Option(help="With int8: training images the ranges are calibrated on (at least 16).")] = d("calibration_images"),
    channel_criterion: o.ChannelCriterion = d("channel_criterion"), channel_multiple: o.ChannelMultiple = d("channel_multiple"),
    min_resolution: Annotated[Optional[int], typer.Option(help="Smallest input size the resolution lever may choose (default: half the model's).")] = d("min_resolution"),
    resolution_step: Annotated[int, typer.Option(help="Pixels between the resolution lever's candidate input sizes.")] = d("resolution_step"),
    ssh: o.Ssh = d("ssh"), remote_python: o.RemotePython = d("remote_python"), ssh_config: o.SshConfigFile = d("ssh_config"),
    ssh_timeout: o.SshTimeout = d("ssh_timeout"),
    verify_arm: Annotated[bool, typer.Option("--verify-arm", help="Last step: run the artifact on aarch64 onnxruntime under qemu.")] = d("verify_arm"),
    bench_runs: Annotated[int, typer.Option(help="Timed onnxruntime runs per device figure measured (host or SSH).")] = d("bench_runs"),
    bench_rounds: Annotated[int, typer.Option(help="Interleaved rounds timing the host before/after side by side.")] = d("bench_rounds"),
    calibrate: o.Calibrate = d("calibrate"),
    anchor: Annotated[bool, typer.Option("--anchor/--no-anchor", help="Where the budget is measured (host, or a board over SSH): time the original model there first and read every prediction of the search at its measured/predicted ratio.")] = d("anchor"),
    accelerator: o.Accelerator = d("accelerator"), autocast: o.Autocast = d("autocast"),
    seed: o.Seed = d("seed"),
    config: Annotated[Optional[str], typer.Option(help="TOML file (as --dry-run prints it); flags given override it.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved configuration as TOML and stop.")] = False,
    json_out: o.Json = False,
) -> None:
    """Prune a CNN to a device latency budget: score, plan, fine-tune, export, benchmark, report."""
    settings = {k: v for k, v in ctx.params.items() if k not in NOT_SETTINGS}
    if config:
        given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
        cfg = BuildConfig.from_toml(config, given)
    else:
        cfg = BuildConfig.from_flags(settings)
    if dry_run:
        typer.echo(cfg.to_toml(), nl=False)
        return
    if json_out:
        set_enabled(False)
    started = time.monotonic()
    say = (lambda m: None) if json_out else (
        lambda m: err_console.print(f"[dim][{duration(time.monotonic() - started):>6}] > {m}[/]", highlight=False))
    outcome = run_build(cfg, say)
    if json_out:
        print_json(outcome.to_dict())
    elif isinstance(outcome.result, BuildResult):
        _print_summary(outcome, outcome.result)
    else:
        err_console.print(f"[bold red]{outcome.message}[/]", highlight=False)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def _print_summary(outcome: BuildOutcome, r: BuildResult) -> None:
    lat, acc = r.latency, r.accuracy
    t = Table(title=f"edgeprune build: {r.device}, budget {lat.budget_ms:g} ms ({lat.metric})")
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row(f"{r.device} latency ({lat.device_after.source})", f"{lat.device_before.value_ms:.2f} ms",
              f"{lat.device_after.value_ms:.2f} ms")
    h = lat.host
    t.add_row(f"host latency (interleaved, per-round p{100 * h.round_quantile:g})", f"{h.b_ms:.3f} ms",
              f"{h.a_ms:.3f} ms")
    t.add_row(f"top-1 ({acc.images} held-out images; after: model.onnx in onnxruntime)", f"{acc.before:.2%}",
              f"{acc.shipped:.2%}")
    if acc.precision != "fp32":
        sizes = (r.int8 or {}).get("sizes") or {}
        t.add_row("precision (model.onnx bytes)", f"fp32 ({sizes.get('fp32', {}).get('bytes', 0):,} B)",
                  f"{acc.precision} ({sizes.get('int8', {}).get('bytes', 0):,} B)")
    state = PlanState.from_tokens(r.removed)
    t.add_row("blocks", str(len(r.blocks)), str(len(r.blocks) - len(state.blocks)))
    t.add_row("parameters", f"{r.params_before:,}", f"{r.params_after:,}")
    console.print(t)
    console.print(f"host speed-up {1 / h.ratio:.2f}x: the median over {h.rounds} interleaved rounds of each round's "
                  f"before/after ratio of the figures above ({100 * h.confidence:.0f}% interval "
                  f"{1 / h.ci_high:.2f}-{1 / h.ci_low:.2f}x)")
    if (r.int8 or {}).get("host_note"):
        console.print(f"[yellow]note: {r.int8['host_note']}[/]", highlight=False)
    console.print(f"strategy: {r.strategy}; plan: {state.describe()}"
                  + (f"; blocks removed: {', '.join(sorted(state.blocks))}" if state.blocks else ""))
    console.print(f"[green]{outcome.message}[/]")
    console.print(f"artifact: {outcome.artifact} (report.md, front.png, model.onnx, manifest.json)")


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
