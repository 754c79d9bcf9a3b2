"""Static memory figures of an ONNX model, from ONNX shape inference alone (nothing runs).

* ``weight_bytes``: bytes of all initializers and ``Constant`` tensors.
* ``peak_activation_bytes``: the largest sum of live activation tensors while the nodes run
  in the graph's own topological order. A tensor is live from the node that produces it
  (the graph input from the start) through its last consumer; graph outputs stay live to
  the end. No buffer is shared or reused in place, so this is what a simple static planner
  needs; onnxruntime's fused kernels and arena may need less (or round up).

Firmware teams size RAM from weight_bytes + peak_activation_bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgeprune.files import load_onnx
from edgeprune.exporters.onnx_facts import constant_bytes, infer_shapes, itemsize


@dataclass
class StaticMemory:
    weight_bytes: int
    peak_activation_bytes: int
    peak_node: str                 # the node running when the peak is reached
    peak_live_tensors: list[str]   # the (up to 8 largest) tensors live at the peak, largest first
    largest_activation_bytes: int
    input_bytes: int
    output_bytes: int
    batch: int
    order: str = "graph topological order, no in-place reuse"
    unknown_shapes: list[str] = field(default_factory=list)  # tensors left out: shape not inferred

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_onnx(model)


def static_memory(model: str | Path | onnx.ModelProto, batch: int = 1) -> StaticMemory:
    """Weight bytes and peak activation memory of an ONNX model (path or ModelProto).

    Symbolic (dynamic) dimensions of the inputs are set to ``batch`` first (see
    ``exporters.onnx_facts.infer_shapes``; a tensor with an unknown dimension is left out).
    """
    proto = _load(model)
    shapes = infer_shapes(proto, batch=batch)
    g = proto.graph
    inits = {i.name for i in g.initializer}
    weight_bytes = sum(math.prod(i.dims) * itemsize(i.data_type) for i in g.initializer)
    weight_bytes += sum(constant_bytes(n) for n in g.node if n.op_type == "Constant")
    unknown: list[str] = []

    def nbytes(name: str) -> int:
        dims, et = shapes.get(name, (None, 0))
        if dims is None or any(d is None for d in dims):
            unknown.append(name)
            return 0
        return math.prod(dims) * itemsize(et)

    # Tensors computed from weights alone (an unsimplified graph's Identity of an initializer,
    # a foldable Reshape of a weight) are weights, not activations; an Identity is an alias, and a
    # DequantizeLinear of an int8 weight is read by the quantized kernel onnxruntime fuses it into.
    constants = set(inits)
    for n in g.node:
        if n.op_type == "Constant" or (n.input and all(x in constants or not x for x in n.input)):
            constants.update(o for o in n.output if o)
            if n.op_type not in ("Constant", "Identity", "DequantizeLinear"):
                weight_bytes += sum(nbytes(o) for o in n.output if o)

    end = len(g.node)
    start: dict[str, int] = {}     # first step at which a tensor is live
    last: dict[str, int] = {}      # last step at which it is needed
    for v in g.input:
        if v.name not in inits:
            start[v.name] = last[v.name] = 0
    for i, n in enumerate(g.node):
        for x in n.input:
            if x in start:
                last[x] = max(last[x], i)
        for y in n.output:
            if y and y not in constants:
                start[y] = last[y] = i
    for v in g.output:
        if v.name in last:
            last[v.name] = end - 1
    size = {t: nbytes(t) for t in start}

    peak, peak_step = -1, 0
    for i in range(end):
        live = sum(size[t] for t in start if start[t] <= i <= last[t])
        if live > peak:
            peak, peak_step = live, i
    live_at_peak = sorted((t for t in start if start[t] <= peak_step <= last[t]), key=lambda t: -size[t])
    in_names = [v.name for v in g.input if v.name not in inits]
    return StaticMemory(
        weight_bytes=int(weight_bytes),
        peak_activation_bytes=int(max(peak, 0)),
        peak_node=g.node[peak_step].name if end else "",
        peak_live_tensors=live_at_peak[:8],
        largest_activation_bytes=int(max(size.values(), default=0)),
        input_bytes=int(sum(size.get(t, 0) for t in in_names)),
        output_bytes=int(sum(size.get(v.name, 0) for v in g.output)),
        batch=batch,
        unknown_shapes=sorted(set(unknown)),
    )
