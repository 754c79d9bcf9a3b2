"""How well do the cheap channel-group criteria rank the groups that direct measurement ranks?

    python benchmarks/studies/channel_criteria.py             # both bundled models, about 5 minutes

For each model, ``edgeprune score --lever channels --json`` (the product's command, 500 scoring
images, 1 thread) runs with each group criterion: ``direct`` (shrink the group one step, re-estimate
BatchNorm on 256 training images, measure), ``magnitude`` and ``bn-scale`` (the mean filter norm or
|gamma| of the channels the step removes). Against direct measurement, each proxy gets: Spearman's
rank correlation over the groups; how many of direct's 5 cheapest groups it also puts in its 5
cheapest; and the mean measured top-1 lost by the 5 groups it ranks cheapest (what a greedy that
trusted it would pay first), beside direct's own. The wall time of each command is recorded. Results
go to ``docs/channel-criteria.json`` and ``docs/channel-criteria.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CRITERIA = ("direct", "magnitude", "bn-scale")
K = 5


def score(model: str, criterion: str, images: int) -> tuple[dict, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "edgeprune", "score", "--model", model, "--lever", "channels",
                          "--criterion", criterion, "--score-images", str(images), "--json"],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out), time.time() - t0


def ranks(values: list[float]) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    r = np.empty(len(values))
    r[order] = np.arange(len(values))
    return r


def compare(results: dict) -> dict:
    direct = results["direct"]["scores"]
    names = sorted(direct)
    drop = {n: direct[n]["importance"] for n in names}
    cheapest = lambda order: order[:K]                     # noqa: E731
    out = {}
    for c in CRITERIA:
        imp = results[c]["scores"]
        rho = float(np.corrcoef(ranks([drop[n] for n in names]), ranks([imp[n]["importance"] for n in names]))[0, 1])
        first = cheapest(results[c]["order"])
        out[c] = {"spearman": rho, "shared_cheapest": len(set(first) & set(cheapest(results["direct"]["order"]))),
                  "cheapest_measured_drop": float(np.mean([drop[n] for n in first])), "wall_s": results[c]["wall_s"],
                  "cheapest": first}
    return out


def write_doc(data: dict, doc: Path) -> None:
    lines = ["# Channel-group criteria against direct measurement", "",
             "Written by `benchmarks/studies/channel_criteria.py` (results: `docs/channel-criteria.json`). Each "
             "criterion scores shrinking every channel group of the model by one step (`edgeprune score --lever "
             f"channels`, {data['images']} scoring images, 1 thread, on {data['host']}). *Direct* shrinks the group, "
             "re-estimates BatchNorm statistics on 256 training images and measures top-1; the proxies average the "
             "filter L2 norm (*magnitude*) or |BatchNorm gamma| (*bn-scale*) of the channels the step removes. "
             f"Against direct: Spearman's rho over the groups, how many of direct's {K} cheapest groups the "
             f"criterion also ranks among its {K} cheapest, and the mean top-1 (points) that direct measurement says "
             f"its {K} cheapest groups cost (one scoring image is {100 / data['images']:.1f} points, so costs this "
             "small are mostly noise: what the table shows is how far each proxy's ranking is from the measured "
             "one, not which step is cheaper by a tenth of a point). A negative cost is a step after which "
             "more scoring images came out right.", ""]
    for model, r in data["models"].items():
        lines += [f"## {model}", "", f"{r['groups']} groups that can shrink.", "",
                  f"| criterion | Spearman rho vs direct | shared of {K} cheapest | measured top-1 cost of its "
                  f"{K} cheapest (points) | wall s |", "|---|---:|---:|---:|---:|"]
        for c, v in r["compare"].items():
            lines.append(f"| {c} | {v['spearman']:.2f} | {v['shared_cheapest']} | "
                         f"{100 * v['cheapest_measured_drop']:.2f} | {v['wall_s']:.0f} |")
        lines.append("")
    doc.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="default,mobilenet_v2_fmnist")
    ap.add_argument("--score-images", type=int, default=500)
    ap.add_argument("--json", default="docs/channel-criteria.json")
    ap.add_argument("--doc", default="docs/channel-criteria.md")
    args = ap.parse_args()
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(images=args.score_images, host=platform.processor() or platform.machine())
    data.setdefault("models", {})
    for model in args.models.split(","):
        raw = data["models"].get(model, {}).get("raw", {})
        for c in CRITERIA:
            if c not in raw:
                raw[c], wall = score(model, c, args.score_images)
                raw[c]["wall_s"] = wall
                data["models"][model] = {"raw": raw}
                path.write_text(json.dumps(data, indent=1))
                print(f"{model} {c}: {wall:.0f} s", flush=True)
        data["models"][model] = {"raw": raw, "groups": len(raw["direct"]["order"]), "compare": compare(raw)}
        path.write_text(json.dumps(data, indent=1))
    write_doc(data, Path(args.doc))


if __name__ == "__main__":
    main()
