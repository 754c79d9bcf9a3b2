"""Fit the bundled ``host`` profile's latency model on this machine.

Profiles every calibration-suite model per node with onnxruntime (1 thread, CPU EP),
fits the kernel-sum latency model, cross-validates it, and writes the constants, the fit
statistics and the expected error into ``devices/profiles/host.toml``. The validation
models (ResNet-56, torchvision ResNet-18/50, MobileNetV2) are never part of the suite.

Run on a shared machine with ``nice -n 10 .venv/bin/python benchmarks/studies/fit_host_profile.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeprune.devices.calibrate import CalibrationConfig, calibrate_local

ROOT = Path(__file__).resolve().parent.parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "devices" / "calibration")
    ap.add_argument("--out", type=Path, default=ROOT / "devices" / "profiles" / "host.toml")
    ap.add_argument("--results", type=Path, default=ROOT / "runs" / "devices" / "host_fit.json")
    args = ap.parse_args(argv)
    t0 = time.time()
    res = calibrate_local(CalibrationConfig(device=str(args.out), out=args.out, force=True,
                                            synthetic=args.synthetic, seed=args.seed,
                                            workdir=args.workdir),
                          progress=lambda m: print(m, flush=True))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(res.to_dict(), indent=2))
    cv, fit = res.cross_validated, res.fit
    print(f"\nwrote {res.path} in {time.time() - t0:.0f}s; expected error +-{res.profile.expected_error:.0%}")
    print(f"fit:            median |err| {fit['median_abs_rel_err']:.1%}, within 10% {fit['within_10pct']:.0%}")
    print(f"cross-validated: median |err| {cv['median_abs_rel_err']:.1%}, within 10% {cv['within_10pct']:.0%}, "
          f"p90 {cv['p90_abs_rel_err']:.1%}, worst {cv['max_abs_rel_err']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
