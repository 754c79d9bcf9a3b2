"""``edgeprune bench`` as a library call: latency, optional A-vs-B ratio, memory, baseline.

Where the model is measured is a :class:`~edgeprune.benchmarks.targets.MeasuringTarget`
(``edgeprune.devices.targets.resolve_target`` picks it from ``--device``/``--ssh``): this
host by default, or a device over SSH, which gives the same latency figures and memory
probes, run there by the self-contained runner. The interleaved A/B ratio (``--vs``) keeps
both models in one process on this host, so a remote target refuses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.benchmarks import ort_runner
from edgeprune.benchmarks.baseline import make_baseline, save_baseline
from edgeprune.benchmarks.compare import CompareConfig, Comparison, compare
from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.memory import MemoryResult
from edgeprune.benchmarks.modelfile import ModelFile, check_dynamic_dims, inspect_model
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.benchmarks.targets import HostTarget, MeasuringTarget
from edgeprune.errors import EdgepruneError
from edgeprune.files import load_onnx


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
    notes: list[str] = field(default_factory=list)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        return {
            "results": [r.to_dict(samples) for r in self.results],
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "memory": [m.to_dict() for m in self.memory],
            "baseline_saved": self.baseline_saved,
            "notes": self.notes,
        }


def check_output_path(path: str | os.PathLike[str], what: str) -> None:
    """Fail before measuring when an output file could not be written."""
    p = Path(path)
    if p.is_dir():
        raise EdgepruneError(f"{what} path is a directory: {p}")
    if not p.parent.exists():
        raise EdgepruneError(f"folder for {what} does not exist: {p.parent}")


def run_bench(req: BenchRequest, cfg: BenchConfig,
              target: MeasuringTarget | None = None) -> BenchReport:
    """Measure ``req.model`` (and ``req.vs``) with ``cfg`` on ``target`` (default: this host)."""
    target = target if target is not None else HostTarget()
    cfg.validate()
    if req.vs is not None and req.save_baseline is not None:
        raise EdgepruneError("--save-baseline records one model; run it without --vs")
    if req.vs is not None and cfg.time_budget_s is not None:
        raise EdgepruneError("--time-budget applies to one model; with --vs set --rounds")
    if req.vs is not None and target.remote:
        raise EdgepruneError("--vs is not available over SSH (the interleaved A/B ratio runs both "
                             "models in one process on this host); bench each model on the device, "
                             "or compare them here without --ssh")
    if req.save_baseline is not None:
        check_output_path(req.save_baseline, "--save-baseline")
    models = [req.model] + ([req.vs] if req.vs is not None else [])
    infos = [inspect_model(m) for m in models]   # missing/garbled files fail before timing
    for m in models:                               # and so does a height or width nobody gave
        check_dynamic_dims(load_onnx(m, load_external_data=False), cfg.shapes)
    if req.memory and req.memory_repeats < 1:
        raise EdgepruneError(f"memory repeats must be at least 1, got {req.memory_repeats}")
    repeats = req.memory_repeats if req.memory else 0

    if req.vs is None:
        latency, mem = target.bench(req.model, cfg, memory_repeats=repeats)
        memory = [mem] if mem is not None else []
        return BenchReport([latency], None, memory, _save(req, cfg, infos[0], latency, memory),
                           _notes(target, cfg, latency, memory))

    comparison = compare(req.model, req.vs, cfg, req.compare)
    results = [comparison.a, comparison.b]
    if cfg.profile:
        for r, m in zip(results, models):
            spec = ort_runner.SessionSpec(m, cfg.threads, list(cfg.providers))
            sess, _ = ort_runner.open_session(spec)
            feeds = ort_runner.make_feeds(sess, cfg.shapes, cfg.seed)
            del sess
            r.extra["profile"] = ort_runner.profile_ops(spec, feeds, 50, cfg.top)
    memory = [m for m in (target.memory(p, cfg, repeats) for p in models) if m is not None] \
        if repeats else []
    return BenchReport(results, comparison, memory, _save(req, cfg, infos[0], results[0], memory))


def _notes(target: MeasuringTarget, cfg: BenchConfig, latency: LatencyResult,
           memory: list[MemoryResult]) -> list[str]:
    """Where a remote target's figures came from (nothing to say for this host)."""
    if not target.remote:
        return []
    profile = f" (device profile {cfg.device})" if cfg.device else ""
    notes = [f"measured {target.where}{profile} with {target.python}: {latency.cpu}, "
             f"{latency.extra.get('platform', '?')}"]
    if memory:
        notes.append("memory measured on the device, in fresh runner processes")
    return notes


def _save(req: BenchRequest, cfg: BenchConfig, info: ModelFile, latency: LatencyResult,
          memory: list[MemoryResult]) -> str | None:
    if req.save_baseline is None:
        return None
    baseline = make_baseline(info, req.save_baseline, cfg, latency, memory[0] if memory else None)
    return str(save_baseline(baseline, req.save_baseline))
