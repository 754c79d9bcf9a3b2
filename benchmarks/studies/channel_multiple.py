"""Which multiple (1, 4, 8 or 16) should channel pruning round kept channel counts to for onnxruntime's CPU kernels?

Run (the committed table, about 8 minutes on 2 busy cores; at normal priority, as timing under ``nice`` next to
another job is mostly pre-emption):

    .venv/bin/python benchmarks/studies/channel_multiple.py

Quick check (seconds; not the table):

    .venv/bin/python benchmarks/studies/channel_multiple.py --kinds pw --sizes 16 --threads 1 \
        --counts 48,49,56,57 --seconds 3 --json /tmp/cm.json --out /tmp/cm.md

onnxruntime's CPU execution provider rewrites convolutions into its blocked NCHWc layout (MLAS; block
8 channels with AVX2, 16 with AVX-512) where the channel counts allow it, and runs the others on the
plain NCHW path (im2col + SGEMM, ``FusedConv``). This study builds small models typical of a pruned
edge CNN with torch, exports each with ``edgeprune.exporters.onnx_export.export_onnx`` and times it
with onnxruntime (the project's ``ort_runner`` sessions: fixed intra-op threads, sequential, default
``ORT_ENABLE_ALL`` optimisation), sweeping the channel count ``c``:

* ``conv3``: ``--depth`` stacked (3x3 conv c->c, padding 1, + ReLU) layers;
* ``pw``:    ``--depth`` stacked (1x1 conv c->c + ReLU) layers;
* ``ir``:    a MobileNetV2 inverted-residual block with a fixed ``--ir-width``-channel input and
  output and ``c`` expanded channels (1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1
  project + BN, residual add): the expanded width is what channel pruning shrinks in such a block.

Stacking two layers keeps the tensor between them in the blocked layout, as inside a pruned network,
so the layout changes at the model's edges are paid once, not per layer.

Timing, built for a shared machine: one *family* (kind, spatial size, threads) at a time, every
channel count of it in its own open session. Each round visits the counts in a fresh random order and
then in the reverse order, ``half`` runs each (``half`` sized from each model's fastest probe run so
that a half-block lasts about ``--block-ms``), so drift within a round hits every count alike. Each
count's figure for a round is the lower quartile of its runs in that round (pre-emption only adds
time; see ``benchmarks/compare.py``); its latency is the median over rounds, and a ratio of two counts
is the median of their per-round ratios (both timed in the same round), with a bootstrap interval
over rounds. Rounds continue until ``--seconds`` are spent (at least ``--min-rounds``).

Raw per-round figures, each model's optimised graph (which convs run NCHWc, and their padded weight
shapes) and the host facts go to ``--json`` after every family, and a rerun with the same
configuration resumes from it; the markdown report is regenerated from it at the end.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgeprune.benchmarks import ort_runner
from edgeprune.benchmarks.compare import bootstrap_median_ci
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.files import write_json_atomic, write_text_atomic
from results_cache import ResultsCache

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("conv3", "pw", "ir")
TORCHSCRIPT_NOTE = (
    "the TorchScript exporter, `ExportConfig(dynamo=False)`, for speed; checked at c = 52, 57 and 64: the dynamo "
    "exporter, the project's default, gives the same optimised graphs, except that for ir off a multiple of 4 "
    "onnxruntime then leaves the project conv and the residual add as `Conv` + `Add` instead of one `FusedConv`, "
    "so the off-4 penalty below would be no smaller")
DEFAULT_COUNTS = "40,44,47-65,92,95,96,97,100,104,120,124,127,128,129,132,136"
MULTIPLES = (4, 8, 16)
NOISY = 0.2                    # a count's rounds spread more than this (IQR/median): marked, left out of summaries
DENSE = range(49, 65)          # the counts whose rounding (up and down) stays inside 48..64


class Cache(ResultsCache):
    """The results file on one line: thousands of per-round figures, one a line, would make it 400 KB."""

    def save(self) -> None:
        write_json_atomic(self.path, self.data, indent=None)


# ---------------------------------------------------------------- models

class Stack(nn.Sequential):
    def __init__(self, c: int, k: int, depth: int) -> None:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(c, c, k, padding=k // 2), nn.ReLU()]
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's stride-1 block: ``width`` -> ``hidden`` (1x1) -> depthwise 3x3 -> ``width`` (1x1), + input."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(width, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, width, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def build(kind: str, c: int, args: argparse.Namespace) -> tuple[nn.Module, int]:
    """The model and its input channel count."""
    torch.manual_seed(c)
    if kind == "conv3":
        return Stack(c, 3, args.depth), c
    if kind == "pw":
        return Stack(c, 1, args.depth), c
    return InvertedResidual(args.ir_width, c), args.ir_width


def macs(kind: str, c: int, size: int, args: argparse.Namespace) -> int:
    hw = size * size
    if kind == "conv3":
        return args.depth * c * c * 9 * hw
    if kind == "pw":
        return args.depth * c * c * hw
    return (2 * args.ir_width * c + 9 * c) * hw


def parse_counts(text: str) -> list[int]:
    out: set[int] = set()
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        out.update(range(int(a), int(b) + 1) if sep else [int(a)])
    return sorted(out)


# ---------------------------------------------------------------- facts

def host_facts() -> dict:
    flags = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    keep = ("Architecture", "Model name", "CPU family", "Model:", "CPU(s):", "Thread(s) per core", "L1d", "L2", "L3",
            "Hypervisor")
    return {**ort_runner.host_facts(), "torch": torch.__version__, "onnx": onnx.__version__,
            "lscpu": [re.sub(r"\s+", " ", ln.strip()) for ln in lscpu.splitlines() if ln.strip().startswith(keep)],
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "fma": "fma" in flags,
            "neon": "asimd" in flags or "neon" in flags}


def optimised_graph(path: str) -> dict:
    """The convolutions onnxruntime runs after ORT_ENABLE_ALL: op, domain and weight shape."""
    with tempfile.TemporaryDirectory(prefix="cm_opt_") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(path, so, providers=[ort_runner.CPU_PROVIDER])
        g = onnx.load(so.optimized_model_filepath).graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    nodes, convs = [], []
    for n in g.node:
        nchwc = n.domain.endswith("nchwc")
        nodes.append(n.op_type + ("[nchwc]" if nchwc else ""))
        if n.op_type in ("Conv", "FusedConv"):
            convs.append({"op": n.op_type, "nchwc": nchwc, "weight": shapes.get(n.input[1])})
    return {"nodes": nodes, "convs": convs, "nchwc_convs": sum(c["nchwc"] for c in convs)}


# ---------------------------------------------------------------- timing one family

def time_family(paths: dict[int, str], threads: int, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    sessions, feeds, half = {}, {}, {}
    for c, p in paths.items():
        sessions[c], _ = ort_runner.open_session(ort_runner.SessionSpec(p, threads, [ort_runner.CPU_PROVIDER]))
        feeds[c] = ort_runner.make_feeds(sessions[c], seed=0)
    for c in paths:
        ort_runner.warm(sessions[c], feeds[c], args.warmup)
    for c in paths:                  # size each half-block from the model's own (fastest) cost
        probe = min(ort_runner.run_once_ms(sessions[c], feeds[c]) for _ in range(5))
        half[c] = min(max(math.ceil(args.block_ms / max(probe, 1e-3)), 2), 200)
    counts = list(paths)
    rounds: dict[int, list[float]] = {c: [] for c in counts}
    t0 = time.perf_counter()
    n = 0
    while n < args.min_rounds or time.perf_counter() - t0 < args.seconds:
        order = list(rng.permutation(counts))
        got: dict[int, list[float]] = {c: [] for c in counts}
        for c in order + order[::-1]:
            s, f = sessions[c], feeds[c]
            got[c] += [ort_runner.run_once_ms(s, f) for _ in range(half[c])]
        for c in counts:
            rounds[c].append(round(float(np.quantile(got[c], args.round_quantile)) * 1000.0, 1))   # µs
        n += 1
        if n >= args.max_rounds:
            break
    return {"rounds": n, "wall_s": time.perf_counter() - t0, "half_block": {str(c): half[c] for c in counts},
            "round_us": {str(c): rounds[c] for c in counts}}


# ---------------------------------------------------------------- analysis

def fam_key(kind: str, size: int, threads: int) -> str:
    return f"{kind}/{size}/t{threads}"


class Family:
    def __init__(self, key: str, d: dict, models: dict) -> None:
        self.key, self.d = key, d
        self.kind, size, t = key.split("/")
        self.size, self.threads = int(size), int(t[1:])
        self.r = {int(c): np.asarray(v) for c, v in d["round_us"].items()}
        self.models = {int(c): models[f"{self.kind}/{self.size}/{c}"] for c in self.r}

    def us(self, c: int) -> float:
        return float(np.median(self.r[c]))

    def ratio(self, a: int, b: int) -> float:
        return float(np.median(self.r[a] / self.r[b]))

    def ratio_ci(self, a: int, b: int, seed: int = 0) -> tuple[float, float]:
        return bootstrap_median_ci(self.r[a] / self.r[b], 0.95, 2000, np.random.default_rng(seed))

    def gmacs(self, c: int) -> float:
        return self.models[c]["macs"] / (self.us(c) * 1e3)

    def noisy(self, *cs: int) -> bool:
        """Any of these counts' per-round figures spread by more than NOISY (interquartile range / median)."""
        return any(float(np.subtract(*np.quantile(self.r[c], [0.75, 0.25]))) > NOISY * self.us(c) for c in cs)

    def mark(self, *cs: int) -> str:
        return "†" if self.noisy(*cs) else ""


def round_up(c: int, m: int) -> int:
    return -(-c // m) * m


def rounded(c: int, m: int, mode: str) -> int:
    """c rounded to a multiple of m: ``up``, ``down`` or to the ``nearest`` (halves up)."""
    if mode == "up":
        return round_up(c, m)
    if mode == "down":
        return c // m * m
    return (c + m // 2) // m * m


POLICIES = ("up", "nearest", "down")


def gmean(v) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(v, dtype=float)))))


def policy(f: Family, m: int, mode: str) -> tuple[float, float, float] | None:
    """Over c in 49..64: geometric means of the latency ratio, the channel ratio and the per-channel cost
    ratio of rounding c to a multiple of m against keeping c (ratios timed side by side)."""
    lat, ch = [], []
    for c in DENSE:
        r = rounded(c, m, mode)
        if c not in f.r or r not in f.r:
            return None
        lat.append(f.ratio(r, c))
        ch.append(r / c)
    return gmean(lat), gmean(ch), gmean(np.asarray(lat) / np.asarray(ch))


def pct(x: float) -> str:
    return f"{(x - 1) * 100:+.0f}%"


def report(data: dict, command: str) -> str:
    cfg, host = data["config"], data["host"]
    models = data["models"]
    fams = [Family(k, v, models) for k, v in data["families"].items()]
    fams.sort(key=lambda f: (KINDS.index(f.kind), f.size, f.threads))
    counts = cfg["counts"]
    paths: dict[tuple[str, bool], list[tuple[int, int]]] = {}   # (kind, c % 4 == 0) -> (nchwc convs, convs)
    for k, m in models.items():
        kind, _, c = k.split("/")
        paths.setdefault((kind, int(c) % 4 == 0), []).append((m["graph"]["nchwc_convs"], len(m["graph"]["convs"])))
    padded = []
    for k, m in sorted(models.items()):
        kind, size, c = k.split("/")
        for cv in m["graph"]["convs"]:
            if cv["nchwc"] and cv["weight"] and kind in ("pw", "conv3") and int(c) in (44, 52, 60, 100):
                padded.append((int(c), cv["weight"][0]))
    padded = sorted(set(padded))
    block = None
    if padded:
        cands = [b for b in (8, 16) if all(w == round_up(c, b) for c, w in padded)]
        block = cands[0] if cands else None

    lines = [
        "# Channel multiple for onnxruntime's CPU kernels",
        "",
        "Question: when channel pruning rounds a layer's kept channel count, to which multiple (1 = no rounding, "
        "4, 8 or 16) should it round so that onnxruntime's CPU kernels run it well on this host?",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {host['cpu']} ({host['machine']}, {host['cpu_count']} cores, KVM guest), "
        f"AVX2 {'yes' if host['avx2'] else 'no'}, AVX-512F {'yes' if host['avx512f'] else 'no'} "
        "(`grep -o -m1 avx512f /proc/cpuinfo`); "
        f"onnxruntime {host['ort_version']} (CPUExecutionProvider), torch {host['torch']}, "
        f"Python {host['python']}. `lscpu`: " + "; ".join(host["lscpu"]) + ". "
        f"The cores were shared with a training job throughout (load average {data['load'][0]:.1f} at the start, "
        f"{data['load'][-1]:.1f} at the end). Date: {data['date']}. Run time: "
        f"{sum(data['seconds'].values()) / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in data['seconds'].items())}).",
        "",
        "## Method",
        "",
        f"Models (random weights, batch 1, float32), each exported with `export_onnx` "
        f"({'the dynamo exporter' if cfg['dynamo'] else TORCHSCRIPT_NOTE}), "
        f"at {' and '.join(f'{s}x{s}' for s in cfg['sizes'])}: "
        f"**conv3** = {cfg['depth']} stacked 3x3 conv c->c + ReLU; **pw** = {cfg['depth']} stacked 1x1 conv c->c + ReLU; "
        f"**ir** = a MobileNetV2 inverted-residual block, {cfg['ir_width']} channels in and out, **c expanded channels** "
        "(1x1 expand, 3x3 depthwise, 1x1 project, BN, ReLU6, residual add): in such a block it is the expanded width that "
        "channel pruning shrinks. Two stacked layers keep the tensor between them in the blocked layout, as inside a pruned "
        f"network. Channel counts c: {', '.join(map(str, counts))}. Threads: {', '.join(map(str, cfg['threads']))} "
        "(intra-op; sequential; graph optimisation ORT_ENABLE_ALL, the default; spinning thread pool, the default).",
        "",
        "Timing (`benchmarks/studies/channel_multiple.py`, on `ort_runner`'s sessions and timer): one family (kind, "
        "size, threads) at a time, with every channel count in its own open session; each round visits all counts in a "
        "fresh random order and then in reverse, a half-block each (sized to about "
        f"{cfg['block_ms']:g} ms of the model's own time); a count's figure for a round is the lower quartile of its runs "
        f"in that round; its latency is the median over rounds (at least {cfg['min_rounds']}, about {cfg['seconds']:g} s "
        "a family), and every ratio below is the median of per-round ratios of two counts timed in the same rounds "
        "(95% bootstrap intervals over rounds where quoted). The script ran at normal priority: under `nice` the "
        "other job would pre-empt it far more often. Raw per-round figures, each model's "
        "optimised graph and the host facts: `docs/channel-multiple.json`.",
        "",
        "## Which path each count takes",
        "",
    ]
    def share(kind: str, aligned: bool) -> str:
        v = paths.get((kind, aligned), [])
        kinds = sorted({x for x in v})
        return " or ".join(f"{a} of {b}" for a, b in kinds) + f" convs ({len(v)} models)" if v else "none measured"

    lines.append(
        "From each model's optimised graph, the convolutions onnxruntime rewrote into its NCHWc layout "
        "(`com.microsoft.nchwc` `Conv`, with `ReorderInput`/`ReorderOutput` where the layout changes), for c a "
        "multiple of 4 / not: "
        + "; ".join(f"{k}: {share(k, True)} / {share(k, False)}" for k in KINDS if any(kk == k for kk, _ in paths))
        + ". The rest run on the plain NCHW path (`FusedConv`/`Conv`: im2col + SGEMM; for ir off a multiple of 4, "
        f"the depthwise and project convs, while the expand conv, whose input is {cfg['ir_width']} channels, stays NCHWc). "
        "Since onnxruntime PR #7442 (2021) an NCHWc conv needs its input channel count to be a multiple of 4 rather than "
        "of the block size, and pads its output channels up to the block. "
        + ("The padded NCHWc weights show the block MLAS uses here: "
           + ", ".join(f"c={c} stored with {w}" for c, w in padded)
           + f" output channels, i.e. blocks of {block}" + (" (the AVX-512 kernels)." if block == 16 else ".")
           if padded else ""))
    lines += ["", "## Results", ""]

    # table 1: latency vs c, 1 thread, relative to the next multiple of 16
    t1 = [f for f in fams if f.threads == min(cfg["threads"])]
    lines += [
        f"Latency in µs at {min(cfg['threads'])} thread, and in brackets relative to the next multiple of 16 "
        "at or above c (both timed in the same rounds). **Bold** c: multiples of 16; *italic*: multiples of 8; "
        "† as in the next table.",
        "",
        "| c | mult. | " + " | ".join(f"{f.kind} {f.size}x{f.size}" for f in t1) + " |",
        "|---:|---|" + "---:|" * len(t1),
    ]
    for c in counts:
        mark = "16" if c % 16 == 0 else "8" if c % 8 == 0 else "4" if c % 4 == 0 else "-"
        cs = f"**{c}**" if c % 16 == 0 else f"*{c}*" if c % 8 == 0 else str(c)
        cells = []
        for f in t1:
            u = round_up(c, 16)
            if u in f.r and u != c:
                cells.append(f"{f.us(c):.0f} ({f.ratio(c, u):.2f}{f.mark(c, u)})")
            else:
                cells.append(f"{f.us(c):.0f}{f.mark(c)}")
        lines.append(f"| {cs} | {mark} | " + " | ".join(cells) + " |")

    # table 2: key neighbour ratios, every family
    pairs = [(57, 56), (55, 56), (49, 48), (63, 64), (65, 64), (57, 60), (52, 48), (52, 64), (56, 48), (56, 64),
             (60, 64), (97, 96), (127, 128), (129, 128), (124, 128), (120, 128)]
    pairs = [p for p in pairs if p[0] in counts and p[1] in counts]
    lines += [
        "",
        "Key ratios, every family: latency of the first count over the second, measured side by side "
        f"(above 1: the first is slower). †: the per-round figures of one of the two spread by more than {NOISY:.0%} "
        "(interquartile range over median): pre-emption by the other job dominated them; do not read those.",
        "",
        "| family | " + " | ".join(f"{a}/{b}" for a, b in pairs) + " |",
        "|---|" + "---:|" * len(pairs),
    ]
    for f in fams:
        lines.append(f"| {f.kind} {f.size}x{f.size} t{f.threads} | "
                     + " | ".join(f"{f.ratio(a, b):.2f}{f.mark(a, b)}" for a, b in pairs) + " |")

    # table 3: rounding policies
    lines += [
        "",
        "Rounding policies over every c in 49..64, each cell `lat / per ch`: geometric means of the latency of the "
        "rounded count over c's (side by side) and of that over the channels kept (rounded/c), i.e. the relative cost "
        "of a kept channel; below 1 is better. *nearest* rounds halves up.",
        "",
        "| family | " + " | ".join(f"{mode} {m}" for mode in POLICIES for m in MULTIPLES) + " |",
        "|---|" + "---:|" * (len(POLICIES) * len(MULTIPLES)),
    ]
    agg: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for f in fams:
        cells = []
        for mode in POLICIES:
            for m in MULTIPLES:
                p = policy(f, m, mode)
                if p is None:
                    cells.append("n/a")
                    continue
                agg.setdefault((m, mode), []).append((p[0], p[2]))
                cells.append(f"{p[0]:.2f} / {p[2]:.2f}")
        lines.append(f"| {f.kind} {f.size}x{f.size} t{f.threads} | " + " | ".join(cells) + " |")
    summary = {k: (gmean([a for a, _ in v]), gmean([b for _, b in v])) for k, v in agg.items()}
    if summary:
        lines.append("| **all (geo. mean)** | " + " | ".join(
            f"**{summary[(m, mode)][0]:.2f} / {summary[(m, mode)][1]:.2f}**" if (m, mode) in summary else "n/a"
            for mode in POLICIES for m in MULTIPLES) + " |")
    lines += ["", "Channels kept (geometric mean of rounded/c over 49..64): " + "; ".join(
        f"{mode} " + ", ".join(f"{m}: x{gmean([rounded(c, m, mode) / c for c in DENSE]):.3f}" for m in MULTIPLES)
        for mode in POLICIES) + "."]

    lines += ["", "## Conclusion", "", *conclusion(fams, summary, block), ""]
    lines += [
        "## Limits",
        "",
        "- One host: an x86-64 KVM guest with AVX-512, whose MLAS NCHWc block is "
        f"{block or 'as shown above'} channels. On an AVX2-only x86 host the block is 8, so the plateaus "
        "would be 8 wide and rounding to 8 should suffice there (a hypothesis from the kernel design, not measured here).",
        "- An ARM board (the project's edge targets) runs other MLAS kernels, and whether its build takes the NCHWc "
        "path at all, and with which block, is not measured here. NEON registers hold 4 float32 lanes, so a multiple "
        "of 4 may be all an ARM core needs, or its kernels may favour 8 or 16 for their own blocking: a hypothesis, "
        "not a measurement, to be checked on the board (this script runs there unchanged with torch and onnxruntime installed, or "
        "export the models here and time them with `ort_runner.py`).",
        "- Batch 1, float32, two stacked layers or one block with random weights, at 16x16 and 32x32; larger spatial sizes "
        "shift the balance towards compute (the padding costs the same share), smaller ones towards fixed overheads.",
        "- Noisy, shared cores (2 vCPUs with a training job running): absolute µs are inflated and only the ratios, "
        "timed side by side, are meant to be read; ratios within about ±5% of 1 are within noise. 2 threads are noisier "
        "still: a run needs both cores, and the other job holds one of them most of the time, so the 2-thread "
        "families got only the minimum rounds, and their larger conv3 models (a ms or more a run) ran either at about "
        "their 1-thread speed or several times slower (the ratios marked †). 2-thread speed-ups are not measured here.",
        "- onnxruntime " + host["ort_version"] + ": the rules for which convolutions go NCHWc have changed before "
        "(PR #7442) and may change again.",
        "",
    ]
    return "\n".join(lines)


def span(v: list[float]) -> str:
    """A range of ratios as percentages: ``+36%..+52%``."""
    return f"{pct(min(v))}..{pct(max(v))}" if len(v) > 1 else pct(v[0])


def conclusion(fams: list[Family], summary: dict, block: int | None) -> list[str]:
    """The conclusion, written from the figures (so a rerun on another host says what it found)."""
    if not summary or not fams:
        return ["Not enough counts measured for a conclusion."]
    key = ("nearest", "up", "down")
    best = {mode: min(MULTIPLES, key=lambda m: summary.get((m, mode), (9, 9))[1]) for mode in key}
    m = best["nearest"]
    chans = {mode: {k: gmean([rounded(c, k, mode) / c for c in DENSE]) for k in MULTIPLES} for mode in POLICIES}
    # on the NCHWc path: counts that are multiples of 4 but not of 16, against the next multiple of 16
    t_min = min(f.threads for f in fams)
    base = [f for f in fams if f.threads == t_min]
    inside = sorted({c for f in fams for c in f.r if c % 4 == 0 and c % 16 and round_up(c, 16) in f.r})
    plateau = [f.ratio(c, round_up(c, 16)) for f in base for c in inside]
    step = [f.ratio(c + 4, c) for f in base for c in f.r if c % 16 == 0 and c + 4 in f.r]
    more = [(f.ratio(c, round_up(c, 16)), f.noisy(c, round_up(c, 16)))
            for f in fams if f.threads != t_min for c in inside]
    off4: dict[str, list[float]] = {}
    for f in fams:
        off4.setdefault(f.kind, []).extend(f.ratio(c, round_up(c, 16)) for c in DENSE
                                           if c % 4 and c in f.r and round_up(c, 16) in f.r)
    ref = next((f for f in fams if f.kind == "conv3" and f.threads == 1 and all(c in f.r for c in (56, 57, 64))), None)
    ir = next((f for f in fams if f.kind == "ir" and f.threads == 1 and all(c in f.r for c in (56, 57))), None)
    pw = [f for f in fams if f.kind == "pw" and all(c in f.r for c in (48, 49, 56, 57, 64))]
    out = [f"**Round kept channel counts to multiples of {m} on this host** (the NCHWc block of its "
           f"{'AVX-512 ' if block == 16 else ''}kernels), and never leave a count off a multiple of 4.", ""]
    if ref is not None:
        lo, hi = ref.ratio_ci(57, 56)
        out.append(f"- **Off a multiple of 4, convolutions leave the NCHWc path.** conv3 {ref.size}x{ref.size}, 1 thread: "
                   f"c=56 (a multiple of 8) takes {ref.us(56):.0f} µs, c=57 takes {ref.us(57):.0f} µs: "
                   f"{pct(ref.ratio(57, 56))} (95% CI {(lo - 1) * 100:+.1f}%..{(hi - 1) * 100:+.1f}%), and even c=64 ({ref.us(64):.0f} µs) is "
                   f"{pct(ref.ratio(64, 57))} on 57"
                   + (f"; in the inverted-residual block c=57 expanded channels take {ir.us(57):.0f} µs against "
                      f"{ir.us(56):.0f} µs for 56 ({pct(ir.ratio(57, 56))}), the depthwise conv off NCHWc" if ir else "")
                   + ". Over c in 49..63 off a multiple of 4, against the next multiple of 16 (which keeps more "
                   "channels): " + "; ".join(f"{k} {span(v)}" for k, v in off4.items() if v) + ".")
    if plateau:
        clean = [r for r, n in more if not n]
        out.append(f"- **On the NCHWc path the cost is flat within each {block or 16}-channel block**: at {t_min} "
                   f"thread every measured multiple of 4 or 8 that is not one of 16 ({', '.join(map(str, inside))}) "
                   f"costs {span(plateau)} (median {pct(float(np.median(plateau)))}) of the next multiple of 16, in "
                   f"every family; the step comes just after each multiple of 16 (c+4 on c: {span(step)}). "
                   "A multiple of 8 or 4 therefore buys no latency over the next multiple of 16; it only drops channels."
                   + (f" At more threads, {sum(abs(r - 1) <= 0.05 for r in clean)} of the {len(clean)} such ratios not "
                      f"marked † are within ±5% of 1 ({len(more) - len(clean)} marked †)." if more else ""))
    if pw:
        out.append("- **1x1 convs are the exception**: their plain path (SGEMM) is about as fast as the padded NCHWc one, "
                   "so off-4 counts cost little there (" + "; ".join(
                       f"pw {f.size}x{f.size} t{f.threads}: 57/56 = {f.ratio(57, 56):.2f}, 49/64 = {f.ratio(49, 64):.2f}"
                       for f in pw) + "); just above a multiple of 16 (c=49) the plain path is even cheaper than the padded NCHWc counts of the "
                   "same block (52..64). But 1x1 convs sit next to 3x3 and depthwise convs in real networks (as in the ir "
                   "block), and those pay the penalty.")
    up, near, down = (summary[(k, mode)] for k, mode in ((m, "up"), (m, "nearest"), (m, "down")))
    out.append(f"- **Policies over c in 49..64, all families**: rounding to the nearest multiple of {m} keeps as many "
               f"channels on average (x{chans['nearest'][m]:.3f}) and cuts latency to x{near[0]:.2f} of unrounded; "
               + ", ".join(f"to the nearest {k}: x{summary[(k, 'nearest')][0]:.2f}" for k in MULTIPLES if k != m)
               + ". Rounding up costs the same latency whichever multiple (x"
               + "/".join(f"{summary[(k, 'up')][0]:.2f}" for k in MULTIPLES)
               + f" for {'/'.join(map(str, MULTIPLES))}: the saving is leaving the off-4 slow path) but keeps the most "
               f"channels with {m} (x{chans['up'][m]:.3f}), the cheapest kept channel (x{up[1]:.2f}); rounding down to "
               f"{m}: latency x{down[0]:.2f} for x{chans['down'][m]:.3f} of the channels. The best multiple per kept "
               + "channel: " + ", ".join(f"{mode} {best[mode]}" for mode in key) + ".")
    two = [f for f in fams if f.threads == 2]
    if two:
        one = {(f.kind, f.size): f for f in fams if f.threads == 1}
        sp = [one[(f.kind, f.size)].us(64) / f.us(64) for f in two if (f.kind, f.size) in one and 64 in f.r]
        if sp:
            out.append(f"- 2 threads gave the same pattern and ratios; they ran at x{min(sp):.2f}..x{max(sp):.2f} the "
                       "speed of 1 thread at c=64 (the second core was busy with the training job).")
    out += ["", "Per family (µs; ratios measured side by side):", "",
            "| family | 48 | 52 | 56 | 57 | 57/56 (95% CI) | 60 | 64 | 49/48 | 64/57 |", "|---|" + "---:|" * 9]
    for f in fams:
        if not all(c in f.r for c in (48, 49, 52, 56, 57, 60, 64)):
            continue
        lo, hi = f.ratio_ci(57, 56)
        out.append(f"| {f.kind} {f.size}x{f.size} t{f.threads} | {f.us(48):.0f} | {f.us(52):.0f} | {f.us(56):.0f} | "
                   f"{f.us(57):.0f} | {f.ratio(57, 56):.2f} ({lo:.2f}..{hi:.2f}) | {f.us(60):.0f} | {f.us(64):.0f} | "
                   f"{f.ratio(49, 48):.2f} | {f.ratio(64, 57):.2f} |")
    return out


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--sizes", default="16,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--counts", default=DEFAULT_COUNTS, help="channel counts: 40,44,47-65,...")
    ap.add_argument("--depth", type=int, default=2, help="stacked layers in conv3 and pw")
    ap.add_argument("--ir-width", type=int, default=32, help="input/output channels of the ir block")
    ap.add_argument("--seconds", type=float, default=30.0, help="timing per family (wall clock)")
    ap.add_argument("--min-rounds", type=int, default=15)
    ap.add_argument("--max-rounds", type=int, default=1000)
    ap.add_argument("--block-ms", type=float, default=3.0, help="target length of one half-block")
    ap.add_argument("--round-quantile", type=float, default=0.25)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dynamo", action="store_true", help="export with the dynamo exporter (slower; same graphs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "docs" / "channel-multiple.json"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "channel-multiple.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    config = {"kinds": args.kinds.split(","), "sizes": [int(s) for s in args.sizes.split(",")],
              "threads": [int(t) for t in args.threads.split(",")], "counts": parse_counts(args.counts),
              "depth": args.depth, "ir_width": args.ir_width, "seconds": args.seconds,
              "min_rounds": args.min_rounds, "max_rounds": args.max_rounds, "block_ms": args.block_ms,
              "round_quantile": args.round_quantile, "warmup": args.warmup, "dynamo": args.dynamo,
              "seed": args.seed, "ort_version": ort.__version__, "version": 1}
    cache = Cache(Path(args.json), config, {"host": None, "models": {}, "families": {}, "load": [],
                                                   "date": None})
    data = cache.data
    data["host"] = data["host"] or host_facts()
    timing = any(fam_key(k, z, t) not in data["families"]
                 for k in config["kinds"] for z in config["sizes"] for t in config["threads"])
    if timing:                      # a run that times something: its start (a resumed one: each part's)
        data["load"].append(os.getloadavg()[0])
        data["date"] = datetime.date.today().isoformat()
    export_cfg = ExportConfig(dynamo=args.dynamo, fallback=True)
    for kind in config["kinds"]:
        for size in config["sizes"]:
            todo = [t for t in config["threads"] if fam_key(kind, size, t) not in data["families"]]
            if not todo:
                continue
            with tempfile.TemporaryDirectory(prefix="channel_multiple_") as tmp:
                paths = {}
                t = time.perf_counter()
                for c in config["counts"]:
                    model, cin = build(kind, c, args)
                    p = os.path.join(tmp, f"{kind}-{size}-{c}.onnx")
                    res = export_onnx(model, (1, cin, size, size), p, export_cfg)
                    key = f"{kind}/{size}/{c}"
                    if key not in data["models"]:
                        data["models"][key] = {"macs": macs(kind, c, size, args), "exporter": res.exporter,
                                               "graph": optimised_graph(p)}
                    paths[c] = p
                cache.add_seconds("export", time.perf_counter() - t)
                for threads in todo:
                    key = fam_key(kind, size, threads)
                    rng = np.random.default_rng([args.seed, KINDS.index(kind), size, threads])
                    fam = cache.timed("timing", lambda: time_family(paths, threads, args, rng))
                    data["families"][key] = fam
                    cache.save()
                    f = Family(key, fam, data["models"])
                    line = ", ".join(f"{c}: {f.us(c):.0f}" for c in (48, 56, 57, 64) if c in f.r)
                    print(f"{key}: {fam['rounds']} rounds in {fam['wall_s']:.0f} s; µs {line}", flush=True)
    if timing:
        data["load"].append(os.getloadavg()[0])
    cache.save()
    command = ".venv/bin/python benchmarks/studies/channel_multiple.py" + "".join(
        f" {a}" for a in sys.argv[1:] if a)
    write_text_atomic(args.out, report(data, command))
    print(f"wrote {args.json} and {args.out}")


if __name__ == "__main__":
    main()
