"""Facts read from an ONNX graph: tensor shapes, operators, MACs, parameters, and the module path of each node.

Everything here works on a ``ModelProto`` with ONNX's own shape inference; nothing runs.
:func:`infer_shapes` is the one shape inference of edgeprune: the static memory figures
(``exporters.memory``) and the latency predictor's kernel detection (``devices.kernel_graph``) use it.
"""

from __future__ import annotations

import ast
import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from edgeprune.errors import EdgepruneError

# Node metadata the dynamo exporter writes; the stack trace holds absolute paths of the
# build machine, which do not belong in an artifact handed to another team.
DROPPED_NODE_METADATA = ("pkg.torch.onnx.stack_trace",)


Shapes = dict[str, tuple[list[int | None], int]]   # tensor -> (dims, ONNX element type)


def infer_shapes(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 batch: int = 1, strict: bool = True) -> Shapes:
    """Shape and ONNX element type of every tensor of ``proto``, by ONNX shape inference
    (with data propagation); nothing runs and ``proto`` is left as it is.

    * Graph inputs are made static first: an input ``input_shapes`` names gets that shape;
      in the others every symbolic or non-positive dimension becomes ``batch``.
    * **Unknown dimensions are None**: a dimension inference could not resolve stays None
      (callers treat a tensor with one as of unknown size); a tensor inference could not
      type at all is missing from the result.
    * Initializers have their own dims. Inference runs on a copy without the data of large
      non-integer initializers (they become typed graph inputs): it needs the values of small
      integer tensors only (Reshape targets, Pad amounts), and big models stay cheap.
    * The shapes the model declares beyond its inputs (``value_info``, the graph outputs) are
      kept as hints only when the inputs keep their declared shapes (they type what ONNX has
      no schema for); once an input dimension is set here they may describe other shapes, so
      ``value_info`` is left out and the outputs' shapes are inferred anew.
    * ``strict``: an operator whose inference fails raises; False leaves what it would have
      typed unknown. Either way a failure raises :class:`EdgepruneError` in one line.
    """
    light = _light_copy(proto, input_shapes, batch)
    try:
        inferred = shape_inference.infer_shapes(light, strict_mode=strict, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises InferenceError, ValidationError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgepruneError(f"ONNX shape inference failed: {first}") from None
    shapes: Shapes = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        shapes[vi.name] = ([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim], tt.elem_type)
    for init in proto.graph.initializer:
        shapes[init.name] = (list(init.dims), init.data_type)
    return shapes


def _light_copy(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None,
                batch: int) -> onnx.ModelProto:
    """What :func:`infer_shapes` runs on: static inputs, small initializers only."""
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g = light.graph
    g.name = proto.graph.name
    g.node.extend(proto.graph.node)
    g.input.extend(proto.graph.input)
    g.output.extend(proto.graph.output)
    initializers = {i.name for i in proto.graph.initializer}
    if _make_inputs_static(g, initializers, input_shapes, batch):
        for out in g.output:          # declared for other input shapes: inferred anew
            if out.type.HasField("tensor_type"):
                out.type.tensor_type.ClearField("shape")
    else:
        g.value_info.extend(proto.graph.value_info)
    input_names = {i.name for i in g.input}
    for init in proto.graph.initializer:
        n = math.prod(init.dims) if init.dims else 1
        if n <= 64 or init.data_type in (TensorProto.INT64, TensorProto.INT32):
            g.initializer.append(init)
        elif init.name not in input_names:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def _make_inputs_static(graph: onnx.GraphProto, initializers: set[str],
                        input_shapes: Mapping[str, Sequence[int]] | None, batch: int) -> bool:
    """Give every (non-initializer) graph input static dims; True if any dimension was set."""
    wanted = dict(input_shapes or {})
    changed = False
    for inp in graph.input:
        if inp.name in initializers or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if inp.name in wanted:
            want = [int(v) for v in wanted.pop(inp.name)]
            if len(want) != len(dims):
                raise EdgepruneError(
                    f"input shape for {inp.name!r} has {len(want)} dims, the model expects {len(dims)}")
        else:
            want = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in dims]
        for d, v in zip(dims, want):
            if not (d.HasField("dim_value") and d.dim_value == v):
                d.Clear()
                d.dim_value = v
                changed = True
    if wanted:
        raise EdgepruneError(f"unknown model input(s) {', '.join(wanted)} in the input shapes given")
    return changed


def itemsize(elem_type: int) -> int:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def dtype_name(elem_type: int) -> str:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name


def operator_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Operator type -> node count, sorted by count; non-default domains are prefixed (``com.microsoft.X``)."""
    c = Counter(f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                for n in proto.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def parameter_count(proto: onnx.ModelProto) -> int:
    """Elements in all initializers (after export BatchNorm is folded into Conv, so this is
    usually smaller than the PyTorch parameter count)."""
    return int(sum(math.prod(i.dims) for i in proto.graph.initializer))


def _macs(node: onnx.NodeProto, shapes: dict) -> int:
    def shp(name: str) -> list[int] | None:
        s = shapes.get(name, (None, 0))[0]
        return s if s is not None and all(d is not None for d in s) else None

    out = shp(node.output[0])
    if node.op_type == "Conv":
        w = shp(node.input[1])
        return math.prod(out) * math.prod(w[1:]) if out and w else 0
    if node.op_type == "ConvTranspose":
        x, w = shp(node.input[0]), shp(node.input[1])
        return math.prod(x) * math.prod(w[1:]) if x and w else 0
    if node.op_type == "Gemm":
        a = shp(node.input[0])
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        return math.prod(out) * (a[0] if trans_a else a[1]) if out and a else 0
    if node.op_type == "MatMul":
        a = shp(node.input[0])
        return math.prod(out) * a[-1] if out and a else 0
    return 0


def count_macs(proto: onnx.ModelProto, batch: int = 1) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul nodes at the given batch size."""
    shapes = infer_shapes(proto, batch=batch)
    return int(sum(_macs(n, shapes) for n in proto.graph.node))


def io_spec(proto: onnx.ModelProto, layout: str | None = None) -> dict[str, list[dict]]:
    """Names, shapes (symbolic dims as strings), dtypes of the graph inputs and outputs."""
    inits = {i.name for i in proto.graph.initializer}

    def spec(vi: onnx.ValueInfoProto) -> dict:
        tt = vi.type.tensor_type
        return {"name": vi.name,
                "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim],
                "dtype": dtype_name(tt.elem_type)}

    inputs = [spec(v) for v in proto.graph.input if v.name not in inits]
    if layout:
        for i in inputs:
            i["layout"] = layout
    return {"inputs": inputs, "outputs": [spec(v) for v in proto.graph.output]}


def _module_from_metadata(node: onnx.NodeProto) -> str | None:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(p.value)   # e.g. ['', 'layer1', 'layer1.0', 'add']
            mods = [s for s in scopes[:-1] if s]  # the last entry is the fx node, not a module
            return mods[-1] if mods else ""
    return None


def _module_from_name(name: str) -> str | None:
    # The TorchScript exporter names nodes by scope, "/features/features.17/conv/conv.2/Conv":
    # a scope that extends the previous one ("conv" -> "conv.2") adds the suffix as a child.
    if not name.startswith("/"):
        return None
    scopes = [p for p in name.split("/") if p][:-1]   # the last part is the operator
    path: list[str] = []
    prev = None
    for s in scopes:
        path.append(s[len(prev) + 1:] if prev and s.startswith(prev + ".") else s)
        prev = s
    return ".".join(path)


def node_module_paths(proto: onnx.ModelProto) -> dict[str, str]:
    """Node name -> qualified name of the PyTorch module that produced it ("" = the top module).

    Reads the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata, or the scope in the
    TorchScript exporter's node names. Nodes with neither are left out.
    """
    out: dict[str, str] = {}
    for n in proto.graph.node:
        path = _module_from_metadata(n)
        if path is None:
            path = _module_from_name(n.name)
        if path is not None:
            out[n.name] = path
    return out


def copy_node_metadata(src: onnx.ModelProto, dst: onnx.ModelProto,
                       drop: Iterable[str] = DROPPED_NODE_METADATA) -> tuple[int, int]:
    """Copy node ``metadata_props`` from ``src`` onto the nodes of ``dst`` with the same name and
    operator type (onnxsim drops them). Keys in ``drop`` are removed. Returns (nodes carrying
    metadata in dst afterwards, nodes in dst)."""
    drop = set(drop)
    by_name = {n.name: n for n in src.graph.node if n.name}
    for n in dst.graph.node:
        origin = by_name.get(n.name)
        if origin is not None and origin.op_type == n.op_type and not len(n.metadata_props):
            n.metadata_props.extend(origin.metadata_props)
        keep = [p for p in n.metadata_props if p.key not in drop]
        del n.metadata_props[:]
        n.metadata_props.extend(keep)
    return sum(1 for n in dst.graph.node if len(n.metadata_props)), len(dst.graph.node)


def constant_bytes(node: onnx.NodeProto) -> int:
    """Bytes of the tensor a ``Constant`` node holds (0 for other attribute kinds)."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return int(numpy_helper.to_array(a.t).nbytes)
    return 0
