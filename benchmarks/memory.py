"""Peak memory of a model under onnxruntime, measured in fresh subprocesses.

Each figure comes from a new Python process running ``ort_runner.py --memory``: it imports
onnxruntime, readies the runtime with a trivial one-node model, notes its own resident set
size (the footprint *without* the model), resets the kernel's peak mark, loads the model
and runs it, then reads the peak. The reported peak is that peak minus the process's own
footprint, once with onnxruntime's CPU memory arena on (its default) and once with it off,
each the median of a few fresh processes. onnxruntime's one-off environment setup is
reported apart (``runtime_init_bytes``), as is the model's size on disk: it is not the
memory it needs.

On a device over SSH the same probes (:func:`probe_args`) run as fresh processes there
(:func:`edgeprune.devices.ssh.bench_over_ssh`) and :func:`memory_result` summarises them
the same way, with ``source="measured:ssh:<device>"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from edgeprune.benchmarks import ort_runner
from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.modelfile import ModelFile, inspect_model
from edgeprune.errors import EdgepruneError

RUNNER = Path(ort_runner.__file__)

# glibc raises its mmap threshold dynamically as large blocks are freed, so whether a
# buffer lands in the heap or in its own mapping varies between identical runs and the
# peak jumps by ~2 MiB. Pinning the threshold at glibc's own starting value (128 KiB)
# makes the figure repeat to ~0.1 MiB. Other C libraries ignore the variable.
STABLE_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass
class MemoryResult:
    model: str
    file_bytes: int                 # the .onnx file
    total_file_bytes: int           # .onnx plus external data
    arena_on_peak_bytes: int        # peak RSS - own footprint, CPU arena on (onnxruntime default)
    arena_off_peak_bytes: int       # the same with the CPU arena off
    process_baseline_bytes: int     # the subprocess's RSS before loading the model
    runtime_init_bytes: int         # onnxruntime's own setup, not charged to the model
    repeats: int
    threads: int
    providers_requested: list[str]
    provider_used: str
    samples: dict[str, list[int]] = field(default_factory=dict)   # every repeat, per arena
    source: str = "measured:host"   # where: "measured:host" or "measured:ssh:<device>"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemoryResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def probe_args(model: str, cfg: BenchConfig, arena: bool, runs: int = 10) -> list[str]:
    """``ort_runner.py`` arguments for one memory probe (run here, or on a device over SSH)."""
    args = [str(model), "--memory", "--runs", str(runs), "--threads", str(cfg.threads),
            "--providers", ",".join(cfg.providers), "--seed", str(cfg.seed)]
    for name, shape in cfg.shapes.items():
        args += ["--shape", f"{name}={'x'.join(map(str, shape))}"]
    if not arena:
        args.append("--no-arena")
    return args


MEMORY_TIMEOUT_S = 300.0    # default of --memory-timeout: the longest one memory probe may run


def probe(model: str, cfg: BenchConfig, arena: bool, runs: int = 10,
          timeout_s: float = MEMORY_TIMEOUT_S) -> dict[str, Any]:
    """One fresh subprocess, one memory-mode JSON object from ``ort_runner``."""
    cmd = [sys.executable, str(RUNNER), *probe_args(model, cfg, arena, runs)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **STABLE_MALLOC_ENV}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise EdgepruneError(f"memory probe of {model} (a fresh onnxruntime process, arena "
                             f"{'on' if arena else 'off'}, {runs} runs) took longer than {timeout_s:.0f} s; stopped: "
                             f"check that it runs ('edgeprune bench {model} --no-memory') and that this machine "
                             "is not overloaded, or raise --memory-timeout, or skip memory with --no-memory") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise EdgepruneError(f"memory probe of {model} failed: {last.removeprefix('error: ')}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise EdgepruneError(f"memory probe of {model} printed no JSON result") from None


def memory_result(info: ModelFile, cfg: BenchConfig, probes: list[dict[str, Any]],
                  source: str = "measured:host") -> MemoryResult:
    """Medians over memory-mode runner objects (each with ``"arena"`` true or false)."""
    samples: dict[str, list[int]] = {"arena_on": [], "arena_off": []}
    try:
        for raw in probes:
            samples["arena_on" if raw["arena"] else "arena_off"].append(int(raw["model_peak_bytes"]))
        baselines = [int(raw["baseline_rss_bytes"]) for raw in probes]
        inits = [int(raw["runtime_init_bytes"]) for raw in probes]
    except (KeyError, TypeError, ValueError) as e:
        raise EdgepruneError(f"memory probe output is incomplete ({type(e).__name__}: {e})") from None
    if not samples["arena_on"] or not samples["arena_off"]:
        raise EdgepruneError(f"memory of {info.path}: need probes with the arena on and off")
    return MemoryResult(
        model=str(info.path), file_bytes=info.file_bytes, total_file_bytes=info.total_bytes,
        arena_on_peak_bytes=int(median(samples["arena_on"])),
        arena_off_peak_bytes=int(median(samples["arena_off"])),
        process_baseline_bytes=int(median(baselines)), runtime_init_bytes=int(median(inits)),
        repeats=min(len(samples["arena_on"]), len(samples["arena_off"])),
        threads=cfg.threads, providers_requested=list(cfg.providers),
        provider_used=str(probes[-1].get("provider_used", "")), samples=samples, source=source)


def measure_memory(model: str | os.PathLike[str], cfg: BenchConfig, repeats: int = 3,
                   runs: int = 10, timeout_s: float = MEMORY_TIMEOUT_S) -> MemoryResult:
    """Median over ``repeats`` fresh processes of the model's peak memory, arena on and off."""
    if repeats < 1:
        raise EdgepruneError(f"memory repeats must be at least 1, got {repeats}")
    info = inspect_model(model)   # a missing or garbled file fails before any subprocess
    probes = [probe(str(model), cfg, arena, runs, timeout_s)
              for _ in range(repeats) for arena in (True, False)]
    return memory_result(info, cfg, probes)
