"""The CI latency/memory gate behind ``edgeprune check``.

Verdicts: every check passes -> exit 0; any check fails -> exit 1; bad input -> exit 2
(an EdgepruneError raised before any verdict).

Latency against a baseline is judged one of two ways:

* **ratio** (preferred): the baseline's own model is at hand and unchanged (its sha256
  matches), so both models are timed together, interleaved (see :mod:`compare`), and the
  candidate fails when candidate/baseline exceeds ``1 + tolerance``.
* **absolute** (fallback): the baseline model is gone or changed, so the candidate's p50
  is compared with the stored p50 times ``1 + tolerance``. This is weaker on shared
  machines and the result says so.

Memory (peak RSS above the process's own footprint, arena on and off) is compared with the
baseline's figures within ``memory_tolerance`` plus ``memory_slack`` (with glibc's mmap
threshold pinned, see :mod:`memory`, peak RSS still varies by ~0.2 MiB between identical
runs). When the baseline model is at hand its memory is re-measured now, like latency. Plain budgets (``--budget``,
``--max-memory``) need no baseline at all.

Where the candidate is measured is a :class:`~edgeprune.benchmarks.targets.MeasuringTarget`
(``target=``; ``edgeprune.devices.targets.resolve_target`` picks it from ``check --device``/
``--ssh``). On a remote one (a device over SSH) the candidate's latency and memory are
measured on the device and judged against the baseline's stored figures (absolute mode): the
interleaved ratio needs both models in one process on this host. The baseline must have been
measured over SSH too, and a baseline measured over SSH can only be checked over SSH; anything
else is bad input, since host and board figures are not comparable.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.benchmarks.baseline import Baseline, load_baseline, locate_model
from edgeprune.benchmarks.compare import CompareConfig, Comparison, compare
from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.memory import MemoryResult
from edgeprune.benchmarks.modelfile import check_dynamic_dims, inspect_model
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.benchmarks.targets import HostTarget, MeasuringTarget
from edgeprune.benchmarks.units import fmt_bytes, fmt_ms
from edgeprune.errors import EdgepruneError
from edgeprune.files import load_onnx

BUDGET_STATS = ("p50", "p90", "p99", "mean")


@dataclass
class GateConfig:
    tolerance: float = 0.05                   # latency: allowed slowdown, as a fraction
    memory_tolerance: float = 0.10            # memory: allowed growth, as a fraction ...
    memory_slack_bytes: int = 2**20           # ... plus this much (RSS moves a little)
    budget_ms: float | None = None            # plain latency budget for budget_stat
    budget_stat: str = "p50"
    max_memory_bytes: int | None = None       # plain budget for the arena-on peak
    check_memory: bool = True
    memory_repeats: int = 3
    baseline_model: str | None = None         # --baseline-model: where the baseline's model is
    compare: CompareConfig = field(default_factory=CompareConfig)

    def validate(self) -> None:
        if self.memory_repeats < 1:
            raise EdgepruneError(f"memory repeats must be at least 1, got {self.memory_repeats}")
        if not 0 <= self.tolerance < 10:
            raise EdgepruneError(f"tolerance out of range: {self.tolerance}")
        if self.memory_tolerance < 0 or self.memory_slack_bytes < 0:
            raise EdgepruneError("memory tolerance and slack must not be negative")
        if self.budget_stat not in BUDGET_STATS:
            raise EdgepruneError(f"--budget-stat must be one of {', '.join(BUDGET_STATS)}, "
                                 f"got {self.budget_stat!r}")


@dataclass
class Check:
    name: str
    passed: bool
    message: str
    measured: float | None = None
    limit: float | None = None
    unit: str = ""


@dataclass
class GateResult:
    model: str
    model_sha256: str
    passed: bool
    mode: str                                 # "ratio", "absolute" or "budget"
    checks: list[Check]
    latency: LatencyResult
    settings: dict[str, Any]
    baseline: str | None = None
    comparison: Comparison | None = None
    memory: MemoryResult | None = None
    baseline_memory: MemoryResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.passed else "fail",
            "exit_code": self.exit_code,
            "model": self.model, "model_sha256": self.model_sha256,
            "baseline": self.baseline, "mode": self.mode,
            "checks": [asdict(c) for c in self.checks],
            "latency": self.latency.to_dict(),
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "baseline_memory": self.baseline_memory.to_dict() if self.baseline_memory else None,
            "settings": self.settings,
            "notes": self.notes,
        }


def _latency_ratio_check(cmp: Comparison, tol: float) -> Check:
    limit = 1 + tol
    ok = cmp.ratio <= limit
    pct = int(round(cmp.confidence * 100))
    sure = "" if cmp.conclusive else "; interval straddles the limit, verdict from the median"
    return Check(
        "latency-ratio", ok,
        f"candidate/baseline = {cmp.ratio:.3f} ({pct}% CI {cmp.ci_low:.3f}-{cmp.ci_high:.3f}, "
        f"{cmp.rounds} interleaved rounds), limit {limit:.3f}{sure}",
        cmp.ratio, limit, "ratio")


def _latency_absolute_check(cand: LatencyResult, base: LatencyResult, tol: float) -> Check:
    limit = base.p50_ms * (1 + tol)
    ok = cand.p50_ms <= limit
    return Check(
        "latency-absolute", ok,
        f"p50 {fmt_ms(cand.p50_ms)} ms vs stored baseline p50 {fmt_ms(base.p50_ms)} ms "
        f"(x{cand.p50_ms / base.p50_ms:.3f}), limit {fmt_ms(limit)} ms",
        cand.p50_ms, limit, "ms")


def _memory_checks(cand: MemoryResult, base: MemoryResult, cfg: GateConfig) -> list[Check]:
    out = []
    for key, label in (("arena_on_peak_bytes", "memory-arena-on"),
                       ("arena_off_peak_bytes", "memory-arena-off")):
        c, b = getattr(cand, key), getattr(base, key)
        limit = b * (1 + cfg.memory_tolerance) + cfg.memory_slack_bytes
        out.append(Check(label, c <= limit,
                         f"peak above process footprint {fmt_bytes(c)} vs baseline "
                         f"{fmt_bytes(b)}, limit {fmt_bytes(limit)}", c, limit, "bytes"))
    return out


def _same_place(base: Baseline, baseline_path: str | os.PathLike[str],
                target: MeasuringTarget) -> None:
    """A host baseline is checked on the host, a device baseline on a device over SSH."""
    source = base.latency.source
    on_device = source.startswith("measured:ssh:")
    if target.remote and not on_device:
        raise EdgepruneError(
            f"baseline {baseline_path} was measured on this host ({source}), not over SSH; "
            f"record one on the device with: edgeprune bench MODEL --ssh {target.address} "
            "--save-baseline FILE")
    if not target.remote and on_device:
        address = base.latency.extra.get("ssh") or "user@host"
        raise EdgepruneError(
            f"baseline {baseline_path} was measured on a device over SSH ({source}); check on "
            f"that device with --ssh {address} (or a --device profile with that ssh line)")


def run_check(model: str | os.PathLike[str], baseline_path: str | os.PathLike[str] | None,
              cfg: GateConfig, bench: BenchConfig | None = None,
              target: MeasuringTarget | None = None) -> GateResult:
    """Measure ``model`` and judge it against a baseline and/or plain budgets.

    ``bench`` defaults to the baseline's recorded settings (so candidate and baseline run
    alike); without a baseline it defaults to ``BenchConfig()``. ``target`` (default: this
    host) is where the candidate is measured; a remote one is judged against the baseline's
    stored figures (see the module docstring).
    """
    target = target if target is not None else HostTarget()
    cfg.validate()
    if baseline_path is None and cfg.budget_ms is None and cfg.max_memory_bytes is None:
        raise EdgepruneError("nothing to check: give --baseline, --budget or --max-memory")
    if baseline_path is None and cfg.baseline_model is not None:
        raise EdgepruneError("--baseline-model needs --baseline")
    info = inspect_model(model)
    base: Baseline | None = load_baseline(baseline_path) if baseline_path is not None else None
    if bench is None:
        bench = base.bench_config if base else BenchConfig()
    bench.validate()
    check_dynamic_dims(load_onnx(model, load_external_data=False), bench.shapes)   # not a 1x1 image
    notes: list[str] = []
    checks: list[Check] = []
    comparison = None
    mode = "budget"
    base_model: Path | None = None
    want_memory = cfg.max_memory_bytes is not None or (
        cfg.check_memory and base is not None and base.memory is not None)
    memory = baseline_memory = None

    if base is not None:
        _same_place(base, baseline_path, target)
        if target.remote and cfg.baseline_model is not None:
            raise EdgepruneError("--baseline-model is for the side-by-side ratio on this host; "
                                 "over SSH the candidate is judged against the baseline's "
                                 "stored figures from the device")
        if bench.threads != base.settings.get("threads") or \
                list(bench.providers) != list(base.settings.get("providers", [])):
            notes.append(f"settings differ from the baseline's (threads {bench.threads} vs "
                         f"{base.settings.get('threads')}, providers {','.join(bench.providers)} "
                         f"vs {','.join(base.settings.get('providers', []))})")
        if not target.remote:
            base_model, why = locate_model(base, baseline_path, cfg.baseline_model)
            notes.append(why)
        else:
            notes.append("over SSH the candidate is compared with the baseline's stored figures "
                         "from the device (the interleaved ratio runs on this host only)")

    if target.remote:
        latency, memory = target.bench(model, bench,
                                       memory_repeats=cfg.memory_repeats if want_memory else 0)
        notes.append(f"measured {target.where} ({latency.source})")
    if base is not None and base_model is not None:
        mode = "ratio"
        ccfg = CompareConfig(**{**cfg.compare.__dict__, "threshold": 1 + cfg.tolerance})
        comparison = compare(model, base_model, bench, ccfg)
        latency = comparison.a
        checks.append(_latency_ratio_check(comparison, cfg.tolerance))
    else:
        if not target.remote:
            latency = target.latency(model, bench)
        if base is not None:
            mode = "absolute"
            if latency.cpu != base.latency.cpu or latency.ort_version != base.latency.ort_version:
                notes.append(f"baseline was measured on {base.latency.cpu} with onnxruntime "
                             f"{base.latency.ort_version}; now {latency.cpu} with "
                             f"{latency.ort_version}: absolute figures may not be comparable")
            if not target.remote:
                notes.append("absolute comparison with stored figures: weaker than a side-by-side "
                             "ratio on a shared machine; keep the baseline model beside the baseline")
            checks.append(_latency_absolute_check(latency, base.latency, cfg.tolerance))

    if latency.fallback:
        notes.append(f"provider fallback: {latency.fallback}")

    if cfg.budget_ms is not None:
        value = getattr(latency, f"{cfg.budget_stat}_ms")
        checks.append(Check("latency-budget", value <= cfg.budget_ms,
                            f"{cfg.budget_stat} {fmt_ms(value)} ms, budget {fmt_ms(cfg.budget_ms)} ms",
                            value, cfg.budget_ms, "ms"))

    if want_memory:
        if memory is None:
            memory = target.memory(model, bench, repeats=cfg.memory_repeats)
        if cfg.check_memory and base is not None and base.memory is not None:
            if base_model is not None:
                baseline_memory = target.memory(base_model, bench, repeats=cfg.memory_repeats)
                notes.append("baseline memory re-measured now from the baseline model")
            else:
                baseline_memory = base.memory
            checks += _memory_checks(memory, baseline_memory, cfg)
        if cfg.max_memory_bytes is not None:
            checks.append(Check("memory-budget", memory.arena_on_peak_bytes <= cfg.max_memory_bytes,
                                f"peak above process footprint (arena on) "
                                f"{fmt_bytes(memory.arena_on_peak_bytes)}, budget "
                                f"{fmt_bytes(cfg.max_memory_bytes)}",
                                memory.arena_on_peak_bytes, cfg.max_memory_bytes, "bytes"))
    elif base is not None and cfg.check_memory and base.memory is None:
        notes.append("baseline has no memory figures; memory not checked")

    return GateResult(
        model=str(model), model_sha256=info.sha256, passed=all(c.passed for c in checks),
        mode=mode, checks=checks, latency=latency, settings=bench.settings(),
        baseline=str(baseline_path) if baseline_path is not None else None,
        comparison=comparison, memory=memory, baseline_memory=baseline_memory, notes=notes)


def write_junit(result: GateResult, path: str | os.PathLike[str]) -> Path:
    """JUnit XML, one testcase per check, written atomically."""
    failures = sum(not c.passed for c in result.checks)
    suite = ET.Element("testsuite", name="edgeprune.check", tests=str(len(result.checks)),
                       failures=str(failures), errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    for k, v in (("model", result.model), ("model_sha256", result.model_sha256),
                 ("baseline", result.baseline or ""), ("mode", result.mode),
                 ("verdict", "pass" if result.passed else "fail"),
                 ("threads", str(result.latency.threads)),
                 ("provider_used", result.latency.provider_used),
                 ("ort_version", result.latency.ort_version), ("cpu", result.latency.cpu)):
        ET.SubElement(props, "property", name=k, value=v)
    classname = f"edgeprune.check.{Path(result.model).name}"
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", classname=classname, name=c.name, time="0")
        if not c.passed:
            fail = ET.SubElement(case, "failure", message=c.message, type="regression")
            fail.text = c.message
        else:
            ET.SubElement(case, "system-out").text = c.message
    if result.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(result.notes)
    root = ET.Element("testsuites", name="edgeprune", tests=str(len(result.checks)),
                      failures=str(failures))
    root.append(suite)
    target = Path(path)
    if target.is_dir():
        raise EdgepruneError(f"--junit path is a directory: {target}")
    if not target.parent.exists():
        raise EdgepruneError(f"folder for --junit does not exist: {target.parent}")
    tmp = target.with_name(f".{target.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, target)
    return target
