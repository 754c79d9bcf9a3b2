"""``edgeprune calibrate``: measure the calibration suite on a device and write a fitted profile.

On this machine (``--device host``) every suite model is profiled per node with
onnxruntime and the full latency model is fitted (``calibration.fit_from_profiles``).
Over SSH only whole-model latencies come back, so the device's existing constants (or
the host's, if it has none) keep their shape and a scale per kernel group plus a per-run
overhead are fitted (``calibration.fit_from_timings``). Either way the expected error
written into the profile is the 90th percentile of the cross-validated error: each model
is predicted by a fit that never saw it.

The int8 classes are fitted the same way, on QDQ copies of the first synthetic networks (and of six
architectures, where the suite has them: ``INT8_ARCHITECTURES``) quantized with the
types onnxruntime recommends for the measured CPU (``--int8 N``; 0 keeps the profile's own int8 figures): per
node here, whole-model over SSH (one scale of the int8 arithmetic, which on a board without fitted int8
constants is its int8/fp32 ratio). Their cross-validated error is the band of an int8 prediction.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from edgeprune.devices import latency_fit as cal
from edgeprune.devices.kernel_graph import detect_kernels, load_model
from edgeprune.devices.kernels import INT8_MAC_KINDS
from edgeprune.devices.predictor import kernels_cost_us
from edgeprune.devices.fingerprint import Fingerprint, local
from edgeprune.devices.profiles import (DeviceProfile, Int8Model, LatencyModel, bundled_host_fitted_elsewhere,
                                        calibrated_host_path, load_profile, save_profile)
from edgeprune.devices.suite import TORCHVISION_SUITE, export_torchvision, quantize_qdq, synthetic_model
from edgeprune.devices.targets import MeasuringTarget, RemoteTarget, resolve_target
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.quantize import Precision, precision_for
from edgeprune.files import write_bytes_atomic

Progress = Callable[[str], None]


def default_workdir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeprune" / "calibration"


# The suites (docs/calibration.md and docs/calibration-epyc.md measure them): FULL is what the bundled host
# profile was fitted on; QUICK has half the synthetic networks and fewer timing rounds, but keeps the
# torchvision architectures here (without them the fit held 54% of held-out variants within 10%, with them
# 91-100%) and the same size cap (with networks capped at 60 MMACs int8 MobileNetV2 came out 89% over);
# over SSH it is the 24 synthetic networks alone and int8 copies of 6 of them, so that a board needs at
# most 30 measurements. ``int8``: how many synthetic networks are also measured quantized.
FULL = {"synthetic": 48, "max_mmacs": 250.0, "architectures": True, "timing_rounds": 5, "int8": 24}
QUICK = {"synthetic": 24, "max_mmacs": 250.0, "architectures": True, "timing_rounds": 3, "int8": 12}
QUICK_SSH = {**QUICK, "architectures": False, "int8": 6}
# int8 copies of these suite architectures join the synthetic ones wherever the suite has the architectures:
# real depthwise, squeeze-excite, shuffle and residual patterns, which the synthetic networks have few of
INT8_ARCHITECTURES = (("mnasnet0_5", 160), ("mobilenet_v3_small", 128), ("resnet34", 64), ("regnet_x_400mf", 128),
                      ("shufflenet_v2_x0_5", 160), ("efficientnet_b0", 96))


@dataclass
class CalibrationConfig:
    device: str = "host"                   # profile to calibrate: name or TOML path
    out: Path | None = None                # fitted profile file (default <name>-calibrated.toml)
    force: bool = False                    # overwrite ``out``
    ssh: str | None = None                 # user@host[:port]; default: the profile's ssh
    remote_python: str | None = None
    ssh_config: str | os.PathLike[str] | None = None   # ssh -F file
    quick: bool = False                    # the QUICK suite (minutes) instead of the FULL one
    synthetic: int | None = None           # seeded synthetic networks in the suite (None: the preset's)
    seed: int = 0
    max_mmacs: float | None = None         # size cap of a synthetic network (million MACs)
    architectures: bool | None = None      # add the torchvision architectures
    workdir: Path | None = None            # cache of suite ONNX files
    threads: int | None = None             # default: the profile's
    folds: int = 5
    timing_rounds: int | None = None       # interleaved whole-model timing rounds (local)
    int8: int | None = None                # synthetic networks also measured as int8 QDQ (0: int8 not fitted)

    def resolved(self, remote: bool) -> "CalibrationConfig":
        """This configuration with the suite settings it leaves open taken from its preset (FULL, QUICK,
        or QUICK_SSH for a board over SSH); the preset's int8 count never exceeds the synthetic networks."""
        preset = FULL if not self.quick else QUICK_SSH if remote else QUICK
        out = replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})
        if self.int8 is None:
            out = replace(out, int8=max(0, min(out.int8, out.synthetic)))
        return out


@dataclass
class ModelFit:
    name: str
    measured_ms: float
    fitted_ms: float          # predicted by the fit that saw every model
    held_out_ms: float        # predicted by the fit that did not see this model


@dataclass
class Int8Fit:
    """The int8 part of a calibration: what was quantized, how, and how well the fit predicts it."""

    precision: Precision
    models: list[ModelFit]
    fit: dict[str, Any]
    cross_validated: dict[str, Any]
    expected_error: float              # the band of an int8 prediction (90th percentile, cross-validated)
    ratio: float | None = None         # int8/fp32 of the quantized arithmetic, where the profile costs it so

    def to_dict(self) -> dict[str, Any]:
        return {"activations": self.precision.activations, "weights": self.precision.weights,
                "reduce_range": self.precision.reduce_range, "expected_error": self.expected_error,
                "ratio": self.ratio, "fit": self.fit, "cross_validated": self.cross_validated,
                "models": [m.__dict__ for m in self.models]}


@dataclass
class CalibrationResult:
    profile: DeviceProfile
    path: Path
    mode: str                 # "profiled" (per-node, local) or "timed" (whole models, SSH)
    models: list[ModelFit]
    fit: dict[str, Any]
    cross_validated: dict[str, Any]
    int8: Int8Fit | None = None   # None: no int8 models measured (the profile's int8 figures kept)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.profile.name, "path": str(self.path), "mode": self.mode,
                "expected_error": self.profile.expected_error, "fit": self.fit,
                "cross_validated": self.cross_validated,
                "models": [m.__dict__ for m in self.models],
                "int8": self.int8.to_dict() if self.int8 else None}


# -- the suite -------------------------------------------------------------------------------

def build_suite(workdir: Path, synthetic: int, seed: int, architectures: bool,
                progress: Progress | None = None, max_mmacs: float = 250.0) -> list[Path]:
    """ONNX files of the calibration suite, built once into ``workdir`` and reused."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(synthetic):
        cap = "" if max_mmacs == 250.0 else f"_cap{max_mmacs:g}"
        p = workdir / f"calib_s{seed}{cap}_{i:03d}.onnx"
        if not p.exists():
            _atomic_save(synthetic_model(i, seed, max_mmacs).model, p)
        paths.append(p)
    if architectures:
        for arch, size in TORCHVISION_SUITE:
            p = workdir / f"{arch}_{size}.onnx"
            if not p.exists():
                if progress:
                    progress(f"exporting {arch} at {size}x{size}")
                tmp = workdir / f".{p.stem}.tmp"
                tmp.mkdir(exist_ok=True)
                export_torchvision(arch, size, str(tmp / p.name))
                for f in tmp.iterdir():          # the .onnx and its external data
                    os.replace(f, workdir / f.name)
                tmp.rmdir()
            paths.append(p)
    return paths


def _atomic_save(model: onnx.ModelProto, path: Path) -> None:
    write_bytes_atomic(path, model.SerializeToString())   # suite models are small: one file


def int8_sources(cfg: "CalibrationConfig", suite: Sequence[Path]) -> list[Path]:
    """The suite models calibration also measures as int8: the first ``cfg.int8`` synthetic networks, and the
    ``INT8_ARCHITECTURES`` where the suite has architectures (``suite`` as ``build_suite`` returns it)."""
    if not cfg.int8:
        return []
    names = {f"{arch}_{size}" for arch, size in INT8_ARCHITECTURES} if cfg.architectures else set()
    return [*suite[:cfg.int8], *(p for p in suite[cfg.synthetic:] if p.stem in names)]


def int8_suite(paths: Sequence[Path], precision: Precision, progress: Progress | None = None) -> list[Path]:
    """QDQ copies of ``paths`` with ``precision``'s types (onnxruntime's quantizer, per-channel weights,
    MinMax), next to them and reused."""
    tag = f"q{precision.activations[0]}8{precision.weights[0]}8{'rr' if precision.reduce_range else ''}"
    out = []
    for p in paths:
        q = p.with_name(f"{p.stem}_{tag}.onnx")
        if not q.exists():
            if progress:
                progress(f"quantizing {p.stem} ({precision.activations} activations, {precision.weights} weights)")
            tmp = p.with_name(f".{q.stem}.tmp.onnx")
            quantize_qdq(p, tmp, activations=precision.activations, reduce_range=precision.reduce_range)
            os.replace(tmp, q)
        out.append(q)
    return out


# -- helpers ---------------------------------------------------------------------------------

def nchwc_block_here() -> int:
    """onnxruntime's NCHWc block size on this CPU (MLAS: 16 with AVX-512, 8 with AVX2)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return 0
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8 if " avx2" in flags else 0


def _folds(n: int, k: int) -> list[list[int]]:
    k = max(2, min(k, n))
    return [[i for i in range(n) if i % k == f] for f in range(k)]


def _held_out(items: Sequence[Any], k: int, fit: Callable[[list[Any]], LatencyModel],
              predict: Callable[[Any, LatencyModel], float]) -> list[float]:
    """Each of ``items`` predicted by the model ``fit`` makes of the other folds (``k``-fold cross-validation)."""
    held = [0.0] * len(items)
    for fold in _folds(len(items), k):
        model = fit([m for i, m in enumerate(items) if i not in fold])
        for i in fold:
            held[i] = predict(items[i], model)
    return held


def _band(errors: np.ndarray) -> float:
    """Expected relative error: the 90th percentile of |held-out error|, rounded up."""
    return max(0.01, math.ceil(float(np.percentile(np.abs(errors), 90)) * 100) / 100)


def _resolve_out(cfg: CalibrationConfig, profile: DeviceProfile) -> Path:
    out = Path(cfg.out) if cfg.out else Path(f"{profile.name}-calibrated.toml")
    if out.suffix != ".toml":
        raise EdgepruneError(f"--out must be a .toml file, got {out}")
    if out.exists() and not cfg.force:
        raise EdgepruneError(f"{out} exists; pass --force to overwrite it")
    if out.is_dir():
        raise EdgepruneError(f"--out {out} is a directory")
    return out


# -- local: per-node profiles -------------------------------------------------------------------

def calibrate_local(cfg: CalibrationConfig, progress: Progress | None = None) -> CalibrationResult:
    cfg = cfg.resolved(remote=False)
    profile = load_profile(cfg.device)
    out = _resolve_out(cfg, profile)
    threads = cfg.threads or profile.threads
    suite = build_suite(Path(cfg.workdir or default_workdir()), cfg.synthetic, cfg.seed,
                        cfg.architectures, progress, cfg.max_mmacs)
    if len(suite) < 8:
        raise EdgepruneError("the calibration suite needs at least 8 models")
    measured = _profile_here(suite, threads, profile.providers, cfg, progress)
    block = nchwc_block_here()
    when = _dt.date.today().isoformat()
    fitted_on = (f"{when}: per-node onnxruntime profiles of {len(measured)} calibration models "
                 f"({cfg.synthetic} synthetic, seed {cfg.seed}"
                 f"{', plus torchvision architectures' if cfg.architectures else ''}), "
                 f"{threads} thread(s)")
    lm = cal.fit_from_profiles(measured, fitted_on, block)
    fitted = [_predict_profiled(pm, lm) for pm in measured]
    held = _held_out(measured, cfg.folds, lambda train: cal.fit_from_profiles(train, "cv", block, cache_mb=lm.cache_mb),
                     _predict_profiled)
    meas = [pm.total_ms for pm in measured]
    lm, int8 = _int8_here(cfg, suite, lm, threads, profile.providers, progress)
    return _finish(cfg, profile, out, lm, "profiled", [pm.name for pm in measured], meas,
                   fitted, held, threads,
                   f"measured here with onnxruntime; predictor fitted {when} to per-node "
                   "onnxruntime profiles of the calibration suite (edgeprune calibrate)",
                   fingerprint=replace(local(), source=f"read on the calibrated machine, {when}"), int8=int8)


def _profile_here(paths: Sequence[Path], threads: int, providers: Sequence[str], cfg: CalibrationConfig,
                  progress: Progress | None) -> list[cal.ProfiledModel]:
    """Per-node profiles of ``paths``, each with its whole-model time from interleaved rounds."""
    measured = []
    for i, p in enumerate(paths, 1):
        if progress:
            progress(f"profiling {p.stem} ({i}/{len(paths)})")
        measured.append(cal.profile_model(p, threads=threads, providers=providers, whole_model=False))
    totals = cal.interleaved_timings(paths, threads, providers, rounds=cfg.timing_rounds, seed=cfg.seed,
                                     progress=progress)
    for pm, figures in zip(measured, totals):
        pm.total_ms = float(np.median([cpu if threads == 1 else wall for cpu, wall in figures]))
    return measured


def _int8_here(cfg: CalibrationConfig, suite: Sequence[Path], lm: LatencyModel, threads: int,
               providers: Sequence[str], progress: Progress | None) -> tuple[LatencyModel, Int8Fit | None]:
    """``lm`` with int8 constants fitted to per-node profiles of int8 copies of part of the suite
    (:func:`int8_sources`; ``latency_fit.fit_int8_from_profiles``, the fp32 constants kept), cross-validated by
    folds."""
    if not cfg.int8:
        return lm, None
    here = local()
    precision = precision_for(here.machine, here.features)
    measured = _profile_here(int8_suite(int8_sources(cfg, suite), precision, progress), threads, providers, cfg,
                             progress)
    coeffs, stats = cal.fit_int8_from_profiles(measured, lm)
    full = replace(lm, coefficients={**lm.coefficients, **coeffs})
    held = _held_out(measured, cfg.folds, lambda train: replace(lm, coefficients={
        **lm.coefficients, **cal.fit_int8_from_profiles(train, lm)[0]}), _predict_profiled)
    fitted_on = (f"{_dt.date.today().isoformat()}: int8 classes fitted to per-node onnxruntime profiles of "
                 f"{len(measured)} QDQ copies of calibration networks on {here.cpu or here.machine}, "
                 f"{threads} thread(s), onnxruntime {here.onnxruntime}")
    return _with_int8(full, precision, cfg.folds, [pm.name for pm in measured], [pm.total_ms for pm in measured],
                      [_predict_profiled(pm, full) for pm in measured], held, stats, fitted_on)


def _with_int8(lm: LatencyModel, precision: Precision, folds: int, names: Sequence[str], meas: Sequence[float],
               fitted: Sequence[float], held: Sequence[float], stats: dict[str, Any], fitted_on: str,
               dotprod: bool | None = None, ratio: float | None = None) -> tuple[LatencyModel, Int8Fit]:
    """``lm`` with its ``[latency_model.int8]`` from an int8 fit: the band is the 90th percentile of the
    cross-validated error of the int8 models."""
    fit, cv = cal.error_summary(fitted, meas), cal.error_summary(held, meas)
    band = _band(cal.relative_errors(held, meas))
    lm.fit = {**lm.fit, **stats, "int8_models": len(names),
              "int8_cv_median_abs_rel_err": round(cv["median_abs_rel_err"], 4),
              "int8_cv_within_10pct": round(cv["within_10pct"], 3),
              "int8_cv_p90_abs_rel_err": round(cv["p90_abs_rel_err"], 4)}
    lm.int8 = Int8Model(expected_error=band, dotprod=dotprod, ratio=ratio,
                        source=f"{fitted_on}; {precision.activations} activations, {precision.weights} weights"
                               f"{', reduce_range' if precision.reduce_range else ''} ({precision.reason}). "
                               f"Band: 90th percentile of the {folds}-fold cross-validated error of the int8 "
                               f"models ({cv['p90_abs_rel_err']:.1%})")
    return lm, Int8Fit(precision, [ModelFit(n, m, f, h) for n, m, f, h in zip(names, meas, fitted, held)],
                       fit, cv, band, ratio)


def _predict_profiled(pm: cal.ProfiledModel, lm: LatencyModel) -> float:
    return (lm.run_overhead_us + kernels_cost_us([k for k, _ in pm.kernels], lm)) / 1e3


# -- remote: whole-model latencies over SSH ---------------------------------------------------

def _base_model(profile: DeviceProfile, machine: str) -> LatencyModel:
    if profile.latency_model is not None:
        return profile.latency_model
    host = load_profile("host").latency_model
    if host is None:
        raise EdgepruneError("the bundled host profile has no latency model to start from")
    arm = machine.lower() in ("aarch64", "arm64") or machine.lower().startswith("arm")
    return replace(host, nchwc_block=0 if arm else host.nchwc_block, cache_mb=0.0 if arm else host.cache_mb)


def calibrate_ssh(cfg: CalibrationConfig, progress: Progress | None = None,
                  target: MeasuringTarget | None = None) -> CalibrationResult:
    """Calibrate over SSH on ``target`` (default: resolved from ``cfg``; it must be remote)."""
    cfg = cfg.resolved(remote=True)
    profile = load_profile(cfg.device)
    if target is None:
        target = _target(cfg, profile)
    if not isinstance(target, RemoteTarget):
        raise EdgepruneError(f"no SSH target for '{profile.name}': pass --ssh user@host[:port]")
    written_ssh = cfg.ssh or profile.ssh      # the fitted profile keeps the address as given
    out = _resolve_out(cfg, profile)
    threads = cfg.threads or profile.threads
    suite = build_suite(Path(cfg.workdir or default_workdir()), cfg.synthetic, cfg.seed,
                        cfg.architectures, progress, cfg.max_mmacs)
    medians, raws = _time_there(target, suite, threads, profile.providers, progress)
    when = _dt.date.today().isoformat()
    facts = Fingerprint.from_facts(raws[0], f"reported by the device's onnxruntime runner, {when}")
    base = _base_model(profile, facts.machine)
    timings = _timings(suite, medians, base)
    lm = cal.fit_from_timings(timings, f"{when}: median onnxruntime latencies of {len(timings)} "
                              f"calibration models measured on {target.address} over SSH", base)
    fitted = [_predict_timed(t, lm) for t in timings]
    held = _held_out(timings, cfg.folds, lambda train: cal.fit_from_timings(train, "cv", base), _predict_timed)
    lm, int8 = _int8_there(cfg, suite, replace(lm, int8=base.int8), target, threads, profile.providers, facts,
                           progress)
    return _finish(cfg, profile, out, lm, "timed", [t.name for t in timings],
                   [t.latency_ms for t in timings], fitted, held, threads,
                   f"measured on the device over SSH (onnxruntime {raws[0].get('ort_version', '?')}); "
                   f"predictor fitted {when} to whole-model latencies of the calibration suite",
                   {"calibration_cpu": str(raws[0].get("cpu", profile.cpu))}, ssh=written_ssh,
                   fingerprint=facts, int8=int8)


def _predict_timed(t: cal.ModelTiming, lm: LatencyModel) -> float:
    return (lm.run_overhead_us + kernels_cost_us(t.kernels, lm)) * lm.runtime_factor / 1e3


def _time_there(target: RemoteTarget, paths: Sequence[Path], threads: int, providers: Sequence[str],
                progress: Progress | None) -> tuple[list[float], list[dict[str, Any]]]:
    """Median whole-model latencies (ms) of ``paths`` on ``target``, and the runner's raw records."""
    raws = target.time_models(paths, threads, providers,
                              progress=(lambda n: progress(f"timing {n} on {target.address}")) if progress else None)
    return [float(np.median(r["samples_ms"])) for r in raws], raws


def _timings(paths: Sequence[Path], medians: Sequence[float], lm: LatencyModel) -> list[cal.ModelTiming]:
    return [cal.ModelTiming(p.stem, detect_kernels(load_model(p), lm.nchwc_block), ms)
            for p, ms in zip(paths, medians)]


def _int8_there(cfg: CalibrationConfig, suite: Sequence[Path], lm: LatencyModel, target: RemoteTarget,
                threads: int, providers: Sequence[str], facts: Fingerprint,
                progress: Progress | None) -> tuple[LatencyModel, Int8Fit | None]:
    """``lm`` (carrying the shipped profile's int8 figures) with one scale of its int8 arithmetic fitted to
    whole-model latencies of int8 copies of part of the suite (:func:`int8_sources`) on the device
    (``latency_fit.fit_int8_scale``): on a board, its int8/fp32 ratio. Without int8 models, ``lm`` as is."""
    if not cfg.int8:
        return lm, None
    precision = precision_for(facts.machine, facts.features)
    paths = int8_suite(int8_sources(cfg, suite), precision, progress)
    timings = _timings(paths, _time_there(target, paths, threads, providers, progress)[0], lm)
    full = cal.with_int8_scale(lm, scale := cal.fit_int8_scale(timings, lm))
    held = _held_out(timings, cfg.folds, lambda train: cal.with_int8_scale(lm, cal.fit_int8_scale(train, lm)),
                     _predict_timed)
    by_ratio = not any(k in lm.coefficients for k in INT8_MAC_KINDS)
    arm = facts.machine.lower() in ("aarch64", "arm64")
    dotprod = ("dotprod" in facts.features if facts.features is not None else None) if arm else None
    fitted_on = (f"{_dt.date.today().isoformat()}: one scale of the int8 arithmetic ({scale:.3g}x the "
                 f"{'ratio' if by_ratio else 'constants'} of the shipped profile) fitted to median onnxruntime "
                 f"latencies of {len(timings)} QDQ copies of calibration networks measured on "
                 f"{target.address} over SSH")
    return _with_int8(full, precision, cfg.folds, [t.name for t in timings], [t.latency_ms for t in timings],
                      [_predict_timed(t, full) for t in timings], held, {"int8_scale": round(scale, 4)}, fitted_on,
                      dotprod=dotprod, ratio=full.int8.ratio if by_ratio and full.int8 else None)


# -- shared ------------------------------------------------------------------------------------

def _finish(cfg: CalibrationConfig, profile: DeviceProfile, out: Path, lm: LatencyModel, mode: str,
            names: Sequence[str], meas: Sequence[float], fitted: Sequence[float],
            held: Sequence[float], threads: int, source: str,
            extra_sources: dict[str, str] | None = None, ssh: str | None = None,
            fingerprint: Fingerprint | None = None, int8: Int8Fit | None = None) -> CalibrationResult:
    fit = cal.error_summary(fitted, meas)
    cv = cal.error_summary(held, meas)
    lm.fit.update({"models": len(names), "fit_median_abs_rel_err": round(fit["median_abs_rel_err"], 4),
                   "cv_median_abs_rel_err": round(cv["median_abs_rel_err"], 4),
                   "cv_within_10pct": round(cv["within_10pct"], 3),
                   "cv_p90_abs_rel_err": round(cv["p90_abs_rel_err"], 4)})
    sources = {**profile.sources, "latency_model": lm.fitted_on,
               "expected_error": "90th percentile of the cross-validated relative "
                                 f"error over the calibration suite ({cfg.folds}-fold)",
               **(extra_sources or {})}
    if int8 is not None:
        sources["int8"] = lm.int8.source
    elif lm.int8 is None:
        sources.pop("int8", None)           # no int8 figures in this fit: none of the old profile's apply
    new = replace(profile, latency_model=lm, threads=threads, latency_source=source,
                  ssh=ssh or profile.ssh, fingerprint=fingerprint,
                  expected_error=_band(cal.relative_errors(held, meas)), sources=sources)
    result = CalibrationResult(new, out, mode,
                               [ModelFit(n, m, f, h) for n, m, f, h in zip(names, meas, fitted, held)],
                               fit, cv, int8)
    save_profile(new, out, _header(result))
    cached = calibrated_host_path()
    if mode == "profiled" and new.name == "host" and out.resolve() != cached.resolve():
        save_profile(new, cached, _header(result))   # this machine's own fit: what 'host' names here from now on
    result.profile = load_profile(str(out))
    return result


def _header(r: CalibrationResult) -> str:
    return (f"Written by edgeprune calibrate ({r.mode}); cross-validated error over "
            f"{len(r.models)} models: median {r.cross_validated['median_abs_rel_err']:.1%}, "
            f"{r.cross_validated['within_10pct']:.0%} within +-10%.")


def _target(cfg: CalibrationConfig, profile: DeviceProfile) -> MeasuringTarget:
    """Where calibration measures: over SSH when named, else here (never predicted)."""
    return resolve_target(profile, cfg.ssh, remote_python=cfg.remote_python,
                          ssh_config=cfg.ssh_config, otherwise="host")


def calibrate(cfg: CalibrationConfig, progress: Progress | None = None) -> CalibrationResult:
    """Measure and fit; over SSH when a target is given or the profile names one."""
    profile = load_profile(cfg.device)
    target = _target(cfg, profile)
    cfg = cfg.resolved(target.remote)
    if cfg.synthetic < 0:
        raise EdgepruneError("--synthetic must be 0 or more")
    if cfg.int8 and not 3 <= cfg.int8 <= cfg.synthetic:
        raise EdgepruneError(f"--int8 {cfg.int8}: the int8 models are copies of the synthetic networks, so it must "
                             f"be 0 (no int8 fit) or from 3 (to cross-validate) up to --synthetic ({cfg.synthetic})")
    if target.remote:
        return calibrate_ssh(cfg, progress, target)
    if profile.name != "host" and not cfg.device.endswith(".toml"):
        raise EdgepruneError(
            f"'{profile.name}' is not this machine and its profile names no SSH target: pass "
            f"--ssh user@host to measure it, or --device host to calibrate this machine")
    return calibrate_local(cfg, progress)


# -- this machine, on demand ---------------------------------------------------------------------

def ensure_host_calibrated(calibrate_now: bool = True, progress: Progress | None = None,
                           cfg: CalibrationConfig | None = None) -> Path | None:
    """Make ``host`` name a profile fitted on this machine, before a prediction for it is made.

    Nothing to do where the bundled host profile was fitted here, or this machine's calibration is
    already cached (``calibrated_host_path``). Otherwise, with ``calibrate_now``, run the quick
    calibration (``cfg``, default ``--quick``) once and cache it; without, refuse in one line with the
    command to run (``--no-calibrate``). Returns the cached profile's path when one was written now.
    """
    elsewhere = bundled_host_fitted_elsewhere()
    if not elsewhere or calibrated_host_path().is_file():
        return None
    why = "; ".join(elsewhere)
    if not calibrate_now:
        raise EdgepruneError(f"the bundled host profile was fitted on another machine ({why}) and this one has no "
                             "calibration yet: run 'edgeprune calibrate --device host --quick' (minutes), or drop "
                             "--no-calibrate to let this command run it")
    if progress:
        progress(f"the bundled host profile was fitted on another machine ({why}): calibrating this one once "
                 "(edgeprune calibrate --device host --quick; cached for later runs)")
    out = calibrated_host_path()
    calibrate(replace(cfg or CalibrationConfig(quick=True), device="host", out=out, force=True), progress)
    return out
