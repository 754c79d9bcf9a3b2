"""``edgeprune check``: the CI gate. Exit 0 = no regression, 1 = regression, 2 = bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeprune.benchmarks.baseline import load_baseline
from edgeprune.benchmarks.bench import check_output_path
from edgeprune.benchmarks.compare import CompareConfig
from edgeprune.benchmarks.gate import GateConfig, run_check, write_junit
from edgeprune.benchmarks.latency import BenchConfig, parse_providers, resolve_config
from edgeprune.benchmarks.report import print_gate
from edgeprune.benchmarks.units import parse_bytes, parse_duration_ms, parse_fraction
from edgeprune.cli_util import console, err_console, print_json, user_errors
from edgeprune.devices.ssh import resolve_ssh

ORDER = 61


@user_errors
def check(
    model: Path = typer.Argument(..., help="Candidate ONNX model."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline JSON from "
                                            "`edgeprune bench --save-baseline`."),
    baseline_model: Optional[Path] = typer.Option(None, "--baseline-model", help="Where the "
                                                  "baseline's model is, if not at its recorded path."),
    tolerance: str = typer.Option("5%", "--tolerance", help="Allowed latency slowdown (5% or 0.05)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Plain latency budget, e.g. 30ms."),
    budget_stat: str = typer.Option("p50", "--budget-stat", help="Statistic the budget applies "
                                    "to: p50, p90, p99 or mean."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Plain budget for the "
                                             "peak memory (arena on), e.g. 200MB."),
    memory_tolerance: str = typer.Option("10%", "--memory-tolerance", help="Allowed memory growth "
                                         "over the baseline."),
    memory_slack: str = typer.Option("1MiB", "--memory-slack", help="Extra memory allowed on top "
                                     "of the tolerance (peak RSS varies ~0.2 MiB)."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Check memory against the "
                                "baseline."),
    device: Optional[str] = typer.Option(None, "--device", help="Device profile giving threads "
                                         "and providers (default: the baseline's settings); "
                                         "checked on the device over SSH when it has an ssh line."),
    ssh: Optional[str] = typer.Option(None, "--ssh", help="Measure the candidate on this device "
                                      "over SSH: user@host[:port]; needs a baseline measured "
                                      "there (bench --ssh --save-baseline)."),
    remote_python: Optional[str] = typer.Option(None, "--remote-python", help="python3 on the "
                                                "device (default: the profile's, or python3)."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh config file (ssh -F)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Override intra_op_num_threads."),
    providers: Optional[str] = typer.Option(None, "--providers", help="Override providers."),
    rounds: int = typer.Option(20, "--rounds", help="Interleaved rounds before the first look."),
    max_rounds: int = typer.Option(80, "--max-rounds", help="Most rounds when the result is "
                                   "borderline."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable verdict on stdout."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML here."),
) -> None:
    """Fail (exit 1) when MODEL is slower or bigger than the baseline or a budget allows."""
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
    bench = resolve_config(start, device=device, threads=threads,
                           providers=parse_providers(providers))
    target = resolve_ssh(ssh, device, remote_python=remote_python, ssh_config=ssh_config)
    result = run_check(model, baseline, cfg, bench, ssh=target)
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
