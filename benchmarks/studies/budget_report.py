"""The budget benchmark's tables, verdicts, plot and markdown report (``budget_plans.py`` runs it).

Everything here reads the results dictionary that ``budget_plans.run`` fills (plans per
budget, top-1 before and after fine-tune per distinct plan, the timed build) and never
measures anything, so the report can be regenerated from the cached JSON in seconds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from results_cache import relative_path, save_figure
from edgeprune.build import BuildConfig
from edgeprune.pipeline.plan import Plan, pareto_front
from edgeprune.pipeline.select import Candidate, choose

STRATEGIES = ("latency-greedy", "accuracy-greedy", "knapsack")
PROXIES = ("norm-ratio", "bn-gamma", "l1")
BUILD = BuildConfig()          # the build's defaults: which proxies propose plans, how long the short list is


def plan_key(removed: list[str]) -> str:
    return ",".join(sorted(removed)) or "(none)"


SCORED = "search's best before fine-tune"   # what the build shipped before the short list (--select scored)
CHOICE = "build's choice"                    # the short list, each fine-tuned, best on the scoring images


def build_choice(data: dict, entry: dict) -> list[str] | None:
    """The plan `edgeprune build` ships: ``choose`` over the short list with its fine-tuned scores."""
    cands = []
    for c in entry["shortlist"]:
        f = data["final"].get(plan_key(c["removed"]), {})
        cand = Candidate(**{**c, "recovered_top1": f.get("after_score"), "recovered_loss": f.get("after_score_loss")})
        cands.append(cand)
    if not cands or (len(cands) > 1 and any(c.recovered_top1 is None for c in cands)):
        return None
    return choose(cands).removed


def rows(data: dict, phase: str) -> dict[str, dict[str, list[float | None]]]:
    """method row -> budget -> final top-1 values (several for random; None when not measured)."""
    out: dict[str, dict[str, list[float | None]]] = {}
    for b, entry in data["budgets"].items():
        for label, p in entry["plans"].items():
            if label.startswith("proxy:") and label != entry["best_proxy"]:
                continue
            row = "best proxy" if label.startswith("proxy:") else ("random" if label.startswith("random:") else label)
            out.setdefault(row, {}).setdefault(b, []).append(data["final"].get(plan_key(p["removed"]), {}).get(phase))
        w = entry["winner"]
        out.setdefault(SCORED, {})[b] = [data["final"].get(plan_key(entry["plans"][w]["removed"]), {})
                                         .get(phase)] if w in entry["plans"] else [None]
        chosen = build_choice(data, entry)
        out.setdefault(CHOICE, {})[b] = [None if chosen is None else
                                         data["final"].get(plan_key(chosen), {}).get(phase)]
    order = [CHOICE, *STRATEGIES, SCORED, "best proxy", "random"]
    return {k: out[k] for k in order if k in out}


def rivals(who: str, r: dict) -> list[str]:
    """The rows ``who`` is compared with: not itself, nor a row that contains it."""
    skip = {who, SCORED} | ({CHOICE} if who != CHOICE else set())
    return [o for o in r if o not in skip]


def _mean(v: list) -> float | None:
    v = [x for x in v if x is not None]
    return statistics.mean(v) if v else None


def fmt(vals: list) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "n/a"
    if len(vals) == 1:
        return f"{100 * v[0]:.1f}"
    return f"{100 * statistics.mean(v):.1f} ({100 * min(v):.1f}-{100 * max(v):.1f})"


def table(data: dict, phase: str, r: dict | None = None) -> list[str]:
    bs = list(data["budgets"])
    r = r or rows(data, phase)
    head = "| plan | " + " | ".join(f"{100 * float(b):g}% ({data['budgets'][b]['budget_ms']:.2f} ms)" for b in bs) + " |"
    lines = [head, "|---" * (len(bs) + 1) + "|"]
    for row, by_b in r.items():
        cells = []
        for b in bs:
            best = max((m for m in (_mean(v[b]) for v in r.values()) if m is not None), default=None)
            s = fmt(by_b[b])
            cells.append(f"**{s}**" if best is not None and _mean(by_b[b]) == best else s)
        label = {"random": f"random (mean, min-max of {len(data['config']['random_seeds'])} seeds)",
                 "best proxy": "best proxy (chosen on scoring images)",
                 "latency-greedy": "latency-greedy (latency-aware)",
                 "accuracy-greedy": "accuracy-greedy (seed's order)"}.get(row, row)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def detail(data: dict) -> list[str]:
    stage = {n: b["stage"] for n, b in data["env"]["blocks"].items()}
    nst = max(stage.values())
    lines = ["| budget | plan | blocks removed (per stage " + "/".join(map(str, range(1, nst + 1))) + ") | "
             "predicted ms | top-1 scoring | top-1 scoring after fine-tune | top-1 held-out | after fine-tune |",
             "|---|---|---|---|---|---|---|---|"]
    for b, entry in data["budgets"].items():
        chosen = build_choice(data, entry)
        short = {plan_key(c["removed"]) for c in entry["shortlist"]}
        for label, p in entry["plans"].items():
            pk = plan_key(p["removed"])
            f = data["final"].get(pk, {})
            mark = ((" (shipped)" if chosen is not None and pk == plan_key(chosen) else "")
                    + (" (short list)" if pk in short else "")
                    + (" (best before fine-tune)" if label == entry["winner"] else "")
                    + (" (kept)" if label == entry["best_proxy"] else ""))
            per = "/".join(str(sum(stage[n] == st for n in p["removed"])) for st in range(1, nst + 1))
            lines.append(f"| {100 * float(b):g}% | {label}{mark} | {len(p['removed'])} ({per}) | {p['latency_ms']:.2f} | "
                         f"{100 * p['top1']:.1f} | {_pct(f.get('after_score'))} | {_pct(f.get('before'))} | "
                         f"{_pct(f.get('after'))} |")
    return lines


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def verdicts(data: dict, phase: str, se_points: float, r: dict | None = None) -> list[str]:
    """Plain statements from the numbers, whichever way they go."""
    r = r or rows(data, phase)
    out = []
    for who in (CHOICE, "latency-greedy"):
        if who not in r:
            continue
        losses = []
        for b in data["budgets"]:
            mine = _mean(r[who][b])
            for other in rivals(who, r):
                theirs = _mean(r[other][b])
                if mine is not None and theirs is not None and theirs > mine:
                    losses.append((b, other, 100 * (theirs - mine)))
        n = len(data["budgets"])
        if not losses:
            out.append(f"- **{who}**: never below another plan's top-1 at any of the {n} budgets.")
        else:
            worst = max(losses, key=lambda x: x[2])
            out.append(f"- **{who}**: below another plan at {len({b for b, _, _ in losses})} of {n} budgets: "
                       + "; ".join(f"{100 * float(b):g}% by {d:.2f} pts vs {o}" for b, o, d in losses)
                       + f". Largest gap {worst[2]:.2f} pts; one figure's binomial standard error is ~{se_points:.1f} "
                       "pts" + (" (within two standard errors)." if worst[2] <= 2 * se_points else "."))
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None when undefined."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else None


def goals(data: dict, se_points: float, replicas: list[dict] | None = None) -> list[str]:
    """The issue's two goals, stated from the numbers, and the facts that bear on them."""
    out = []
    if replicas:
        m = mean_rows([data, *replicas], "after")
        gaps, leads = [], []
        for b in data["budgets"]:
            mine = _mean(m[CHOICE][b])
            o, theirs = max(((o, _mean(m[o][b])) for o in rivals(CHOICE, m) if _mean(m[o][b]) is not None),
                            key=lambda x: x[1])
            (gaps if theirs > mine else leads).append(f"{100 * float(b):g}% ({100 * (mine - theirs):+.2f} pts vs {o})")
        seeds = [data["config"]["seed"], *(d["config"]["seed"] for d in replicas)]
        out.append(f"- **Mean over fine-tune seeds {', '.join(map(str, seeds))}** (the least noisy figure here): the "
                   "build's plan is " + (f"best or tied at {', '.join(leads)}" if leads else "never best")
                   + (f"; behind at {', '.join(gaps)}" if gaps else "") + f". One figure's standard error is "
                   f"~{se_points:.1f} pts from the held-out images alone.")
    for who, label in ((CHOICE, "The build's plan (latency-aware search and proxies short-listed, each fine-tuned, "
                                "lowest loss on the scoring images)"),
                       ("latency-greedy", "The latency-greedy plan alone")):
        for phase, what in (("after", f"after the same fine-tune (seed {data['config']['seed']} alone)"),
                            ("before", "before fine-tune")):
            r = rows(data, phase)
            gaps = []
            for b in data["budgets"]:
                mine = _mean(r[who][b])
                best_other = max(((o, _mean(r[o][b])) for o in rivals(who, r) if _mean(r[o][b]) is not None),
                                 key=lambda x: x[1])
                if mine is not None and best_other[1] > mine:
                    gaps.append(f"{100 * float(b):g}% (-{100 * (best_other[1] - mine):.2f} pts vs {best_other[0]})")
            out.append(f"- {label} never worse than the others, {what}: **"
                       + ("holds" if not gaps else "does not hold") + "**"
                       + (f": behind at {', '.join(gaps)}." if gaps else f" at all {len(data['budgets'])} budgets."))
    b = data.get("build")
    if b:
        search_s = sum(sec for name, sec in stages(b["stamped"], b["wall_s"]) if name.startswith("searching"))
        out.append(f"- Default build under 10 minutes on {b['cores']} cores: **"
                   + ("holds" if b["exit_code"] == 0 and b["wall_s"] < 600 else "does not hold")
                   + f"**: {b['wall_s'] / 60:.1f} min wall, exit {b['exit_code']}; the plan search is "
                   f"{search_s:.0f} s of it ({100 * search_s / b['wall_s']:.0f}%).")
    same = [k for k, e in data["budgets"].items() if "latency-greedy" in e["plans"] and "accuracy-greedy" in e["plans"]
            and plan_key(e["plans"]["latency-greedy"]["removed"]) == plan_key(e["plans"]["accuracy-greedy"]["removed"])]
    bms = [v for n, v in data["block_ms"].items() if data["env"]["blocks"][n]["kind"] == "identity"]
    out.append(f"- Latency-greedy and the seed's accuracy-greedy chose the same blocks at {len(same)} of "
               f"{len(data['budgets'])} budgets. On `{data['config']['device']}` one identity block saves "
               f"{min(bms):.2f}-{max(bms):.2f} ms (the dearest {100 * (max(bms) / min(bms) - 1):.0f}% more than the "
               "cheapest), so every plan at a budget removes about the same number of blocks and accuracy per ms "
               "orders blocks almost as accuracy alone does: on this model latency-awareness has little to exploit.")
    cors, rhos = [], []
    for k, e in data["budgets"].items():
        pts = {plan_key(p["removed"]) for p in e["plans"].values()}
        pairs = [(data["final"][pk]["before"], data["final"][pk]["after"]) for pk in pts
                 if "after" in data["final"].get(pk, {})]
        rho = spearman([a for a, _ in pairs], [c for _, c in pairs])
        if rho is not None:
            cors.append(f"{100 * float(k):g}%: {rho:+.2f} over {len(pairs)} plans")
            rhos.append(rho)
    if cors:
        out.append("- Spearman rank correlation, over the distinct fine-tuned plans at each budget, between held-out "
                   "top-1 before fine-tune (the quantity the search maximises, though it measures it on the scoring "
                   "images) and after: " + "; ".join(cors) + f" (from {min(rhos):+.2f} to {max(rhos):+.2f}; with so "
                   "few plans each coefficient is itself uncertain). The fine-tune recovers most of the removal loss "
                   "for every plan, so a plan chosen for its accuracy before fine-tune need not be the best after.")
    out.append(f"- Noise: one figure's binomial standard error is ~{se_points:.1f} pts on these images, and every "
               "plan has a single fine-tune seed; the random rows' min-max shows how much plans of similar quality "
               "spread after fine-tune.")
    return out


def plot(data: dict, path: Path, budget: str = "0.6", replicas: list[dict] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if budget not in data["budgets"]:
        budget = list(data["budgets"])[-1]
    entry = data["budgets"][budget]
    cfg = data["config"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.35, 1]})
    considered = [Plan(**p) for p in entry["considered"]]
    ax.scatter([p.latency_ms for p in considered], [100 * p.top1 for p in considered], s=10, color="0.75",
               label=f"every plan the search considered ({len(considered)})", zorder=1)
    front = pareto_front(considered)
    ax.step([p.latency_ms for p in front], [100 * p.top1 for p in front], where="post", color="k", linewidth=1,
            label="Pareto front of those plans", zorder=2)
    ax.axvline(entry["budget_ms"], color="C3", linestyle="--", linewidth=1.2,
               label=f"budget {entry['budget_ms']:.2f} ms ({100 * float(budget):g}% of unpruned)")
    styles = {"latency-greedy": ("C0", "*", 260), "accuracy-greedy": ("C1", "s", 90), "knapsack": ("C2", "D", 80),
              "proxy:norm-ratio": ("C4", "^", 70), "proxy:bn-gamma": ("C5", "v", 70), "proxy:l1": ("C6", "<", 70)}
    seen: dict[str, str] = {}
    for label, p in entry["plans"].items():
        color, marker, size = styles.get(label, ("0.3", "x", 60))
        pk = plan_key(p["removed"])
        chosen = build_choice(data, entry)
        name = label + (" (build's choice)" if chosen is not None and pk == plan_key(chosen) else "") + \
            (" (kept proxy)" if label == entry["best_proxy"] else "") + \
            (f" (same plan as {seen[pk]})" if pk in seen else "")
        seen.setdefault(pk, label)
        ax.scatter([p["latency_ms"]], [100 * p["top1"]], color=color, marker=marker, s=size, label=name,
                   zorder=5 if label == "latency-greedy" else 3, edgecolors="k" if marker != "x" else None,
                   linewidths=0.5)
    ax.set_xlabel(f"predicted latency on {cfg['device']} (ms, block table)")
    ax.set_ylabel(f"top-1 % on the {cfg['score_images']} scoring images (no fine-tune)")
    ax.set_title(f"Plans at the {100 * float(budget):g}% budget")
    lo = min([100 * p.top1 for p in considered if p.latency_ms <= entry["budget_ms"] * 1.6]
             + [100 * p["top1"] for p in entry["plans"].values()])
    ax.set_ylim(max(0, lo - 5), 100 * max(p.top1 for p in considered) + 2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")

    bs = list(data["budgets"])
    xs = [data["budgets"][b]["budget_ms"] for b in bs]
    lstyle = {CHOICE: ("C3", "o", "-"), "latency-greedy": ("C0", "*", "-"), "accuracy-greedy": ("C1", "s", "-"), "knapsack": ("C2", "D", "-"),
              "best proxy": ("C4", "^", "--"), "random": ("0.4", "x", ":")}
    runs = [data, *(replicas or [])]
    after = mean_rows(runs, "after") if replicas else rows(data, "after")
    for row, by_b in after.items():
        if row not in lstyle:
            continue
        color, marker, ls = lstyle[row]
        ys = [_mean(by_b[b]) for b in bs]
        if all(y is None for y in ys):
            continue
        same = row == "accuracy-greedy" and all(
            plan_key(data["budgets"][b]["plans"][row]["removed"])
            == plan_key(data["budgets"][b]["plans"]["latency-greedy"]["removed"]) for b in bs
            if row in data["budgets"][b]["plans"] and "latency-greedy" in data["budgets"][b]["plans"])
        lead = row == CHOICE
        ax2.plot(xs, [100 * y if y is not None else float("nan") for y in ys], color=color, marker=marker,
                 linestyle=ls, linewidth=3 if lead else 1.5, markersize=12 if lead else 6, zorder=4 if lead else 3,
                 markerfacecolor="none" if same else color,
                 label=row + (" (mean, min-max)" if row == "random" else "")
                 + (" (same plans as latency-greedy)" if same else ""))
        if row == "random":
            ax2.fill_between(xs, [100 * min(v for v in by_b[b] if v is not None) for b in bs],
                             [100 * max(v for v in by_b[b] if v is not None) for b in bs], color=color, alpha=0.2)
    base = data["final"].get(plan_key([]), {}).get("before")
    if base is not None:
        ax2.axhline(100 * base, color="k", linewidth=0.8, linestyle="-.", label="unpruned (no fine-tune)")
    ax2.set_xlabel(f"budget on {cfg['device']} (ms)")
    ax2.set_ylabel(f"top-1 % on {cfg['final_images']} held-out images, after fine-tune")
    ax2.set_title("Final top-1 per budget, same fine-tune for all"
                  + (f"\n(mean over fine-tune seeds {', '.join(str(d['config']['seed']) for d in runs)})" if replicas else ""))
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{cfg['model']} on {cfg['data']} data, {cfg['device']}: latency-budgeted block-removal plans")
    fig.tight_layout()
    save_figure(fig, path)


def mean_rows(datas: list[dict], phase: str) -> dict[str, dict[str, list[float | None]]]:
    """Each row's figure averaged over runs that differ only in the fine-tune seed."""
    per = [rows(d, phase) for d in datas]
    out: dict[str, dict[str, list[float | None]]] = {}
    for row in per[0]:
        for b in datas[0]["budgets"]:
            vals = [_mean(r[row][b]) for r in per if row in r]
            vals = [v for v in vals if v is not None]
            out.setdefault(row, {})[b] = [statistics.mean(vals) if len(vals) == len(per) else None]
    return out


def replicate_section(data: dict, replicas: list[dict], se: float) -> list[str]:
    """Final top-1 of the same plans after fine-tunes with other seeds, and the mean over all seeds."""
    seeds = [data["config"]["seed"], *(d["config"]["seed"] for d in replicas)]
    lines = ["## Other fine-tune seeds", "",
             f"The same plans (the search does not depend on the seed) fine-tuned again with seed "
             f"{', '.join(str(d['config']['seed']) for d in replicas)} (`--seed`; each run's cache is passed "
             "with `--replicate`). The build's choice is made in each run from that run's own losses on the "
             "scoring images, as a build with that seed would make it.", ""]
    for d in replicas:
        lines += [f"### Seed {d['config']['seed']}: final top-1 (%) after fine-tune", "", *table(d, "after"), "",
                  *verdicts(d, "after", se), ""]
    m = mean_rows([data, *replicas], "after")
    lines += [f"### Mean over seeds {', '.join(map(str, seeds))}: final top-1 (%) after fine-tune", "",
              *table(data, "after", m), "",
              f"Averaging {len(seeds)} fine-tunes divides the fine-tune's share of the noise by about "
              f"{len(seeds) ** 0.5:.1f}; the held-out images are the same in every run, so their sampling noise "
              f"(~{se:.1f} pts per figure) stays.", "", *verdicts(data, "after", se, m), ""]
    return lines


def report(data: dict, args: argparse.Namespace, command: str, replicas: list[dict] | None = None) -> str:
    cfg, env, ftc = data["config"], data["env"], data["config"]["finetune"]
    base = data["final"][plan_key([])]["before"]
    n = cfg["final_images"]
    se = 100 * (base * (1 - base) / n) ** 0.5
    ft_images = (ftc["steps"] * ftc["batch_size"] if ftc["steps"] is not None else round(ftc["epochs"] * 6000))
    total_s = sum(data["seconds"].values())
    ncand = sum(1 for b in env["blocks"].values() if b["kind"] == "identity")
    bms = sorted(data["block_ms"].items(), key=lambda kv: kv[1])
    lines = [
        "# Latency-budgeted plans: does the latency-aware search win?",
        "",
        f"Generated by `benchmarks/studies/budget_plans.py` (`{command}`)"
        + ("".join(f"; the seed-{d['config']['seed']} run it reads first: `.venv/bin/python benchmarks/studies/budget_plans.py "
                   f"--threads 2 --seed {d['config']['seed']} --skip-build`" for d in replicas or []) + "."),
        "",
        "## Setup",
        "",
        f"- Model `{cfg['model']}` (weights {relative_path(cfg['weights']) or 'random initialisation'}"
        + (f", sha256 {cfg['weights_sha256'][:12]}..." if cfg["weights_sha256"] else "")
        + f"), data `{cfg['data']}`; {len(env['blocks'])} residual blocks, {ncand} with an identity shortcut "
        "(the candidates, as in `edgeprune build` without `--replace-projection`).",
        f"- Latency model: `block_latency_table(...)` for `{cfg['device']}` ({env['table_source']}, expected error "
        f"±{100 * env['expected_error']:.0f}%), used through `predict_without` exactly as `edgeprune build` does. "
        f"Unpruned: **{data['base_ms']:.2f} ms**; every candidate removed: {data['floor_ms']:.2f} ms; one block saves "
        f"{bms[0][1]:.2f}-{bms[-1][1]:.2f} ms (least: {bms[0][0]}, most: {bms[-1][0]}). "
        "Budgets: " + ", ".join(f"{100 * float(b):g}% = {e['budget_ms']:.2f} ms" for b, e in data["budgets"].items())
        + ". Plans are compared on this prediction; the build additionally re-predicts its one chosen plan "
        "from the exported graph, which this benchmark does not repeat for every plan.",
        f"- Plans are scored and chosen on the first {cfg['score_images']} validation images; every top-1 in the "
        f"tables is measured on the other {n} (`split_val`), which no plan was chosen on."
        + (" WARNING: the split was too small and the two sets are shared." if cfg["shared"] else ""),
        "- Plans: `search(AccuracyOracle(...), predict_without, candidates, budget)` from `edgeprune.pipeline.plan` "
        "gives latency-greedy (the latency-aware plan), accuracy-greedy (the seed's iterative order) and knapsack, "
        f"plus its winner (`{SCORED}`: the best of the three on the scoring images, what `edgeprune build "
        f"--select scored` ships). `{CHOICE}` is what `edgeprune build` ships by default: the strategies' plans and "
        f"the proxy plans of {', '.join(BUILD.search.proxies)} short-listed (at most {BUILD.search.shortlist} distinct block "
        "sets, `edgeprune.pipeline.select.shortlist`), each given the fine-tune below, and the lowest loss on the "
        "scoring images after it (`choose`); the held-out images take no part. Proxies (norm-ratio, bn-gamma, l1; `rank_blocks`, one-shot): blocks removed in the "
        "proxy's order until the predicted latency meets the budget; per budget the proxy kept is the one with the "
        "best top-1 on the scoring images (all three are in the detail table). Random: "
        f"{len(cfg['random_seeds'])} seeds ({', '.join(map(str, cfg['random_seeds']))}), a random order removed "
        "until the budget is met.",
        "- Fine-tune, the same for every plan"
        + (" (what `edgeprune build` does by default)" if ftc["steps"] is None and ftc["epochs"] == 1 else
           " (shorter than `edgeprune build`'s default of one epoch)") + ": `FinetuneConfig("
        + (f"steps={ftc['steps']}" if ftc["steps"] is not None else f"epochs={ftc['epochs']:g}")
        + f", lr={ftc['lr']}, seed={ftc['seed']})`: {ftc['optimizer'].upper()}, batch {ftc['batch_size']}, cosine "
        f"schedule, momentum {ftc['momentum']}, weight decay {ftc['weight_decay']}, {ftc['augment']} augmentation, "
        f"no distillation, about {ft_images:,} training images of the bundled 6,000-image subset.",
        f"- Unpruned top-1 on the {n} held-out images: {100 * base:.1f}%. Binomial standard error of one figure at "
        f"this accuracy: ~{se:.1f} points, so differences under ~{2 * se:.1f} points between two rows are within "
        "noise (and each plan has one fine-tune seed).",
        f"- Environment: torch {env['torch']}, {env['threads']} torch thread(s), {env['device']} ({env['cpu']}, "
        f"{env['cores']} cores shared with other jobs), Python {env['python']}. Compute time of the cached run: "
        f"{total_s / 60:.1f} min (" + ", ".join(f"{k} {v:.0f}s" for k, v in
                                                sorted(data["seconds"].items(), key=lambda kv: -kv[1])) + ").",
        "",
        "## Goals",
        "",
        *goals(data, se, replicas),
        "",
        "## Final top-1 (%) after the same fine-tune",
        "",
        *table(data, "after"),
        "",
        "Best per column in bold (ties all bold).",
        "",
        *verdicts(data, "after", se),
        "",
        "## Top-1 (%) on the held-out images before fine-tune",
        "",
        *table(data, "before"),
        "",
        *verdicts(data, "before", se),
        "",
        *(replicate_section(data, replicas, se) if replicas else []),
        "## Every plan",
        "",
        *detail(data),
        "",
        f"![Pareto plot]({Path(args.plot).name})",
        "",
        f"Left: at the {_plot_budget(data)} budget, every plan the search measured (grey; top-1 on the scoring "
        "images, predicted latency), the Pareto front of those plans, the budget line and each method's plan. "
        "Right: final top-1 after fine-tune per budget" + (" (mean over the fine-tune seeds; the random band then spans the seeds' means only)." if replicas else "."),
        "",
    ]
    b = data.get("build")
    if b:
        lines += ["## Wall time of the default build", "", "```", b["command"], "```", "",
                  f"From an empty out folder: **{b['wall_s'] / 60:.1f} min wall** ({b['wall_s']:.0f} s), "
                  f"{b['cpu_s']:.0f} s CPU (user+sys of the process and its children), exit code "
                  f"{b['exit_code']}. {b['cores']} cores, niceness {b['nice']}, load average "
                  f"{b['loadavg_before'][0]:.2f} before and {b['loadavg_after'][0]:.2f} after (1-minute; other "
                  "jobs shared the machine). This is the README's first command.", "",
                  "Where the time went (from the arrival time of each progress line the build printed; a "
                  "stage runs until the next line):", "", "| stage | s |", "|---|---|",
                  *[f"| {name} | {sec:.0f} |" for name, sec in stages(b["stamped"], b["wall_s"])], "",
                  "What it printed:", "", "```", b["output"].rstrip(), "```", ""]
    return "\n".join(lines)


def stages(stamped: list, wall_s: float) -> list[tuple[str, float]]:
    """Seconds from each "> stage" line of the build's output to the next line (the last: to the end)."""
    marks = [(t, line[2:]) for t, line in stamped if line.startswith("> ")]
    first_other = next((t for t, line in stamped if not line.startswith("> ") and t > (marks[-1][0] if marks else 0)),
                       wall_s)
    out = []
    for i, (t, name) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else first_other
        out.append((name if len(name) < 70 else name[:67] + "...", end - t))
    out.append(("after the last stage line (summary, exit)", wall_s - first_other))
    if marks:
        out.insert(0, ("start-up before the first line (imports)", marks[0][0]))
    return out


def _plot_budget(data: dict) -> str:
    b = "0.6" if "0.6" in data["budgets"] else list(data["budgets"])[-1]
    return f"{100 * float(b):g}% ({data['budgets'][b]['budget_ms']:.2f} ms)"
