"""``edgeprune bench`` as a library call: latency, optional A-vs-B ratio, memory, baseline."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.benchmarks import ort_runner
from edgeprune.benchmarks.baseline import make_baseline, save_baseline
from edgeprune.benchmarks.compare import CompareConfig, Comparison, compare
from edgeprune.benchmarks.latency import BenchConfig, measure
from edgeprune.benchmarks.memory import MemoryResult, measure_memory
from edgeprune.benchmarks.modelfile import inspect_model
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.errors import EdgepruneError


@dataclass
class BenchRequest:
    model: str
    vs: str | None = None
    memory: bool = True
    memory_repeats: int = 3
    save_baseline: str | None = None
    compare: CompareConfig = field(default_factory=CompareConfig)


@dataclass
class BenchReport:
    results: list[LatencyResult]
    comparison: Comparison | None = None
    memory: list[MemoryResult] = field(default_factory=list)
    baseline_saved: str | None = None

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        return {
            "results": [r.to_dict(samples) for r in self.results],
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "memory": [m.to_dict() for m in self.memory],
            "baseline_saved": self.baseline_saved,
        }


def check_output_path(path: str | os.PathLike[str], what: str) -> None:
    """Fail before measuring when an output file could not be written."""
    p = Path(path)
    if p.is_dir():
        raise EdgepruneError(f"{what} path is a directory: {p}")
    if not p.parent.exists():
        raise EdgepruneError(f"folder for {what} does not exist: {p.parent}")


def run_bench(req: BenchRequest, cfg: BenchConfig) -> BenchReport:
    cfg.validate()
    if req.vs is not None and req.save_baseline is not None:
        raise EdgepruneError("--save-baseline records one model; run it without --vs")
    if req.vs is not None and cfg.time_budget_s is not None:
        raise EdgepruneError("--time-budget applies to one model; with --vs set --rounds")
    if req.save_baseline is not None:
        check_output_path(req.save_baseline, "--save-baseline")
    models = [req.model] + ([req.vs] if req.vs is not None else [])
    infos = [inspect_model(m) for m in models]   # missing/garbled files fail before timing

    comparison = None
    if req.vs is not None:
        comparison = compare(req.model, req.vs, cfg, req.compare)
        results = [comparison.a, comparison.b]
        if cfg.profile:
            for r, m in zip(results, models):
                spec = ort_runner.SessionSpec(m, cfg.threads, list(cfg.providers))
                sess, _ = ort_runner.open_session(spec)
                feeds = ort_runner.make_feeds(sess, cfg.shapes, cfg.seed)
                del sess
                r.extra["profile"] = ort_runner.profile_ops(spec, feeds, 50, cfg.top)
    else:
        results = [measure(req.model, cfg)]

    memory = [measure_memory(m, cfg, repeats=req.memory_repeats) for m in models] \
        if req.memory else []

    saved = None
    if req.save_baseline is not None:
        baseline = make_baseline(infos[0], req.save_baseline, cfg, results[0],
                                 memory[0] if memory else None)
        saved = str(save_baseline(baseline, req.save_baseline))
    return BenchReport(results, comparison, memory, saved)
