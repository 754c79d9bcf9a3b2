"""``edgeprune bench``: onnxruntime latency and memory of a model, or two side by side.

On a device over SSH when ``--ssh`` is given or the ``--device`` profile has an ssh line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeprune import options as o
from edgeprune.benchmarks.bench import BenchRequest, run_bench
from edgeprune.benchmarks.compare import CompareConfig
from edgeprune.benchmarks.latency import BenchConfig, parse_providers, parse_shapes
from edgeprune.benchmarks.memory import MEMORY_TIMEOUT_S
from edgeprune.benchmarks.tables import print_bench
from edgeprune.cli_util import console, err_console, print_json, user_errors
from edgeprune.devices.ssh import SSH_TIMEOUT_S
from edgeprune.devices.targets import bench_config, resolve_target

ORDER = 60


@user_errors
def bench(
    model: Annotated[Path, typer.Argument(help="ONNX model to time.")],
    vs: Annotated[Optional[Path], typer.Option("--vs", help="Second model: time both interleaved and report "
                                               "the ratio MODEL/VS with a confidence interval.")] = None,
    device: o.Device = None,
    ssh: o.Ssh = None,
    remote_python: o.RemotePython = None,
    ssh_config: o.SshConfigFile = None,
    ssh_timeout: o.SshTimeout = SSH_TIMEOUT_S,
    memory_timeout: o.MemoryTimeout = MEMORY_TIMEOUT_S,
    threads: o.Threads = None,
    providers: o.Providers = None,
    warmup: o.Warmup = 10,
    runs: o.Runs = None,
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Stop timing after this many "
                                                         "seconds (--runs, if given, still caps the runs).")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Add the top operators by time from onnxruntime's "
                                          "per-node profiler.")] = False,
    top: Annotated[int, typer.Option("--top", help="Operators to list with --profile.")] = 10,
    shape: o.Shape = None,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak memory (fresh subprocesses, "
                                         "arena on and off).")] = True,
    rounds: o.Rounds = 20,
    save_baseline: Annotated[Optional[Path], typer.Option("--save-baseline", help="Write a baseline JSON for "
                                                          "`edgeprune check`.")] = None,
    json_out: o.Json = False,
) -> None:
    """Latency (p50/p90/p99/mean/std/min/CV, ms) and memory with onnxruntime, here or over SSH.

    With --device the profile's threads and providers apply; its ssh line (or --ssh) is where it runs.
    """
    base = BenchConfig(warmup=warmup, time_budget_s=time_budget, profile=profile, top=top,
                       shapes=parse_shapes(shape),
                       runs=runs if runs is not None or time_budget is not None else 100)
    cfg = bench_config(base, device, threads=threads, providers=parse_providers(providers))
    req = BenchRequest(model=str(model), vs=str(vs) if vs is not None else None, memory=memory,
                       save_baseline=str(save_baseline) if save_baseline is not None else None,
                       compare=CompareConfig(rounds=rounds, max_rounds=rounds))
    target = resolve_target(device, ssh, remote_python=remote_python, ssh_config=ssh_config,
                            otherwise="host", ssh_timeout_s=ssh_timeout,
                            memory_timeout_s=memory_timeout)
    report = run_bench(req, cfg, target)
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
