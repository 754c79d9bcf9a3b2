"""Fit the ARM boards' latency models to the published reference latencies.

For each board in ``reference.py`` the reference architectures are
exported at the benchmark's input size, turned into kernels (no NCHWc: that is x86), and
a first-principles model (peak MAC rate and memory bandwidth of the board) is scaled per
kernel group — convolutions, depthwise convolutions, the rest — to the published ncnn
4-thread figures (figures at another clock are scaled to the profile's clock). The fit
residuals and leave-one-out errors are written into the profile; onnxruntime's gap to ncnn
becomes ``runtime_factor`` and its uncertainty is folded into the expected error.

    nice -n 10 .venv/bin/python benchmarks/studies/fit_arm_profiles.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeprune.devices.latency_fit import ModelTiming, fit_from_timings
from edgeprune.devices.kernel_graph import detect_kernels, load_model
from edgeprune.devices.predictor import kernels_cost_us
from edgeprune.devices.profiles import load_profile, save_profile
from reference import (HARDWARE, ORT_GAP_UNCERTAINTY, ORT_OVER_NCNN,
                                         ORT_OVER_NCNN_SOURCE, REFERENCE_MODELS, REFERENCES,
                                         physics_model)
from edgeprune.devices.suite import export_torchvision

ROOT = Path(__file__).resolve().parent.parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "devices" / "reference")
    ap.add_argument("--profiles", type=Path, default=ROOT / "devices" / "profiles")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    kernels = {}
    for arch, size in REFERENCE_MODELS.items():
        path = args.workdir / f"{arch}_{size}.onnx"
        if not path.exists():
            print(f"exporting {arch} at {size}x{size}", flush=True)
            export_torchvision(arch, size, str(path))
        kernels[arch] = detect_kernels(load_model(path), nchwc_block=0)
    today = dt.date.today().isoformat()
    for board, hw in HARDWARE.items():
        path = args.profiles / f"{board}.toml"
        profile = load_profile(str(path))
        refs = [r for r in REFERENCES if r.board == board and r.threads == profile.threads]
        timings = [ModelTiming(r.model, kernels[r.model], r.ms * r.clock_ghz / profile.clock_ghz)
                   for r in refs]
        base = physics_model(hw)
        lm = fit_from_timings(timings, "", base, fit_run_overhead=False)
        pred = lambda m, ks: kernels_cost_us(ks, m) / 1e3  # noqa: E731 (ncnn-scale ms)
        residuals = {}
        loo = []
        for i, (r, t) in enumerate(zip(refs, timings)):
            held = fit_from_timings([x for j, x in enumerate(timings) if j != i], "", base,
                                    fit_run_overhead=False)
            fitted, held_ms = pred(lm, t.kernels), pred(held, t.kernels)
            key = f"{r.model}@{r.clock_ghz:g}GHz"
            residuals[key] = {"reference_ms": round(t.latency_ms, 3), "fitted_ms": round(fitted, 3),
                              "rel_err": round(fitted / t.latency_ms - 1, 4),
                              "held_out_rel_err": round(held_ms / t.latency_ms - 1, 4),
                              "source": r.source}
            loo.append(held_ms / t.latency_ms - 1)
        loo_rms = float(np.sqrt(np.mean(np.square(loo))))
        expected = math.ceil(math.hypot(loo_rms, ORT_GAP_UNCERTAINTY) * 100) / 100
        lm = replace(lm, runtime_factor=ORT_OVER_NCNN, fitted_on=(
            f"{today}: first-principles model scaled per kernel group to {len(refs)} published ncnn "
            f"{profile.threads}-thread fp32 latencies (benchmarks/studies/fit_arm_profiles.py), times the "
            f"onnxruntime/ncnn gap {ORT_OVER_NCNN}"),
            fit={**lm.fit, "residuals": residuals, "loo_rms_rel_err": round(loo_rms, 4),
                 "ort_gap_uncertainty": ORT_GAP_UNCERTAINTY})
        new = replace(profile, latency_model=lm, expected_error=expected, sources={
            **profile.sources,
            "latency_model": f"ncnn benchncnn figures ({', '.join(sorted({r.source for r in refs}))}); "
                             f"hardware: {hw.source}",
            "runtime_factor": ORT_OVER_NCNN_SOURCE,
            "expected_error": (f"leave-one-out RMS error of the fit ({loo_rms:.1%}) combined with "
                               f"+-{ORT_GAP_UNCERTAINTY:.0%} for carrying the onnxruntime/ncnn gap "
                               "to this board")})
        save_profile(new, path, f"{board}: latency constants fitted by benchmarks/studies/fit_arm_profiles.py; "
                                "no onnxruntime figure on this board was available.")
        print(f"{board}: group scales {lm.fit['group_scales']}, LOO RMS {loo_rms:.1%}, "
              f"expected error +-{expected:.0%}")
        for k, d in residuals.items():
            print(f"   {k:28s} ref {d['reference_ms']:8.2f}  fit {d['fitted_ms']:8.2f}  "
                  f"{d['rel_err']:+.1%}  held-out {d['held_out_rel_err']:+.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
