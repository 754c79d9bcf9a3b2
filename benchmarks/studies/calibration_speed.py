"""Quick against full host calibration: how long each takes here, and how well each predicts what it never saw.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/studies/calibration_speed.py

1. ``edgeprune calibrate --device host --quick`` and ``edgeprune calibrate --device host`` (the full suite the
   bundled profile was fitted on; ``--kinds quick`` skips it), each in a fresh process, wall time recorded; each writes its profile
   under ``--workdir``. A finished calibration is not rerun (delete its profile to redo it).
2. The held-out set of ``validate_predictor.py`` (block-removal variants of ResNet-56, torchvision ResNet-18,
   ResNet-50 and MobileNetV2, none in either calibration suite), measured once with onnxruntime in interleaved
   rounds (CPU time of the inference thread, as there), and predicted by the bundled ``host`` profile (the file
   in ``devices/profiles``, whatever ``host`` names on this machine), the quick one and the full one.
3. The same ResNet-56 and MobileNetV2 variants quantized to int8 QDQ with the types onnxruntime recommends for
   this CPU (``suite.quantize_qdq``), measured and predicted the same way: the int8 classes calibrate fits.

Per profile: the share of variants within 5% and 10% of the measurement, the median and the worst error.
A shared machine's speed drifts between a calibration and the held-out measurement minutes later, so 8 of
each calibration's own suite models are timed again in the same rounds: the median of now / then is that
calibration's drift, reported beside its errors (not corrected for).
Results go to ``docs/calibration.json`` and ``docs/calibration.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import validate_predictor as vp  # noqa: E402  (a sibling study)

from edgeprune.benchmarks import ort_runner  # noqa: E402
from edgeprune.devices.fingerprint import local  # noqa: E402
from edgeprune.devices.predictor import predict  # noqa: E402
from edgeprune.devices.profiles import bundled_profile_path, load_profile  # noqa: E402
from edgeprune.devices.suite import quantize_qdq  # noqa: E402
from edgeprune.exporters.quantize import precision_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KINDS = {                                   # calibrate's flags for each calibration compared
    "quick": ["--quick"],
    "quick, synthetic networks up to 60 MMACs (the preset before this run)": ["--quick", "--max-mmacs", "60"],
    "quick, synthetic only (the quick suite over SSH)": ["--quick", "--no-architectures"],
    "quick, synthetic only, 48 up to 250 MMACs": ["--quick", "--no-architectures", "--synthetic", "48",
                                                  "--max-mmacs", "250"],
    "full": [],
}


def calibrate(kind: str, work: Path) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in kind)
    out = work / f"host-{slug}.toml"
    record = work / f"host-{slug}.json"
    if out.exists() and record.exists():
        return json.loads(record.read_text())
    cmd = [sys.executable, "-m", "edgeprune", "calibrate", "--device", "host", "--out", str(out), "--force",
           "--workdir", str(work / "suite"), "--json", *KINDS[kind]]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(f"calibrate {kind} failed: {proc.stderr.strip()[-500:]}")
    d = json.loads(proc.stdout)
    r = {"wall_s": time.time() - t0, "models": len(d["models"]), "expected_error": d["expected_error"],
         "cross_validated": d["cross_validated"], "profile": str(out),
         "suite_ms": {m["name"]: m["measured_ms"] for m in d["models"]},
         "int8": {k: d["int8"][k] for k in ("expected_error", "cross_validated", "activations")} |
                 {"models": len(d["int8"]["models"])} if d.get("int8") else None}
    record.write_text(json.dumps(r, indent=1))
    print(f"calibrate {kind}: {r['wall_s']:.0f} s, {r['models']} models", flush=True)
    return r


def errors(variants: list, predicted: list[float]) -> dict:
    err = np.array([abs(p / v.cpu_ms - 1) for v, p in zip(variants, predicted)])
    return {"within_5pct": float(np.mean(err <= 0.05)), "within_10pct": float(np.mean(err <= 0.10)),
            "median_abs_rel_err": float(np.median(err)), "max_abs_rel_err": float(err.max()), "n": len(err)}


def write_doc(r: dict, path: Path) -> None:
    lines = ["# Host calibration: quick against full", "",
             f"Written by `benchmarks/studies/calibration_speed.py` on {r['when']}: {r['cpu']} ({r['fingerprint']}), "
             f"onnxruntime {r['ort']}, 1 intra-op thread, CPU execution provider, 2 cores (load average "
             f"{r['load'][0]:.1f} before the measurement, {r['load'][1]:.1f} after; "
             f"{r.get('conditions', 'other jobs may have shared them')}); the variants are judged on the CPU time "
             "of the inference thread, as in devices.md.", "",
             "| profile | calibration wall time | suite models (int8) | cross-validated p90 (its band; int8) | "
             "drift since | held-out within 5% | within 10% | median error | worst |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in r["profiles"].items():
        e, cal = row["held_out"], row.get("calibration")
        i8 = (cal or {}).get("int8")
        wall = f"{cal['wall_s'] / 60:.1f} min" if cal else "-"
        models = (f"{cal['models']}" + (f" ({i8['models']})" if i8 else "")) if cal else "-"
        band = (f"+-{cal['expected_error']:.0%}" + (f"; +-{i8['expected_error']:.0%}" if i8 else "")) if cal else "-"
        drift = f"{cal['drift']:+.1%}" if cal and "drift" in cal else "-"
        lines.append(f"| {name} | {wall} | {models} | {band} | {drift} | {e['within_5pct']:.0%} | "
                     f"{e['within_10pct']:.0%} | {e['median_abs_rel_err']:.1%} | {e['max_abs_rel_err']:.1%} |")
    if any("held_out_int8" in row for row in r["profiles"].values()):
        lines += ["", f"int8: the {r['variants_int8']} ResNet-56 and MobileNetV2 variants quantized to QDQ "
                  f"({r['int8_types']}), measured and predicted the same way:", "",
                  "| profile | int8 within 5% | within 10% | median error | worst |", "|---|---:|---:|---:|---:|"]
        for name, row in r["profiles"].items():
            e = row["held_out_int8"]
            lines.append(f"| {name} | {e['within_5pct']:.0%} | {e['within_10pct']:.0%} | "
                         f"{e['median_abs_rel_err']:.1%} | {e['max_abs_rel_err']:.1%} |")
    lines += ["", f"Held-out set: {r['variants']} block-removal variants of ResNet-56, ResNet-18, ResNet-50 and "
              f"MobileNetV2 (random weights; `validate_predictor.py`), {r['rounds']} interleaved rounds. *bundled "
              f"host* is `devices/profiles/host.toml`: {r.get('bundled', 'fitted on 2026-11-22 on a machine of this kind')}. "
              "*drift since*: how much slower (+) the calibration's own suite models ran during the held-out "
              "measurement than during the calibration (median of 8).", "",
              *(["## Reading", "", *[f"- {n}" for n in r["notes"]], ""] if r.get("notes") else [])]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "calibration")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--kinds", default=";".join(KINDS), help="calibrations to compare, ';'-separated (KINDS)")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "calibration.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "calibration.md")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the doc from --json")
    ap.add_argument("--conditions", default="other jobs may have shared them", help="what else ran, in words")
    args = ap.parse_args()
    if args.doc_only:
        write_doc(json.loads(args.json.read_text()), args.doc)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    cals = {kind: calibrate(kind, args.workdir) for kind in args.kinds.split(";")}
    (args.workdir / "variants").mkdir(exist_ok=True)
    variants = vp.build_variants(args.workdir / "variants", 0, "host")
    load_before = os.getloadavg()[0]
    host = load_profile(str(bundled_profile_path("host")))    # the file, not what 'host' names here
    here = local()
    precision = precision_for(here.machine, here.features)
    int8 = []
    for v in variants:
        if v.family in ("resnet56", "mobilenet_v2"):
            q = Path(v.path).with_name(f"{Path(v.path).stem}_q{precision.activations[0]}8.onnx")
            if not q.exists():
                quantize_qdq(v.path, q, activations=precision.activations, reduce_range=precision.reduce_range)
            int8.append(vp.Variant(v.family, f"{v.name}-int8", v.removed, str(q)))
    suite = args.workdir / "suite"
    refs = {kind: sorted(cal["suite_ms"])[::max(1, len(cal["suite_ms"]) // 8)][:8] for kind, cal in cals.items()}
    again = {name: vp.Variant("suite", name, [], str(suite / f"{name}.onnx"))
             for names in refs.values() for name in names}
    vp.measure(variants + int8 + list(again.values()), args.rounds, host.threads, host.providers, 0, 10)
    for kind, cal in cals.items():
        cal["drift"] = float(np.median([again[n].cpu_ms / cal["suite_ms"][n] for n in refs[kind]])) - 1
    profiles = {"bundled host": (host, None),
                **{kind: (load_profile(cal["profile"]), cal) for kind, cal in cals.items()}}
    result = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": ort_runner.cpu_model(),
              "fingerprint": local().describe(), "ort": ort_runner.ort.__version__, "rounds": args.rounds,
              "variants": len(variants), "load": [load_before, os.getloadavg()[0]], "profiles": {},
              "conditions": args.conditions, "variants_int8": len(int8),
              "int8_types": f"{precision.activations} activations, {precision.weights} weights"
                            + (", reduce_range" if precision.reduce_range else ""),
              "bundled": f"fp32 constants fitted on {host.fingerprint.cpu if host.fingerprint else '?'} "
                         f"({host.sources.get('latency_model', '')[:10]}); int8 constants: "
                         f"{host.sources.get('int8', 'none')}"}
    for name, (profile, cal) in profiles.items():
        predicted = [predict(v.path, profile).latency_ms for v in variants]
        result["profiles"][name] = {"calibration": cal, "held_out": errors(variants, predicted),
                                    "held_out_int8": errors(int8, [predict(v.path, profile).latency_ms for v in int8])}
    result["measured_cpu_ms"] = {v.name: v.cpu_ms for v in variants + int8}
    args.json.write_text(json.dumps(result, indent=1))
    write_doc(result, args.doc)
    print(args.doc.read_text())


if __name__ == "__main__":
    main()
