"""Judge the ``host`` int8 latency constants on U8S8 QDQ models the int8 fit never saw.

Models: the bundled ResNet-56 (1x1x32x32) and torchvision MobileNetV2 (1x3x160x160), each full and with
random sets of identity-shortcut blocks removed (the variants ``validate_predictor.py`` makes), plus any
``--extra`` ONNX files (e.g. ``edgeprune export --model mobilenet_v2_fmnist``); every one quantized with
``suite.quantize_qdq`` (U8S8, per-channel, MinMax), predicted with the host profile file and measured
with onnxruntime (CPU EP, 1 thread) in interleaved rounds (``latency_fit.interleaved_timings``: CPU time
of the inference thread, median of the rounds' medians). Results: ``docs/int8-predictor.md``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/validate_int8_predictor.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from edgeprune.devices.latency_fit import error_summary, interleaved_timings
from edgeprune.devices.predictor import predict
from edgeprune.devices.profiles import load_profile
from edgeprune.devices.suite import quantize_qdq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_predictor import export, families, without  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=4, help="block-removal variants per family")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra", type=Path, nargs="*", default=[])
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "devices" / "int8_validation")
    ap.add_argument("--profile", type=Path, default=ROOT / "devices" / "profiles" / "host.toml")
    ap.add_argument("--results", type=Path, default=ROOT / "runs" / "devices" / "int8_validation.json")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    fp32 = []
    for fam in families():
        if fam.name not in ("resnet56", "mobilenet_v2"):
            continue
        model = fam.build()
        fp32.append(export(model, fam.shape, args.workdir / f"{fam.name}_full.onnx"))
        for v in range(args.variants):
            removed = rng.sample(fam.identity_blocks, rng.randint(1, max(1, len(fam.identity_blocks) // 2)))
            fp32.append(export(without(model, removed), fam.shape, args.workdir / f"{fam.name}_v{v}.onnx"))
        print(f"exported {fam.name}", flush=True)
    fp32 += list(args.extra)
    q8 = []
    for p in fp32:
        out = args.workdir / f"{Path(p).stem}_{Path(p).parent.name}_u8.onnx"
        if not out.exists():
            quantize_qdq(p, out)
        q8.append(out)
    profile = load_profile(str(args.profile))
    pred = [predict(p, profile).latency_ms for p in q8]
    figs = interleaved_timings(q8, 1, rounds=args.rounds, progress=lambda m: print(m, flush=True))
    meas = [float(np.median([c for c, _ in f])) for f in figs]
    summary = error_summary(pred, meas)
    rows = [{"model": p.stem, "predicted_ms": round(a, 4), "measured_ms": round(b, 4),
             "rel_err": round(a / b - 1, 4)} for p, a, b in zip(q8, pred, meas)]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"summary": summary, "models": rows}, indent=2))
    for r in rows:
        print(f"{r['model']:40s} predicted {r['predicted_ms']:.3f} measured {r['measured_ms']:.3f} {r['rel_err']:+.1%}")
    print(f"\n{summary['n']} models: within 10% {summary['within_10pct']:.0%}, median |err| "
          f"{summary['median_abs_rel_err']:.1%}, worst {summary['max_abs_rel_err']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
