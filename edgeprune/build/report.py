"""The build report: ``report.md`` and ``front.png`` (accuracy-latency front) in the artifact."""

from __future__ import annotations

from pathlib import Path

from edgeprune.benchmarks.targets import LatencyFigure
from edgeprune.build.config import BuildConfig
from edgeprune.build.result import BuildResult
from edgeprune.devices.fingerprint import mismatch_note
from edgeprune.files import write_text_atomic
from edgeprune.pipeline.levers import PlanState
from edgeprune.pipeline.plan import pareto_front


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def plot_front(result: BuildResult, path: Path) -> None:
    import matplotlib  # heavy: only when a report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    search = result.search
    plans = search.considered
    front = pareto_front(plans)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([p.latency_ms for p in plans], [100 * p.top1 for p in plans], s=10, c="#bbbbbb",
               label=f"plans considered ({len(plans)})")
    ax.plot([p.latency_ms for p in front], [100 * p.top1 for p in front], "-o", ms=3, c="#1f77b4",
            label="Pareto front")
    for name, p in search.best.items():
        ax.scatter([p.latency_ms], [100 * p.top1], s=40, marker="D", label=f"best {name}")
    base = search.base
    ax.scatter([base.latency_ms], [100 * base.top1], s=80, marker="s", c="k", label="unpruned")
    short = result.selection.candidates
    if len(short) > 1:
        ax.scatter([c.latency_ms for c in short], [100 * c.top1 for c in short], s=110, facecolors="none",
                   edgecolors="#2ca02c", lw=1.5, label=f"short list ({len(short)}, fine-tuned)")
    c = result.selection.chosen
    ax.scatter([c.latency_ms], [100 * c.top1], s=220, marker="*", c="#d62728", zorder=5,
               label=f"shipped ({result.strategy})")
    budget = result.latency.budget_ms
    ax.axvline(budget, c="#d62728", ls="--", lw=1, label=f"budget {budget:g} ms")
    ax.set_xlabel(f"predicted latency on {result.device} (ms, {result.latency.metric})")
    ax.set_ylabel("top-1 on scoring images, before fine-tune (%)")
    ax.set_title("Block-removal plans: accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _device(f: LatencyFigure) -> str:
    if f.measured is None:
        return (f"{f.predicted_ms:.2f} ms (band {f.low_ms:.2f}-{f.high_ms:.2f}, "
                f"+-{f.expected_error:.0%}; {f.source})")
    return f"p50 {f.measured.p50_ms:.2f} / p90 {f.measured.p90_ms:.2f} ms ({f.source})"


def _tokens(tokens: list[str]) -> str:
    """A plan's tokens for the report: blocks removed, channel groups with their steps, the input size."""
    state = PlanState.from_tokens(tokens)
    parts = []
    if state.blocks:
        parts.append("blocks removed: " + ", ".join(sorted(state.blocks)))
    if state.channels:
        parts.append("channel groups shrunk (steps): " + ", ".join(f"{g} ({n})" for g, n in state.channels))
    if state.resolution is not None:
        parts.append(f"input {state.resolution}x{state.resolution}")
    return "; ".join(parts) or "unchanged"


def _int8_lines(result: BuildResult) -> list[str]:
    """The int8 lever: whether it paid on the device, and what mixed precision measured."""
    q = result.int8
    if not q:
        return []
    lines = ["## INT8", "", f"{q['reason']}.", ""]
    mixed = q.get("mixed_precision")
    if mixed:
        cfg = q["config"]
        lines += [f"onnxruntime static quantization (QDQ, {'per-channel' if cfg['per_channel'] else 'per-tensor'} "
                  f"weights, {q['activations']} activations, {q['weights']} weights, reduce_range "
                  f"{str(q['reduce_range']).lower()}: {q['precision_reason']}), {cfg['method']} calibration on "
                  f"{cfg['calibration_images']} training images. On the {mixed['images']} scoring images: fp32 file "
                  f"{_pct(mixed['fp32_top1'])}, every layer int8 {_pct(mixed['all_int8_top1'])}, shipped "
                  f"{_pct(mixed['chosen_top1'])} ({mixed['drop_points']:.2f} points lost; --max-int8-drop "
                  f"{mixed['max_drop_points']:g})."]
        if mixed["kept_fp32"]:
            lines += ["", f"Kept in fp32 (the layers whose int8 cost the most, measured one by one): "
                          f"{', '.join(mixed['kept_fp32'])}."]
        sizes = q.get("sizes") or {}
        if "int8" in sizes:
            f, i = sizes["fp32"], sizes["int8"]
            lines += ["", "| model.onnx | bytes | gzip -9 bytes |", "|---|---|---|",
                      f"| fp32 | {f['bytes']:,} | {f['gzip_bytes']:,} |",
                      f"| {result.accuracy.precision} | {i['bytes']:,} | {i['gzip_bytes']:,} |"]
    return lines + [""]


def write_report(folder: Path, result: BuildResult, cfg: BuildConfig) -> None:
    plot_front(result, folder / "front.png")
    s, acc, lat, sel = result.search, result.accuracy, result.latency, result.selection
    ha, hb, hr = lat.host_after, lat.host_before, lat.host
    hp = lat.host_predicted
    budget = lat.budget_ms
    lines = [
        f"# edgeprune build report: {cfg.model.name} for {result.device}, budget {budget:g} ms",
        "",
        f"**Outcome:** {'within budget' if lat.within_budget else 'OVER BUDGET'}: "
        f"{lat.device_after.value_ms:.2f} ms ({lat.metric}, {lat.device_after.source}) against {budget:g} ms "
        f"({lat.chance:.0%} chance that {result.device} meets it"
        + (f"; planned for the figure met with {lat.device_after.confidence:.0%} chance" if lat.device_after.confidence
           is not None else "") + "), "
        f"plan: {PlanState.from_tokens(result.removed).describe()} ({len(result.blocks)} blocks found). "
        "The budget is judged on the exported final model, not on a sum of estimates.",
        "",
        "![accuracy-latency front](front.png)",
        "",
        "## Plan",
        "",
        f"Shipped plan: **{result.strategy}** (best scored by the search: {s.winner}). "
        f"Plan: {_tokens(result.removed)}.",
        "",
        "| strategy | plan | predicted latency (ms) | top-1 on scoring images |",
        "|---|---|---|---|",
    ]
    if result.anchor:
        a = result.anchor
        lines[-2:-2] = [f"The search's predictions are anchored: the original measured {a['measured_ms']:.3f} ms "
                        f"({a['source']}) against {a['predicted_ms']:.3f} ms predicted by the {result.device} profile, "
                        f"so every predicted figure below is the profile's times {a['scale']:.3f}.", ""]
    for name, p in sorted(s.best.items(), key=lambda kv: -kv[1].top1):
        lines.append(f"| {name}{' (best scored)' if name == s.winner else ''} | "
                     f"{PlanState.from_tokens(p.removed).describe()} | "
                     f"{p.latency_ms:.2f} | {_pct(p.top1)} |")
    if len(s.best) > 1 and s.winner in s.best:
        runner_up = max(p.top1 for n, p in s.best.items() if n != s.winner)
        lines += ["", f"The best-scored strategy leads the runner-up by "
                      f"{100 * (s.best[s.winner].top1 - runner_up):.2f} points of top-1 on the "
                      f"{acc.scoring_images} scoring images (before fine-tune)."]
    if result.search_cost:
        c = result.search_cost
        rounds = "; ".join(f"{n}: {j['rounds']} round{'s' * (j['rounds'] != 1)}, {j['measured']} plans measured whole, "
                           f"{j['screened']} moves screened" + (" (stopped by --search-minutes)" if j["stopped"] else "")
                           for n, j in c["joint"].items() if j["rounds"] or j["measured"])
        lines += ["", f"Search cost: {c['evaluations']} accuracy measurements in this run, {c['image_passes']:,} "
                      "image passes (BatchNorm re-estimation and scoring images)" + (f"; {rounds}" if rounds else "")
                      + ". A rerun reads them from the cache."]
    lines += ["", "### Short list", "",
              "Distinct plans from the strategies above and the proxy rankings "
              f"({', '.join(cfg.search.proxies) or 'none'}), each exported and its own "
              "graph predicted or measured. "
              + ("Each plan that fits got the same fine-tune; the lowest loss on the scoring images after "
                 "fine-tune ships, because accuracy before fine-tune is a weak guide to accuracy after it."
                 if sel.mode == "recovered" else "The best top-1 before fine-tune ships."),
              "", "| plan | proposed by | what it does | predicted (ms) | final figure (ms) | "
              "top-1 scoring, before fine-tune | after fine-tune | loss after fine-tune |",
              "|---|---|---|---|---|---|---|---|"]
    for c in sel.candidates:
        mark = " (shipped)" if c.removed == result.removed else ""
        fin = "-" if c.final_ms is None else f"{c.final_ms:.2f}"
        loss = "-" if c.recovered_loss is None else f"{c.recovered_loss:.4f}"
        lines.append(f"| {c.label}{mark} | {', '.join(c.proposed_by)} | {PlanState.from_tokens(c.removed).describe()} | "
                     f"{c.latency_ms:.2f} | "
                     f"{fin} | {_pct(c.top1)} | {_pct(c.recovered_top1)} | {loss} |")
    lines += [
        "",
        f"Plans considered: {len(s.considered)} (all shown in the plot; the front is the upper-left envelope).",
        "",
        "## Accuracy",
        "",
        f"Measured on {acc.images} validation images that were "
        f"{'ALSO used for scoring (the split was too small)' if acc.shared else 'not used to score blocks or choose the plan'}. "
        f"Split: {acc.split}. "
        + (f"Torch ran on {result.torch['device']} in {result.torch['autocast']['used']} "
           f"({result.torch['autocast']['reason']}); the model files are exported from the float32 weights and "
           "measured by onnxruntime on the CPU." if result.torch else ""),
        "",
        "| model | top-1 |", "|---|---|",
        f"| original | {_pct(acc.before)} |",
        f"| pruned, before fine-tune | {_pct(acc.after_removal)} |",
        f"| after fine-tune (torch, {result.torch['autocast']['used'] if result.torch else 'fp32'}) | "
        f"{_pct(acc.after_finetune)} |",
        f"| model file, fp32 (onnxruntime) | {_pct(acc.onnx_fp32)} |",
        *([f"| model file, {acc.precision} (onnxruntime): **shipped** | {_pct(acc.onnx_int8)} |"]
          if acc.precision != "fp32" else []),
        "",
        *_int8_lines(result),
        "## Latency",
        "",
        "| | before | after |", "|---|---|---|",
        f"| {result.device} | {_device(lat.device_before)} | {_device(lat.device_after)} |",
        f"| host, measured (onnxruntime {ha.ort_version}, {ha.provider_used}, {ha.threads} threads) | "
        f"p50 {hb.p50_ms:.3f} / p90 {hb.p90_ms:.3f} ms | p50 {ha.p50_ms:.3f} / p90 {ha.p90_ms:.3f} ms |",
        f"| host, predicted after | | {hp.latency_ms:.3f} ms (band {hp.low_ms:.3f}-{hp.high_ms:.3f}) |",
        "",
        f"Host speed-up, timed side by side (before and after interleaved in {hr.rounds} rounds): each round's "
        f"{100 * hr.round_quantile:g}th percentile is {hr.b_ms:.3f} ms before and {hr.a_ms:.3f} ms after (medians "
        f"over the rounds); after/before = {hr.ratio:.3f}, the median of the rounds' ratios "
        f"({100 * hr.confidence:.0f}% interval {hr.ci_low:.3f}-{hr.ci_high:.3f}). The p50/p90 above come from the "
        "same runs, all samples pooled.",
        "",
        f"Predicted against measured on the host for the final model: {hp.latency_ms:.3f} ms "
        f"predicted, {ha.p50_ms:.3f} ms measured (p50), ratio {hp.latency_ms / ha.p50_ms:.2f}.",
        *(["", f"**{mismatch_note('host', hp.fitted_elsewhere)}.**"] if hp.fitted_elsewhere else []),
        *(["", f"**Note: {result.int8['host_note']}.**"] if (result.int8 or {}).get("host_note") else []),
        "",
        "## Size and memory",
        "",
        f"Parameters: {result.params_before:,} -> {result.params_after:,}.",
    ]
    mem = result.static_memory
    if isinstance(mem, dict):
        lines.append("Static memory of the final model (ONNX shape inference): " +
                     ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in mem.items()
                               if not isinstance(v, (dict, list))) + ".")
    if result.verify_arm:
        v = result.verify_arm
        lines += ["", "## ARM verification", "",
                  f"{v.get('verdict')}: aarch64 onnxruntime {v.get('onnxruntime_aarch64')} on emulated "
                  f"{v.get('qemu_cpu')}, max abs difference {v.get('max_abs_diff')}, top-1 agreement "
                  f"{v.get('top1_agreement')}."]
    lines += ["", "## Reproduce", "", "```", "edgeprune build --config build-config.toml", "```",
              f"Wall time of this build: {result.wall_s:.0f} s"
              + (f" over {len(result.wall_runs_s)} runs ({', '.join(f'{s:.0f} s' for s in result.wall_runs_s)}; "
                 "the earlier ones were interrupted and resumed from the cache)." if len(result.wall_runs_s) > 1
                 else "."), ""]
    write_text_atomic(folder / "report.md", "\n".join(lines))
