"""Residual-block discovery and removal on the torch.fx graph, not on class names.

A block is a submodule whose traced output is ``f(x) + shortcut(x)``, optionally followed by
one activation. ``shortcut`` is either the input itself (possibly through ``nn.Identity``):
an *identity* block, removable exactly by replacing it with the identity; or a computed
path (a strided/1x1 conv, pooling...): a *projection* block, listed but only removable on
request, by replacing the block with its shortcut path alone (plus its trailing activation).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
import torch.fx as fx
from torch import nn

from edgeprune.errors import EdgepruneError

_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
_PASS_THROUGH = (nn.Identity, nn.Dropout)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Sigmoid)
_ACTIVATION_FNS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.silu,
                   torch.nn.functional.gelu, torch.nn.functional.hardswish, "relu", "relu_"}


@dataclass
class Block:
    name: str                     # qualified module name, as in model.named_modules()
    kind: str                     # "identity" or "projection"
    stage: int                    # 1-based index of the block's output resolution, in order
    parent: str                   # the module that holds it (e.g. "layer2", "features")
    params: int
    macs: int                     # multiply-accumulates at the model's input size
    in_shape: list[int] = field(default_factory=list)
    out_shape: list[int] = field(default_factory=list)
    activation: bool = False      # a trailing activation follows the add

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Residual:
    """What tracing found inside one module."""

    graph: fx.GraphModule
    add: fx.Node
    branch: fx.Node               # the operand computed by f
    shortcut: fx.Node             # the other operand (the placeholder, for identity blocks)
    identity: bool
    activation: fx.Node | None


def _is_add(n: fx.Node) -> bool:
    return n.op in ("call_function", "call_method") and n.target in _ADDS and len(n.args) >= 2 \
        and all(isinstance(a, fx.Node) for a in n.args[:2])


def _is_activation(n: fx.Node, gm: fx.GraphModule) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), _ACTIVATIONS)
    return n.op in ("call_function", "call_method") and n.target in _ACTIVATION_FNS


def _strip_pass_through(n: fx.Node, gm: fx.GraphModule) -> fx.Node:
    while n.op == "call_module" and (isinstance(gm.get_submodule(n.target), _PASS_THROUGH) or (
            isinstance(gm.get_submodule(n.target), nn.Sequential) and len(gm.get_submodule(n.target)) == 0)):
        n = n.args[0]
    return n


def ancestors(n: fx.Node) -> set[fx.Node]:
    """Every node ``n`` depends on, directly or not (``n`` itself excluded)."""
    seen, stack = set(), [n]
    while stack:
        cur = stack.pop()
        for a in cur.all_input_nodes:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def analyse(module: nn.Module) -> Residual | None:
    """Trace ``module`` and decide whether it is a residual block."""
    if not list(module.children()):
        return None
    try:
        gm = fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 - an untraceable module simply is not a candidate
        return None
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    out = next(n for n in nodes if n.op == "output")
    if len(placeholders) != 1 or not isinstance(out.args[0], fx.Node):
        return None
    x, end, act = placeholders[0], out.args[0], None
    if _is_activation(end, gm) and end.args and isinstance(end.args[0], fx.Node):
        act, end = end, end.args[0]
    if not _is_add(end):
        return None
    a, b = end.args[0], end.args[1]
    sa, sb = _strip_pass_through(a, gm), _strip_pass_through(b, gm)
    for branch, shortcut in ((a, sb), (b, sa)):
        if shortcut is x and x in ancestors(branch):
            return Residual(gm, end, branch, shortcut, True, act)
    # Projection: both operands depend on x, and neither path passes through the other.
    anc_a, anc_b = ancestors(sa) | {sa}, ancestors(sb) | {sb}
    if x in anc_a and x in anc_b and sb not in anc_a and sa not in anc_b:
        # the shortcut is the operand computed by fewer operations
        def ops(s: set[fx.Node]) -> int:
            return sum(1 for n in s if n.op in ("call_module", "call_function", "call_method"))
        branch, shortcut = (a, b) if ops(anc_a) >= ops(anc_b) else (b, a)
        return Residual(gm, end, branch, shortcut, False, act)
    return None


def macs_by_module(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[dict[str, int], dict[str, tuple]]:
    """MACs per qualified module name (FLOPs/2 from torch's FlopCounterMode), and I/O shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    shapes: dict[str, tuple] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: shapes.__setitem__(
                    name, (tuple(i[0].shape) if i and isinstance(i[0], torch.Tensor) else (),
                           tuple(o.shape) if isinstance(o, torch.Tensor) else ()))))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
    root = type(model).__name__
    macs = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key[len(root) + 1:] if key.startswith(root + ".") else ("" if key == root else key)
        macs[name] = int(sum(per_op.values()) // 2)
    return macs, shapes


def find_residual_modules(model: nn.Module) -> dict[str, Residual]:
    """Every outermost submodule of ``model`` that traces to a residual block, by name."""
    found: dict[str, Residual] = {}
    for name, mod in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue  # a block inside an already-found block is covered by the outer one
        if isinstance(mod, nn.Sequential) and len(mod) == 1:
            continue  # a one-block stage: report the block itself
        res = analyse(mod)
        if res is not None:
            found[name] = res
    return found


def discover(model: nn.Module, input_shape: tuple[int, ...]) -> list[Block]:
    """All residual blocks of ``model`` in execution order, with their costs at ``input_shape``."""
    was_training = model.training
    model.eval()
    try:
        residuals = find_residual_modules(model)
        macs, shapes = macs_by_module(model, input_shape)
    finally:
        model.train(was_training)
    order = {name: i for i, name in enumerate(shapes)}  # hooks fire in execution order
    names = sorted((n for n in residuals if n in shapes), key=lambda n: order[n])
    blocks, resolutions = [], []
    for name in names:
        res = residuals[name]
        in_shape, out_shape = shapes[name]
        identity = res.identity and tuple(in_shape) == tuple(out_shape)
        resolution = tuple(out_shape[2:])
        if not resolutions or resolutions[-1] != resolution:
            resolutions.append(resolution)
        mod = model.get_submodule(name)
        blocks.append(Block(
            name=name, kind="identity" if identity else "projection", stage=len(resolutions),
            parent=name.rsplit(".", 1)[0] if "." in name else "", params=sum(p.numel() for p in mod.parameters()),
            macs=macs.get(name, 0), in_shape=list(in_shape), out_shape=list(out_shape),
            activation=res.activation is not None))
    return blocks


class ShortcutOnly(fx.GraphModule):
    """A projection block reduced to its shortcut path (and trailing activation)."""


def shortcut_module(block: nn.Module) -> nn.Module:
    """A module computing only the shortcut path of a projection block (plus its activation)."""
    res = analyse(block)
    if res is None:
        raise EdgepruneError("not a residual block")
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    keep = ancestors(res.shortcut) | {res.shortcut}
    for n in res.graph.graph.nodes:
        if n in keep:
            env[n] = g.node_copy(n, lambda a: env[a])
    out = env[res.shortcut]
    if res.activation is not None:
        out = g.node_copy(res.activation, lambda a: out if a is res.add else env[a])
    g.output(out)
    return ShortcutOnly(res.graph, g, class_name="ShortcutOnly")


def shortcut_modules(model: nn.Module, name: str) -> list[str]:
    """Qualified names of the modules on block ``name``'s shortcut path (none for an identity shortcut).

    What stays of a projection block replaced by its shortcut (``remove_blocks(...,
    replace_projection=True)``): the latency model keeps these when it removes the block.
    """
    res = analyse(model.get_submodule(name))
    if res is None:
        raise EdgepruneError(f"{name} is not a residual block")
    path = ancestors(res.shortcut) | {res.shortcut}
    return [f"{name}.{n.target}" for n in res.graph.graph.nodes if n in path and n.op == "call_module"]


def remove_blocks(model: nn.Module, names: Iterable[str], blocks: list[Block] | None = None,
                  replace_projection: bool = False, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A copy of ``model`` with the named blocks removed; ``model`` itself is untouched.

    Identity blocks become ``nn.Identity()``. Projection blocks are refused unless
    ``replace_projection`` is set, in which case they become their shortcut path alone.
    """
    names = list(dict.fromkeys(names))
    if blocks is None:
        if input_shape is None:
            raise ValueError("remove_blocks needs the discovered blocks or the input shape")
        blocks = discover(model, input_shape)
    by_name = {b.name: b for b in blocks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise EdgepruneError(f"no removable block named {', '.join(unknown)}; blocks are "
                             f"{', '.join(b.name for b in blocks[:6])}{' ...' if len(blocks) > 6 else ''}")
    projections = [n for n in names if by_name[n].kind == "projection"]
    if projections and not replace_projection:
        raise EdgepruneError(f"{', '.join(projections)} has a projection shortcut (it changes shape); pass "
                             "--replace-projection to replace it by its shortcut path alone")
    pruned = copy.deepcopy(model)
    for n in names:
        if by_name[n].kind == "identity":
            pruned.set_submodule(n, nn.Identity())
        else:
            pruned.set_submodule(n, shortcut_module(pruned.get_submodule(n)))
    return pruned
