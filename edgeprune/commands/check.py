"""``edgeprune check``: the CI gate. Exit 0 = no regression, 1 = regression, 2 = bad input."""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeprune import options as o
from edgeprune.benchmarks.baseline import load_baseline
from edgeprune.benchmarks.bench import check_output_path
from edgeprune.benchmarks.compare import CompareConfig
from edgeprune.benchmarks.gate import GateConfig, run_check, write_junit
from edgeprune.benchmarks.latency import BenchConfig, parse_providers, parse_shapes
from edgeprune.benchmarks.memory import MEMORY_TIMEOUT_S
from edgeprune.benchmarks.tables import print_gate
from edgeprune.benchmarks.units import parse_bytes, parse_duration_ms, parse_fraction
from edgeprune.cli_util import console, err_console, print_json, user_errors
from edgeprune.devices.ssh import SSH_TIMEOUT_S
from edgeprune.devices.targets import bench_config, resolve_target

ORDER = 61


@user_errors
def check(
    model: Annotated[Path, typer.Argument(help="Candidate ONNX model.")],
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="Baseline JSON from `edgeprune bench "
                                                     "--save-baseline` (over SSH: one measured on that device, "
                                                     "bench --ssh --save-baseline).")] = None,
    baseline_model: Annotated[Optional[Path], typer.Option("--baseline-model", help="Where the baseline's model "
                                                           "is, if not at its recorded path.")] = None,
    tolerance: Annotated[str, typer.Option("--tolerance", help="Allowed latency slowdown (5% or 0.05).")] = "5%",
    budget: Annotated[Optional[str], typer.Option("--budget", help="Plain latency budget, e.g. 30ms.")] = None,
    budget_stat: Annotated[str, typer.Option("--budget-stat", help="Statistic the budget applies to: p50, p90, "
                                             "p99 or mean.")] = "p50",
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="Plain budget for the peak memory "
                                                      "(arena on), e.g. 200MB.")] = None,
    memory_tolerance: Annotated[str, typer.Option("--memory-tolerance", help="Allowed memory growth over the "
                                                  "baseline.")] = "10%",
    memory_slack: Annotated[str, typer.Option("--memory-slack", help="Extra memory allowed on top of the "
                                              "tolerance (peak RSS varies ~0.2 MiB).")] = "1MiB",
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Check memory against the "
                                         "baseline.")] = True,
    device: o.Device = None,
    ssh: o.Ssh = None,
    remote_python: o.RemotePython = None,
    ssh_config: o.SshConfigFile = None,
    ssh_timeout: o.SshTimeout = SSH_TIMEOUT_S,
    memory_timeout: o.MemoryTimeout = MEMORY_TIMEOUT_S,
    threads: o.Threads = None,
    providers: o.Providers = None,
    shape: o.Shape = None,
    rounds: o.Rounds = 20,
    max_rounds: Annotated[int, typer.Option("--max-rounds", help="Most rounds when the first look is "
                                            "borderline.")] = 80,
    json_out: o.Json = False,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Also write JUnit XML here.")] = None,
) -> None:
    """Fail (exit 1) when MODEL is slower or bigger than the baseline or a budget allows.

    Settings default to the baseline's; with --device, the profile's (and its ssh line, or --ssh).
    """
    cfg = GateConfig(
        tolerance=parse_fraction(tolerance, "--tolerance"),
        memory_tolerance=parse_fraction(memory_tolerance, "--memory-tolerance"),
        memory_slack_bytes=parse_bytes(memory_slack, "--memory-slack", allow_zero=True),
        budget_ms=parse_duration_ms(budget, "--budget") if budget is not None else None,
        budget_stat=budget_stat,
        max_memory_bytes=parse_bytes(max_memory, "--max-memory") if max_memory else None,
        check_memory=memory,
        baseline_model=str(baseline_model) if baseline_model is not None else None,
        compare=CompareConfig(rounds=rounds, max_rounds=max(rounds, max_rounds)))
    if junit is not None:
        check_output_path(junit, "--junit")
    start = load_baseline(baseline).bench_config if baseline is not None else BenchConfig()
    bench = bench_config(start, device, threads=threads, providers=parse_providers(providers))
    if shape:
        bench = replace(bench, shapes=parse_shapes(shape))
    target = resolve_target(device, ssh, remote_python=remote_python, ssh_config=ssh_config,
                            otherwise="host", ssh_timeout_s=ssh_timeout,
                            memory_timeout_s=memory_timeout)
    result = run_check(model, baseline, cfg, bench, target)
    if junit is not None:
        write_junit(result, junit)
    if result.latency.fallback:
        err_console.print(f"[yellow]warning:[/] provider fallback: {result.latency.fallback}",
                          highlight=False)
    if json_out:
        print_json(result.to_dict())
    else:
        print_gate(console, result)
    raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
