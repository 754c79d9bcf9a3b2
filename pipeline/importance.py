"""Block importance: direct removal (the seed method) and proxy criteria, one signature each.

Every criterion is ``fn(model, blocks, batches, ctx) -> dict[block name, Score]``; a higher
``importance`` means the block matters more, so plans remove the lowest first. Direct
removal measures accuracy and loss with the block removed. It reuses the network up to
each block: the model is traced once with the blocks as leaves and one pass runs the graph in
order; when it reaches candidate k it runs the graph from block k on (block k replaced) on the
values held at that point, then goes on. Each value is dropped after its last reader, so what
is held at block k is only what the graph from k on reads from before k (in a chain, the
block's input): memory is about two forward passes of one batch, whatever the number of
blocks. The scores are the same numbers the naive computation (remove, evaluate the whole
model) gives.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.autocast import OFF, Autocast
from edgeprune.pipeline.distributed import BatchSums, world
from edgeprune.pipeline.blocks import Block, analyse, ancestors, remove_blocks, shortcut_module
from edgeprune.progress import track

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Score:
    block: str
    importance: float
    top1: float | None = None       # accuracy with the block removed (direct removal only)
    loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScoreContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    replace_projection: bool = False
    reuse_prefix: bool = True
    progress: str | None = None
    autocast: Autocast = OFF        # the precision of the forward passes (the sums are float32)


Criterion = Callable[[nn.Module, Sequence[Block], Sequence[Batch], ScoreContext], dict[str, Score]]


# ---------------------------------------------------------------- direct removal

class _BlockLeafTracer(fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def trace_with_blocks_as_leaves(model: nn.Module, names: Iterable[str]) -> fx.GraphModule:
    leaves = set(names)
    try:
        graph = _BlockLeafTracer(leaves).trace(model)
    except Exception as e:  # noqa: BLE001
        raise EdgepruneError(f"torch.fx cannot trace the model: {type(e).__name__}: {e}") from None
    return fx.GraphModule(model, graph)


def _replacement(model: nn.Module, block: Block) -> nn.Module:
    return nn.Identity() if block.kind == "identity" else shortcut_module(model.get_submodule(block.name))


def _accumulate(stats: BatchSums, batch: int, name: str, out: torch.Tensor, y: torch.Tensor) -> None:
    out = out.float()
    stats.add(batch, name, [(out.argmax(1) == y).sum().item(), F.cross_entropy(out, y, reduction="sum").item(), len(y)])


def removal_accuracy(model: nn.Module, blocks: Sequence[Block], batches: Sequence[Batch],
                     ctx: ScoreContext) -> tuple[tuple[float, float], dict[str, tuple[float, float]]]:
    """(top1, loss) of the full model and of the model with each block removed alone."""
    try:
        with ctx.autocast(ctx.device):
            return _removal_accuracy(model, blocks, batches, ctx)
    except EdgepruneError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's model that fails on real data: one line, not a traceback
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise EdgepruneError(f"the model fails on the scoring images: {type(e).__name__}: {first}") from None


@torch.no_grad()
def _removal_accuracy(model: nn.Module, blocks: Sequence[Block], batches: Sequence[Batch],
                      ctx: ScoreContext) -> tuple[tuple[float, float], dict[str, tuple[float, float]]]:
    model = model.eval().to(ctx.device)
    names = [b.name for b in blocks]
    stats, here = BatchSums(), world()          # under torchrun each rank runs its share of the batches
    if not ctx.reuse_prefix:
        for b in track(blocks, ctx.progress):
            pruned = remove_blocks(model, [b.name], list(blocks), replace_projection=True).eval()
            for i, (x, y) in enumerate(batches):
                if here.runs(i):
                    x, y = x.to(ctx.device), y.to(ctx.device)
                    _accumulate(stats, i, b.name, pruned(x), y)
        for i, (x, y) in enumerate(batches):
            if here.runs(i):
                x, y = x.to(ctx.device), y.to(ctx.device)
                _accumulate(stats, i, "", model(x), y)
    else:
        gm = trace_with_blocks_as_leaves(model, names)
        nodes = list(gm.graph.nodes)
        position = {n.target: i for i, n in enumerate(nodes) if n.op == "call_module" and n.target in names}
        missing = [n for n in names if n not in position]
        if missing:
            raise EdgepruneError(f"blocks not called directly in the traced graph: {', '.join(missing[:3])}")
        replacements = {b.name: _replacement(model, b).to(ctx.device).eval() for b in blocks}
        at = sorted((p, name) for name, p in position.items())
        free_after = _free_schedule(nodes)
        main, suffix = (fx.Interpreter(gm, garbage_collect_values=False) for _ in range(2))
        for i, (x, y) in enumerate(track(batches, ctx.progress)):
            if not here.runs(i):
                continue
            x, y = x.to(ctx.device), y.to(ctx.device)
            main.args_iter, env, done = iter([x]), {}, 0
            for p, name in at:
                # env now holds exactly the values nodes[p:] read that were produced before p
                _run_span(main, nodes, done, p, env, free_after)
                done = p
                node, senv = nodes[p], dict(env)
                suffix.env = senv
                senv[node] = replacements[name](*suffix.map_nodes_to_values(node.args, node))
                _drop(senv, free_after, p)
                _accumulate(stats, i, name, _run_span(suffix, nodes, p + 1, len(nodes), senv, free_after), y)
                del senv
            _accumulate(stats, i, "", _run_span(main, nodes, done, len(nodes), env, free_after), y)
    totals = stats.totals()
    full = totals.pop("")
    per = {k: (v[0] / v[2], v[1] / v[2]) for k, v in totals.items()}
    return (full[0] / full[2], full[1] / full[2]), per


def _free_schedule(nodes: list[fx.Node]) -> dict[int, list[fx.Node]]:
    """Graph position i -> the nodes whose last reader is ``nodes[i]`` (a value nothing reads: itself)."""
    index = {n: i for i, n in enumerate(nodes)}
    out: dict[int, list[fx.Node]] = {}
    for n in nodes:
        out.setdefault(max((index[u] for u in n.users), default=index[n]), []).append(n)
    return out


def _drop(env: dict, free_after: dict[int, list[fx.Node]], i: int) -> None:
    for n in free_after.get(i, ()):
        env.pop(n, None)


def _run_span(interp: fx.Interpreter, nodes: list[fx.Node], start: int, stop: int, env: dict,
              free_after: dict[int, list[fx.Node]]):
    """Run ``nodes[start:stop]`` on ``env`` (the values they read from earlier nodes), dropping each
    value after its last reader, so env keeps only what ``nodes[stop:]`` reads. Returns the output
    node's value when the span reaches it, else None."""
    interp.env = env
    for i in range(start, stop):
        node = nodes[i]
        if node.op == "output":
            return interp.map_nodes_to_values(node.args[0], node)
        env[node] = interp.run_node(node)
        _drop(env, free_after, i)
    return None


def direct_removal(model: nn.Module, blocks: Sequence[Block], batches: Sequence[Batch],
                   ctx: ScoreContext) -> dict[str, Score]:
    (base_top1, base_loss), per = removal_accuracy(model, blocks, batches, ctx)
    # importance = accuracy lost by removing the block; the loss increase breaks ties.
    return {n: Score(n, (base_top1 - t) + 1e-6 * (l - base_loss), t, l) for n, (t, l) in per.items()}


# ---------------------------------------------------------------- proxies

class _Keeping(fx.Interpreter):
    """An interpreter that frees values after their last use but keeps those of ``keep``."""

    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node]) -> None:
        super().__init__(gm)
        self.keep, self.kept = keep, {}

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        if n in self.keep:
            self.kept[n] = value
        return value


@torch.no_grad()
def residual_norm_ratio(model: nn.Module, blocks: Sequence[Block], batches: Sequence[Batch],
                        ctx: ScoreContext) -> dict[str, Score]:
    """Mean over images of ||f(x)|| / ||shortcut(x)||: how much the block changes its input.

    Each block's ratios are taken from its input as the model runs (a forward hook), one batch
    at a time: no block input outlives its batch."""
    model = model.eval().to(ctx.device)
    analysed = {b.name: analyse(model.get_submodule(b.name)) for b in blocks}
    ratios: dict[str, list[torch.Tensor]] = {b.name: [] for b in blocks}

    def measure(name: str, x: torch.Tensor) -> None:
        res = analysed[name]
        interp = _Keeping(res.graph, {res.branch, res.shortcut})
        interp.run(x)
        fx_ = interp.kept[res.branch].flatten(1).float().norm(dim=1)
        sx = interp.kept[res.shortcut].flatten(1).float().norm(dim=1).clamp_min(1e-12)
        ratios[name].append(fx_ / sx)

    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: measure(n, i[0].detach()))
             for n in ratios]
    try:
        with ctx.autocast(ctx.device):
            for x, _ in batches:
                model(x.to(ctx.device))
    finally:
        for h in hooks:
            h.remove()
    return {n: Score(n, torch.cat(r).mean().item()) for n, r in ratios.items()}


def _branch_modules(model: nn.Module, block: Block) -> list[nn.Module]:
    """Leaf modules on the residual branch (not on the shortcut) of a block."""
    res = analyse(model.get_submodule(block.name))
    shortcut_nodes = ancestors(res.shortcut) | {res.shortcut}
    mods = []
    for n in ancestors(res.branch) | {res.branch}:
        if n.op == "call_module" and n not in shortcut_nodes:
            mods.append(res.graph.get_submodule(n.target))
    return mods


def bn_gamma(model: nn.Module, blocks: Sequence[Block], batches: Sequence[Batch], ctx: ScoreContext) -> dict[str, Score]:
    """Mean |gamma| of the BatchNorm layers on the residual branch."""
    out = {}
    for b in blocks:
        gammas = [m.weight.detach().abs().flatten() for m in _branch_modules(model, b)
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
        out[b.name] = Score(b.name, torch.cat(gammas).mean().item() if gammas else 0.0)
    return out


def weight_l1(model: nn.Module, blocks: Sequence[Block], batches: Sequence[Batch], ctx: ScoreContext) -> dict[str, Score]:
    """L1 norm of the conv/linear weights of the block."""
    out = {}
    for b in blocks:
        mod = model.get_submodule(b.name)
        total = sum(m.weight.detach().abs().sum().item() for m in mod.modules()
                    if isinstance(m, (nn.Conv2d, nn.Linear)))
        out[b.name] = Score(b.name, float(total))
    return out


def random_importance(model: nn.Module, blocks: Sequence[Block], batches: Sequence[Batch],
                      ctx: ScoreContext) -> dict[str, Score]:
    rng = random.Random(ctx.seed)
    return {b.name: Score(b.name, rng.random()) for b in blocks}


CRITERIA: dict[str, Criterion] = {
    "direct": direct_removal,
    "norm-ratio": residual_norm_ratio,
    "bn-gamma": bn_gamma,
    "l1": weight_l1,
    "random": random_importance,
}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise EdgepruneError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")
    return CRITERIA[name]


# ---------------------------------------------------------------- modes

@dataclass
class RankStep:
    removed: str
    scores: dict[str, Score]        # the scores of every remaining block at this step


def rank_iterative(model: nn.Module, blocks: Sequence[Block], batches: Sequence[Batch], ctx: ScoreContext,
                   criterion: str = "direct", k: int | None = None) -> list[RankStep]:
    """Remove the least important block, re-score the rest on the pruned model, repeat k times."""
    fn = get_criterion(criterion)
    candidates = list(blocks)
    current, removed, steps = model, [], []
    k = len(candidates) if k is None else min(k, len(candidates))
    for _ in track(range(k), ctx.progress and f"{ctx.progress} (iterative)", total=k):
        quiet = replace(ctx, seed=ctx.seed + len(removed), progress=None)
        scores = fn(current, candidates, batches, quiet)
        worst = min(candidates, key=lambda b: (scores[b.name].importance, b.name))
        steps.append(RankStep(worst.name, scores))
        removed.append(worst.name)
        candidates = [b for b in candidates if b.name != worst.name]
        current = remove_blocks(model, removed, list(blocks), replace_projection=True)
    return steps


def candidates_for(blocks: Sequence[Block], replace_projection: bool) -> list[Block]:
    chosen = [b for b in blocks if b.kind == "identity" or replace_projection]
    if not chosen:
        raise EdgepruneError("the model has no removable block (no identity-shortcut residual block"
                             + ("" if replace_projection else "; --replace-projection allows projection blocks") + ")")
    return chosen
