"""Channel-width pruning: groups of coupled channels, their importance, and their removal.

Channels are coupled across layers: a conv's output channels are its BatchNorm's channels,
the next conv's input channels, every layer on the same residual add (a whole ResNet stage),
a depthwise conv's channels, a slice of a concatenation. Torch-Pruning's dependency graph
finds these couplings by tracing the model through autograd; a :class:`ChannelGroup` is one
such group, named by the conv or linear layer whose output channels define it, and pruned in
whole steps so the search stays small and kept widths stay hardware-friendly multiples.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import numbers
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.errors import EdgepruneError

# Kept channel counts are multiples of this. docs/channel-multiple.md measured onnxruntime on an AVX-512
# host: a count off a multiple of 4 leaves the NCHWc kernels (a 3x3 conv with 57 channels +44% on 56), and
# within NCHWc the cost is flat over each 16-channel block there. 8 is the default because the budget's
# device is an ARM board (NEON: 4 float32 lanes) or an AVX2 host (NCHWc block 8), neither measured here,
# and it keeps steps fine on narrow models; --channel-multiple 16 suits an AVX-512 target.
CHANNEL_MULTIPLE = 8

_CONV, _BATCHNORM = nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm


@dataclass
class ChannelGroup:
    name: str                     # the root: the Conv2d or Linear whose output channels define the group
    channels: int                 # channel count in the model the group was found on
    step: int                     # channels removed per step, a multiple of `multiple`
    max_steps: int                # steps allowed before the group would fall below its minimum
    multiple: int
    members: dict[str, str]       # module name -> "out", "in" or "both" (a depthwise conv, a BatchNorm)

    def kept(self, steps: int) -> int:
        """Channels left after ``steps`` steps, rounded down to a multiple; never below the
        group's minimum, since ``max_steps`` is the last step that keeps it."""
        if not isinstance(steps, numbers.Integral) or not 0 <= steps <= self.max_steps:
            raise ValueError(f"channel group {self.name}: steps must be in 0..{self.max_steps}, got {steps}")
        if steps == 0:
            return self.channels
        return int((self.channels - steps * self.step) // self.multiple * self.multiple)

    def to_dict(self) -> dict:
        return asdict(self)


ChannelCriterion = Callable[[nn.Module, ChannelGroup, tp.Group], torch.Tensor]


# ---------------------------------------------------------------- the dependency graph

def _reason(e: BaseException) -> str:
    """One line for a Torch-Pruning failure, with the TP function it came from (its errors rarely name a layer)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "torch_pruning" in f.filename]
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}{f' in {frames[-1].name}' if frames else ''}: {lines[0][:200] if lines else ''}"


@contextlib.contextmanager
def _tracing(model: nn.Module) -> Iterator[None]:
    """TP follows autograd back from the output, so grad is on and every parameter requires it
    while it traces (a frozen layer would cut the graph); the model's mode and requires_grad
    flags are restored afterwards, by name since pruning replaces the parameters."""
    was_training = model.training
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    model.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for n in frozen:
            model.get_parameter(n).requires_grad_(False)
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[tp.DependencyGraph, list[torch.Tensor]]:
    """The dependency graph of ``model`` (traced in eval mode) and the outputs of that trace."""
    outputs: list[torch.Tensor] = []

    def forward(m: nn.Module, x: torch.Tensor):
        # the call TP makes without a forward_fn tries model(*x) first: for a batch of one that
        # is model(x[0]), unbatched, which a fully convolutional model accepts and is traced on
        try:
            out = m(x)
        except Exception as e:  # noqa: BLE001
            raise EdgepruneError(f"the model fails on an input of shape {tuple(input_shape)} ({_reason(e)})") from None
        outputs.extend(tp.utils.flatten_as_list(out))
        return out

    try:
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.zeros(input_shape, device=_device(model)), forward_fn=forward, verbose=False)
    except EdgepruneError:
        raise
    except Exception as e:  # noqa: BLE001 - any TP failure: one line, not a traceback
        raise EdgepruneError(f"torch-pruning cannot build the dependency graph of this model ({_reason(e)})") from None
    names = {id(p): n for n, p in model.named_parameters()}
    for p, _ in graph.unwrapped_parameters:
        # TP prunes a bare parameter along its last non-singleton dim: right for a per-channel
        # scale (one such dim), a guess for anything else, e.g. a weight used by F.conv2d
        if sum(s > 1 for s in p.shape) > 1:
            raise EdgepruneError(f"torch-pruning cannot handle parameter {names[id(p)]} (shape {tuple(p.shape)}): "
                                 "it is used outside a standard layer, so its channel dimension is unknown")
    return graph, outputs


def output_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[nn.Module]:
    """The layers whose output channels are the model's output (never pruned): what a Torch-Pruning
    pruner of the whole model takes as ``ignored_layers``."""
    return _output_layers(*_dependency_graph(model, input_shape))


def _output_layers(graph: tp.DependencyGraph, outputs: Sequence[torch.Tensor]) -> list[nn.Module]:
    """The Conv/Linear layers whose output channels are the model's output (the classifier's
    features, or the convs feeding an output through reshapes, norms, adds, concatenations)."""
    roots = {o.grad_fn for o in outputs if o.grad_fn is not None}
    stack = [n for n in graph.module2node.values() if n.grad_fn in roots]
    seen, layers = set(), []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, (_CONV, nn.Linear)):
            layers.append(node.module)
        else:
            stack.extend(node.inputs)
    return layers


def _role(graph: tp.DependencyGraph, handler: Callable) -> str:
    out, into = graph.is_out_channel_pruning_fn(handler), graph.is_in_channel_pruning_fn(handler)
    return "both" if out and into else "out" if out else "in"


def _members(graph: tp.DependencyGraph, group: tp.Group, names: dict[nn.Module, str]) -> dict[str, str]:
    """Module name -> role for the real layers of a TP group (its add/concat/reshape nodes are not modules)."""
    members: dict[str, str] = {}
    for dep, _ in group:
        name = names.get(dep.target.module) if isinstance(dep.target.module, nn.Module) else None
        if name is not None:
            role = _role(graph, dep.handler)
            members[name] = role if members.get(name, role) == role else "both"
    return dict(sorted(members.items()))


def _refuse_grouped_convs(model: nn.Module, group: ChannelGroup) -> None:
    """TP's graph prunes a grouped (not depthwise) conv's channels as if it were dense: it either
    fails or mixes channels across the conv's groups. Refuse rather than build a wrong model."""
    for name in group.members:
        m = model.get_submodule(name)
        if isinstance(m, _CONV) and m.groups > 1 and not m.groups == m.in_channels == m.out_channels:
            raise EdgepruneError(f"torch-pruning cannot handle layer {name} ({type(m).__name__}, groups={m.groups}): "
                                 f"its grouped channels are not pruned consistently (channel group {group.name})")


def _make_group(name: str, channels: int, members: dict[str, str], multiple: int, step_fraction: float,
                min_fraction: float) -> ChannelGroup:
    minimum = max(multiple, math.ceil(math.ceil(round(min_fraction * channels, 6)) / multiple) * multiple)
    step = max(multiple, math.floor(step_fraction * channels / multiple + 0.5) * multiple)
    return ChannelGroup(name, channels, step, max(0, (channels - minimum) // step), multiple, members)


def channel_groups(model: nn.Module, input_shape: tuple[int, ...], multiple: int = CHANNEL_MULTIPLE,
                   step_fraction: float = 0.125, min_fraction: float = 0.25) -> list[ChannelGroup]:
    """Every prunable group of coupled channels of ``model`` at ``input_shape``, sorted by name.

    The model's output channels (the classes) and its input channels are never a group; nor is
    a group of fewer than ``2 * multiple`` channels, or one whose minimum leaves no step.
    """
    if multiple < 1 or not 0 < step_fraction <= 1 or not 0 <= min_fraction < 1:
        raise ValueError("channel_groups needs multiple >= 1, 0 < step_fraction <= 1 and 0 <= min_fraction < 1")
    names = {m: n for n, m in model.named_modules()}
    with _tracing(model):
        graph, outputs = _dependency_graph(model, input_shape)
        try:
            found = list(graph.get_all_groups(ignored_layers=_output_layers(graph, outputs),
                                              root_module_types=(nn.Conv2d, nn.Linear)))
        except Exception as e:  # noqa: BLE001
            raise EdgepruneError(f"torch-pruning cannot build the channel groups of this model ({_reason(e)})") from None
    groups = []
    for g in found:
        root = g[0].dep.target.module
        group = _make_group(names[root], len(g[0].idxs), _members(graph, g, names), multiple, step_fraction,
                            min_fraction)
        if group.channels >= 2 * multiple and group.max_steps > 0:
            _refuse_grouped_convs(model, group)
            groups.append(group)
    return sorted(groups, key=lambda g: g.name)


def producers(groups: Sequence[ChannelGroup]) -> dict[str, str]:
    """Module name -> the group whose channels it outputs (each group's convolutions and linear layers that
    write its channels, its depthwise and normalisation layers that carry them): what a latency table needs to
    trace a group through an exported graph (``devices.plan_latency``)."""
    return {m: g.name for g in groups for m, role in g.members.items() if role in ("out", "both")}


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _tp_group(graph: tp.DependencyGraph, model: nn.Module, group: ChannelGroup, idxs: list[int]) -> tp.Group:
    """TP's group for ``idxs`` of ``group``'s root output channels (TP switches to its depthwise pruner itself)."""
    try:
        root = model.get_submodule(group.name)
    except AttributeError:
        raise ValueError(f"no layer {group.name} in the model") from None
    if not isinstance(root, (nn.Conv2d, nn.Linear)) or _out_channels(root) != group.channels:
        raise ValueError(f"channel group {group.name} does not match the model (found on another model?)")
    fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
    try:
        return graph.get_pruning_group(root, fn, idxs)
    except Exception as e:  # noqa: BLE001
        raise EdgepruneError(f"torch-pruning cannot handle layer {group.name} ({type(root).__name__}): "
                             f"{_reason(e)}") from None


# ---------------------------------------------------------------- importance

def magnitude(model: nn.Module, group: ChannelGroup, tp_group: tp.Group) -> torch.Tensor:
    """Filter L2 norm (Li et al. 2017), squared and averaged over the group's conv and linear
    weights, input and output sides: TP's group magnitude. BatchNorms are left to bn-scale;
    TP leaves out a depthwise conv's own filters (its pruner is not a dense conv's)."""
    return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None, target_types=[_CONV, nn.Linear])(tp_group)


def bn_scale(model: nn.Module, group: ChannelGroup, tp_group: tp.Group) -> torch.Tensor:
    """|BatchNorm gamma| averaged over the group's BatchNorms (network slimming, Liu et al. 2017)."""
    imp = tp.importance.BNScaleImportance(normalizer=None)(tp_group)
    if imp is None:
        raise EdgepruneError(f"channel group {group.name} has no affine BatchNorm, so bn-scale cannot rank it; "
                             "use the magnitude criterion")
    return imp


CHANNEL_CRITERIA: dict[str, ChannelCriterion] = {
    "magnitude": magnitude,
    "bn-scale": bn_scale,
}


def channel_importance(model: nn.Module, groups: Sequence[ChannelGroup], input_shape: tuple[int, ...],
                       criterion: str) -> dict[str, torch.Tensor]:
    """For each group, the ``criterion``'s importance of each of its channels (float64, on the CPU)."""
    if criterion not in CHANNEL_CRITERIA:
        raise EdgepruneError(f"unknown channel criterion {criterion!r}; choose from {', '.join(CHANNEL_CRITERIA)}")
    fn = CHANNEL_CRITERIA[criterion]
    out = {}
    with _tracing(model):
        graph, _ = _dependency_graph(model, input_shape)
        for g in groups:
            imp = fn(model, g, _tp_group(graph, model, g, list(range(g.channels))))
            if imp is None or imp.shape != (g.channels,):
                raise EdgepruneError(f"criterion {criterion} gave no score per channel for channel group {g.name} "
                                     f"({g.channels} channels)")
            out[g.name] = imp.detach().double().cpu()
    return out


def channel_orders(model: nn.Module, groups: Sequence[ChannelGroup], input_shape: tuple[int, ...],
                   criterion: str) -> dict[str, list[int]]:
    """For each group, its channel indices least important first (ties by index)."""
    return {name: torch.sort(imp, stable=True).indices.tolist()
            for name, imp in channel_importance(model, groups, input_shape, criterion).items()}


# ---------------------------------------------------------------- pruning

def prune_channels(model: nn.Module, groups: Sequence[ChannelGroup], orders: dict[str, list[int]],
                   steps: dict[str, int], input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of ``model`` (in eval mode; ``model`` untouched) with, for each group, the first
    ``channels - kept(steps)`` channels of its order removed.

    Orders index each root's output channels in the original model and stay valid while other
    groups are pruned: a group's pruning changes only its own root's output channels, and TP's
    concatenation nodes update their offsets as their inputs shrink (the tests check the result
    against masking the same channels). Groups are pruned in name order, so the result depends
    only on ``steps``; the pruned model must still run and give outputs of the same shapes.
    """
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(steps) - set(by_name))
    if unknown:
        raise ValueError(f"no channel group named {', '.join(unknown)}")
    removed = {}
    for name in sorted(steps):
        g = by_name[name]
        n = g.channels - g.kept(steps[name])
        if n:
            order = orders.get(name)
            if order is None or sorted(order) != list(range(g.channels)):
                raise ValueError(f"channel group {name} needs an order of its {g.channels} channel indices")
            removed[name] = list(order[:n])
    pruned = copy.deepcopy(model).eval()
    if not removed:
        return pruned
    with _tracing(pruned):
        graph, outputs = _dependency_graph(pruned, input_shape)
        for name, idxs in removed.items():
            group = _tp_group(graph, pruned, by_name[name], idxs)
            try:
                group.prune()
            except Exception as e:  # noqa: BLE001
                raise EdgepruneError(f"torch-pruning cannot handle layer {name}: {_reason(e)}") from None
    what = f"channel group{'s' * (len(removed) > 1)} {', '.join(list(removed)[:4])}{' ...' * (len(removed) > 4)}"
    try:
        with torch.no_grad():
            out = pruned(torch.zeros(input_shape, device=_device(pruned)))
    except Exception as e:  # noqa: BLE001 - e.g. a split whose sizes are written in the model's code
        raise EdgepruneError(f"torch-pruning cannot handle {what}: the pruned model fails ({_reason(e)})") from None
    shapes, expected = [tuple(o.shape) for o in tp.utils.flatten_as_list(out)], [tuple(o.shape) for o in outputs]
    if shapes != expected:
        raise EdgepruneError(f"torch-pruning cannot handle {what}: the pruned model's outputs are {shapes}, "
                             f"not {expected}")
    return pruned


def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor],
                         device: torch.device | None = None) -> nn.Module:
    """Recompute every BatchNorm's running statistics as the plain average over ``batches``.

    Once channels are pruned (or the input size changes) each BatchNorm sees other activations
    than the ones its stored statistics describe. Only BatchNorm layers run in train mode (dropout
    stays off), nothing is learned; the model ends in eval mode. In place; returns the model.
    """
    if device is not None:
        model.to(device)
    bns = [m for m in model.modules() if isinstance(m, _BATCHNORM) and m.track_running_stats]
    if not bns:
        return model.eval()
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("reestimate_batchnorm needs at least one batch")
    momenta, on = [bn.momentum for bn in bns], _device(model)
    model.eval()
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: every batch counts the same
            bn.train()
        with torch.no_grad():
            for x in itertools.chain([first], it):
                model(x.to(on))
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.eval()
    return model


# ---------------------------------------------------------------- gradual pruning

def cubic_share(step: int, total: int, ramp: float = 0.75) -> float:
    """Share of a plan's channel removal done after ``step`` of ``total`` fine-tune steps: Zhu & Gupta's
    (2017) cubic schedule 1 - (1 - t)^3, t = step / (ramp * total), from nothing at the start to all of it
    at ``ramp`` of the way; the rest of the fine-tune recovers with the final widths."""
    t = min(1.0, step / max(1.0, ramp * total))
    return 1.0 - (1.0 - t) ** 3


def _present_root(group: ChannelGroup, present: dict[str, nn.Module]) -> str | None:
    """``group``'s root if the model still has it, else another layer producing its channels, else None."""
    for name in [group.name, *sorted(n for n, role in group.members.items() if role == "out" and n != group.name)]:
        m = present.get(name)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and _out_channels(m) == group.channels:
            return name
    return None


class ChannelMasks:
    """The channels a plan removes, zeroed in the unpruned structure and growing with a schedule.

    For each group the first ``share`` of the channels its order removes are dead: every layer
    Torch-Pruning couples to them has those weights (and biases, BatchNorm scales and shifts)
    zeroed, their producers' outputs and their consumers' inputs alike, so the model computes what
    the pruned one would. ``after_step(step, total)`` re-applies the masks after each optimizer step
    (a fine-tune's ``after_step`` hook); :func:`prune_channels` with the same steps then removes the
    dead channels exactly, given ``self.groups`` and ``self.orders``. A group whose root layer the
    model no longer has (it was in a removed block) is rooted at another of its producers that is
    still there (a residual stage's group spans several blocks; the indices are shared across the
    coupling); a group with none left is left out, as its channels are gone anyway.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], orders: dict[str, list[int]],
                 steps: dict[str, int], input_shape: tuple[int, ...], schedule: Callable[[int, int], float] = cubic_share):
        self.model, self.schedule = model, schedule
        present = dict(model.named_modules())
        self.groups, self.orders = [], {}
        for g in groups:
            root = _present_root(g, present) if steps.get(g.name) else None
            if root is not None:
                self.groups.append(g if root == g.name else replace(g, name=root))
                self.orders[root] = list(orders[g.name])
                steps = {**steps, root: steps[g.name]}
        self.steps = {g.name: steps[g.name] for g in self.groups}
        self.removed = {g.name: self.orders[g.name][:g.channels - g.kept(steps[g.name])] for g in self.groups}
        with _tracing(model):
            self._graph, _ = _dependency_graph(model, input_shape)
        self._share = -1.0
        self._zero: list[tuple[torch.Tensor, int, torch.Tensor]] = []   # (tensor, dim, indices) to zero

    def _targets(self, share: float) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        out = []
        for g in self.groups:
            n = round(share * len(self.removed[g.name]))
            if not n:
                continue
            for dep, idxs in _tp_group(self._graph, self.model, g, self.removed[g.name][:n]):
                module, idx = dep.target.module, torch.as_tensor(list(idxs), dtype=torch.long)
                if not isinstance(module, (_CONV, nn.Linear, _BATCHNORM)) or not len(idx):
                    continue
                if self._graph.is_out_channel_pruning_fn(dep.handler):   # outputs: weight rows, bias, BN affine
                    out += [(t, 0, idx) for t in (module.weight, module.bias) if t is not None]
                if self._graph.is_in_channel_pruning_fn(dep.handler) and not isinstance(module, _BATCHNORM):
                    depthwise = isinstance(module, _CONV) and module.groups > 1
                    out.append((module.weight, 0 if depthwise else 1, idx))
        return out

    @torch.no_grad()
    def apply(self, share: float) -> None:
        """Zero the first ``share`` of each group's removed channels (the same or more than before)."""
        if share != self._share:
            self._zero, self._share = self._targets(share), share
        for tensor, dim, idx in self._zero:
            tensor.index_fill_(dim, idx.to(tensor.device), 0.0)

    def after_step(self, step: int, total: int) -> None:
        self.apply(self.schedule(step, total))
