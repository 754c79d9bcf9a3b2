"""The build report: ``report.md`` and ``front.png`` (accuracy-latency front) in the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def plot_front(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeprune.pipeline.plan import Plan, pareto_front

    search = summary["search"]
    plans = [Plan(**p) for p in search["considered"]]
    front = pareto_front(plans)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([p.latency_ms for p in plans], [100 * p.top1 for p in plans], s=10, c="#bbbbbb",
               label=f"plans considered ({len(plans)})")
    ax.plot([p.latency_ms for p in front], [100 * p.top1 for p in front], "-o", ms=3, c="#1f77b4",
            label="Pareto front")
    for name, p in search["best"].items():
        ax.scatter([p["latency_ms"]], [100 * p["top1"]], s=40, marker="D", label=f"best {name}")
    base = search["base"]
    ax.scatter([base["latency_ms"]], [100 * base["top1"]], s=80, marker="s", c="k", label="unpruned")
    short = (summary.get("selection") or {}).get("candidates", [])
    if len(short) > 1:
        ax.scatter([c["latency_ms"] for c in short], [100 * c["top1"] for c in short], s=110, facecolors="none",
                   edgecolors="#2ca02c", lw=1.5, label=f"short list ({len(short)}, fine-tuned)")
    shipped = [c for c in short if c["removed"] == summary["removed"]]
    if shipped:
        c = shipped[0]
        ax.scatter([c["latency_ms"]], [100 * c["top1"]], s=220, marker="*", c="#d62728", zorder=5,
                   label=f"shipped ({summary['strategy']})")
    ax.axvline(summary["budget_ms"], c="#d62728", ls="--", lw=1, label=f"budget {summary['budget_ms']:g} ms")
    ax.set_xlabel(f"predicted latency on {summary['device']} (ms, {summary['metric']})")
    ax.set_ylabel("top-1 on scoring images, before fine-tune (%)")
    ax.set_title("Block-removal plans: accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(folder: Path, summary: dict[str, Any], cfg) -> None:
    plot_front(summary, folder / "front.png")
    s, acc, lat = summary["search"], summary["accuracy"], summary["latency"]
    dev_a, dev_b = lat["device_after"], lat["device_before"]
    ha, hb = lat["host_after"], lat["host_before"]

    def dev(f: dict) -> str:
        if f["source"].startswith("predicted"):
            return f"{f['predicted_ms']:.2f} ms (band {f['low_ms']:.2f}-{f['high_ms']:.2f}, +-{f['expected_error']:.0%}; {f['source']})"
        return f"p50 {f['p50_ms']:.2f} / p90 {f['p90_ms']:.2f} ms ({f['source']})"

    best = s["best"]
    winner = s["winner"]
    lines = [
        f"# edgeprune build report: {cfg.model} for {summary['device']}, budget {summary['budget_ms']:g} ms",
        "",
        f"**Outcome:** {'within budget' if summary['within_budget'] else 'OVER BUDGET'}: "
        f"{dev_a['value_ms']:.2f} ms ({summary['metric']}, {dev_a['source']}) against {summary['budget_ms']:g} ms, "
        f"removing {len(summary['removed'])} of {len(summary['blocks'])} blocks. "
        "The budget is judged on the exported final model, not on a sum of estimates.",
        "",
        "![accuracy-latency front](front.png)",
        "",
        "## Plan",
        "",
        f"Shipped plan: **{summary['strategy']}** (best scored by the search: {winner}). "
        f"Blocks removed: {', '.join(summary['removed']) or 'none'}.",
        "",
        "| strategy | blocks removed | predicted latency (ms) | top-1 on scoring images |",
        "|---|---|---|---|",
    ]
    for name, p in sorted(best.items(), key=lambda kv: -kv[1]["top1"]):
        lines.append(f"| {name}{' (best scored)' if name == winner else ''} | {len(p['removed'])} | "
                     f"{p['latency_ms']:.2f} | {_pct(p['top1'])} |")
    if len(best) > 1 and winner in best:
        others = [p["top1"] for n, p in best.items() if n != winner]
        lines += ["", f"The best-scored strategy leads the runner-up by "
                      f"{100 * (best[winner]['top1'] - max(others)):.2f} points of top-1 on the "
                      f"{acc['scoring_images']} scoring images (before fine-tune)."]
    sel = summary.get("selection")
    if sel:
        lines += ["", "### Short list", "",
                  "Distinct plans from the strategies above and the proxy rankings "
                  f"({', '.join(getattr(cfg, 'proxies', []) or []) or 'none'}), each exported and its own "
                  "graph predicted or measured. "
                  + ("Each plan that fits got the same fine-tune; the lowest loss on the scoring images after "
                     "fine-tune ships, because accuracy before fine-tune is a weak guide to accuracy after it."
                     if sel["mode"] == "recovered" else "The best top-1 before fine-tune ships."),
                  "", "| plan | proposed by | blocks removed | predicted (ms) | final figure (ms) | "
                  "top-1 scoring, before fine-tune | after fine-tune | loss after fine-tune |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in sel["candidates"]:
            mark = " (shipped)" if c["removed"] == summary["removed"] else ""
            fin = "-" if c["final_ms"] is None else f"{c['final_ms']:.2f}"
            lines.append(f"| {c['proposed_by'][0]}{mark} | {', '.join(c['proposed_by'])} | {len(c['removed'])} | "
                         f"{c['latency_ms']:.2f} | {fin} | {_pct(c['top1'])} | {_pct(c['recovered_top1'])} | "
                         + ("-" if c["recovered_loss"] is None else f"{c['recovered_loss']:.4f}") + " |")
    lines += [
        "",
        f"Plans considered: {len(s['considered'])} (all shown in the plot; the front is the upper-left envelope).",
        "",
        "## Accuracy",
        "",
        f"Measured on {acc['images']} validation images that were "
        f"{'ALSO used for scoring (the split was too small)' if acc['shared'] else 'not used to score blocks or choose the plan'}.",
        "",
        "| model | top-1 |", "|---|---|",
        f"| original | {_pct(acc['before'])} |",
        f"| blocks removed | {_pct(acc['after_removal'])} |",
        f"| after fine-tune | {_pct(acc['after_finetune'])} |",
        "",
        "## Latency",
        "",
        "| | before | after |", "|---|---|---|",
        f"| {summary['device']} | {dev(dev_b)} | {dev(dev_a)} |",
        f"| host, measured (onnxruntime {ha['ort_version']}, {ha['provider_used']}, {ha['threads']} threads) | "
        f"p50 {hb['p50_ms']:.3f} / p90 {hb['p90_ms']:.3f} ms | p50 {ha['p50_ms']:.3f} / p90 {ha['p90_ms']:.3f} ms |",
        f"| host, predicted after | | {lat['host_predicted_after_ms']:.3f} ms (band {lat['host_predicted_band'][0]:.3f}-{lat['host_predicted_band'][1]:.3f}) |",
        "",
        (f"Host speed-up, timed side by side (before and after interleaved in {lat['host_ratio']['rounds']} rounds): "
         f"after/before = {lat['host_ratio']['after_over_before']:.3f} ({100 * lat['host_ratio']['confidence']:.0f}% "
         f"interval {lat['host_ratio']['ci'][0]:.3f}-{lat['host_ratio']['ci'][1]:.3f}); the p50/p90 above come from "
         "the same runs." if lat.get("host_ratio") else ""),
        "",
        f"Predicted against measured on the host for the final model: {lat['host_predicted_after_ms']:.3f} ms "
        f"predicted, {ha['p50_ms']:.3f} ms measured (p50), ratio {lat['host_predicted_after_ms'] / ha['p50_ms']:.2f}.",
        "",
        "## Size and memory",
        "",
        f"Parameters: {summary['params']['before']:,} -> {summary['params']['after']:,}.",
    ]
    mem = summary.get("static_memory")
    if isinstance(mem, dict):
        lines.append("Static memory of the final model (ONNX shape inference): " +
                     ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in mem.items()
                               if not isinstance(v, (dict, list))) + ".")
    if summary.get("verify_arm"):
        v = summary["verify_arm"]
        lines += ["", "## ARM verification", "",
                  f"{v.get('verdict')}: aarch64 onnxruntime {v.get('onnxruntime_aarch64')} on emulated "
                  f"{v.get('qemu_cpu')}, max abs difference {v.get('max_abs_diff')}, top-1 agreement "
                  f"{v.get('top1_agreement')}."]
    lines += ["", "## Reproduce", "", "```", "edgeprune build --config build-config.toml", "```",
              f"Wall time of this build: {summary['wall_s']:.0f} s.", ""]
    (folder / "report.md").write_text("\n".join(lines))
