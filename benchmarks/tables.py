"""Rich tables for people (``bench`` and ``check`` without ``--json``)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeprune.benchmarks.compare import Comparison
from edgeprune.benchmarks.gate import GateResult
from edgeprune.benchmarks.memory import MemoryResult
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.benchmarks.units import fmt_bytes, fmt_ms


def _name(r: LatencyResult) -> str:
    return Path(str(r.extra.get("model", "?"))).name


def latency_table(results: list[LatencyResult], title: str = "Latency (ms)") -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("model", no_wrap=True, min_width=min(32, max(len(_name(r)) for r in results)))
    for col in ("p50", "p90", "p99", "mean", "std", "min", "max"):
        t.add_column(col, justify="right")
    t.add_column("CV", justify="right")
    t.add_column("runs", justify="right")
    for r in results:
        t.add_row(_name(r), *(fmt_ms(getattr(r, f"{c}_ms"))
                              for c in ("p50", "p90", "p99", "mean", "std", "min", "max")),
                  f"{r.cv * 100:.1f}%", str(r.runs))
    return t


def settings_line(r: LatencyResult) -> str:
    line = (f"threads {r.threads} · provider {r.provider_used} "
            f"(requested {', '.join(r.providers_requested)}) · onnxruntime {r.ort_version} · "
            f"CPU {r.cpu} · warm-up {r.warmup}")
    if r.extra.get("budget_exhausted"):
        line += f" · stopped by the {r.extra.get('time_budget_s')} s time budget"
    if r.source != "measured:host":
        ssh = r.extra.get("ssh")
        via = f" via {ssh}" if ssh and not r.source.endswith(f":{ssh}") else ""
        line = f"{r.source}{via} · {line}"
    return line


def profile_table(r: LatencyResult) -> Table | None:
    prof = r.extra.get("profile")
    if not prof:
        return None
    t = Table(title=f"Top operators, {_name(r)} (onnxruntime profiler, {prof['runs']} runs)",
              title_justify="left",
              caption="profiled times include the profiler's own overhead; compare shares",
              caption_justify="left")
    for col, just in (("op type", "left"), ("ms / run", "right"), ("share", "right"),
                      ("nodes", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for op in prof["top_ops"]:
        t.add_row(op["op_type"], f"{op['per_run_ms']:.4f}", f"{op['share'] * 100:.1f}%",
                  str(op["nodes"]))
    return t


def memory_table(mems: list[MemoryResult]) -> Table:
    where = "" if mems[0].source == "measured:host" else f" ({mems[0].source})"
    t = Table(title=f"Memory{where}", title_justify="left",
              caption="peak = peak RSS of a fresh process that loads and runs the model, minus "
                      "that process's own footprint (onnxruntime ready, no model) before "
                      f"loading it, median of {mems[0].repeats}; onnxruntime setup = the "
                      "runtime's one-off cost, not counted in peak; file = size on disk",
              caption_justify="left")
    for col, just in (("model", "left"), ("peak, arena on", "right"),
                      ("peak, arena off", "right"), ("process footprint", "right"),
                      ("onnxruntime setup", "right"),
                      ("file", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in mems:
        size = fmt_bytes(m.total_file_bytes)
        if m.total_file_bytes != m.file_bytes:
            size += f" (.onnx {fmt_bytes(m.file_bytes)})"
        t.add_row(Path(m.model).name, fmt_bytes(m.arena_on_peak_bytes),
                  fmt_bytes(m.arena_off_peak_bytes), fmt_bytes(m.process_baseline_bytes),
                  fmt_bytes(m.runtime_init_bytes), size)
    return t


def comparison_line(c: Comparison) -> str:
    pct = int(round(c.confidence * 100))
    return (f"ratio {_name(c.a)} / {_name(c.b)} = [bold]{c.ratio:.3f}[/] "
            f"({pct}% CI {c.ci_low:.3f}-{c.ci_high:.3f}; median of {c.rounds} interleaved "
            f"rounds, {c.half_block} runs per half-block)")


def print_bench(console: Console, results: list[LatencyResult], comparison: Comparison | None,
                memory: list[MemoryResult]) -> None:
    console.print(latency_table(results))
    console.print(settings_line(results[0]), highlight=False)
    if comparison is not None:
        console.print(comparison_line(comparison), highlight=False)
    for r in results:
        t = profile_table(r)
        if t is not None:
            console.print(t)
    if memory:
        console.print(memory_table(memory))


def print_gate(console: Console, g: GateResult) -> None:
    t = Table(title=f"edgeprune check: {Path(g.model).name} ({g.mode})", title_justify="left")
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail")
    for c in g.checks:
        t.add_row(c.name, "[green]pass[/]" if c.passed else "[bold red]FAIL[/]", c.message)
    console.print(t)
    console.print(settings_line(g.latency), highlight=False)
    for n in g.notes:
        console.print(f"note: {n}", highlight=False)
    console.print("[bold green]PASS[/]" if g.passed else "[bold red]FAIL: regression[/]")
