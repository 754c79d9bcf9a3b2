"""``edgeprune calibrate``: measure the calibration suite on a device and write a fitted profile.

On this machine (``--device host``) every suite model is profiled per node with
onnxruntime and the full latency model is fitted (``calibration.fit_from_profiles``).
Over SSH only whole-model latencies come back, so the device's existing constants (or
the host's, if it has none) keep their shape and a scale per kernel group plus a per-run
overhead are fitted (``calibration.fit_from_timings``). Either way the expected error
written into the profile is the 90th percentile of the cross-validated error: each model
is predicted by a fit that never saw it.
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
from edgeprune.devices.predictor import kernels_cost_us
from edgeprune.devices.fingerprint import Fingerprint, local
from edgeprune.devices.profiles import (DeviceProfile, LatencyModel, bundled_host_fitted_elsewhere,
                                        calibrated_host_path, load_profile, save_profile)
from edgeprune.devices.suite import TORCHVISION_SUITE, export_torchvision, synthetic_model
from edgeprune.devices.targets import MeasuringTarget, RemoteTarget, resolve_target
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_bytes_atomic

Progress = Callable[[str], None]


def default_workdir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeprune" / "calibration"


# The suites (docs/calibration.md measures them): FULL is what the bundled host profile was fitted on;
# QUICK has half the synthetic networks, smaller, and fewer timing rounds, but keeps the torchvision
# architectures here (without them the fit held 54% of held-out variants within 10%, with them 91%);
# over SSH it is the 24 synthetic networks alone, so that a board needs at most 30 measurements.
FULL = {"synthetic": 48, "max_mmacs": 250.0, "architectures": True, "timing_rounds": 5}
QUICK = {"synthetic": 24, "max_mmacs": 60.0, "architectures": True, "timing_rounds": 3}
QUICK_SSH = {**QUICK, "architectures": False}


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

    def resolved(self, remote: bool) -> "CalibrationConfig":
        """This configuration with the suite settings it leaves open taken from its preset (FULL, QUICK,
        or QUICK_SSH for a board over SSH)."""
        preset = FULL if not self.quick else QUICK_SSH if remote else QUICK
        return replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})


@dataclass
class ModelFit:
    name: str
    measured_ms: float
    fitted_ms: float          # predicted by the fit that saw every model
    held_out_ms: float        # predicted by the fit that did not see this model


@dataclass
class CalibrationResult:
    profile: DeviceProfile
    path: Path
    mode: str                 # "profiled" (per-node, local) or "timed" (whole models, SSH)
    models: list[ModelFit]
    fit: dict[str, Any]
    cross_validated: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.profile.name, "path": str(self.path), "mode": self.mode,
                "expected_error": self.profile.expected_error, "fit": self.fit,
                "cross_validated": self.cross_validated,
                "models": [m.__dict__ for m in self.models]}


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
    measured = []
    for i, p in enumerate(suite, 1):
        if progress:
            progress(f"profiling {p.stem} ({i}/{len(suite)})")
        measured.append(cal.profile_model(p, threads=threads, providers=profile.providers,
                                          whole_model=False))
    totals = cal.interleaved_timings(suite, threads, profile.providers, rounds=cfg.timing_rounds,
                                     seed=cfg.seed, progress=progress)
    for pm, figures in zip(measured, totals):
        pm.total_ms = float(np.median([cpu if threads == 1 else wall for cpu, wall in figures]))
    block = nchwc_block_here()
    when = _dt.date.today().isoformat()
    fitted_on = (f"{when}: per-node onnxruntime profiles of {len(measured)} calibration models "
                 f"({cfg.synthetic} synthetic, seed {cfg.seed}"
                 f"{', plus torchvision architectures' if cfg.architectures else ''}), "
                 f"{threads} thread(s)")
    lm = cal.fit_from_profiles(measured, fitted_on, block)
    fitted = [_predict_profiled(pm, lm) for pm in measured]
    held = [0.0] * len(measured)
    for fold in _folds(len(measured), cfg.folds):
        train = [m for i, m in enumerate(measured) if i not in fold]
        flm = cal.fit_from_profiles(train, "cv", block, cache_mb=lm.cache_mb)
        for i in fold:
            held[i] = _predict_profiled(measured[i], flm)
    meas = [pm.total_ms for pm in measured]
    return _finish(cfg, profile, out, lm, "profiled", [pm.name for pm in measured], meas,
                   fitted, held, threads,
                   f"measured here with onnxruntime; predictor fitted {when} to per-node "
                   "onnxruntime profiles of the calibration suite (edgeprune calibrate)",
                   fingerprint=replace(local(), source=f"read on the calibrated machine, {when}"))


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
    raws = target.time_models(suite, threads, profile.providers,
                              progress=(lambda n: progress(f"timing {n} on {target.address}"))
                              if progress else None)
    base = _base_model(profile, str(raws[0].get("machine", "")))
    timings = [cal.ModelTiming(p.stem, detect_kernels(load_model(p), base.nchwc_block),
                               float(np.median(r["samples_ms"]))) for p, r in zip(suite, raws)]
    when = _dt.date.today().isoformat()
    lm = cal.fit_from_timings(timings, f"{when}: median onnxruntime latencies of {len(timings)} "
                              f"calibration models measured on {target.address} over SSH", base)
    pred = lambda t, m: (m.run_overhead_us + kernels_cost_us(t.kernels, m)) * m.runtime_factor / 1e3  # noqa: E731
    fitted = [pred(t, lm) for t in timings]
    held = [0.0] * len(timings)
    for fold in _folds(len(timings), cfg.folds):
        flm = cal.fit_from_timings([t for i, t in enumerate(timings) if i not in fold], "cv", base)
        for i in fold:
            held[i] = pred(timings[i], flm)
    return _finish(cfg, profile, out, lm, "timed", [t.name for t in timings],
                   [t.latency_ms for t in timings], fitted, held, threads,
                   f"measured on the device over SSH (onnxruntime {raws[0].get('ort_version', '?')}); "
                   f"predictor fitted {when} to whole-model latencies of the calibration suite",
                   {"calibration_cpu": str(raws[0].get("cpu", profile.cpu))}, ssh=written_ssh,
                   fingerprint=Fingerprint.from_facts(raws[0], f"reported by the device's onnxruntime runner, {when}"))


# -- shared ------------------------------------------------------------------------------------

def _finish(cfg: CalibrationConfig, profile: DeviceProfile, out: Path, lm: LatencyModel, mode: str,
            names: Sequence[str], meas: Sequence[float], fitted: Sequence[float],
            held: Sequence[float], threads: int, source: str,
            extra_sources: dict[str, str] | None = None, ssh: str | None = None,
            fingerprint: Fingerprint | None = None) -> CalibrationResult:
    fit = cal.error_summary(fitted, meas)
    cv = cal.error_summary(held, meas)
    lm.fit.update({"models": len(names), "fit_median_abs_rel_err": round(fit["median_abs_rel_err"], 4),
                   "cv_median_abs_rel_err": round(cv["median_abs_rel_err"], 4),
                   "cv_within_10pct": round(cv["within_10pct"], 3),
                   "cv_p90_abs_rel_err": round(cv["p90_abs_rel_err"], 4)})
    new = replace(profile, latency_model=lm, threads=threads, latency_source=source,
                  ssh=ssh or profile.ssh, fingerprint=fingerprint,
                  expected_error=_band(cal.relative_errors(held, meas)),
                  sources={**profile.sources,
                           "latency_model": lm.fitted_on,
                           "expected_error": "90th percentile of the cross-validated relative "
                                             f"error over the calibration suite ({cfg.folds}-fold)",
                           **(extra_sources or {})})
    result = CalibrationResult(new, out, mode,
                               [ModelFit(n, m, f, h) for n, m, f, h in zip(names, meas, fitted, held)],
                               fit, cv)
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
