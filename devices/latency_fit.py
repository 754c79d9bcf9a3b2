"""Fit a device's latency-model constants from measurements.

Two kinds of measurement feed the same linear model (cost of a kernel = sum over its
features of coefficient x feature, per kernel class; see ``predictor``):

* per-node onnxruntime profiles (``profile_model``): one row per executed node, the
  node's median time across profiled runs; this is how ``host`` is fitted;
* whole-model latencies (``ModelTiming``): one row per model, its features summed over the
  model's kernels; this is all an SSH-reachable board gives (``ort_runner.py`` reports
  medians, not per-node times) and what the published ARM figures are.

Coefficients are fitted by non-negative least squares, each node's error weighted by its
model's latency (so the fit minimises models' relative errors), and no constant can go
negative (a negative cost would make removing a kernel slow a model down).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgeprune.benchmarks import ort_runner
from edgeprune.devices.kernel_graph import (QDQ_OPS, Kernel, kernel_from_profile_event, load_model,
                                            optimized_node_facts, spill_fraction)
from edgeprune.devices.kernels import FEATURES, INT8_KINDS, INT8_MAC_KINDS, KINDS
from edgeprune.devices.predictor import kernels_cost_us, model_spill
from edgeprune.devices.profiles import Int8Model, LatencyModel
from edgeprune.errors import EdgepruneError

FEATURE_NAMES = list(FEATURES)
#: features fitted per kernel class (the others stay 0): classes without arithmetic have no
#: MAC term, and classes with no weights no weight term
FITTED_FEATURES: dict[str, list[str]] = {
    "conv1x1": ["node", "mmac", "mb_in", "mb_out", "mb_w", "mb_w_spill"],
    "conv3x3": ["node", "mmac", "mb_in", "mb_out", "mb_w", "mb_w_spill"],
    "convkxk": ["node", "mmac", "mb_in", "mb_out", "mb_w", "mb_w_spill"],
    "gconv": ["node", "mmac", "mb_in", "mb_out", "mb_w"],
    "dwconv": ["node", "mmac", "mb_in", "mb_out", "mb_w"],
    "gemm": ["node", "mmac", "mb_in", "mb_w", "mb_w_spill"],
    "pool": ["node", "mmac", "mb_out"],
    "eltwise": ["node", "mb_in", "mb_out"],
    "memory": ["node", "mb_in", "mb_out"],
    "reorder": ["node", "mb_in", "mb_out"],
    "view": ["node", "mb_in"],
    "other": ["node", "mb_in", "mb_out"],
    "qconv": ["node", "mmac", "mb_in", "mb_out", "mb_w"],
    "qdwconv": ["node", "mmac", "mb_in", "mb_out", "mb_w"],
    "qgemm": ["node", "mmac", "mb_in", "mb_w"],
    "qeltwise": ["node", "mb_in", "mb_out"],
    "qpool": ["node", "mmac", "mb_out"],
    "qdq": ["node", "mb_in", "mb_out"],
}


# -- measurement -----------------------------------------------------------------------

@dataclass
class ProfiledModel:
    """One calibration model measured on this machine."""

    name: str
    kernels: list[tuple[Kernel, float]]   # (kernel from the profiler, burst-median microseconds)
    total_ms: float          # median run time of an unprofiled session (CPU time with 1 thread)
    samples_ms: list[float] = field(default_factory=list)   # wall-clock samples
    wall_ms: float = 0.0     # median wall-clock run time


def profile_model(path: str | Path, threads: int = 1, providers: Sequence[str] = ("CPUExecutionProvider",),
                  warmup: int = 5, rounds: int = 12, burst: int = 5, whole_model: bool = True) -> ProfiledModel:
    """Per-node times from onnxruntime's profiler, plus the unprofiled latency.

    Both use :func:`burst_median` over ``rounds`` bursts of ``burst`` runs. The profiled
    and the timed sessions are separate: profiling adds a little time per node, so the
    model-level figure comes from a clean session (skipped with ``whole_model=False``,
    for a caller that times whole models itself with :func:`interleaved_timings`).
    """
    path = str(path)
    with tempfile.TemporaryDirectory(prefix="edgeprune_prof_") as tmp:
        spec = ort_runner.SessionSpec(path, threads, list(providers),
                                      profile_prefix=os.path.join(tmp, "p"))
        try:
            sess, _ = ort_runner.open_session(spec)
        except ort_runner.RunnerError as e:
            raise EdgepruneError(str(e)) from None
        feeds = ort_runner.make_feeds(sess)
        for _ in range(warmup):      # profiled too: their events are skipped below
            sess.run(None, feeds)
        for _ in range(rounds * burst):
            sess.run(None, feeds)
        with open(sess.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
        facts = quantized_node_facts(path, os.path.join(tmp, "optimized.onnx"), providers)
    durs: dict[str, list[float]] = defaultdict(list)
    args: dict[str, dict] = {}
    order: list[str] = []
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        name = ev["name"][: -len("_kernel_time")]
        if name not in args:
            order.append(name)
            args[name] = ev.get("args", {})
        durs[name].append(float(ev.get("dur", 0)))
    def node_us(d: list[float]) -> float:
        d = d[warmup:] or d
        return burst_median([d[i:i + burst] for i in range(0, len(d), burst)])

    kernels = [(kernel_from_profile_event(n, args[n], facts.get(n)), node_us(durs[n])) for n in order]
    if not whole_model:
        return ProfiledModel(Path(path).stem, kernels, 0.0)
    sess2, _ = ort_runner.open_session(ort_runner.SessionSpec(path, threads, list(providers)))
    ort_runner.warm(sess2, feeds, warmup)
    wall, cpu = timed_runs(sess2, feeds, rounds * burst)
    return ProfiledModel(Path(path).stem, kernels, float(np.median(cpu) if threads == 1 else np.median(wall)),
                         wall, float(np.median(wall)))


def quantized_node_facts(path: str, optimized_path: str,
                         providers: Sequence[str] = ("CPUExecutionProvider",)) -> dict[str, dict]:
    """For an int8 (QDQ) model: the weight dims and attributes of its quantized nodes, read from the graph
    onnxruntime optimizes it into (the profiler lists neither). Empty for a float model."""
    if not any(n.op_type in QDQ_OPS for n in load_model(path).graph.node):
        return {}
    import onnx
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3       # not the warning that an NCHWc graph is machine-specific
    so.optimized_model_filepath = optimized_path
    ort.InferenceSession(path, so, providers=list(providers))
    return optimized_node_facts(onnx.load(optimized_path, load_external_data=False))


def timed_runs(sess: Any, feeds: dict, runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds of each ``session.run``.

    With one intra-op thread onnxruntime computes on the calling thread, so the thread's
    CPU time is the run's cost without the time the process spent descheduled; on a
    machine shared with other jobs that is the undisturbed latency, while wall-clock
    time of runs longer than a scheduler slice includes whoever else ran meanwhile.
    """
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        sess.run(None, feeds)
        c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
        wall.append((t1 - t0) / 1e6)
        cpu.append((c1 - c0) / 1e6)
    return wall, cpu


def interleaved_timings(paths: Sequence[str | Path], threads: int = 1,
                        providers: Sequence[str] = ("CPUExecutionProvider",), rounds: int = 5,
                        warmup: int = 10, runs: int = 10, seed: int = 0,
                        progress: Any = None) -> list[list[tuple[float, float]]]:
    """Whole-model latency of every model, in ``rounds`` interleaved rounds.

    Each round visits the models in a fresh shuffled order and opens a fresh session for
    each (warm-up, then ``runs`` timed runs; the round's figure is their median, CPU time
    with one thread, wall clock otherwise). A shared VM drifts by several per cent over
    minutes, and one session of a model can run 10-30% slower than the next for its
    whole life (its buffers' addresses); interleaving spreads both over every model
    instead of letting them bias whichever model was timed at the wrong moment.
    Returns, per model, its per-round ``(cpu_ms, wall_ms)``.
    """
    rng = random.Random(seed)
    figures: list[list[tuple[float, float]]] = [[] for _ in paths]
    for r in range(rounds):
        order = list(range(len(paths)))
        rng.shuffle(order)
        for i in order:
            sess, _ = ort_runner.open_session(ort_runner.SessionSpec(str(paths[i]), threads, list(providers)))
            feeds = ort_runner.make_feeds(sess)
            ort_runner.warm(sess, feeds, warmup)
            wall, cpu = timed_runs(sess, feeds, runs)
            figures[i].append((float(np.median(cpu)), float(np.median(wall))))
            del sess
        if progress:
            progress(f"timing round {r + 1}/{rounds}")
    return figures


def burst_median(bursts: Sequence[Sequence[float]]) -> float:
    """Median over bursts of each burst's fastest run.

    On a shared machine a run that is preempted takes several times longer, and when
    more than half the runs are hit the plain median measures the other jobs, not the
    model. Each short burst's minimum is the model's time when it ran undisturbed; the
    median over bursts spread in time keeps one lucky burst from deciding the figure.
    """
    return float(np.median([min(b) for b in bursts if b]))


@dataclass
class ModelTiming:
    """A whole-model latency and the kernels the predictor sees in that model."""

    name: str
    kernels: list[Kernel]
    latency_ms: float


# -- fitting ---------------------------------------------------------------------------

def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None, tol: float = 1e-10) -> np.ndarray:
    """Non-negative least squares, min ||Ax - b|| subject to x >= 0 (Lawson & Hanson)."""
    if a.shape[0] > a.shape[1]:
        # same minimiser on the n x n triangle of a QR factorisation: much faster
        q, r = np.linalg.qr(a, mode="reduced")
        a, b = r, q.T @ b
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    max_iter = max_iter or 3 * n
    it = 0
    while (~passive).any() and (w[~passive] > tol).any() and it < max_iter:
        it += 1
        j = np.argmax(np.where(~passive, w, -np.inf))
        passive[j] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (s[passive] > tol).all():
                break
            mask = passive & (s <= tol)
            alpha = np.min(x[mask] / (x[mask] - s[mask]))
            x = x + alpha * (s - x)
            passive &= x > tol
        x = s
        w = a.T @ (b - a @ x)
    return x


def _columns() -> list[tuple[str, str]]:
    return [(k, f) for k, feats in FITTED_FEATURES.items() for f in feats]


def _row(kernels: Iterable[Kernel], cols: list[tuple[str, str]], spill: float = 0.0) -> np.ndarray:
    index = {c: i for i, c in enumerate(cols)}
    row = np.zeros(len(cols))
    for k in kernels:
        feats = k.features(spill)
        for f in FITTED_FEATURES.get(k.kind, []):
            if (k.kind, f) in index:
                row[index[(k.kind, f)]] += feats[f]
    return row


def _solve(rows: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """NNLS on column-scaled, row-weighted data (scaling keeps the solver well conditioned)."""
    scale = np.abs(rows).max(axis=0)
    scale[scale == 0] = 1.0
    a = rows / scale * weights[:, None]
    x = nnls(a, y * weights)
    return x / scale


def _to_coefficients(x: np.ndarray, cols: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    coeffs: dict[str, dict[str, float]] = {}
    for (kind, feat), v in zip(cols, x):
        coeffs.setdefault(kind, {})[feat] = float(f"{v:.6g}")
    return coeffs


#: cache sizes tried for the weight-spill term (MB); 0 = no spill term
CACHE_GRID_MB = (0.0, 16.0, 32.0, 48.0, 64.0, 80.0, 96.0, 128.0)


def fit_from_profiles(models: Sequence[ProfiledModel], fitted_on: str, nchwc_block: int = 0,
                      cache_mb: float | None = None) -> LatencyModel:
    """Host fit: per-node rows give the per-kernel constants, whole-model times the rest.

    Stage 1 fits every kernel class on the profiled nodes (relative error, NNLS). Stage 2
    fits, on whole-model times of unprofiled sessions, a per-run overhead, a per-kernel
    correction (the profiler's own cost per node is inside the stage-1 constants) and a
    common scale: ``total = run + scale * sum(kernel costs) + per_kernel * n_kernels``.
    The cache size of the weight-spill term is chosen from ``CACHE_GRID_MB`` by the
    whole-model error unless ``cache_mb`` is given.
    """
    if not models:
        raise EdgepruneError("no calibration measurements to fit")
    best: tuple[float, LatencyModel] | None = None
    for cm in ([cache_mb] if cache_mb is not None else CACHE_GRID_MB):
        lm = _fit_profiles_at(models, fitted_on, nchwc_block, cm)
        err = _model_level_error(models, lm)
        if best is None or err < best[0] - 1e-4:
            best = (err, lm)
    assert best is not None
    return best[1]


def _model_level_error(models: Sequence[ProfiledModel], lm: LatencyModel) -> float:
    pred = [lm.run_overhead_us + kernels_cost_us([k for k, _ in pm.kernels], lm) for pm in models]
    return float(np.mean(np.abs(relative_errors(pred, [pm.total_ms * 1e3 for pm in models]))))


def _fit_profiles_at(models: Sequence[ProfiledModel], fitted_on: str, nchwc_block: int,
                     cache_mb: float) -> LatencyModel:
    seen = {k.kind for pm in models for k, _ in pm.kernels}
    # a class with no kernel in the measurements gets no constants (not zeros): the int8 classes of a
    # suite without int8 models stay absent, and the predictor's fallback for them applies
    cols = [(k, f) for k, f in _columns() if (cache_mb > 0 or f != "mb_w_spill")
            and (k in seen or k not in INT8_KINDS)]
    rows, y, totals = [], [], []
    for pm in models:
        spill = spill_fraction(sum(k.w_bytes for k, _ in pm.kernels), cache_mb)
        total = sum(us for _, us in pm.kernels)
        for k, us in pm.kernels:
            if k.kind in FITTED_FEATURES:
                rows.append(_row([k], cols, spill))
                y.append(us)
                totals.append(total)
    rows_a, y_a = np.array(rows), np.array(y)
    # A node's error counts as its share of its model's latency: this minimises the
    # models' relative errors while still using every node as a data point.
    weights = 1.0 / np.array(totals)
    x = _solve(rows_a, y_a, weights)
    coeffs = _to_coefficients(x, cols)
    lm = LatencyModel(coefficients=coeffs, fitted_on=fitted_on, nchwc_block=nchwc_block,
                      cache_mb=cache_mb)
    a2, y2 = [], []
    for pm in models:
        ks = [k for k, _ in pm.kernels]
        a2.append([1.0, kernels_cost_us(ks, lm), float(len(ks))])
        y2.append(pm.total_ms * 1e3)
    a2, y2 = np.array(a2), np.array(y2)
    # Plain least squares: the per-kernel term may be negative; clipped below so that no
    # launch cost goes below zero.
    w2 = 1.0 / y2
    run, scale, per_kernel = np.linalg.lstsq(a2 * w2[:, None], y2 * w2, rcond=None)[0]
    for feats in coeffs.values():
        for f in feats:
            feats[f] = float(f"{feats[f] * scale:.6g}")
        feats["node"] = float(f"{max(0.0, feats.get('node', 0.0) + per_kernel):.6g}")
    lm.run_overhead_us = float(f"{max(0.0, run):.6g}")
    lm.fit.update({"stage2_scale": round(float(scale), 4),
                   "stage2_per_kernel_us": round(float(per_kernel), 3)})
    return lm


def fit_int8_from_profiles(models: Sequence[ProfiledModel], base: LatencyModel) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Constants of the int8 classes only, from per-node profiles of int8 models; ``base`` keeps every
    other constant (its fp32 classes cost the layout transposes, views and float layers in those models).

    Stage 1 as in :func:`fit_from_profiles` on the int8 nodes; stage 2 scales the int8 constants and
    corrects their per-kernel cost so that whole-model times of unprofiled sessions come out right:
    ``total - run - base cost of the other kernels = scale * int8 cost + per_kernel * n_int8``.
    """
    rows, y, totals = [], [], []
    cols = [(k, f) for k, f in _columns() if k in INT8_KINDS]
    for pm in models:
        total = sum(us for _, us in pm.kernels)
        for k, us in pm.kernels:
            if k.kind in INT8_KINDS:
                rows.append(_row([k], cols))
                y.append(us)
                totals.append(total)
    if not rows:
        raise EdgepruneError("no int8 kernels in the measurements to fit")
    x = _solve(np.array(rows), np.array(y), 1.0 / np.array(totals))
    seen = {k.kind for pm in models for k, _ in pm.kernels}
    coeffs = {k: v for k, v in _to_coefficients(x, cols).items() if k in seen}
    trial = replace(base, coefficients={**base.coefficients, **coeffs})
    a2, y2 = [], []
    for pm in models:
        ks = [k for k, _ in pm.kernels]
        q = [k for k in ks if k.kind in INT8_KINDS]
        rest = kernels_cost_us([k for k in ks if k.kind not in INT8_KINDS], trial, model_spill(ks, trial))
        a2.append([kernels_cost_us(q, trial), float(len(q))])
        y2.append(pm.total_ms * 1e3 - base.run_overhead_us - rest)
    a2, y2 = np.array(a2), np.array(y2)
    w2 = 1.0 / np.array([pm.total_ms * 1e3 for pm in models])
    scale, per_kernel = np.linalg.lstsq(a2 * w2[:, None], y2 * w2, rcond=None)[0]
    for feats in coeffs.values():
        for f in feats:
            feats[f] = float(f"{feats[f] * scale:.6g}")
        feats["node"] = float(f"{max(0.0, feats.get('node', 0.0) + per_kernel):.6g}")
    return coeffs, {"int8_stage2_scale": round(float(scale), 4),
                    "int8_stage2_per_kernel_us": round(float(per_kernel), 3), "int8_models": len(models)}


def fit_from_timings(timings: Sequence[ModelTiming], fitted_on: str,
                     base: LatencyModel, fit_run_overhead: bool = True) -> LatencyModel:
    """Fit from whole-model latencies only (an SSH device, or published figures).

    With few models the full per-class model is under-determined, so ``base``'s constants
    keep their shape and only one scale per group of classes (convolutions, depthwise,
    the rest) and, optionally, a per-run overhead are fitted.
    """
    if not timings:
        raise EdgepruneError("no calibration measurements to fit")
    y = np.array([t.latency_ms * 1e3 for t in timings])
    groups = {"conv": ("conv1x1", "conv3x3", "convkxk", "gconv"), "dwconv": ("dwconv",)}
    # float models say nothing of the int8 classes: those keep ``base``'s constants (fit_int8_scale fits them)
    rest = tuple(k for k in KINDS if not any(k in g for g in groups.values()) and k not in INT8_KINDS)
    groups["rest"] = rest
    rows = []
    for t in timings:
        spill = model_spill(t.kernels, base)
        rows.append([1.0] + [kernels_cost_us([k for k in t.kernels if k.kind in kinds], base, spill)
                             for kinds in groups.values()])
    rows_a = np.array(rows)
    used = rows_a.any(axis=0)
    used[0] = fit_run_overhead
    x = np.zeros(rows_a.shape[1])
    x[used] = _solve(rows_a[:, used], y, 1.0 / y)
    coeffs = {}
    for gi, kinds in enumerate(groups.values(), start=1):
        s = x[gi] if used[gi] else 1.0
        for kind in kinds:
            if kind in base.coefficients:
                coeffs[kind] = {f: float(f"{v * s:.6g}") for f, v in base.coefficients[kind].items()}
    coeffs.update({k: dict(base.coefficients[k]) for k in INT8_KINDS if k in base.coefficients})
    return LatencyModel(coefficients=coeffs, run_overhead_us=float(f"{x[0]:.6g}"),
                        runtime_factor=1.0, nchwc_block=base.nchwc_block,
                        cache_mb=base.cache_mb, fitted_on=fitted_on,
                        fit={"group_scales": {g: float(f"{x[i]:.4g}") for i, g in enumerate(groups, start=1)}})


def fit_int8_scale(timings: Sequence[ModelTiming], lm: LatencyModel) -> float:
    """One scale of the int8 arithmetic (the quantized convolutions and GEMMs) from whole-model latencies of
    int8 models, every other constant of ``lm`` kept: the relative least squares of
    ``measured = rest + scale * int8 part``, the int8 part costed as ``lm`` costs it now (its fitted int8
    constants, or ``[latency_model.int8] ratio`` x the fp32 cost of the same work). See :func:`with_int8_scale`."""
    if not timings:
        raise EdgepruneError("no int8 measurements to fit")
    a, b = [], []
    for t in timings:
        spill = model_spill(t.kernels, lm)
        q = [k for k in t.kernels if k.kind in INT8_MAC_KINDS]
        other = [k for k in t.kernels if k.kind not in INT8_MAC_KINDS]
        a.append(kernels_cost_us(q, lm, spill) * lm.runtime_factor)
        b.append((lm.run_overhead_us + kernels_cost_us(other, lm, spill)) * lm.runtime_factor)
    a_, b_ = np.array(a), np.array(b)
    m = np.array([t.latency_ms * 1e3 for t in timings])
    if not a_.any():
        raise EdgepruneError("the int8 measurements have no quantized convolution or GEMM to fit")
    scale = float(np.sum(a_ * (m - b_) / m**2) / np.sum(a_**2 / m**2))
    return max(0.05, scale)


def with_int8_scale(lm: LatencyModel, scale: float) -> LatencyModel:
    """``lm`` with its int8 arithmetic ``scale`` times as costly: the fitted int8 constants scaled where it
    has them, else its ``[latency_model.int8] ratio`` (1.0 where it has none)."""
    fitted = {k: {f: float(f"{v * scale:.6g}") for f, v in lm.coefficients[k].items()}
              for k in INT8_MAC_KINDS if k in lm.coefficients}
    if fitted:
        return replace(lm, coefficients={**lm.coefficients, **fitted})
    i8 = lm.int8 or Int8Model(expected_error=0.0, source="")
    return replace(lm, int8=replace(i8, ratio=float(f"{(i8.ratio or 1.0) * scale:.4g}")))


def relative_errors(pred: Sequence[float], meas: Sequence[float]) -> np.ndarray:
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    return (p - m) / m


def error_summary(pred: Sequence[float], meas: Sequence[float]) -> dict[str, float]:
    e = relative_errors(pred, meas)
    a = np.abs(e)
    return {
        "n": int(e.size),
        "within_5pct": float(np.mean(a <= 0.05)),
        "within_10pct": float(np.mean(a <= 0.10)),
        "median_abs_rel_err": float(np.median(a)),
        "p90_abs_rel_err": float(np.percentile(a, 90)),
        "max_abs_rel_err": float(a.max()),
        "mean_rel_err": float(e.mean()),
    }
