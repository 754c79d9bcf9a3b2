"""Self-contained onnxruntime timing and memory probe (standard library + numpy + onnxruntime).

This one file is both the host benchmark's engine (``edgeprune.benchmarks.latency`` calls
its functions in-process) and a script that is copied as-is to a target board (for
example a Raspberry Pi over SSH) and run there. It must not import edgeprune or torch.

Command line (stable; other tools parse it)::

    python ort_runner.py MODEL.onnx [--threads N] [--providers P1,P2,...]
                         [--warmup N] [--runs N] [--time-budget S]
                         [--profile] [--top K] [--shape NAME=1x3x32x32 ...] [--seed N]
    python ort_runner.py MODEL.onnx --memory [--no-arena] [--threads N] [--providers ...]
                         [--runs N] [--shape ...]

Timing mode prints ONE JSON object on stdout (schema ``edgeprune.ort_runner/1``)::

    {
      "schema": "edgeprune.ort_runner/1",
      "mode": "latency",
      "model": "<path as given>", "model_bytes": int, "model_sha256": "<hex>",
      "samples_ms": [float, ...],        # one wall-clock time per session.run, in order
      "warmup": int, "runs": int,         # runs == len(samples_ms)
      "time_budget_s": float | null, "budget_exhausted": bool,
      "threads": int,                     # intra_op_num_threads (inter_op is 1, sequential)
      "providers_requested": [str, ...],  # as asked, in preference order
      "providers_available": [str, ...],  # what this onnxruntime build offers
      "session_providers": [str, ...],    # what the session actually registered
      "provider_used": str,               # session_providers[0]
      "fallback": str | null,             # why the first requested provider is not used
      "ort_version": str, "numpy_version": str, "python": str,
      "platform": str, "machine": str, "cpu": str, "cpu_count": int | null, "cpu_features": [str],
      "inputs": [{"name": str, "shape": [int, ...], "dtype": str}, ...],
      "wall_s": float,                    # seconds spent in the timed loop
      "profile": null | {                 # with --profile: onnxruntime's per-node profiler,
        "runs": int,                      #   from a separate session after the timed runs
        "total_ms": float,                #   (profiling perturbs timings, so samples_ms
        "top_ops": [                      #   never come from a profiled session)
          {"op_type": str, "total_ms": float, "per_run_ms": float,
           "share": float, "calls": int, "nodes": int}, ...]}
    }

Memory mode (``--memory``) prints ONE JSON object with ``"mode": "memory"``. The process
imports onnxruntime and numpy (``bare_rss_bytes``), then readies the runtime without the
model: it opens and runs a built-in 71-byte Identity model with the same options, so the
one-off cost of onnxruntime's environment (about 9 MiB on x86-64 Linux) is not charged to
the model. That footprint is ``baseline_rss_bytes``. It then resets the kernel's peak-RSS
mark where Linux allows it (``peak_reset``), loads the model (``after_load_rss_bytes``),
runs it ``--runs`` times and reads the peak (``peak_rss_bytes``).
``model_peak_bytes = peak_rss_bytes - baseline_rss_bytes`` is the memory the model costs;
``runtime_init_bytes = baseline_rss_bytes - bare_rss_bytes`` is onnxruntime's own setup.
``arena`` says whether the CPU memory arena was on. Run it in a fresh process, one per
figure: peak RSS only ever grows.

``model_sha256`` and ``model_bytes`` cover the .onnx file itself; external-data files
next to it are not included.

Dynamic input dimensions are set to 1 unless ``--shape NAME=AxBxC`` says otherwise; float
inputs are seeded standard-normal noise, integer inputs zeros, booleans false.

A requested provider that this onnxruntime build lacks is skipped with a warning on
stderr and recorded in ``fallback``; CPUExecutionProvider is always appended last, as
onnxruntime itself does. Bad input prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

SCHEMA = "edgeprune.ort_runner/1"
CPU_PROVIDER = "CPUExecutionProvider"

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}

# Arm "CPU part" codes as printed in /proc/cpuinfo, for boards whose kernel gives no name.
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xc07": "Cortex-A7", "0xc08": "Cortex-A8", "0xc09": "Cortex-A9", "0xc0f": "Cortex-A15",
}


# A serialized ONNX model (IR 7, opset 13): y = Identity(x), x and y float[1]. Opening it
# readies onnxruntime's environment so memory mode can measure the footprint without the model.
EMPTY_MODEL = (b'\x08\x07\x12\x00:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05emptyZ\x0f\n\x01x'
               b'\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04'
               b'\n\x02\x08\x01B\x04\n\x00\x10\r')


class RunnerError(Exception):
    """Bad input (a missing model, an unknown option value): one line for the user."""


# ----------------------------------------------------------------------------- facts

def cpu_model() -> str:
    """A human name for this CPU (x86 brand string, Arm core and board, or the machine)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            info = f.read()
    except OSError:
        info = ""
    fields: dict[str, str] = {}
    parts: list[str] = []
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "cpu part":
            parts.append(value.lower())
        fields.setdefault(key, value)
    name = fields.get("model name") or fields.get("cpu model") or fields.get("processor", "")
    if name.isdigit():  # on arm64 "processor" is just the core index
        name = ""
    if not name and parts:
        cores = sorted({_ARM_PARTS.get(p, f"Arm part {p}") for p in parts})
        name = " + ".join(cores)
    board = fields.get("model", "")
    if not board:
        try:
            with open("/proc/device-tree/model", encoding="utf-8", errors="replace") as f:
                board = f.read().strip("\x00\n ")
        except OSError:
            board = ""
    if board and board not in name and not board.isdigit():
        name = f"{name} ({board})" if name else board
    if not name and sys.platform == "darwin":
        import subprocess
        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            name = ""
    return name or platform.processor() or platform.machine() or "unknown"


# /proc/cpuinfo flags that change which onnxruntime CPU kernels run (MLAS dispatches on them), by the
# name a fingerprint gives them: x86 "flags", Arm "Features"
KERNEL_FEATURES = {
    "avx2": "avx2", "avx512f": "avx512", "avx512_vnni": "avx512-vnni", "avx_vnni": "avx-vnni",
    "amx_tile": "amx", "asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16", "i8mm": "i8mm",
    "sve": "sve",
}


def cpu_features(info: str | None = None) -> list[str]:
    """The kernel-relevant instruction-set features of this CPU (``KERNEL_FEATURES``), sorted;
    ``info`` is a /proc/cpuinfo text (read here when None; empty where there is none)."""
    if info is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                info = f.read()
        except OSError:
            info = ""
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return sorted({KERNEL_FEATURES[f] for f in value.split() if f in KERNEL_FEATURES})
    return []


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def host_facts() -> dict[str, Any]:
    return {
        "ort_version": ort.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_features": cpu_features(),
    }


# -------------------------------------------------------------------------- sessions

def resolve_providers(requested: list[str]) -> tuple[list[str], str | None]:
    """Keep the requested providers this build offers, in order, and CPU last.

    Returns the list to give onnxruntime and, when the first requested provider cannot
    be used, a one-line reason (never a silent fallback).
    """
    available = ort.get_available_providers()
    requested = [p for p in requested if p] or [CPU_PROVIDER]
    usable = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if CPU_PROVIDER not in usable:
        usable.append(CPU_PROVIDER)
    fallback = None
    if missing and requested[0] in missing:
        fallback = (f"{', '.join(missing)} not available in onnxruntime {ort.__version__} "
                    f"(available: {', '.join(available)}); using {usable[0]}")
    elif missing:
        fallback = f"{', '.join(missing)} not available (available: {', '.join(available)})"
    return usable, fallback


@dataclass
class SessionSpec:
    model: str | bytes          # a path, or a serialized model
    threads: int = 1
    providers: list[str] = field(default_factory=lambda: [CPU_PROVIDER])
    arena: bool = True
    profile_prefix: str | None = None


def open_session(spec: SessionSpec) -> tuple[ort.InferenceSession, dict[str, Any]]:
    """An InferenceSession with fixed threads and providers, plus the provider facts."""
    if isinstance(spec.model, str) and not os.path.isfile(spec.model):
        raise RunnerError(f"model file not found: {spec.model}")
    if spec.threads < 1:
        raise RunnerError(f"--threads must be at least 1, got {spec.threads}")
    usable, fallback = resolve_providers(list(spec.providers))
    so = ort.SessionOptions()
    so.intra_op_num_threads = spec.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = spec.arena
    so.log_severity_level = 3
    if spec.profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = spec.profile_prefix
    try:
        sess = ort.InferenceSession(spec.model, sess_options=so, providers=usable)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        name = spec.model if isinstance(spec.model, str) else "the model"
        raise RunnerError(f"onnxruntime cannot load {name}: {msg}") from None
    registered = list(sess.get_providers())
    used = registered[0] if registered else CPU_PROVIDER
    if fallback is None and used != usable[0]:
        fallback = f"{usable[0]} was requested but onnxruntime registered {', '.join(registered)}"
    facts = {
        "providers_requested": list(spec.providers),
        "providers_available": ort.get_available_providers(),
        "session_providers": registered,
        "provider_used": used,
        "fallback": fallback,
    }
    return sess, facts


def parse_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """``["input=1x3x32x32", ...]`` -> ``{"input": [1, 3, 32, 32]}``."""
    shapes: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")] if sep else []
        except ValueError:
            shape = []
        if not name or not shape or any(d < 1 for d in shape):
            raise RunnerError(f"bad --shape {item!r}: expected NAME=AxBxC with positive sizes")
        shapes[name] = shape
    return shapes


def make_feeds(sess: ort.InferenceSession, shapes: dict[str, list[int]] | None = None,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for every graph input; dynamic dimensions become 1."""
    shapes = shapes or {}
    names = {i.name for i in sess.get_inputs()}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise RunnerError(f"--shape names unknown input(s) {', '.join(unknown)}; "
                          f"model inputs are {', '.join(sorted(names))}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        if inp.type not in _ORT_DTYPES:
            raise RunnerError(f"input {inp.name!r} has unsupported type {inp.type}")
        dtype = _ORT_DTYPES[inp.type]
        shape = shapes.get(inp.name) or [d if isinstance(d, int) and d > 0 else 1
                                         for d in inp.shape]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


def describe_feeds(feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()]


# ---------------------------------------------------------------------------- timing

def run_once_ms(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    """Wall-clock milliseconds of one ``session.run`` (outputs fetched to numpy)."""
    t0 = time.perf_counter_ns()
    sess.run(None, feeds)
    return (time.perf_counter_ns() - t0) / 1e6


def time_runs(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int | None,
              time_budget_s: float | None = None) -> tuple[list[float], bool]:
    """Time ``runs`` calls, stopping early when ``time_budget_s`` seconds are spent.

    With a budget and no run count, runs until the budget is spent. At least one run is
    always timed. Returns the samples and whether the budget cut the loop short.
    """
    if runs is None and time_budget_s is None:
        raise RunnerError("give a run count, a time budget, or both")
    limit = runs if runs is not None else sys.maxsize
    deadline = time.perf_counter() + time_budget_s if time_budget_s is not None else None
    samples: list[float] = []
    while len(samples) < limit:
        samples.append(run_once_ms(sess, feeds))
        if deadline is not None and time.perf_counter() >= deadline:
            break
    return samples, len(samples) < limit


def warm(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], warmup: int) -> None:
    for _ in range(warmup):
        sess.run(None, feeds)


def profile_ops(spec: SessionSpec, feeds: dict[str, np.ndarray], runs: int,
                top: int = 10) -> dict[str, Any]:
    """Top operator types by time from onnxruntime's own per-node profiler."""
    with tempfile.TemporaryDirectory(prefix="ort_profile_") as tmp:
        pspec = SessionSpec(spec.model, spec.threads, list(spec.providers), spec.arena,
                            profile_prefix=os.path.join(tmp, "ort"))
        sess, _ = open_session(pspec)
        sess.run(None, feeds)  # the first run includes one-off allocations; still profiled
        for _ in range(max(1, runs)):
            sess.run(None, feeds)
        trace_path = sess.end_profiling()
        with open(trace_path, encoding="utf-8") as f:
            events = json.load(f)
    total_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    nodes: dict[str, set[str]] = defaultdict(set)
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        total_us[op] += float(ev.get("dur", 0))
        calls[op] += 1
        nodes[op].add(ev["name"][: -len("_kernel_time")])
    profiled_runs = max(1, runs) + 1
    grand = sum(total_us.values())
    ranked = sorted(total_us, key=total_us.get, reverse=True)[:top]
    return {
        "runs": profiled_runs,
        "total_ms": grand / 1e3,
        "top_ops": [{
            "op_type": op,
            "total_ms": total_us[op] / 1e3,
            "per_run_ms": total_us[op] / 1e3 / profiled_runs,
            "share": total_us[op] / grand if grand else 0.0,
            "calls": calls[op],
            "nodes": len(nodes[op]),
        } for op in ranked],
    }


@dataclass
class LatencySpec:
    model: str
    threads: int = 1
    providers: list[str] = field(default_factory=lambda: [CPU_PROVIDER])
    warmup: int = 10
    runs: int | None = 100
    time_budget_s: float | None = None
    profile: bool = False
    top: int = 10
    shapes: dict[str, list[int]] = field(default_factory=dict)
    seed: int = 0


def model_facts(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise RunnerError(f"model file not found: {path}")
    return {"model": path, "model_bytes": os.path.getsize(path), "model_sha256": sha256_of(path)}


def measure_latency(spec: LatencySpec) -> dict[str, Any]:
    """The timing-mode JSON object (see the module docstring) for one model."""
    if spec.warmup < 0:
        raise RunnerError(f"--warmup must be >= 0, got {spec.warmup}")
    if spec.runs is not None and spec.runs < 1:
        raise RunnerError(f"--runs must be at least 1, got {spec.runs}")
    if spec.time_budget_s is not None and spec.time_budget_s <= 0:
        raise RunnerError(f"--time-budget must be positive, got {spec.time_budget_s}")
    out: dict[str, Any] = {"schema": SCHEMA, "mode": "latency", **model_facts(spec.model)}
    sspec = SessionSpec(spec.model, spec.threads, list(spec.providers))
    sess, pfacts = open_session(sspec)
    feeds = make_feeds(sess, spec.shapes, spec.seed)
    warm(sess, feeds, spec.warmup)
    t0 = time.perf_counter()
    samples, cut = time_runs(sess, feeds, spec.runs, spec.time_budget_s)
    wall = time.perf_counter() - t0
    del sess
    out.update({
        "samples_ms": samples, "warmup": spec.warmup, "runs": len(samples),
        "time_budget_s": spec.time_budget_s, "budget_exhausted": cut,
        "threads": spec.threads, **pfacts, **host_facts(),
        "inputs": describe_feeds(feeds), "wall_s": wall,
        "profile": profile_ops(sspec, feeds, min(len(samples), 50), spec.top)
        if spec.profile else None,
    })
    return out


# ---------------------------------------------------------------------------- memory

def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return peak_rss_bytes()  # macOS and other unixes: no current RSS, use the peak so far


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemorySpec:
    model: str
    threads: int = 1
    providers: list[str] = field(default_factory=lambda: [CPU_PROVIDER])
    arena: bool = True
    runs: int = 10
    shapes: dict[str, list[int]] = field(default_factory=dict)
    seed: int = 0


def measure_memory(spec: MemorySpec) -> dict[str, Any]:
    """Memory-mode JSON: peak RSS while loading and running the model, minus the baseline.

    Meaningful only in a fresh process that has done nothing else (see ``--memory``).
    """
    if spec.runs < 1:
        raise RunnerError(f"--runs must be at least 1, got {spec.runs}")
    facts = model_facts(spec.model)
    bare = current_rss_bytes()
    # Ready the runtime without the model: same options, a trivial Identity graph.
    empty, _ = open_session(SessionSpec(EMPTY_MODEL, spec.threads, list(spec.providers),
                                        spec.arena))
    empty.run(None, {"x": np.zeros(1, dtype=np.float32)})
    baseline = current_rss_bytes()
    reset = reset_peak_rss()
    sess, pfacts = open_session(SessionSpec(spec.model, spec.threads, list(spec.providers),
                                            spec.arena))
    after_load = current_rss_bytes()
    feeds = make_feeds(sess, spec.shapes, spec.seed)
    for _ in range(spec.runs):
        sess.run(None, feeds)
    peak = peak_rss_bytes()
    return {
        "schema": SCHEMA, "mode": "memory", **facts,
        "arena": spec.arena, "runs": spec.runs, "threads": spec.threads,
        "bare_rss_bytes": bare,
        "baseline_rss_bytes": baseline,
        "runtime_init_bytes": max(0, baseline - bare),
        "after_load_rss_bytes": after_load,
        "peak_rss_bytes": peak,
        "model_peak_bytes": max(0, peak - baseline),
        "peak_reset": reset,
        "inputs": describe_feeds(feeds),
        **pfacts, **host_facts(),
    }


# ------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ort_runner.py",
        description="Time (or measure the memory of) an ONNX model with onnxruntime; "
                    "prints one JSON object.")
    p.add_argument("model", help="path to the .onnx file")
    p.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (default 1)")
    p.add_argument("--providers", default=CPU_PROVIDER,
                   help="comma-separated execution providers in preference order")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs (default 100; with --time-budget: at most this many; "
                        "memory mode: runs before the peak is read, default 10)")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="stop timing after S seconds")
    p.add_argument("--profile", action="store_true",
                   help="add top operators by time from onnxruntime's profiler")
    p.add_argument("--top", type=int, default=10, help="operators to list with --profile")
    p.add_argument("--shape", action="append", metavar="NAME=AxBxC",
                   help="input shape (repeatable); dynamic dims default to 1")
    p.add_argument("--seed", type=int, default=0, help="seed for random float inputs")
    p.add_argument("--memory", action="store_true",
                   help="measure peak RSS minus this process's baseline instead of timing")
    p.add_argument("--no-arena", action="store_true",
                   help="disable onnxruntime's CPU memory arena")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    try:
        shapes = parse_shapes(args.shape)
        if args.memory:
            result = measure_memory(MemorySpec(
                args.model, args.threads, providers, not args.no_arena,
                args.runs if args.runs is not None else 10, shapes, args.seed))
        else:
            runs = args.runs if args.runs is not None or args.time_budget is not None else 100
            result = measure_latency(LatencySpec(
                args.model, args.threads, providers, args.warmup, runs, args.time_budget,
                args.profile, args.top, shapes, args.seed))
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.get("fallback"):
        print(f"warning: provider fallback: {result['fallback']}", file=sys.stderr)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
