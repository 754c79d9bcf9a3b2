"""How far each plan lever reaches on five torchvision models at 224 px (predicted rpi4 latency).

Run (the committed table, a few minutes on 2 shared cores):

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/reach_224.py

For each model (random weights, 10 classes, 224x224: latency-only work, no accuracy is measured or
reported) two ``edgeprune build`` runs, each in a fresh process and a fresh build folder, ask for an
unreachable budget (``--budget 0.001ms``), so each answers (exit 3) before any accuracy is measured
and reports ``lever_reach_ms``: the predicted rpi4 p50 of the fastest plan of each lever combination.

* ``default``: ``--levers blocks,channels`` (the default), giving ``blocks``, ``channels``,
  ``blocks+channels`` and ``blocks+channels+resolution`` (the resolution lever offered "as well");
* ``resolution``: ``--levers blocks,channels,resolution --min-resolution 112``, giving ``blocks``,
  ``channels``, ``resolution`` and ``blocks+channels+resolution``.

Both pass ``--min-resolution 112`` (half of 224, which is also the floor when resolution is only
offered "as well") and keep the default ``--resolution-step 8``. The data is a tiny synthetic uint8
``.npz`` (40 train + 40 val images of 3x32x32, labels 0..9, stretched to 224 by ``--resize
resize``). Besides the builds, a third small process counts the model's blocks, its removable
(identity-shortcut) blocks and its channel groups with ``discover``/``candidates_for``/
``channel_groups`` (a cross-check of the counts read off the build's fastest plan).

Results go to ``docs/reach-224.json`` as each run finishes; rerun to resume (a run already there
is not repeated; ``--redo`` repeats everything). The table is then written to ``docs/reach-224.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
SIZE, MIN_RES, STEP = 224, 112, 8
BUDGET_MS = 30.0             # the reachability question of the table (the build's default budget)
RUNS = {                     # run label -> lever flags
    "default": ["--levers", "blocks,channels"],
    "resolution": ["--levers", "blocks,channels,resolution"],
}
COMBOS = ["blocks", "channels", "blocks+channels", "blocks+channels+resolution"]
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/reach_224.py"


def make_data(path: Path, seed: int = 0) -> Path:
    """40 train + 40 val random uint8 images, 3x32x32, labels 0..9 (the build needs some data)."""
    if not path.is_file():
        rng = np.random.default_rng(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x_train=rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8), y_train=np.arange(40) % 10,
                 x_val=rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8), y_val=np.arange(40) % 10)
    return path


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_build(python: str, model: str, label: str, data: Path, workdir: Path, timeout_s: float) -> dict:
    """One unreachable build in a fresh process and a fresh folder: what it reports, and its wall time."""
    out = workdir / f"{model}-{label}"
    shutil.rmtree(out, ignore_errors=True)          # a cold cache: the wall time is the whole build's
    cmd = [python, "-m", "edgeprune", "build", "--model", model, "--num-classes", "10", "--data", str(data),
           "--channels", "3", "--resize", "resize", "--device", "rpi4", "--budget", "0.001ms", *RUNS[label],
           "--min-resolution", str(MIN_RES), "--resolution-step", str(STEP), "--score-images", "10",
           "--out", str(out), "--json"]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp", timeout=timeout_s,
                           env={**os.environ, "EDGEPRUNE_PROGRESS": "0"})
    except subprocess.TimeoutExpired:
        return {"cmd": " ".join(cmd), "exit_code": None, "wall_s": round(time.time() - t0, 1),
                "error": f"timed out after {timeout_s:g} s"}
    wall = time.time() - t0
    r: dict = {"cmd": " ".join(cmd), "exit_code": p.returncode, "wall_s": round(wall, 1)}
    try:
        summary = json.loads(p.stdout)
    except json.JSONDecodeError:
        summary = {}
    reach = summary.get("lever_reach_ms")
    if p.returncode != 3 or not reach:
        r["error"] = summary.get("message") or last_line(p.stderr) or last_line(p.stdout) or "no output"
        return r
    search = summary.get("search") or {}
    floor = search.get("floor") or {}
    tokens = floor.get("removed") or []
    r.update(base_ms=(search.get("base") or {}).get("latency_ms"), lever_reach_ms=reach,
             floor_ms=floor.get("latency_ms"), floor_tokens=tokens,
             floor_blocks=sum(1 for t in tokens if ":" not in t),
             floor_groups=sum(1 for t in tokens if t.startswith("channels:")),
             floor_resolution=next((int(t.split(":")[1]) for t in tokens if t.startswith("resolution:")), None),
             message=summary.get("message"), scored=summary.get("search_evaluations"))
    return r


def inspect(model: str) -> dict:
    """Blocks, removable blocks and channel groups of ``model`` at 224 (in this process)."""
    from edgeprune.errors import EdgepruneError
    from edgeprune.pipeline.blocks import discover
    from edgeprune.pipeline.channels import channel_groups
    from edgeprune.pipeline.importance import candidates_for
    from edgeprune.pipeline.models import ModelSpec, load_model

    loaded = load_model(ModelSpec(model, num_classes=10))
    out: dict = {"input_shape": list(loaded.input_shape)}
    blocks = discover(loaded.model, loaded.input_shape)
    out["blocks"] = len(blocks)
    try:
        out["removable"] = len(candidates_for(blocks, False))
    except EdgepruneError as e:
        out["removable"], out["removable_error"] = 0, str(e)
    try:
        groups = channel_groups(loaded.model, loaded.input_shape)
        out["groups"] = len(groups)
        out["group_min_fraction"] = round(min(g.kept(g.max_steps) / g.channels for g in groups), 3) if groups else None
        out["group_max_fraction"] = round(max(g.kept(g.max_steps) / g.channels for g in groups), 3) if groups else None
    except Exception as e:  # noqa: BLE001 - Torch-Pruning raises many types; record the line and go on
        out["groups"], out["groups_error"] = None, last_line(f"{type(e).__name__}: {e}")
    return out


def run_inspect(python: str, model: str, timeout_s: float) -> dict:
    t0 = time.time()
    try:
        p = subprocess.run([python, __file__, "--inspect", model], capture_output=True, text=True,
                           timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:g} s"}
    try:
        r = json.loads(last_line(p.stdout))
    except json.JSONDecodeError:
        r = {"error": last_line(p.stderr) or "no output"}
    r["wall_s"] = round(time.time() - t0, 1)
    return r


# ---------------------------------------------------------------- the doc

def lscpu() -> tuple[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}
    return fields.get("Model name", platform.processor() or "?"), fields.get("CPU(s)", str(os.cpu_count()))


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def reach_of(res: dict, model: str, combo: str) -> float | None:
    """The figure of ``combo`` for ``model``: from the run whose own levers include it first."""
    order = ["resolution", "default"] if combo in ("resolution", "blocks+channels+resolution") else \
        ["default", "resolution"]
    for label in order:
        v = (res.get(f"{model}:{label}") or {}).get("lever_reach_ms", {}).get(combo)
        if v is not None:
            return v
    return None


def span(fractions: list[tuple[float, float]]) -> str:
    lo, hi = min(f[0] for f in fractions), max(f[1] for f in fractions)
    return f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"


def yes_no(v: float | None) -> str:
    return "-" if v is None else ("yes" if v <= BUDGET_MS else "no")


def write_doc(results: dict, models: list[str], path: Path) -> None:
    cpu, threads = results["machine"]["cpu"], results["machine"]["threads"]
    lines = [
        "# How far each lever reaches at 224 px (predicted rpi4)",
        "",
        f"Command: `{COMMAND}` ({results['machine']['date']}; "
        f"{results['machine']['total_wall_s']:.0f} s of wall time in all for {len(models)} models). "
        f"Machine: {cpu}, {threads} threads (shared with other work while this ran), Python "
        f"{results['machine']['python']}, torch {results['machine']['torch']}.",
        "",
        "**Every figure is a prediction for a Raspberry Pi 4** (`--device rpi4`, p50 of the predictor; its band "
        "is about ±31%, see [devices.md](devices.md)), not a measurement. The models are torchvision's with "
        "**random weights** and a 10-class head at 224x224: latency does not depend on the weights, and no "
        "accuracy was measured (each build answered before scoring anything).",
        "",
        "Each column is the **limit** of its levers, the fastest plan they can reach: every removable block "
        "removed (identity-shortcut blocks; projection blocks stay without `--replace-projection`), every "
        "channel group shrunk to its minimum (about 1/4 of its width, in steps of about 1/8, kept counts "
        "multiples of 8), and the input at its smallest size (112x112: `--min-resolution 112`, half the input, "
        "`--resolution-step 8`). **It is the fastest plan, not one anyone should ship**: the build searches "
        "between the unpruned model and this limit for the plan that meets a budget with the least loss. A "
        "budget above the unpruned figure needs no plan; one below the limit of the enabled levers is "
        "unreachable and the build says so at once.",
        "",
        "How: per model, two `edgeprune build` runs in fresh processes and fresh build folders with "
        "`--budget 0.001ms` (unreachable, exit 3), `--json`, a tiny synthetic uint8 .npz (40 train + 40 val "
        "images of 3x32x32, `--channels 3 --resize resize`) and `--num-classes 10`; the figures are its "
        "`lever_reach_ms` and `search.base.latency_ms`. Run *default*: `--levers blocks,channels` (reports "
        "blocks, channels, blocks+channels, and blocks+channels+resolution as the lever it could add); run "
        "*+res*: `--levers blocks,channels,resolution --min-resolution 112` (reports blocks, channels, "
        "resolution, and all three). Every plan's latency is its own exported graph predicted "
        "(`PlanSpace.latency`).",
        "",
        f"| model | unpruned (ms) | blocks | channels | resolution | blocks+channels (default) | "
        f"blocks+channels+resolution | {BUDGET_MS:g} ms reachable: default / +resolution | removable blocks "
        "(of all) | channel groups | wall s: default / +res |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    errors = []
    for m in models:
        runs = {label: results["runs"].get(f"{m}:{label}") or {} for label in RUNS}
        ins = results["inspect"].get(m) or {}
        base = next((r["base_ms"] for r in runs.values() if r.get("base_ms") is not None), None)
        figs = {c: reach_of(results["runs"], m, c) for c in [*COMBOS, "resolution"]}
        for label, r in runs.items():
            if r.get("error"):
                errors.append(f"- {m}, run {label} (exit {r.get('exit_code')}): `{r['error']}`")
        for k in ("removable_error", "groups_error", "error"):
            if ins.get(k):
                errors.append(f"- {m}, counting blocks/groups: `{ins[k]}`")
        blocks = f"{ins['removable']} of {ins['blocks']}" if "blocks" in ins else "-"
        groups = ins.get("groups")
        lines.append(
            f"| {m} | {ms(base)} | {ms(figs['blocks'])} | {ms(figs['channels'])} | {ms(figs['resolution'])} | "
            f"{ms(figs['blocks+channels'])} | {ms(figs['blocks+channels+resolution'])} | "
            f"{yes_no(figs['blocks+channels'])} / {yes_no(figs['blocks+channels+resolution'])} | {blocks} | "
            f"{'-' if groups is None else groups} | "
            f"{' / '.join(str(runs[label].get('wall_s', '-')) for label in RUNS)} |")
    checks = []
    for m in models:
        d, r = (results["runs"].get(f"{m}:{label}") or {} for label in RUNS)
        a, b = (x.get("lever_reach_ms", {}).get("blocks+channels+resolution") for x in (d, r))
        ins = results["inspect"].get(m) or {}
        if a is not None and b is not None:
            checks.append((m, abs(a - b)))
        if r.get("floor_tokens") is not None and "blocks" in ins:
            if (r["floor_blocks"], r["floor_groups"]) != (ins["removable"], ins.get("groups")):
                errors.append(f"- {m}: the fastest plan removes {r['floor_blocks']} blocks and shrinks "
                              f"{r['floor_groups']} groups, the direct count says {ins['removable']} and "
                              f"{ins.get('groups')}")
    lines += [""]
    if errors:
        lines += ["Failures and disagreements (one line each):", "", *errors, ""]
    near = [(m, v) for m in models for c in ("blocks+channels", "blocks+channels+resolution")
            if (v := reach_of(results["runs"], m, c)) is not None and BUDGET_MS / 1.31 <= v <= BUDGET_MS * 1.31]
    fractions = [(results["inspect"][m].get("group_min_fraction"), results["inspect"][m].get("group_max_fraction"))
                 for m in models if (results["inspect"].get(m) or {}).get("group_min_fraction") is not None]
    lines += [
        "Notes:",
        "",
        f"- *{BUDGET_MS:g} ms reachable* means the limit of those levers is predicted at or under {BUDGET_MS:g} ms "
        "(p50), so the build would search for a plan rather than answer unreachable; whether a plan that far "
        "down keeps any useful accuracy is a different question, not asked here.",
        "- *resolution* alone and *blocks+channels+resolution* come from the +res run, the other columns from "
        "the default run; the unpruned figure is the same in both. blocks+channels+resolution is reported by "
        "both runs (the default run offers resolution as the lever it could add, with the same 112 px floor): "
        + ("the two agree exactly for every model." if checks and all(d == 0 for _, d in checks) else
           "they differ by " + (", ".join(f"{m} {d:.3g} ms" for m, d in checks) or "-") + "."),
        "- Removable blocks and channel groups are counted directly (`discover` + `candidates_for`, "
        "`channel_groups` at 224 with the default multiple 8) and agree with the fastest plan of the +res run "
        "(its blocks removed and groups shrunk)" + ("" if not errors else "; see the failures above") + "."
        + (f" At its limit a group keeps {span(fractions)} of its channels: the last whole step "
           "at or above 1/4, steps and kept counts being multiples of 8 (a 16-channel group keeps 8, a 96-channel "
           "one 32)." if fractions else ""),
        f"- The predictor's band is about ±31%: a limit within it of {BUDGET_MS:g} ms ("
        + (", ".join(f"{m} {v:.1f} ms" for m, v in near) or "none here") + ") may or may not reach "
        f"{BUDGET_MS:g} ms on a real board; measure with `--ssh`.",
        "- Wall time is each build process end to end (loading, the per-block latency table, the channel "
        "groups and their order, and one export + prediction per plan it reports), on 2 cores shared with a "
        "training job and a benchmark: a rough guide only.",
        "",
    ]
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--python", default=sys.executable, help="python of the edgeprune install to run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/reach_224"), help="data and build folders")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "reach-224.json")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "reach-224.md")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one build may run")
    ap.add_argument("--redo", action="store_true", help="ignore the results already there")
    ap.add_argument("--inspect", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.inspect:
        print(json.dumps(inspect(a.inspect)))
        return 0
    from edgeprune.files import write_json_atomic
    import torch

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    results = json.loads(a.results.read_text()) if a.results.is_file() and not a.redo else {}
    results.setdefault("runs", {})
    results.setdefault("inspect", {})
    cpu, threads = lscpu()
    results["machine"] = {"cpu": cpu, "threads": threads, "python": platform.python_version(),
                          "torch": torch.__version__, "date": datetime.date.today().isoformat(),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                          "total_wall_s": results.get("machine", {}).get("total_wall_s", 0.0)}
    data = make_data(a.workdir / "tiny.npz")

    def save() -> None:
        write_json_atomic(a.results, results)

    for m in models:
        if m not in results["inspect"]:
            print(f"{m}: counting blocks and channel groups ...", flush=True)
            results["inspect"][m] = run_inspect(a.python, m, a.timeout)
            results["machine"]["total_wall_s"] += results["inspect"][m].get("wall_s", 0.0)
            save()
            print(f"  {results['inspect'][m]}", flush=True)
        for label in RUNS:
            key = f"{m}:{label}"
            if key in results["runs"]:
                continue
            print(f"{key} ...", flush=True)
            r = run_build(a.python, m, label, data, a.workdir, a.timeout)
            results["runs"][key] = r
            results["machine"]["total_wall_s"] += r["wall_s"]
            save()
            print(f"  exit {r['exit_code']}, {r['wall_s']} s: "
                  + (r.get("error") or json.dumps({k: round(v, 2) for k, v in r["lever_reach_ms"].items()})
                     + f", unpruned {r['base_ms']:.2f}"), flush=True)
    results["machine"]["total_wall_s"] = round(results["machine"]["total_wall_s"], 1)
    save()
    write_doc(results, models, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
