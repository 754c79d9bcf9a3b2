"""Absolute against anchored predictions of the held-out variants, from measurements already recorded.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/studies/anchored_prediction.py

``calibration_speed.py`` records each run's onnxruntime figures (CPU time of the inference thread, 10 interleaved
rounds) of the 35 block-removal variants of ResNet-56, ResNet-18, ResNet-50 and MobileNetV2 in
``docs/calibration-epyc.json`` and ``docs/calibration-epyc-repeats.json``. This study rebuilds the same variants
(``validate_predictor.build_variants``, seed 0: the same files) and predicts them with the bundled host profile
(fitted on an Intel Xeon), two ways:

* absolute: the profile's prediction against the measurement;
* anchored, as a build does where its budget is measured (``edgeprune.build.stages.anchor``): the prediction
  times the family's full model measured / predicted, judged on the variants that remove blocks.

Each run's measurements were taken in one set of interleaved rounds, so the anchor shares its variants' drift,
as a build's does when the original is timed just before the search. Results go to
``docs/anchored-prediction.json`` and are quoted in ``docs/calibration-epyc.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import validate_predictor as vp  # noqa: E402  (a sibling study)

from edgeprune.devices.predictor import predict  # noqa: E402
from edgeprune.devices.profiles import bundled_profile_path, load_profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def summary(err: np.ndarray) -> dict:
    return {"n": len(err), "within_5pct": float(np.mean(err <= 0.05)), "within_10pct": float(np.mean(err <= 0.10)),
            "median_abs_rel_err": float(np.median(err)), "max_abs_rel_err": float(err.max())}


def main() -> None:
    work = ROOT / "runs" / "anchor"
    work.mkdir(parents=True, exist_ok=True)
    variants = vp.build_variants(work, 0, "host")
    host = load_profile(str(bundled_profile_path("host")))
    predicted = {v.name: predict(v.path, host).latency_ms for v in variants}
    full = {v.family: v.name for v in variants if not v.removed}
    runs = [json.loads((ROOT / "docs" / "calibration-epyc.json").read_text()),
            *json.loads((ROOT / "docs" / "calibration-epyc-repeats.json").read_text())]
    rows = []
    for run in sorted(runs, key=lambda r: r["when"]):
        m = run["measured_cpu_ms"]
        absolute = np.array([abs(predicted[v.name] / m[v.name] - 1) for v in variants])
        anchored = np.array([abs(predicted[v.name] * m[full[v.family]] / predicted[full[v.family]] / m[v.name] - 1)
                             for v in variants if v.removed])
        rows.append({"when": run["when"], "cpu": run["cpu"], "absolute": summary(absolute),
                     "anchored": summary(anchored)})
        a, b = rows[-1]["absolute"], rows[-1]["anchored"]
        print(f"{run['when']}: absolute {a['within_10pct']:.0%} within 10% (median {a['median_abs_rel_err']:.1%}); "
              f"anchored {b['within_10pct']:.0%} within 10%, {b['within_5pct']:.0%} within 5% "
              f"(median {b['median_abs_rel_err']:.1%}, worst {b['max_abs_rel_err']:.1%}, {b['n']} variants)")
    out = {"profile": f"bundled host ({host.fingerprint.cpu if host.fingerprint else '?'})", "runs": rows}
    (ROOT / "docs" / "anchored-prediction.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
