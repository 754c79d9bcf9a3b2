"""Predicted latency of any plan from one export: each layer's cost at each kept width and input size.

A plan removes blocks, shrinks groups of coupled channels and may lower the input size. Exporting
and predicting every plan a search weighs costs seconds apiece; this table prices a plan in
microseconds instead, with the device profile's own kernel model and from one export of the
original (torch's dynamo exporter, which records each node's module path)::

    table = plan_latency_table(model, (torch.zeros(1, 3, 224, 224),), "rpi4", blocks, out_groups)
    table.predict(removed=["features.3"], widths={"features.2.conv.0.0": 64}, size=192)   # ms

How: the original's kernels are detected once per input size (``detect_kernels`` with that input
shape: ONNX shape inference, nothing exported again). Every activation's channel dimension is
traced through the graph to the channel groups it is made of (``_channel_segments``: a convolution
or linear layer that is a group's producer starts one, depthwise and element-wise layers pass it
on, a concatenation joins them), so each kernel knows the group of the channels it reads and the
group of those it writes. Under a plan its work scales with the kept share of each: a dense
convolution's MACs and weights with both, its input bytes with the one and its output bytes with the
other, a depthwise or element-wise kernel with its own channels (on a profile with an NCHWc block,
channel counts are padded to the block, as the detector pads them). The cost of a kernel is the
profile's linear model of those features (``kernel_cost_us``, split into its parts once), so a plan's
latency is a sum of table entries; the weight-spill term is recomputed from the plan's kept weights,
as the per-block table does. Kernels inside a removed block (by the export's module scopes) drop
out, as in ``block_latency``. ``benchmarks/studies/plan_latency_table.py`` checks the table against
export-and-predict on random plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import onnx

from edgeprune.devices.block_latency import REST, block_owners, export_for_blocks, gone_blocks, nested_blocks
from edgeprune.devices.kernel_graph import CONV_KINDS, Kernel, pad_channels, detect_kernels, spill_fraction
from edgeprune.devices.predictor import as_profile, band, kernel_cost_us, require_model
from edgeprune.devices.profiles import DeviceProfile
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.onnx_facts import infer_shapes

Segments = tuple[tuple[str | None, int], ...]     # a channel dimension: (group or None for fixed, channels) parts
DENSE = (*(k for k in CONV_KINDS if k != "dwconv"), "gemm")   # work scales with input x output channels


@dataclass(frozen=True)
class LayerCost:
    """One kernel of the original: its cost split into the parts that scale differently under a plan."""

    owner: str                   # innermost block holding it (REST: stem, head)
    cin: Segments                # channels it reads
    cout: Segments               # channels it writes
    dense: bool                  # MACs and weights scale with input x output channels (else with its own)
    node_us: float               # one launch
    mac_us: float                # its multiply-accumulates at full width
    in_us: float                 # activation bytes read (scale with cin)
    sum_us: float                # a fused residual input (scales with cout)
    out_us: float
    w_us: float                  # weight bytes, and the same bytes beyond the cache (times the plan's spill)
    spill_us: float
    w_bytes: float
    padded: tuple[bool, bool] = (False, False)   # NCHWc: its bytes in and out are counted padded to the block
    narrows: bool = False        # NCHWc: a dense convolution that reads its input unpadded once it is below the block
    reorder: "Reorder | None" = None  # ... from a blocked input reordered back to plain NCHW first
    narrow_drops: bool = False   # a ReorderInput only such convolutions needed: gone once its tensor is below the block


@dataclass(frozen=True)
class Reorder:
    """onnxruntime's NCHWc convolution reads an input narrower than the block in plain NCHW (unpadded), so
    a blocked input tensor is reordered back first, once (the detector's ``need_nchw``)."""

    tensor: str
    node_us: float
    in_us: float                 # the padded tensor read, at full width
    out_us: float                # the plain tensor written, at full width


@dataclass
class PlanLatencyTable:
    """Per-kernel costs of one model on one device, at each input size asked for."""

    device: str
    blocks: list[str]
    nested: dict[str, list[str]]
    block: int                   # the profile's NCHWc block (0: none)
    run_overhead_us: float
    runtime_factor: float
    cache_mb: float
    expected_error: float
    size: int                    # the original's input size
    layers: dict[int, list[LayerCost]] = field(default_factory=dict)   # input size -> kernels
    source: str = ""
    _build: Any = field(default=None, repr=False)     # input size -> its layers (lazy)

    def layers_at(self, size: int | None) -> list[LayerCost]:
        size = self.size if size is None else size
        if size not in self.layers:
            self.layers[size] = self._build(size)
        return self.layers[size]

    @staticmethod
    def _kept(segments: Segments, widths: Mapping[str, int]) -> tuple[int, int]:
        return (sum(widths.get(g, c) if g is not None else c for g, c in segments), sum(c for _, c in segments))

    def _share(self, segments: Segments, widths: Mapping[str, int], padded: bool = True) -> float:
        kept, full = self._kept(segments, widths)
        block = self.block if padded else 0
        return pad_channels(kept, block) / pad_channels(full, block) if full else 1.0

    def predict(self, removed: Iterable[str] = (), keep: Iterable[str] = (), widths: Mapping[str, int] | None = None,
                size: int | None = None) -> float:
        """Predicted ms with ``removed`` blocks gone (``keep``: blocks nested in them that stay, a projection
        block's shortcut), each group of ``widths`` keeping that many channels, at input ``size`` (square)."""
        gone = gone_blocks(removed, keep, self.blocks, self.nested)
        widths = widths or {}
        fixed = spill_us = weights = 0.0
        reorders: dict[str, float] = {}
        for c in self.layers_at(size):
            if c.owner in gone or (c.narrow_drops and self._kept(c.cin, widths)[0] < self.block):
                continue
            fi, fo = ((self._share(c.cin, widths, c.padded[0]), self._share(c.cout, widths, c.padded[1])) if widths
                      else (1.0, 1.0))
            if c.narrows and widths:
                kept, full = self._kept(c.cin, widths)
                if kept < self.block:        # read unpadded (from a reordered copy if the input is blocked)
                    fi = kept / pad_channels(full, self.block)
                    r = c.reorder
                    if r is not None:
                        reorders[r.tensor] = r.node_us + r.in_us * self._share(c.cin, widths) + r.out_us * kept / full
            work = fi * fo if c.dense else fo
            fixed += c.node_us + c.mac_us * work + c.in_us * fi + c.sum_us * fo + c.out_us * fo + c.w_us * work
            spill_us += c.spill_us * work
            weights += c.w_bytes * work
        us = self.run_overhead_us + fixed + sum(reorders.values()) + spill_fraction(weights, self.cache_mb) * spill_us
        return us * self.runtime_factor / 1e3


def _split(k: Kernel, lm: Any) -> dict[str, float]:
    """``kernel_cost_us`` of ``k`` split into its parts: each part is the cost of ``k`` with only that work."""
    zero = replace(k, macs=0.0, in_bytes=0.0, out_bytes=0.0, w_bytes=0.0)
    node = kernel_cost_us(zero, lm, 0.0)

    def part(**work: float) -> float:
        return kernel_cost_us(replace(zero, **work), lm, 0.0) - node
    residual = k.out_bytes if k.has_sum else 0.0
    w = part(w_bytes=k.w_bytes)
    return {"node_us": node, "mac_us": part(macs=k.macs), "in_us": part(in_bytes=k.in_bytes - residual),
            "sum_us": part(in_bytes=residual) if residual else 0.0, "out_us": part(out_bytes=k.out_bytes),
            "w_us": w, "spill_us": kernel_cost_us(replace(zero, w_bytes=k.w_bytes), lm, 1.0) - node - w}


def _weight_module(node: onnx.NodeProto, inits: set[str]) -> str | None:
    """The module a Conv/Gemm's weight belongs to (torch names initializers by parameter path)."""
    w = node.input[1] if len(node.input) > 1 else ""
    return w[: -len(".weight")] if w in inits and w.endswith(".weight") else None


def _channel_segments(proto: onnx.ModelProto, out_groups: Mapping[str, str],
                      channels: Mapping[str, int | None]) -> dict[str, Segments]:
    """For each activation, the channel groups its channel dimension (dim 1) is made of, traced in graph
    order. ``channels``: each tensor's channel count (from shape inference); where the trace disagrees
    with it (a reshape that moves channels, a split), the tensor counts as fixed, never scaled."""
    inits = {i.name for i in proto.graph.initializer}
    seg: dict[str, Segments] = {}

    def fixed(t: str) -> Segments:
        c = channels.get(t)
        return ((None, c),) if c else ()

    for i in proto.graph.input:
        seg[i.name] = fixed(i.name)
    for node in proto.graph.node:
        acts = [t for t in node.input if t and t not in inits and t in seg]
        out = node.output[0] if node.output else ""
        if not out:
            continue
        s: Segments
        if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            module = _weight_module(node, inits)
            group = out_groups.get(module) if module else None
            depthwise = node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute) \
                and acts and channels.get(out) == channels.get(acts[0])
            s = ((group, channels.get(out) or 0),) if group else (seg[acts[0]] if depthwise else fixed(out))
        elif node.op_type == "Concat" and any(a.name == "axis" and a.i == 1 for a in node.attribute):
            s = tuple(p for t in node.input if t for p in seg.get(t, fixed(t)))
        else:
            s = seg[acts[0]] if acts else fixed(out)
        if sum(c for _, c in s) != (channels.get(out) or 0):
            s = fixed(out)
        for o in node.output:
            if o:
                seg[o] = s if o == out else fixed(o)
    return seg


def table_from_onnx(proto: onnx.ModelProto, device: DeviceProfile | str, blocks: Sequence[str],
                    out_groups: Mapping[str, str]) -> PlanLatencyTable:
    """The table of an ONNX model exported by torch's dynamo exporter. ``out_groups``: module path ->
    the channel group its output channels belong to (a group's producers: convolutions, linear layers)."""
    profile = as_profile(device)
    lm = require_model(profile)
    owner_of_node = block_owners(proto, blocks, "price plans")
    first = proto.graph.input[0]
    dims = [d.dim_value for d in first.type.tensor_type.shape.dim]

    def build(size: int) -> list[LayerCost]:
        shape = [1, dims[1], size, size]
        shapes = infer_shapes(proto, {first.name: shape}, strict=False)
        channels = {t: (s[0][1] if len(s[0]) > 1 else None) for t, s in shapes.items()}
        seg = _channel_segments(proto, out_groups, channels)
        kernels = detect_kernels(proto, lm.nchwc_block, {first.name: shape})
        b = lm.nchwc_block
        reordered_in = {k.tensors[0] for k in kernels if k.op == "ReorderInput"}

        def narrows(k: Kernel) -> bool:
            return bool(b) and k.nchwc and k.kind in DENSE and k.kind != "gconv" and k.geometry[0] >= b
        blocked_readers: dict[str, list[Kernel]] = {}
        for k in kernels:
            if k.nchwc:
                blocked_readers.setdefault(k.tensors[0], []).append(k)
        out = []
        for k in kernels:
            owner = next((owner_of_node[n] for n in k.nodes if n in owner_of_node), REST)
            t_in, t_out = k.tensors
            cout = seg.get(t_out, ())
            cin = seg.get(t_in, cout)
            scaled = any(g is not None for g, _ in cin)
            reorder = None
            if narrows(k) and scaled and t_in not in reordered_in:
                full = shapes[t_in][0]
                plain = 4.0 * float(math.prod(full))
                parts = _split(Kernel("ReorderOutput", "ReorderOutput", "reorder", out_bytes=plain,
                                      in_bytes=plain / full[1] * pad_channels(full[1], b)), lm)
                reorder = Reorder(t_in, parts["node_us"], parts["in_us"], parts["out_us"])
            drops = k.op == "ReorderInput" and scaled and all(narrows(r) for r in blocked_readers.get(t_in, []))
            out.append(LayerCost(owner, cin, cout, k.kind in DENSE, w_bytes=k.w_bytes, padded=k.padded,
                                 narrows=narrows(k) and scaled, reorder=reorder, narrow_drops=drops,
                                 **_split(k, lm)))
        return out

    table = PlanLatencyTable(profile.name, list(blocks),
                             nested_blocks(blocks),
                             lm.nchwc_block, lm.run_overhead_us, lm.runtime_factor, lm.cache_mb, band(profile),
                             dims[2], source=f"predicted:{profile.name}", _build=build)
    table.layers_at(dims[2])
    return table


def plan_latency_table(model: Any, example_inputs: Any, device: DeviceProfile | str, blocks: Sequence[str],
                       out_groups: Mapping[str, str]) -> PlanLatencyTable:
    """Export ``model`` once (dynamo) and build its plan table on ``device`` (see the module docstring)."""
    names = dict(model.named_modules())
    unknown = [b for b in blocks if b not in names or b == ""]
    if unknown:
        raise EdgepruneError(f"no module named {', '.join(map(repr, unknown))} in the model")
    return table_from_onnx(export_for_blocks(model, example_inputs), device, blocks, out_groups)
