"""``edgeprune bench`` as a library call: latency, optional A-vs-B ratio, memory, baseline.

With ``BenchRequest.ssh`` set (``--ssh``, or a device profile with an ``ssh`` line) the
model is measured on that device instead (:func:`edgeprune.devices.ssh.bench_over_ssh`):
the same latency figures and memory probes, run there by the self-contained runner. The
interleaved A/B ratio (``--vs``) keeps both models in one process on this host, so it is
not available over SSH.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.benchmarks import ort_runner
from edgeprune.benchmarks.baseline import make_baseline, save_baseline
from edgeprune.benchmarks.compare import CompareConfig, Comparison, compare
from edgeprune.benchmarks.latency import BenchConfig, measure
from edgeprune.benchmarks.memory import MemoryResult, measure_memory
from edgeprune.benchmarks.modelfile import ModelFile, inspect_model
from edgeprune.benchmarks.stats import LatencyResult
from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    from edgeprune.devices.ssh import SshConfig


@dataclass
class BenchRequest:
    model: str
    vs: str | None = None
    memory: bool = True
    memory_repeats: int = 3
    save_baseline: str | None = None
    compare: CompareConfig = field(default_factory=CompareConfig)
    ssh: "SshConfig | None" = None     # measure on this device over SSH instead of here


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


def run_bench(req: BenchRequest, cfg: BenchConfig) -> BenchReport:
    cfg.validate()
    if req.vs is not None and req.save_baseline is not None:
        raise EdgepruneError("--save-baseline records one model; run it without --vs")
    if req.vs is not None and cfg.time_budget_s is not None:
        raise EdgepruneError("--time-budget applies to one model; with --vs set --rounds")
    if req.vs is not None and req.ssh is not None:
        raise EdgepruneError("--vs is not available over SSH (the interleaved A/B ratio runs both "
                             "models in one process on this host); bench each model on the device, "
                             "or compare them here without --ssh")
    if req.save_baseline is not None:
        check_output_path(req.save_baseline, "--save-baseline")
    models = [req.model] + ([req.vs] if req.vs is not None else [])
    infos = [inspect_model(m) for m in models]   # missing/garbled files fail before timing

    if req.ssh is not None:
        return _bench_over_ssh(req, req.ssh, cfg, infos[0])
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

    return BenchReport(results, comparison, memory, _save(req, cfg, infos[0], results[0], memory))


def _bench_over_ssh(req: BenchRequest, ssh: "SshConfig", cfg: BenchConfig,
                    info: ModelFile) -> BenchReport:
    from edgeprune.devices.ssh import bench_over_ssh

    latency, mem = bench_over_ssh(req.model, ssh, cfg,
                                  memory_repeats=req.memory_repeats if req.memory else 0)
    memory = [mem] if mem is not None else []
    profile = f" (device profile {cfg.device})" if cfg.device else ""
    notes = [f"measured over SSH on {ssh.target}{profile} with {ssh.python}: {latency.cpu}, "
             f"{latency.extra.get('platform', '?')}"]
    if memory:
        notes.append("memory measured on the device, in fresh runner processes")
    return BenchReport([latency], None, memory, _save(req, cfg, info, latency, memory), notes)


def _save(req: BenchRequest, cfg: BenchConfig, info: ModelFile, latency: LatencyResult,
          memory: list[MemoryResult]) -> str | None:
    if req.save_baseline is None:
        return None
    baseline = make_baseline(info, req.save_baseline, cfg, latency, memory[0] if memory else None)
    return str(save_baseline(baseline, req.save_baseline))
