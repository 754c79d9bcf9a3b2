"""Fit the bundled ``host`` profile's int8 (QDQ) kernel constants on this machine.

Quantizes calibration-suite networks (``devices/suite.py``, seeded synthetic ones) to U8S8 QDQ with
onnxruntime's own tool (``suite.quantize_qdq``: per-channel int8 weights, uint8 activations, MinMax), profiles
each per node (onnxruntime CPU EP, 1 thread) and times it in interleaved rounds, fits the int8 classes
(``latency_fit.fit_int8_from_profiles``; the fp32 constants are kept), cross-validates the fit (5-fold) and
writes the constants and ``[latency_model.int8]`` into ``devices/profiles/host.toml``. The validation models
(ResNet-56 and MobileNetV2 families, ``validate_int8_predictor.py``) are never part of it.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/fit_int8_host.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from edgeprune.devices import latency_fit as cal
from edgeprune.devices.fingerprint import local
from edgeprune.devices.predictor import kernels_cost_us
from edgeprune.devices.profiles import Int8Model, load_profile, save_profile
from edgeprune.devices.suite import quantize_qdq, synthetic_model

ROOT = Path(__file__).resolve().parent.parent.parent


def predict_ms(pm: cal.ProfiledModel, lm) -> float:
    return (lm.run_overhead_us + kernels_cost_us([k for k, _ in pm.kernels], lm)) / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "devices" / "int8_calibration")
    ap.add_argument("--profile", type=Path, default=ROOT / "devices" / "profiles" / "host.toml")
    ap.add_argument("--results", type=Path, default=ROOT / "runs" / "devices" / "int8_host_fit.json")
    args = ap.parse_args(argv)
    t0 = time.time()
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.synthetic):
        fp = args.workdir / f"calib_s{args.seed}_{i:03d}.onnx"
        q8 = args.workdir / f"calib_s{args.seed}_{i:03d}_u8.onnx"
        if not q8.exists():
            onnx.save(synthetic_model(i, args.seed).model, fp)
            quantize_qdq(fp, q8)
        paths.append(q8)
        print(f"quantized {q8.name}", flush=True)
    measured = []
    for p in paths:
        measured.append(cal.profile_model(p, threads=1, whole_model=False))
        print(f"profiled {p.name}", flush=True)
    totals = cal.interleaved_timings(paths, 1, rounds=args.rounds, seed=args.seed,
                                     progress=lambda m: print(m, flush=True))
    for pm, figs in zip(measured, totals):
        pm.total_ms = float(np.median([cpu for cpu, _ in figs]))
    prof = load_profile(str(args.profile))
    base = prof.latency_model
    coeffs, stats = cal.fit_int8_from_profiles(measured, base)
    lm = replace(base, coefficients={**base.coefficients, **coeffs})
    fitted = [predict_ms(pm, lm) for pm in measured]
    held = [0.0] * len(measured)
    k = 5
    for f in range(k):
        fold = [i for i in range(len(measured)) if i % k == f]
        c, _ = cal.fit_int8_from_profiles([m for i, m in enumerate(measured) if i not in fold], base)
        flm = replace(base, coefficients={**base.coefficients, **c})
        for i in fold:
            held[i] = predict_ms(measured[i], flm)
    meas = [pm.total_ms for pm in measured]
    fit, cv = cal.error_summary(fitted, meas), cal.error_summary(held, meas)
    when = dt.date.today().isoformat()
    cpu = local().cpu or platform.processor()
    band = max(0.01, float(np.ceil(cv["p90_abs_rel_err"] * 100) / 100))
    lm.fit.update({**stats, "int8_cv_median_abs_rel_err": round(cv["median_abs_rel_err"], 4),
                   "int8_cv_within_10pct": round(cv["within_10pct"], 3),
                   "int8_cv_p90_abs_rel_err": round(cv["p90_abs_rel_err"], 4)})
    fitted_on = (f"{when}: int8 classes fitted to per-node onnxruntime profiles of {len(measured)} U8S8 QDQ "
                 f"synthetic calibration models (seed {args.seed}) on {cpu}, 1 thread, onnxruntime "
                 f"{local().onnxruntime}; fp32 classes unchanged")
    lm.int8 = Int8Model(
        expected_error=band,
        source=(f"int8 constants fitted here ({fitted_on}). Band: 90th percentile of the 5-fold "
                f"cross-validated error of the int8 models ({cv['p90_abs_rel_err']:.1%}). The fp32 "
                "constants were fitted on an Intel Xeon; the int8 ones on this AMD EPYC (AVX-512 VNNI): "
                "layout transposes and float layers of an int8 model are costed with the Xeon's constants"))
    prof = replace(prof, latency_model=lm, sources={**prof.sources, "int8": fitted_on})
    header = args.profile.read_text().splitlines()[0].lstrip("# ")
    save_profile(prof, args.profile, header)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"fit": fit, "cv": cv, "coefficients": coeffs, "stats": stats,
                                        "models": [{"name": pm.name, "measured_ms": m, "fitted_ms": f,
                                                    "held_out_ms": h} for pm, m, f, h in
                                                   zip(measured, meas, fitted, held)]}, indent=2))
    print(f"\nwrote {args.profile} in {time.time() - t0:.0f}s; int8 band +-{band:.0%}")
    print(f"fit:             median |err| {fit['median_abs_rel_err']:.1%}, within 10% {fit['within_10pct']:.0%}")
    print(f"cross-validated: median |err| {cv['median_abs_rel_err']:.1%}, within 10% {cv['within_10pct']:.0%}, "
          f"p90 {cv['p90_abs_rel_err']:.1%}, worst {cv['max_abs_rel_err']:.1%}")
    print(json.dumps(coeffs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
