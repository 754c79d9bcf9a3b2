"""Judge the ``host`` latency predictor on the shapes the channel and resolution levers create.

``validate_predictor.py`` judged the predictor on unpruned models and block-removal variants,
whose convolutions keep the original (power-of-two) channel counts and feature-map sizes. The
channel lever leaves other counts (multiples of 8, or with ``multiple=1`` counts such as 57 or
23), and the resolution lever small feature maps. Families (random weights; latency does not
depend on the values):

* the bundled ResNet-56 (``edgeprune.pipeline.resnet_cifar.resnet56()``) at 1x1x32x32,
* torchvision MobileNetV2 (``num_classes=10``) at 1x3x64x64,
* torchvision ResNet-18 (``num_classes=10``) at 1x3x96x96.

Variants of each family: the unpruned model (``base``); channel-pruned with
``channel_groups(model, shape, multiple=m, step_fraction=f)`` + ``channel_orders(..., "magnitude")``
+ ``prune_channels(...)``: with ``multiple=8`` (what the build does; kind ``channels-8``) every
group at its max steps, every group at half its max steps, and a random subset of the groups at
random steps, and with ``multiple=1`` (kind ``channels-odd``; ``step_fraction`` 0.09 or 0.11, so
that steps leave counts such as 57, 46 or 23) every group at its deepest step whose count is off
a multiple of 4, every group at the step of that kind nearest half its max, and a random subset at
random such steps; the unpruned model at smaller inputs (``resized``); and a few channel-pruned
models at a smaller input (``combined``). Each family also carries its ``anchor``: the exact full
model validate_predictor.py measured (ResNet-56 at 32x32 is the base itself; ResNet-18 at 128x128
and MobileNetV2 at 160x160 with 1000 classes), so that the doc can tell how much slower this
machine runs a validated model today than in that study, and judge the new shapes net of it.
Each is exported with ``export_onnx`` (the project's default exporter), predicted from its file
(``predict(path, "host")``) and measured with
``validate_predictor.measure``: 1 intra-op thread, interleaved rounds over all variants in a
shuffled order, a fresh session per variant per round, 10 warm-up runs then 10 timed runs; the
figure is the median over rounds of each round's median CPU time of the inference thread.

Each variant also records which of its convolutions onnxruntime runs in its blocked NCHWc
layout (from the session's optimised graph, ``channel_multiple.optimised_graph``) and which the
predictor's kernel list puts there: onnxruntime 1.32 keeps a dense conv on the NCHWc path only
when its input has fewer than 16 channels or a multiple of 4, and a depthwise conv only when its
channel count is a multiple of 4 (docs/channel-multiple.md), while the predictor blocks every one.

Resumable: the exports, predictions and every finished round go to ``--json`` as they are done,
and a rerun with the same configuration continues from there (more ``--rounds`` add rounds). The
markdown is rewritten from the JSON at the end (``--docs-only`` rewrites it alone).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/validate_predictor_shapes.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import validate_predictor as vp  # noqa: E402  (the block-removal study: its measurement and rank correlation)
from channel_multiple import optimised_graph  # noqa: E402
from results_cache import ResultsCache  # noqa: E402

from edgeprune.benchmarks import ort_runner  # noqa: E402
from edgeprune.devices.latency_fit import error_summary, relative_errors  # noqa: E402
from edgeprune.devices.predictor import model_kernels, predict  # noqa: E402
from edgeprune.devices.profiles import load_profile  # noqa: E402
from edgeprune.exporters.onnx_export import export_onnx  # noqa: E402
from edgeprune.files import write_text_atomic  # noqa: E402
from edgeprune.pipeline.channels import channel_groups, channel_orders, prune_channels  # noqa: E402
from edgeprune.pipeline.resnet_cifar import resnet56  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VERSION = 1                    # of the variant recipes below: a change starts the results afresh
KINDS = ("anchor", "base", "channels-8", "channels-odd", "resized", "combined")
NOISY = 0.2                    # a variant's rounds spread more than this (IQR / median): marked in the table
BLOCK = 4                      # onnxruntime's NCHWc channel alignment (dense conv inputs, depthwise channels)


@dataclass
class FamilySpec:
    name: str
    build: Callable[[], nn.Module]
    in_channels: int
    size: int
    sizes: tuple[int, ...]                  # resized variants
    combined: tuple[tuple[str, int], ...]   # (channel recipe, input size)
    anchor: tuple[Callable[[], nn.Module], int] | None = None   # the block-removal study's full model, if not base

    def shape(self, size: int | None = None) -> tuple[int, int, int, int]:
        s = size or self.size
        return (1, self.in_channels, s, s)


FAMILIES = (
    FamilySpec("resnet56", resnet56, 1, 32, (24, 16), (("ch8-half", 24), ("odd-mid", 16))),
    FamilySpec("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(num_classes=10), 3, 64,
               (56, 48, 40, 32), (("ch8-half", 48), ("odd-mid", 40), ("ch8-max", 32)),
               (torchvision.models.mobilenet_v2, 160)),
    FamilySpec("resnet18", lambda: torchvision.models.resnet18(num_classes=10), 3, 96,
               (80, 64, 48), (("ch8-half", 64), ("odd-mid", 48)), (torchvision.models.resnet18, 128)),
)
# recipe -> (multiple, step_fraction)
RECIPES = {
    "ch8-max": (8, 0.125), "ch8-half": (8, 0.125), "ch8-rand": (8, 0.125),
    "odd-deep": (1, 0.11), "odd-mid": (1, 0.09), "odd-rand": (1, 0.09),
}


def recipe_steps(recipe: str, groups, rng: random.Random) -> dict[str, int]:
    """Steps per channel group for ``recipe`` (groups not named keep all their channels)."""
    def off4(g) -> list[int]:
        s = [s for s in range(1, g.max_steps + 1) if g.kept(s) % BLOCK]
        return s or list(range(1, g.max_steps + 1))   # no step leaves an off-4 count: take the others

    def subset():
        k = rng.randint(max(1, len(groups) // 3), max(1, 2 * len(groups) // 3))
        return sorted(rng.sample(list(groups), k), key=lambda g: g.name)

    if recipe == "ch8-max":
        return {g.name: g.max_steps for g in groups}
    if recipe == "ch8-half":
        return {g.name: math.ceil(g.max_steps / 2) for g in groups}
    if recipe == "ch8-rand":
        return {g.name: rng.randint(1, g.max_steps) for g in subset()}
    if recipe == "odd-deep":
        return {g.name: max(off4(g)) for g in groups}
    if recipe == "odd-mid":
        return {g.name: min(off4(g), key=lambda s: (abs(s - g.max_steps / 2), s)) for g in groups}
    if recipe == "odd-rand":
        return {g.name: rng.choice(off4(g)) for g in subset()}
    raise ValueError(recipe)


def conv_facts(model: nn.Module, shape: tuple[int, ...]) -> dict:
    """MACs of the model's convs and linears at ``shape``, and the convs onnxruntime keeps off NCHWc."""
    rows = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            cin, g = mod.in_channels, mod.groups
            macs = out.numel() * (cin // g) * mod.kernel_size[0] * mod.kernel_size[1]
            depthwise = g > 1 and g == cin == mod.out_channels
            off = (cin % BLOCK != 0) if depthwise else (g == 1 and cin >= 16 and cin % BLOCK != 0)
            rows.append((macs, True, off))
        elif isinstance(mod, nn.Linear):
            rows.append((mod.in_features * mod.out_features, False, False))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(shape))
    finally:
        for h in hs:
            h.remove()
    macs = sum(r[0] for r in rows)
    off_macs = sum(r[0] for r in rows if r[2])
    return {"mmacs": macs / 1e6, "convs": sum(r[1] for r in rows), "convs_off_nchwc": sum(r[2] for r in rows),
            "macs_off_nchwc_share": off_macs / macs if macs else 0.0}


def onnx_off_convs(path: str) -> dict[str, int]:
    """Convs of the exported graph that onnxruntime keeps off NCHWc, by type (the rule of :func:`conv_facts`)."""
    import onnx
    g = onnx.load(path, load_external_data=False).graph
    dims = {t.name: list(t.dims) for t in g.initializer}
    out = {"dense": 0, "depthwise": 0}
    for n in g.node:
        if n.op_type != "Conv" or n.input[1] not in dims or len(dims[n.input[1]]) != 4:
            continue
        cout, cin_g = dims[n.input[1]][:2]
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if group > 1 and cin_g == 1 and cout == group:
            out["depthwise"] += cout % BLOCK != 0
        elif group == 1:
            out["dense"] += cin_g >= 16 and cin_g % BLOCK != 0
    return out


def widths_text(groups, steps: dict[str, int]) -> str:
    kept = sorted({g.kept(steps[g.name]) for g in groups if g.name in steps})
    off = sorted({k for k in kept if k % BLOCK})
    shown = ",".join(map(str, kept)) if len(kept) <= 6 else f"{len(kept)} widths {kept[0]}..{kept[-1]}"
    return shown + (f" (off-4: {','.join(map(str, off[:5]))}{',...' if len(off) > 5 else ''})" if off else "")


def build_variants(cache: ResultsCache, work: Path, seed: int, device: str, families: list[str]) -> None:
    variants: dict = cache.data["variants"]
    profile = load_profile(device)
    for fam in [f for f in FAMILIES if f.name in families]:
        names = [f"{fam.name}-full"] + ([f"{fam.name}-anchor{fam.anchor[1]}"] if fam.anchor else []) + \
                [f"{fam.name}-{r}" for r in RECIPES] + [f"{fam.name}-at{s}" for s in fam.sizes] + \
                [f"{fam.name}-{r}-at{s}" for r, s in fam.combined]
        if all(n in variants and Path(variants[n]["path"]).is_file() for n in names):
            continue
        torch.manual_seed(seed)
        base = fam.build().eval()
        rng = random.Random(f"{seed}-{fam.name}")
        full_facts = conv_facts(base, fam.shape())
        pruned: dict[str, tuple[nn.Module, str, dict]] = {}
        for recipe, (m, sf) in RECIPES.items():
            groups = channel_groups(base, fam.shape(), multiple=m, step_fraction=sf)
            steps = recipe_steps(recipe, groups, rng)
            orders = channel_orders(base, [g for g in groups if g.name in steps], fam.shape(), "magnitude")
            model = prune_channels(base, groups, orders, steps, fam.shape())
            desc = (f"{len(steps)}/{len(groups)} groups, {sum(steps.values())} steps "
                    f"(m={m}, step {sf:g}); kept {widths_text(groups, steps)}")
            pruned[recipe] = (model, desc, {"multiple": m, "step_fraction": sf, "steps": steps})
        jobs = [(f"{fam.name}-full", "base" if fam.anchor else "anchor", base, fam.size, "unpruned", {})]
        if fam.anchor:
            torch.manual_seed(seed)
            jobs.append((f"{fam.name}-anchor{fam.anchor[1]}", "anchor", fam.anchor[0]().eval(), fam.anchor[1],
                         "unpruned, 1000 classes (as in validate_predictor.py)", {}))
        jobs += [(f"{fam.name}-{r}", "channels-8" if RECIPES[r][0] == 8 else "channels-odd", *pruned[r][:1],
                  fam.size, pruned[r][1], pruned[r][2]) for r in RECIPES]
        jobs += [(f"{fam.name}-at{s}", "resized", base, s, "unpruned", {}) for s in fam.sizes]
        jobs += [(f"{fam.name}-{r}-at{s}", "combined", pruned[r][0], s, pruned[r][1], pruned[r][2])
                 for r, s in fam.combined]
        for name, kind, model, size, desc, extra in jobs:
            if name in variants and Path(variants[name]["path"]).is_file():
                continue
            shape = fam.shape(size)
            full = full_facts if kind != "anchor" else conv_facts(model, shape)
            path = work / f"{name}.onnx"
            t0 = time.perf_counter()
            ex = export_onnx(model, shape, path)
            export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pred = predict(path, profile).latency_ms
            predict_s = time.perf_counter() - t0
            kernels = model_kernels(path, profile)
            graph = optimised_graph(str(path))
            facts = conv_facts(model, shape)
            variants[name] = {
                "family": fam.name, "name": name, "kind": kind, "size": size, "shape": list(shape),
                "channels": desc, **extra, **facts, "mmacs_vs_full": facts["mmacs"] / full["mmacs"],
                "path": str(path), "exporter": ex.exporter, "export_s": export_s,
                "predicted_ms": pred, "predict_s": predict_s,
                "predicted_nchwc_convs": sum(1 for k in kernels if k.op == "Conv" and k.nchwc),
                "predicted_convs": sum(1 for k in kernels if k.op == "Conv"),
                "ort_convs": len(graph["convs"]), "ort_nchwc_convs": graph["nchwc_convs"],
                "cpu_rounds": [], "wall_rounds": [],
            }
            cache.save()
            v = variants[name]
            print(f"{name:28s} {kind:12s} {size:3d}px  {v['mmacs']:8.1f} MMACs  predicted {pred:7.3f} ms  "
                  f"NCHWc convs ort {v['ort_nchwc_convs']}/{v['ort_convs']}, predictor "
                  f"{v['predicted_nchwc_convs']}/{v['predicted_convs']}  (export {export_s:.1f}s)", flush=True)


def measure_rounds(cache: ResultsCache, rounds: int, min_rounds: int, budget_s: float, threads: int,
                   providers: list[str], seed: int, warmup: int, started: float) -> None:
    """Interleaved rounds, one at a time (each with ``validate_predictor.measure``), saved after each."""
    variants = list(cache.data["variants"].values())
    done = min(len(v["cpu_rounds"]) for v in variants)
    for v in variants:          # an interrupted round left nothing; a variant added later restarts all
        del v["cpu_rounds"][done:], v["wall_rounds"][done:]
    times = []
    while done < rounds:
        spent = time.perf_counter() - started
        if done >= min_rounds and times and spent + float(np.mean(times)) > budget_s:
            print(f"stopping after {done} rounds: the next would pass the {budget_s / 60:.0f}-minute budget",
                  flush=True)
            break
        t0 = time.perf_counter()
        tmp = [vp.Variant(v["family"], v["name"], [], v["path"]) for v in variants]
        vp.measure(tmp, 1, threads, providers, seed * 1000 + done, warmup)
        for v, t in zip(variants, tmp):
            v["cpu_rounds"].append(t.cpu_rounds[0])
            v["wall_rounds"].append(t.wall_rounds[0])
        done += 1
        times.append(time.perf_counter() - t0)
        cache.data["rounds_done"] = done
        cache.add_seconds("timing", times[-1])
        cache.save()
        print(f"round {done}/{rounds} in {times[-1]:.0f}s", flush=True)


# ---------------------------------------------------------------- summary

def within(pred, meas, tol: float) -> float:
    return float(np.mean(np.abs(relative_errors(pred, meas)) <= tol))


def judge(vs: list[dict], meas_key: str = "cpu_ms") -> dict:
    pred = [v["predicted_ms"] for v in vs]
    meas = [v[meas_key] for v in vs]
    s = error_summary(pred, meas)
    s["within_20pct"] = within(pred, meas, 0.20)
    s["spearman"] = vp.spearman(pred, meas) if len(vs) > 2 else float("nan")
    return s


def block_removal_figures() -> dict | None:
    """The block-removal study's figures (docs/devices_validation.json), with ±20% added."""
    path = ROOT / "docs" / "devices_validation.json"
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    s = judge(old["variants"])
    s.update({"when": old.get("when"), "rounds": old.get("rounds"), "ort_version": old.get("ort_version")})
    return s


def block_study_variants() -> dict[str, dict]:
    path = ROOT / "docs" / "devices_validation.json"
    return {v["name"]: v for v in json.loads(path.read_text())["variants"]} if path.is_file() else {}


def summarize(data: dict) -> dict:
    vs = list(data["variants"].values())
    for v in vs:
        v["cpu_ms"] = float(np.median(v["cpu_rounds"]))
        v["wall_ms"] = float(np.median(v["wall_rounds"]))
        v["error"] = v["predicted_ms"] / v["cpu_ms"] - 1
        v["iqr_over_median"] = float(np.subtract(*np.percentile(v["cpu_rounds"], [75, 25])) / v["cpu_ms"])
    # The anchors are the block-removal study's full models: their figure now against then is how much
    # slower this machine runs them today (the other jobs share caches, memory bandwidth and, under KVM,
    # perhaps the physical core); "adjusted" figures divide each family's measurements by it.
    old = block_study_variants()
    anchors = {}
    for v in vs:
        o = old.get(f"{v['family']}-full")
        if v["kind"] == "anchor" and o:
            anchors[v["family"]] = {"variant": v["name"], "predicted_ms": v["predicted_ms"], "cpu_ms": v["cpu_ms"],
                                    "error": v["error"], "then_predicted_ms": o["predicted_ms"],
                                    "then_cpu_ms": o["cpu_ms"], "then_error": o["predicted_ms"] / o["cpu_ms"] - 1,
                                    "slowdown": v["cpu_ms"] / o["cpu_ms"] - 1}
    for v in vs:
        slow = anchors.get(v["family"], {}).get("slowdown", 0.0)
        v["cpu_ms_adj"] = v["cpu_ms"] / (1 + slow)
        v["error_adj"] = v["predicted_ms"] / v["cpu_ms_adj"] - 1
    for v in vs:
        v["off_nchwc_by_type"] = onnx_off_convs(v["path"]) if Path(v["path"]).is_file() else None
    new = [v for v in vs if v["kind"] != "anchor"]
    per_family = {}
    for fam in [f.name for f in FAMILIES if any(v["family"] == f.name for v in new)]:
        d = {}
        for key, sel in (("on", [v for v in new if v["family"] == fam and v["convs_off_nchwc"] == 0]),
                         ("off", [v for v in new if v["family"] == fam and v["convs_off_nchwc"] > 0])):
            if sel:
                r = [v["cpu_ms"] / v["predicted_ms"] for v in sel]
                ra = [v["cpu_ms_adj"] / v["predicted_ms"] for v in sel]
                d[key] = {"n": len(sel), "ratio_median": float(np.median(r)), "ratio_min": min(r),
                          "ratio_max": max(r), "adj_ratio_median": float(np.median(ra)),
                          "adj_ratio_min": min(ra), "adj_ratio_max": max(ra),
                          "share_min": min(v["macs_off_nchwc_share"] for v in sel),
                          "share_max": max(v["macs_off_nchwc_share"] for v in sel)}
        per_family[fam] = d
    out = {"nchwc_by_family": per_family, "all": judge(new), "all_adjusted": judge(new, "cpu_ms_adj"),
           "vs_wall": judge(new, "wall_ms"), "anchors": anchors, "by_kind": {}, "by_kind_adjusted": {},
           "by_family": {}, "by_kind_family": {}}
    for kind in KINDS:
        ks = [v for v in vs if v["kind"] == kind]
        if ks:
            out["by_kind"][kind] = judge(ks)
            out["by_kind_adjusted"][kind] = judge(ks, "cpu_ms_adj")
    for fam in [f.name for f in FAMILIES if any(v["family"] == f.name for v in vs)]:
        out["by_family"][fam] = judge([v for v in new if v["family"] == fam])
        for kind in KINDS:
            ks = [v for v in vs if v["family"] == fam and v["kind"] == kind]
            if ks:
                out["by_kind_family"][f"{fam}/{kind}"] = judge(ks)
    on = [v for v in new if v["convs_off_nchwc"] == 0]
    off = [v for v in new if v["convs_off_nchwc"] > 0]
    for key, sel in (("on_nchwc", on), ("off_nchwc", off)):
        out[key] = judge(sel) if sel else None
        out[key + "_adjusted"] = judge(sel, "cpu_ms_adj") if sel else None
    # error against the share of MACs in convs onnxruntime keeps off NCHWc: e = a + b * share
    x = np.array([v["macs_off_nchwc_share"] for v in new])
    if off and on:
        for key, ek in (("error_vs_off_share", "error"), ("error_vs_off_share_adjusted", "error_adj")):
            e = np.array([v[ek] for v in new])
            b, a = np.polyfit(x, e, 1)
            out[key] = {"intercept": float(a), "slope": float(b), "corr": float(np.corrcoef(x, e)[0, 1])}
    out["nchwc_rule_check"] = {   # onnxruntime's optimised graph vs the torch-side rule, per variant
        "agree": sum(v["ort_convs"] - v["ort_nchwc_convs"] == v["convs_off_nchwc"] for v in vs), "n": len(vs)}
    out["measurement_iqr_over_median"] = float(np.median([v["iqr_over_median"] for v in vs]))
    half = data["rounds_done"] // 2
    if half:
        out["first_vs_second_half"] = error_summary([float(np.median(v["cpu_rounds"][:half])) for v in vs],
                                                    [float(np.median(v["cpu_rounds"][half:])) for v in vs])
    out["block_removal"] = block_removal_figures()
    return out


# ---------------------------------------------------------------- markdown

def _p(x: float) -> str:
    return f"{x * 100:.0f}%"


def _row(label: str, d: dict) -> str:
    return (f"| {label} | {d['n']} | {_p(d['within_10pct'])} | {_p(d['within_20pct'])} | "
            f"{d['median_abs_rel_err']:.1%} | {d['max_abs_rel_err']:.1%} | {d['mean_rel_err']:+.1%} | "
            f"{d['spearman']:.3f} |")


HEAD = ("| set | n | within ±10% | within ±20% | median abs error | worst | mean signed error | Spearman |\n"
        "|---|---|---|---|---|---|---|---|")


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ort_runner.cpu_model()
    for line in out.splitlines():
        if line.strip().lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ort_runner.cpu_model()


def write_docs(data: dict, path: Path) -> None:
    s = data["summary"]
    vs = list(data["variants"].values())
    meta = data["meta"]
    a, br = s["all"], s["block_removal"]
    kinds = s["by_kind"]
    exporters: dict[str, int] = {}
    for v in vs:
        exporters[v["exporter"]] = exporters.get(v["exporter"], 0) + 1
    lines = [
        "# Host latency predictor on pruned and resized shapes",
        "",
        "Does the `host` profile's latency predictor (`devices/predictor.py`, `devices/kernel_graph.py`, "
        "`devices/profiles/host.toml`), fitted and validated on unpruned models and block-removal variants "
        "(docs/devices.md), hold on the shapes the channel and resolution levers create: channel counts "
        "that are multiples of 8, odd or small, and small feature maps? This is the **host profile on this "
        "host** only; the ARM profiles (rpi3, rpi4, rpi5, jetson-nano) cannot be validated here without a "
        "board (`edgeprune bench --ssh` on one would).",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['lscpu_model']} (`lscpu` model name; {meta['cpu_count']} vCPUs, KVM guest, shared "
        f"with other jobs: 1-minute load average {meta['load'][0]:.2f} before the "
        f"timing, {meta['load'][1]:.2f} after). onnxruntime {meta['ort_version']} (CPUExecutionProvider), "
        f"torch {meta['torch_version']}, {meta['threads']} intra-op thread. Run: {meta['when']}, "
        f"{data['rounds_done']} interleaved rounds; {meta['total_s'] / 60:.1f} min in all (exports, "
        f"predictions and optimised graphs {data['seconds'].get('build', 0):.0f} s, timing "
        f"{data['seconds'].get('timing', 0):.0f} s).",
        "",
        "## Method",
        "",
        "Variants (random weights, batch 1, float32), per family: the unpruned model (`base`); "
        "channel-pruned with `channel_groups(model, shape, multiple=m, step_fraction=f)` + "
        "`channel_orders(..., \"magnitude\")` + `prune_channels(...)`: with `multiple=8` (the build's "
        "default; kind `channels-8`) every group at its max steps (`ch8-max`), at half its max (`ch8-half`), "
        "and a random subset of the groups at random steps (`ch8-rand`); with `multiple=1` (kind "
        "`channels-odd`) every group at its deepest step that leaves a count off a multiple of 4 "
        "(`odd-deep`, step fraction 0.11), at such a step nearest half its max (`odd-mid`, 0.09), and a "
        "random subset at random such steps (`odd-rand`, 0.09) (a group with no such step takes the "
        "same rule over all its steps); the unpruned model at smaller inputs (`resized`); and channel-"
        "pruned models at a smaller input (`combined`: pruned at the family's size, exported at the "
        "smaller one). Each is exported with `export_onnx` (the project's default: the dynamo exporter, "
        "TorchScript as fallback; here " + ", ".join(f"{n} {e}" for e, n in sorted(exporters.items()))
        + ") and predicted from its own file with `predict(path, \"host\")`.",
        "",
        "Measurement: `measure` of `benchmarks/studies/validate_predictor.py` (imported, i.e. "
        "`edgeprune.devices.latency_fit.interleaved_timings`), one round per call: each round visits every "
        "variant in a fresh shuffled order, opens a fresh onnxruntime session (1 intra-op thread, "
        f"ORT_ENABLE_ALL), runs {meta['warmup']} untimed warm-up runs and 10 timed runs; a variant's "
        "figure is the median over rounds of each round's median **CPU time of the inference thread** "
        "(with one intra-op thread onnxruntime computes on the calling thread, so time spent descheduled "
        f"by the other jobs is left out). {data['rounds_done']} rounds (the block-removal study ran "
        f"{br['rounds'] if br else '?'}); median spread of a variant's rounds (IQR / median) "
        f"{s['measurement_iqr_over_median']:.1%}."
        + (" The measurement against itself (each variant's median over the first half of the rounds "
           f"against the second half): {_p(s['first_vs_second_half']['within_5pct'])} within ±5%, "
           f"{_p(s['first_vs_second_half']['within_10pct'])} within ±10%, median difference "
           f"{s['first_vs_second_half']['median_abs_rel_err']:.1%}, worst "
           f"{s['first_vs_second_half']['max_abs_rel_err']:.1%}." if "first_vs_second_half" in s else ""),
        "",
        "NCHWc path: for each variant the optimised graph of an onnxruntime session "
        "(`channel_multiple.optimised_graph`) tells which convolutions run in the blocked NCHWc layout. "
        "In onnxruntime 1.32 on this host a dense conv stays NCHWc when its input has fewer than 16 "
        "channels or a multiple of 4 (any output count, padded to the 16-channel block), a depthwise conv "
        "only when its channel count is a multiple of 4; the others run on the plain NCHW path "
        "(docs/channel-multiple.md: a 3x3 conv with 57 channels +44% on 56, an inverted-residual block "
        "with 57 expanded channels about 2x). The predictor's kernel graph puts every dense and depthwise "
        "conv on NCHWc, padded to 16. The column *off NCHWc* counts the convs onnxruntime keeps off it "
        "(the rule above applied to the PyTorch model; it matched the optimised graph's count in "
        f"{s['nchwc_rule_check']['agree']} of {s['nchwc_rule_check']['n']} variants) and their share of "
        "the model's MACs.",
        "",
        "## Anchors: this machine today against the block-removal run",
        "",
        "Each family also carries, in the same rounds, the exact full model that validate_predictor.py "
        "measured (ResNet-56 at 32x32 is the family's own base; torchvision ResNet-18 at 128x128 and "
        "MobileNetV2 at 160x160 with 1000 classes), predicted from its own export as then:",
        "",
        "| anchor | predicted ms now | then | measured now | error now | measured then | error then | "
        "now / then |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {d['variant']} | {d['predicted_ms']:.3f} | {d['then_predicted_ms']:.3f} | {d['cpu_ms']:.3f} | "
          f"{d['error']:+.1%} | "
          f"{d['then_cpu_ms']:.3f} | {d['then_error']:+.1%} | {d['slowdown']:+.1%} |" for d in s["anchors"].values()],
        "",
        "So the same onnxruntime session code runs these models slower today: even the CPU time of the "
        "inference thread is not immune to the jobs beside it (shared caches and memory bandwidth, and under "
        f"KVM possibly the same physical core), and onnxruntime is {meta['ort_version']} now against "
        f"{br['ort_version'] if br else '?'} then. That part of today's error is the machine, not the "
        "shapes. The *adjusted* figures below divide every measurement of a family by its anchor's now/then "
        "ratio, i.e. judge each new shape against the predictor's error on the validated model under the "
        "same conditions; the raw figures are the plain comparison with today's measurement. Neither is "
        "exact (the other jobs need not slow every shape alike); read the raw ones as the error a user of "
        "this loaded host sees, and the adjusted ones as the error the shapes add.",
        "",
        "## Summary",
        "",
        "Error = predicted / measured − 1 (negative: the predictor says faster than measured). "
        "All rows except the anchors' are the new shapes only.",
        "",
        "Against today's measurement (raw):",
        "",
        HEAD,
        _row("**all new shapes**", a),
    ]
    for kind, d in kinds.items():
        lines.append(_row(f"{kind}", d))
    if s["on_nchwc"]:
        lines.append(_row("every conv on NCHWc in onnxruntime", s["on_nchwc"]))
    if s["off_nchwc"]:
        lines.append(_row("some conv off NCHWc in onnxruntime", s["off_nchwc"]))
    lines.append(_row("all new shapes, against wall-clock medians", s["vs_wall"]))
    if br:
        lines.append(_row(f"block-removal variants, docs/devices.md ({br['when']}, onnxruntime "
                          f"{br['ort_version']}, {br['rounds']} rounds)", br))
    lines += ["", "Adjusted by each family's anchor (see above):", "", HEAD,
              _row("**all new shapes**", s["all_adjusted"])]
    for kind, d in s["by_kind_adjusted"].items():
        if kind != "anchor":
            lines.append(_row(f"{kind}", d))
    if s["on_nchwc_adjusted"]:
        lines.append(_row("every conv on NCHWc in onnxruntime", s["on_nchwc_adjusted"]))
    if s["off_nchwc_adjusted"]:
        lines.append(_row("some conv off NCHWc in onnxruntime", s["off_nchwc_adjusted"]))
    if br:
        lines.append(_row("block-removal variants, docs/devices.md", br))
    lines += ["", "Per family and kind (raw):", "", HEAD]
    for key, d in s["by_kind_family"].items():
        lines.append(_row(key, d))
    lines += ["", "Off the NCHWc path, per family: measured / predicted (how many times slower than predicted "
              "the variants run), raw and adjusted, for the variants with every conv on NCHWc and those with "
              "some off it:", "",
              "| family | on NCHWc: n | measured / predicted (adjusted) | off NCHWc: n | share of MACs off | "
              "measured / predicted (adjusted) |", "|---|---|---|---|---|---|"]
    for fam, d in s["nchwc_by_family"].items():
        on_, off_ = d.get("on"), d.get("off")
        lines.append(
            f"| {fam} | {on_['n'] if on_ else 0} | "
            + (f"{on_['ratio_median']:.2f} ({on_['adj_ratio_median']:.2f}) median, "
               f"{on_['ratio_min']:.2f}..{on_['ratio_max']:.2f} | " if on_ else "- | ")
            + f"{off_['n'] if off_ else 0} | "
            + (f"{off_['share_min']:.0%}..{off_['share_max']:.0%} | {off_['ratio_median']:.2f} "
               f"({off_['adj_ratio_median']:.2f}) median, {off_['ratio_min']:.2f}..{off_['ratio_max']:.2f} "
               f"({off_['adj_ratio_min']:.2f}..{off_['adj_ratio_max']:.2f}) |" if off_ else "- | - |"))
    lines += ["", "## All variants", "",
              "| family | variant | kind | input | channels | MMACs (vs full) | off NCHWc: convs (types; MAC share) | "
              "predicted ms | measured ms (spread) | error | adjusted error |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in vs:
        lines.append(
            f"| {v['family']} | {v['name']} | {v['kind']} | {v['size']}x{v['size']} | {v['channels']} | "
            f"{v['mmacs']:.1f} ({v['mmacs_vs_full']:.0%}) | {v['convs_off_nchwc']}/{v['convs']}"
            + (f" ({v['off_nchwc_by_type']['dense']} dense, {v['off_nchwc_by_type']['depthwise']} dw; "
               f"{v['macs_off_nchwc_share']:.0%})" if v["convs_off_nchwc"] and v.get("off_nchwc_by_type") else "")
            + f" | {v['predicted_ms']:.3f} | {v['cpu_ms']:.3f} ({v['iqr_over_median']:.0%}"
            f"{'†' if v['iqr_over_median'] > NOISY else ''}) | {v['error']:+.1%} | "
            f"{v['error_adj']:+.1%} |")
    lines += ["", "Channels: groups pruned of the family's groups at that multiple, total steps, and the distinct "
              "kept counts of the pruned groups (those off a multiple of 4 named). MMACs: multiply-accumulates of "
              "convs and linears (all taps, padding included), relative to the family's unpruned model at its own "
              "size. Measured: CPU-time median over rounds, and in brackets the spread of the rounds (IQR / "
              f"median); † marks a spread above {NOISY:.0%}: there fresh sessions of the same file ran at two "
              "speeds (per-round figures in the JSON), so that median depends on how the sessions fell. "
              "Wall-clock medians, per-round figures and the "
              "optimised graphs' conv counts are in `docs/predictor-shapes.json`.", ""]
    lines += repeat_lines(data)
    lines += ["## Conclusion", "", *conclusion(data), ""]
    write_text_atomic(path, "\n".join(lines) + "\n")


def repeat_summary(other: dict, path: Path) -> dict:
    """The figures of another finished run of the same variants, to record beside this one."""
    other["summary"] = summarize(other)
    keep = ("all", "all_adjusted", "on_nchwc", "on_nchwc_adjusted", "off_nchwc", "off_nchwc_adjusted")
    return {"json": str(path), "when": other["meta"]["when"], "rounds": other["rounds_done"],
            "load": other["meta"]["load"], "summary": {k: other["summary"][k] for k in keep},
            "slowdown": {f: d["slowdown"] for f, d in other["summary"]["anchors"].items()},
            "cpu_ms": {n: v["cpu_ms"] for n, v in other["variants"].items()},
            "error": {n: v["error"] for n, v in other["variants"].items()}}


def repeat_lines(data: dict) -> list[str]:
    out = []
    for r in data.get("repeats", []):
        vs = data["variants"]
        common = [n for n in vs if n in r["cpu_ms"]]
        diff = {n: r["cpu_ms"][n] / vs[n]["cpu_ms"] - 1 for n in common}
        big = sorted((n for n in common if abs(diff[n]) > 0.05), key=lambda n: -abs(diff[n]))
        rs = r["summary"]
        out += ["## Repeat run", "",
                f"The same variants measured by a second run of the script ({r['when']}, its own exports in "
                f"another folder, {r['rounds']} rounds, load average {r['load'][0]:.2f} before): each variant's "
                f"measured median against this run's differs by median "
                f"{np.median([abs(x) for x in diff.values()]):.1%}; "
                f"{sum(abs(x) <= 0.05 for x in diff.values())} of {len(common)} within ±5%"
                + ("; beyond it: " + ", ".join(f"{n} {diff[n]:+.1%}" for n in big) if big else "")
                + ". Anchor slowdowns in that run: " + ", ".join(f"{f} {x:+.1%}" for f, x in r["slowdown"].items())
                + ". Its summary:", "", HEAD]
        for key, label in (("all", "all new shapes, raw"), ("all_adjusted", "all new shapes, adjusted"),
                           ("on_nchwc_adjusted", "every conv on NCHWc, adjusted"),
                           ("off_nchwc_adjusted", "some conv off NCHWc, adjusted")):
            if rs.get(key):
                out.append(_row(label, rs[key]))
        out.append("")
    return out


def _brief(d: dict) -> str:
    return (f"{_p(d['within_10pct'])} within ±10%, {_p(d['within_20pct'])} within ±20%, median |error| "
            f"{d['median_abs_rel_err']:.1%}, mean signed {d['mean_rel_err']:+.1%}, worst {d['max_abs_rel_err']:.1%}, "
            f"Spearman {d['spearman']:.3f}")


def conclusion(data: dict) -> list[str]:
    s, meta = data["summary"], data["meta"]
    vs = list(data["variants"].values())
    new = [v for v in vs if v["kind"] != "anchor"]
    a, aa, br = s["all"], s["all_adjusted"], s["block_removal"]
    anchors = list(s["anchors"].values())
    out = [f"This judges the `host` profile on this host only ({meta['lscpu_model']}, onnxruntime "
           f"{meta['ort_version']}, 1 intra-op thread). The ARM profiles (rpi3, rpi4, rpi5, jetson-nano) cannot "
           "be validated here without a board: their profiles set no NCHWc block (`nchwc_block = 0`), their "
           "constants come from published ncnn figures, and how onnxruntime's Arm kernels take odd channel "
           "counts was not measured, so nothing below carries over to them.", ""]
    neg = sum(v["error"] < 0 for v in new)
    out.append(f"- **Overall, against today's measurement**, the predictor holds much worse on these shapes "
               f"than on block removal: {_brief(a)} ({a['n']} variants; {neg} of them predicted faster than "
               f"measured), against {_brief(br)} for the block-removal variants in docs/devices.md." if br else
               f"- **Overall**: {_brief(a)}.")
    if anchors:
        sl = [d["slowdown"] for d in anchors]
        out.append(
            f"- **Part of that gap is the machine today, not the shapes.** The block-removal study's own full "
            f"models, timed in the same rounds, run {min(sl):+.0%}..{max(sl):+.0%} slower than in that study "
            f"(errors now " + ", ".join(f"{d['variant']} {d['error']:+.1%}" for d in anchors) + "; then "
            + ", ".join(f"{d['then_error']:+.1%}" for d in anchors) + "), with the other jobs loading both "
            f"cores (load average {meta['load'][0]:.1f}) and onnxruntime {meta['ort_version']} instead of "
            f"{br['ort_version'] if br else '?'}. Taking that out (each family's measurements divided by its "
            f"anchor's slowdown) leaves, for all new shapes: {_brief(aa)}.")
    ona, offa, on, off = s["on_nchwc_adjusted"], s["off_nchwc_adjusted"], s["on_nchwc"], s["off_nchwc"]
    if ona:
        onv = [v for v in new if v["convs_off_nchwc"] == 0]
        worst = sorted(onv, key=lambda v: v["error_adj"])[:3]
        ka = s["by_kind_adjusted"]
        kinds = "; ".join(f"{k} {ka[k]['median_abs_rel_err']:.1%} median, worst {ka[k]['max_abs_rel_err']:.1%}"
                          for k in ("channels-8", "resized") if k in ka)
        out.append(
            f"- **Where onnxruntime keeps every conv on its NCHWc path, the predictor holds** (the multiple-8 "
            f"channel variants, the smaller inputs, the multiple-8 combined ones and the unpruned 10-class "
            f"models: {ona['n']} variants). Adjusted: {_brief(ona)}; raw: {_brief(on)}. By kind, adjusted: "
            f"{kinds}. That is close to, but not as tight as, the block-removal figures (median "
            f"{br['median_abs_rel_err']:.1%}, all within ±10%); the three largest misses: " + ", ".join(
                f"{v['name']} {v['error_adj']:+.1%} ({v['cpu_ms']:.2f} ms)" for v in worst) + ".")
    noisy = [v for v in vs if v["iqr_over_median"] > NOISY]
    if noisy:
        reps = data.get("repeats", [])
        out.append(
            f"- **Measurement limits.** {len(noisy)} variant(s) spread by more than {NOISY:.0%} over the rounds "
            "(fresh sessions of the same file running at two speeds on this shared machine): "
            + ", ".join(f"{v['name']} (IQR/median {v['iqr_over_median']:.0%}, {v['cpu_ms']:.2f} ms"
                        + "".join(f"; {r['cpu_ms'][v['name']]:.2f} ms in the repeat run" for r in reps
                                  if v["name"] in r["cpu_ms"]) + ")" for v in noisy)
            + "; their errors say more about the machine than about the predictor.")
    if off:
        fam = s["nchwc_by_family"]
        offv = [v for v in new if v["convs_off_nchwc"] > 0]
        fit = s.get("error_vs_off_share")
        dwv = [v for v in offv if (v.get("off_nchwc_by_type") or {}).get("depthwise")]
        per = "; ".join(
            f"{f}: {d['off']['ratio_min']:.2f}x..{d['off']['ratio_max']:.2f}x "
            f"({d['off']['adj_ratio_min']:.2f}x..{d['off']['adj_ratio_max']:.2f}x adjusted) against "
            f"{d['on']['ratio_median']:.2f}x ({d['on']['adj_ratio_median']:.2f}x) for its on-NCHWc variants"
            for f, d in fam.items() if d.get("off") and d.get("on"))
        out.append(
            f"- **Where it fails: channel counts off a multiple of 4.** The {off['n']} variants in which "
            f"onnxruntime keeps some convs off NCHWc ({len([v for v in offv if v['kind'] == 'channels-odd'])} of "
            f"the {len([v for v in new if v['kind'] == 'channels-odd'])} `channels-odd` ones and the "
            f"{len([v for v in offv if v['kind'] == 'combined'])} combined ones with odd counts; "
            f"{sum(v['error'] < 0 for v in offv)} of them predicted faster than measured): raw {_brief(off)}; "
            f"adjusted {_brief(offa)}. Measured over predicted, per family: "
            f"{per}. The cause is the one docs/channel-multiple.md measured: onnxruntime runs a dense conv on "
            "NCHWc only if its input has fewer than 16 channels or a multiple of 4, and a depthwise conv only if "
            "its channel count is a multiple of 4 (checked against the optimised graph of each of the "
            f"{s['nchwc_rule_check']['n']} variants: {s['nchwc_rule_check']['agree']} agree), and runs the others "
            "on the plain NCHW path (im2col + SGEMM), which is slower; the predictor's kernel graph "
            "(`devices/kernel_graph.py`, `on_Conv`) blocks every dense and depthwise conv regardless and "
            "prices it as a padded NCHWc kernel. The penalty is worst for depthwise convs"
            + (f" ({len(dwv)} variants with depthwise convs off NCHWc ("
               + ", ".join(sorted({v['family'] for v in dwv})) + "): "
               + ", ".join(f"{v['name']} {v['cpu_ms'] / v['predicted_ms']:.1f}x" for v in dwv) + ")" if dwv else "")
            + (f"; over all new shapes the error falls with the share of MACs in off-NCHWc convs as "
               f"{fit['intercept']:+.1%} {fit['slope']:+.2f} x share (correlation {fit['corr']:+.2f}), though "
               "the slope depends on the conv type, so read the per-family ratios" if fit else "")
            + ". The fix belongs in the predictor: apply onnxruntime's rule in `kernel_graph.py` and give "
            "plain-path convs constants of their own, fitted on models that have them (the calibration suite, "
            "`devices/suite.py`, draws its widths as multiples of 8, so it holds next to none).")
        out.append(
            "- **For builds**: the default channel multiple (8) keeps every count a multiple of 4, so the build's "
            "channel plans stay where the predictor holds. Any `--channel-multiple` that is not a multiple of 4 "
            "(1, 2, 3, 5, 6, 7, ...) can leave counts off it, and those predictions are too optimistic, by a "
            "factor of several on depthwise networks; docs/channel-multiple.md already advises against such "
            "counts on this host for speed alone.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "devices" / "shapes")
    ap.add_argument("--rounds", type=int, default=31, help="Interleaved rounds at most.")
    ap.add_argument("--min-rounds", type=int, default=9, help="Rounds run even past the time budget.")
    ap.add_argument("--budget-min", type=float, default=14.0,
                    help="Stop adding rounds (after --min-rounds) when the next would end past this.")
    ap.add_argument("--warmup", type=int, default=10, help="Untimed runs before each variant's timed runs.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="host")
    ap.add_argument("--families", default=",".join(f.name for f in FAMILIES), help="Comma-separated (a quick check).")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "predictor-shapes.json")
    ap.add_argument("--markdown", type=Path, default=ROOT / "docs" / "predictor-shapes.md")
    ap.add_argument("--docs-only", action="store_true", help="Rewrite the markdown from the JSON.")
    ap.add_argument("--add-repeat", type=Path, metavar="JSON",
                    help="With --docs-only: record another finished run of the same variants (its --json) beside "
                         "this one's figures.")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    profile = load_profile(args.device)
    config = {"version": VERSION, "seed": args.seed, "warmup": args.warmup, "device": args.device,
              "workdir": str(args.workdir), "families": args.families, "ort_version": ort_runner.ort.__version__}
    cache = ResultsCache(args.json, config, {"variants": {}, "rounds_done": 0})
    if args.docs_only:
        if not cache.data["variants"] or "meta" not in cache.data:
            print(f"{args.json} holds no finished run of this configuration", file=sys.stderr)
            return 2
        cache.data["summary"] = summarize(cache.data)
        if args.add_repeat:
            rep = repeat_summary(json.loads(args.add_repeat.read_text()), args.add_repeat)
            cache.data["repeats"] = [r for r in cache.data.get("repeats", []) if r["when"] != rep["when"]] + [rep]
        cache.save()
        write_docs(cache.data, args.markdown)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    previous_s = cache.data.get("meta", {}).get("total_s", 0.0)
    cache.timed("build", lambda: build_variants(cache, args.workdir, args.seed, args.device,
                                                     args.families.split(",")))
    load_before = os.getloadavg()[0]
    measure_rounds(cache, args.rounds, args.min_rounds, args.budget_min * 60 - previous_s, profile.threads,
                   profile.providers, args.seed, args.warmup, started)
    cache.data["meta"] = {
        "command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/validate_predictor_shapes.py"
                   + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "lscpu_model": lscpu_model(), "cpu_count": os.cpu_count(), "ort_version": ort_runner.ort.__version__,
        "torch_version": torch.__version__, "threads": profile.threads, "providers": profile.providers,
        "warmup": args.warmup, "load": [load_before, os.getloadavg()[0]],
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "total_s": previous_s + time.perf_counter() - started,
    }
    cache.data["summary"] = summarize(cache.data)
    cache.save()
    write_docs(cache.data, args.markdown)
    a = cache.data["summary"]["all"]
    print(f"\n{a['n']} variants, {cache.data['rounds_done']} rounds: {a['within_10pct']:.0%} within 10%, "
          f"{a['within_20pct']:.0%} within 20%, median {a['median_abs_rel_err']:.1%}, worst "
          f"{a['max_abs_rel_err']:.1%}, Spearman {a['spearman']:.3f}")
    for kind, d in cache.data["summary"]["by_kind"].items():
        print(f"  {kind:13s} n={d['n']:2d}  within 10% {d['within_10pct']:.0%}  within 20% {d['within_20pct']:.0%}  "
              f"median {d['median_abs_rel_err']:.1%}  mean signed {d['mean_rel_err']:+.1%}  worst "
              f"{d['max_abs_rel_err']:.1%}  Spearman {d['spearman']:.3f}")
    print(f"total {cache.data['meta']['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
