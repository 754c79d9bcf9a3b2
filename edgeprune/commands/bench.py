"""``edgeprune bench``: onnxruntime latency and memory of a model, or two side by side.

On a device over SSH when ``--ssh`` is given or the ``--device`` profile has an ssh line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeprune.benchmarks.bench import BenchRequest, run_bench
from edgeprune.benchmarks.compare import CompareConfig
from edgeprune.benchmarks.latency import BenchConfig, parse_providers, parse_shapes, resolve_config
from edgeprune.benchmarks.report import print_bench
from edgeprune.cli_util import console, err_console, print_json, user_errors
from edgeprune.devices.ssh import resolve_ssh

ORDER = 60


@user_errors
def bench(
    model: Path = typer.Argument(..., help="ONNX model to time."),
    vs: Optional[Path] = typer.Option(None, "--vs", help="Second model: time both interleaved "
                                      "and report the ratio MODEL/VS with a confidence interval."),
    device: Optional[str] = typer.Option(None, "--device", help="Device profile (name or TOML "
                                         "path) giving threads and providers; measured on the "
                                         "device over SSH when the profile has an ssh line."),
    ssh: Optional[str] = typer.Option(None, "--ssh", help="Measure on this device over SSH: "
                                      "user@host[:port] (default: the profile's ssh, if any)."),
    remote_python: Optional[str] = typer.Option(None, "--remote-python", help="python3 on the "
                                                "device (default: the profile's, or python3)."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh config file (ssh -F)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="intra_op_num_threads "
                                          "(default 1, or the device profile's)."),
    providers: Optional[str] = typer.Option(None, "--providers", help="Execution providers in "
                                            "preference order, comma-separated."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs first."),
    runs: Optional[int] = typer.Option(None, "--runs", help="Timed runs (default 100; with "
                                       "--time-budget, at most this many)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Stop timing after "
                                                "this many seconds."),
    profile: bool = typer.Option(False, "--profile", help="Add the top operators by time from "
                                 "onnxruntime's per-node profiler."),
    top: int = typer.Option(10, "--top", help="Operators to list with --profile."),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="Input shape NAME=1x3x32x32 "
                                              "(repeatable); dynamic dims default to 1."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak memory "
                                "(fresh subprocesses, arena on and off)."),
    rounds: int = typer.Option(20, "--rounds", help="Interleaved rounds with --vs."),
    save_baseline: Optional[Path] = typer.Option(None, "--save-baseline", help="Write a baseline "
                                                 "JSON for `edgeprune check`."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
) -> None:
    """Latency (p50/p90/p99/mean/std/min/CV, ms) and memory with onnxruntime, here or over SSH."""
    base = BenchConfig(warmup=warmup, time_budget_s=time_budget, profile=profile, top=top,
                       shapes=parse_shapes(shape),
                       runs=runs if runs is not None or time_budget is not None else 100)
    cfg = resolve_config(base, device=device, threads=threads, providers=parse_providers(providers))
    req = BenchRequest(model=str(model), vs=str(vs) if vs is not None else None, memory=memory,
                       save_baseline=str(save_baseline) if save_baseline is not None else None,
                       compare=CompareConfig(rounds=rounds, max_rounds=rounds),
                       ssh=resolve_ssh(ssh, device, remote_python=remote_python,
                                       ssh_config=ssh_config))
    report = run_bench(req, cfg)
    fallbacks = {r.fallback for r in report.results if r.fallback}
    for f in fallbacks:
        err_console.print(f"[yellow]warning:[/] provider fallback: {f}", highlight=False)
    if json_out:
        print_json(report.to_dict())
        return
    print_bench(console, report.results, report.comparison, report.memory)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    if report.baseline_saved:
        console.print(f"baseline written to {report.baseline_saved}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
