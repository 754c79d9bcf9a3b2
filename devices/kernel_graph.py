"""From an ONNX graph to the list of kernels the runtime will execute.

onnxruntime does not run the exported graph node by node: with its default optimisation
level it folds constants, folds batch norm and per-channel scale/shift into the
convolution, fuses activations into convolutions and GEMMs, and on x86 rewrites
convolutions to its blocked NCHWc layout, fusing the residual ``Add`` (and the
activation after it) into the convolution and inserting layout reorders. Predicting
latency node by node from the exported graph would charge for work that never runs, so
this module replays those rules (nn-Meter calls this *kernel detection*) on shapes from
ONNX shape inference. The NCHWc rules follow onnxruntime's ``nchwc_transformer.cc`` and
apply only when the device's latency model sets ``nchwc_block`` (16 with AVX-512). Shapes come
from ``exporters.onnx_facts.infer_shapes`` (dynamic input dimensions = 1 unless given).

``kernel_from_profile_event`` builds the same :class:`Kernel` from one node of
onnxruntime's own profiler trace; the host profile is fitted on those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.onnx_facts import Shapes, infer_shapes, node_module_paths
from edgeprune.files import load_onnx

CONV_KINDS = ("conv1x1", "conv3x3", "convkxk", "gconv", "dwconv")
FUSABLE_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"}
NCHWC_ACTIVATIONS = {"Relu", "Sigmoid", "Tanh"}
ELIMINATED = {"Identity", "Dropout"}
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Size"}
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
            "ReduceMax", "LpPool"}
GEMM_OPS = {"Gemm", "MatMul", "FusedGemm", "FusedMatMul"}
MEMORY_OPS = {"Concat", "Split", "Transpose", "Pad", "Slice", "Gather", "Resize", "Upsample",
              "Tile", "Expand", "DepthToSpace", "SpaceToDepth", "ReorderInput", "ReorderOutput"}
ELTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Sum", "Relu", "Clip", "Sigmoid", "Tanh",
               "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "PRelu", "Erf", "Gelu",
               "Exp", "Log", "Sqrt", "Pow", "Neg", "Abs", "Max", "Min", "Softmax",
               "BatchNormalization", "InstanceNormalization", "LayerNormalization", "Cast",
               "Where", "Equal", "Greater", "Less", "Not", "And", "Or", "Reciprocal", "Mish",
               "Softplus", "Sign", "Floor", "Ceil", "Round"}

# -- int8 (QDQ) graphs: what onnxruntime's QDQ transformers fuse (qdq_selectors.cc, qdq_actions.cc)
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
#: ops whose DQ inputs and Q output onnxruntime drops: they run on the 8-bit tensor
DROP_QDQ_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Slice", "Gather",
                "GatherElements", "Expand", "Tile", "Resize", "DepthToSpace", "SpaceToDepth"}
#: views a QuantizeLinear after them is moved above (onnxruntime's QDQ propagation)
Q_PROPAGATE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze"}
#: DQ -> op -> Q groups that become one quantized kernel, and its class
QLINEAR_FUSED = {"Add": "qeltwise", "Mul": "qeltwise", "Concat": "qeltwise", "Sigmoid": "qeltwise",
                 "LeakyRelu": "qeltwise", "Softmax": "qeltwise",
                 "GlobalAveragePool": "qpool", "AveragePool": "qpool"}
#: the op types onnxruntime's profiler names, and their classes (QLinearConv: qconv or qdwconv)
QLINEAR_EVENT_KINDS = {"QLinearConv": "qconv", "QGemm": "qgemm", "QLinearMatMul": "qgemm",
                       "MatMulIntegerToFloat": "qgemm", "DynamicQuantizeMatMul": "qgemm",
                       "QLinearAdd": "qeltwise", "QLinearMul": "qeltwise", "QLinearConcat": "qeltwise",
                       "QLinearSigmoid": "qeltwise", "QLinearLeakyRelu": "qeltwise", "QLinearSoftmax": "qeltwise",
                       "QLinearGlobalAveragePool": "qpool", "QLinearAveragePool": "qpool",
                       "NhwcMaxPool": "pool"}

_DTYPE_BYTES = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2,
                TensorProto.BFLOAT16: 2, TensorProto.INT8: 1, TensorProto.UINT8: 1,
                TensorProto.INT16: 2, TensorProto.UINT16: 2, TensorProto.INT32: 4,
                TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
                TensorProto.BOOL: 1}
_EVENT_DTYPE_BYTES = {"float": 4, "double": 8, "float16": 2, "int8": 1, "uint8": 1,
                      "int16": 2, "int32": 4, "int64": 8, "bool": 1, "uint16": 2}


@dataclass
class Kernel:
    """One unit of work the runtime executes, with the work it does."""

    name: str                    # the node that anchors it (a conv, a pool, ...)
    op: str                      # that node's op type
    kind: str                    # class from edgeprune.devices.kernels.KINDS
    macs: float = 0.0            # multiply-accumulates done (convs: taps inside the input; pools: inputs read)
    in_bytes: float = 0.0        # activation bytes read (non-constant inputs)
    out_bytes: float = 0.0       # activation bytes written
    w_bytes: float = 0.0         # constant (weight) bytes read
    nodes: list[str] = field(default_factory=list)   # ONNX nodes folded into it
    fused: list[str] = field(default_factory=list)   # op types fused into it
    act: str | None = None       # fused activation
    has_sum: bool = False        # residual Add fused into the convolution
    nchwc: bool = False          # runs in onnxruntime's blocked layout
    geometry: tuple[int, ...] = ()   # convolutions: (cin_per_group, cout, ho, wo, kh, kw)
    module: str | None = None    # PyTorch module path of its anchor node ("" = the top module), if recorded
    float_kind: str | None = None    # quantized convolutions and GEMMs: the class of the same work in fp32
    tensors: tuple[str, str] = ("", "")   # the activation it reads first and the one it writes (plan_latency)
    padded: tuple[bool, bool] = (False, False)   # whether those bytes are counted padded to the NCHWc block

    def features(self, spill: float = 0.0) -> dict[str, float]:
        """Work features; ``spill`` is the share of the model's weights beyond the cache."""
        return {"node": 1.0, "mmac": self.macs / 1e6, "mb_in": self.in_bytes / 1e6,
                "mb_out": self.out_bytes / 1e6, "mb_w": self.w_bytes / 1e6,
                "mb_w_spill": self.w_bytes / 1e6 * spill}


def spill_fraction(weight_bytes: float, cache_mb: float) -> float:
    """Share of a model's weights that cannot stay in a cache of ``cache_mb`` between runs."""
    if cache_mb <= 0 or weight_bytes <= 0:
        return 0.0
    return max(0.0, 1.0 - cache_mb * 1e6 / weight_bytes)


def valid_taps(size: int, out: int, k: int, stride: int, pad_begin: int, dilation: int = 1) -> int:
    """Kernel taps that land inside the input, summed over the outputs of one dimension.

    Taps over the zero padding do no work in onnxruntime's convolution kernels, and on
    the small feature maps of reduced-size inputs they are a large share of k x k.
    """
    total = 0
    for i in range(out):
        start = i * stride - pad_begin
        total += sum(1 for j in range(k) if 0 <= start + j * dilation < size)
    return total


def conv_macs(xd: Sequence[int], od: Sequence[int], cout: int, cin_g: int, kh: int, kw: int,
              strides: Sequence[int], pads_begin: Sequence[int],
              dilations: Sequence[int] = (1, 1)) -> float:
    """Multiply-accumulates of a 2-D convolution, counting only taps inside the input."""
    th = valid_taps(xd[2], od[2], kh, strides[0], pads_begin[0], dilations[0])
    tw = valid_taps(xd[3], od[3], kw, strides[1], pads_begin[1], dilations[1])
    return float(od[0] * cout * cin_g * th * tw)


def used_taps(size: int, out: int, k: int, stride: int, pad_begin: int, dilation: int = 1) -> int:
    """Kernel taps of one dimension that some output applies to a real input element.

    A 3x3 convolution on a 1x1 map only ever uses the centre tap, so only a ninth of
    its weights are read.
    """
    used = set()
    for i in range(out):
        start = i * stride - pad_begin
        used.update(j for j in range(k) if 0 <= start + j * dilation < size)
    return len(used)


def weight_share(xd: Sequence[int], od: Sequence[int], kh: int, kw: int,
                 strides: Sequence[int], pads_begin: Sequence[int],
                 dilations: Sequence[int] = (1, 1)) -> float:
    uh = used_taps(xd[2], od[2], kh, strides[0], pads_begin[0], dilations[0])
    uw = used_taps(xd[3], od[3], kw, strides[1], pads_begin[1], dilations[1])
    return uh * uw / float(kh * kw)


def conv_kind(kh: int, kw: int, depthwise: bool, group: int = 1) -> str:
    if depthwise:
        return "dwconv"
    if group > 1:
        return "gconv"
    if kh == 1 and kw == 1:
        return "conv1x1"
    if kh == 3 and kw == 3:
        return "conv3x3"
    return "convkxk"


def op_kind(op: str) -> str:
    """Kernel class of a non-convolution op."""
    if op in GEMM_OPS:
        return "gemm"
    if op in POOL_OPS:
        return "pool"
    if op in ("ReorderInput", "ReorderOutput"):
        return "reorder"
    if op in VIEW_OPS or op in ELIMINATED:
        return "view"
    if op in MEMORY_OPS:
        return "memory"
    if op in ELTWISE_OPS:
        return "eltwise"
    if op in QDQ_OPS:
        return "qdq"
    if op in QLINEAR_EVENT_KINDS:
        return QLINEAR_EVENT_KINDS[op]
    return "other"


# -- kernel detection ----------------------------------------------------------------

def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def pad_channels(c: int, block: int) -> int:
    return (c + block - 1) // block * block if block else c


class _Detector:
    def __init__(self, model: onnx.ModelProto, shapes: Shapes, nchwc_block: int) -> None:
        self.model = model
        self.shapes = shapes
        self.block = nchwc_block
        self.const: set[str] = {i.name for i in model.graph.initializer}
        self.const_values: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}
        self.kernels: list[Kernel] = []
        self.producer: dict[str, Kernel] = {}
        self.uses: dict[str, int] = {}
        self.nchwc: dict[str, int] = {}       # tensor -> logical channels, if NCHWc
        self.reordered_in: set[str] = set()
        self.reordered_out: set[str] = set()
        # int8 (QDQ) graphs
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.outputs = {o.name for o in model.graph.output}
        self.deq: dict[str, str] = {}         # DequantizeLinear output -> the 8-bit tensor it reads
        self.qweight: dict[str, str] = {}     # DequantizeLinear of a constant -> the 8-bit/int32 constant
        self.nhwc: set[str] = set()           # 8-bit tensors in the NHWC layout of QLinearConv
        self.transposed: set[str] = set()     # NHWC tensors already transposed back for an NCHW consumer
        self.skip: set[int] = set()           # Q (and Relu/Clip) nodes fused into a kernel before them
        for n in model.graph.node:
            for t in n.input:
                if t:
                    self.uses[t] = self.uses.get(t, 0) + 1
                    self.consumers.setdefault(t, []).append(n)
        for o in model.graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1

    # helpers
    def r(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def dims(self, t: str) -> list[int] | None:
        s = self.shapes.get(t)
        if s is None or any(d is None for d in s[0]):
            return None
        return s[0]

    def nbytes(self, t: str, padded: bool = False) -> float:
        s = self.shapes.get(t)
        if s is None or any(d is None for d in s[0]):
            return 0.0
        dims = list(s[0])
        if padded and self.block and t in self.nchwc and len(dims) >= 2:
            dims[1] = pad_channels(dims[1], self.block)
        return float(math.prod(dims) if dims else 1) * _DTYPE_BYTES.get(s[1], 4)

    def act_bytes(self, tensors: Iterable[str]) -> float:
        return sum(self.nbytes(self.r(t), padded=True) for t in tensors if t and self.r(t) not in self.const)

    def const_bytes(self, tensors: Iterable[str]) -> float:
        return sum(self.nbytes(t) for t in tensors if t and self.r(t) in self.const)

    def add(self, k: Kernel, node: onnx.NodeProto | None, outputs: Sequence[str]) -> Kernel:
        self.kernels.append(k)
        if node is not None:
            k.nodes.append(node.name)
            first = next((self.r(t) for t in node.input if t and self.r(t) not in self.const), "")
            k.tensors = (first, outputs[0] if outputs else "")
        for o in outputs:
            if o:
                self.producer[o] = k
        return k

    def absorb(self, k: Kernel, node: onnx.NodeProto, out: str, src: str) -> None:
        k.nodes.append(node.name)
        k.fused.append(node.op_type)
        k.tensors = (k.tensors[0], out)
        self.producer[out] = k
        if src in self.nchwc:
            self.nchwc[out] = self.nchwc.pop(src)
        k.out_bytes = self.nbytes(out, padded=True)

    def single_use_kernel(self, t: str) -> Kernel | None:
        k = self.producer.get(t)
        if k is None or self.uses.get(t, 0) != 1:
            return None
        return k

    def need_nchw(self, t: str) -> None:
        """A consumer needs ``t`` in plain NCHW: reorder it once if it is NCHWc."""
        t = self.r(t)
        if t in self.nchwc and t not in self.reordered_out:
            self.reordered_out.add(t)
            self.add(Kernel(f"ReorderOutput({t})", "ReorderOutput", "reorder",
                            in_bytes=self.nbytes(t, padded=True), out_bytes=self.nbytes(t), tensors=(t, t)),
                     None, [])

    def need_nchwc(self, t: str) -> None:
        t = self.r(t)
        if t not in self.nchwc and t not in self.reordered_in:
            self.reordered_in.add(t)
            d = self.dims(t)
            out = self.nbytes(t)
            if d and len(d) >= 2:
                out = out / d[1] * pad_channels(d[1], self.block)
            self.add(Kernel(f"ReorderInput({t})", "ReorderInput", "reorder",
                            in_bytes=self.nbytes(t), out_bytes=out, tensors=(t, t)), None, [])

    def mark_nchwc(self, out: str, channels: int) -> None:
        self.nchwc[out] = channels

    # the pass
    def run(self) -> list[Kernel]:
        for node in self.model.graph.node:
            self.visit(node)
        for o in self.model.graph.output:
            t = self.r(o.name)
            if t in self.deq:
                self.dequantize(t, o.name)
            elif t in self.nhwc:
                self.need_nchw_q(t)
            if self.block:
                self.need_nchw(o.name)
        if self.block:
            for k in self.kernels:
                k.padded = self.padded(k)
        return self.kernels

    def padded(self, k: Kernel) -> tuple[bool, bool]:
        """Whether ``k``'s activation bytes in and out were counted padded to the block (as ``nbytes``,
        the blocked convolution and the reorders count them)."""
        if k.op in ("ReorderInput", "ReorderOutput"):
            return k.op == "ReorderOutput", k.op == "ReorderInput"
        if k.nchwc:
            return not (k.kind in CONV_KINDS and k.kind != "dwconv" and k.geometry[0] < self.block), True
        return k.tensors[0] in self.nchwc, k.tensors[1] in self.nchwc

    def visit(self, node: onnx.NodeProto) -> None:
        if id(node) in self.skip:
            return
        op = node.op_type
        ins = [self.r(t) if t else "" for t in node.input]
        outs = list(node.output)
        real_ins = [t for t in ins if t]
        if op == "DequantizeLinear" and real_ins:
            if ins[0] in self.const:          # a quantized weight: folded into its kernel
                self.qweight[outs[0]] = ins[0]
                self.const.add(outs[0])
            else:                             # runs only where no kernel after it takes the 8-bit tensor
                self.deq[outs[0]] = ins[0]
            return
        if op == "Constant" or (real_ins and all(t in self.const for t in real_ins)) or (
                op in ("Shape", "Size") and real_ins and self.dims(real_ins[0]) is not None):
            self.const.update(o for o in outs if o)
            return
        if any(t in self.deq or t in self.qweight for t in real_ins):
            if self.fuse_qdq(node, ins, outs):
                return
            ins = [self.dequantize(t, node.name) if t in self.deq or t in self.qweight else t for t in ins]
        elif op == "QuantizeLinear" or any(t in self.nhwc for t in real_ins):
            for t in real_ins:
                self.need_nchw_q(t)
            if op == "QuantizeLinear" and self.quantize_before_view(node, ins, outs):
                return
        if op in ELIMINATED and real_ins:
            self.alias[outs[0]] = ins[0]
            if ins[0] in self.uses:
                self.uses[ins[0]] += self.uses.get(outs[0], 0) - 1
            return
        handler = getattr(self, f"on_{op}", None)
        if handler is not None and handler(node, ins, outs):
            return
        self.generic(node, ins, outs)

    def generic(self, node: onnx.NodeProto, ins: list[str], outs: list[str]) -> None:
        op = node.op_type
        kind = op_kind(op)
        if self.block:
            keep = self.nchwc_elementwise(node, ins, outs)
            if not keep:
                for t in ins:
                    if t and t not in self.const:
                        self.need_nchw(t)
        macs = 0.0
        if kind == "gemm":
            macs = self.gemm_macs(node, ins, outs)
        elif kind == "pool":
            macs = self.pool_macs(node, ins, outs)
        k = Kernel(node.name or op, op, kind, macs=macs, in_bytes=self.act_bytes(ins),
                   out_bytes=sum(self.nbytes(o, padded=True) for o in outs if o),
                   w_bytes=self.const_bytes(ins))
        self.add(k, node, outs)

    def nchwc_elementwise(self, node: onnx.NodeProto, ins: list[str], outs: list[str]) -> bool:
        """Ops onnxruntime runs directly on NCHWc inputs; marks the output NCHWc."""
        op = node.op_type
        acts = [t for t in ins if t and t not in self.const]
        if not acts or not all(t in self.nchwc for t in acts):
            return False
        ok = False
        if op in ("Add", "Sum", "Mul") and len(acts) == len(ins) == 2:
            ok = self.dims(acts[0]) is not None and self.dims(acts[0]) == self.dims(acts[1])
        elif op in NCHWC_ACTIVATIONS:
            ok = True
        elif op == "Concat" and _attr(node, "axis") == 1:
            ok = all(self.nchwc[t] % self.block == 0 for t in acts)
        if ok:
            ch = sum(self.nchwc[t] for t in acts) if op == "Concat" else self.nchwc[acts[0]]
            self.mark_nchwc(outs[0], ch)
        return ok

    # -- per-op rules
    def on_Conv(self, node, ins, outs) -> bool:  # noqa: N802 - ONNX op names
        x, w = ins[0], ins[1]
        wd, xd, od = self.dims(w), self.dims(x), self.dims(outs[0])
        if wd is None or xd is None or od is None or len(wd) != 4:
            return False
        group = int(_attr(node, "group", 1))
        cout, cin_g, kh, kw = wd
        depthwise = group > 1 and cin_g == 1 and cout == group
        blocked = False
        # NCHWc needs constant weights and bias: a float layer's DequantizeLinear'd bias (int8 models) is not
        if self.block and w in self.const and (len(ins) < 3 or not ins[2] or ins[2] in self.const):
            b = self.block
            if group > 1:
                blocked = depthwise or (cin_g % b == 0 and (cout // group) % b == 0)
            else:
                blocked = True
        if blocked:
            b = self.block
            cout_p = pad_channels(cout, b)
            if group == 1 and cin_g < b:
                cin_p = cin_g                       # reads the NCHW input directly
                self.need_nchw(x)
                in_bytes = self.nbytes(x)
            else:
                cin_p = pad_channels(cin_g, b) if group == 1 else cin_g
                self.need_nchwc(x)
                in_bytes = self.nbytes(x) / xd[1] * pad_channels(xd[1], b)
            out_elems = od[0] * cout_p * od[2] * od[3]
            geo = self.conv_geometry(node, xd, od, kh, kw)
            macs = conv_macs(xd, od, cout_p, cin_p, kh, kw, *geo)
            w_bytes = cout_p * cin_p * kh * kw * 4 * weight_share(xd, od, kh, kw, *geo)
            k = Kernel(node.name or "Conv", "Conv", conv_kind(kh, kw, depthwise, group), macs=macs,
                       in_bytes=in_bytes, out_bytes=out_elems * 4.0,
                       w_bytes=w_bytes + (cout_p * 4 if len(ins) > 2 and ins[2] else 0),
                       nchwc=True, geometry=(cin_p, cout_p, od[2], od[3], kh, kw))
            self.add(k, node, outs)
            self.mark_nchwc(outs[0], cout)
            return True
        if self.block:
            self.need_nchw(x)
        geo = self.conv_geometry(node, xd, od, kh, kw)
        macs = conv_macs(xd, od, cout, cin_g, kh, kw, *geo)
        w_bytes = self.const_bytes(ins[1:2]) * weight_share(xd, od, kh, kw, *geo)
        k = Kernel(node.name or "Conv", "Conv", conv_kind(kh, kw, depthwise, group), macs=macs,
                   in_bytes=self.act_bytes([x]), out_bytes=self.nbytes(outs[0]),
                   w_bytes=w_bytes + self.const_bytes(ins[2:3]),
                   geometry=(cin_g, cout, od[2], od[3], kh, kw))
        self.add(k, node, outs)
        return True

    def on_BatchNormalization(self, node, ins, outs) -> bool:  # noqa: N802
        x = ins[0]
        k = self.single_use_kernel(x)
        if k is not None and k.kind in CONV_KINDS and k.act is None and not k.has_sum \
                and all(t in self.const for t in ins[1:5]):
            self.absorb(k, node, outs[0], x)
            return True
        if self.block and x in self.nchwc:   # becomes a depthwise 1x1 NCHWc convolution
            ch = pad_channels(self.nchwc[x], self.block)
            od = self.dims(outs[0]) or [1, ch, 1, 1]
            k = Kernel(node.name, "BatchNormalization", "dwconv",
                       macs=float(od[0] * ch * math.prod(od[2:])),
                       in_bytes=self.act_bytes([x]), out_bytes=self.nbytes(x, padded=True),
                       w_bytes=ch * 8.0, nchwc=True)
            self.add(k, node, outs)
            self.mark_nchwc(outs[0], self.nchwc[x])
            return True
        return False

    def _per_channel_const(self, t: str, channels: int) -> bool:
        d = self.dims(t)
        if t not in self.const or d is None:
            return False
        n = math.prod(d) if d else 1
        return n == 1 or (n == channels and (len(d) < 2 or d[-1] == 1))

    def _fuse_affine(self, node, ins, outs) -> bool:
        """Conv followed by Mul/Add/Sub/Div of a per-channel constant: folded into the conv."""
        acts = [t for t in ins if t not in self.const]
        consts = [t for t in ins if t in self.const]
        if len(acts) != 1 or len(consts) != 1:
            return False
        k = self.single_use_kernel(acts[0])
        if k is None or k.act is not None or k.has_sum:
            return False
        od = self.dims(outs[0])
        if k.kind in CONV_KINDS and od and len(od) == 4 and self._per_channel_const(consts[0], od[1]):
            self.absorb(k, node, outs[0], acts[0])
            return True
        if k.kind == "gemm" and node.op_type == "Add" and "Add" not in k.fused:
            self.absorb(k, node, outs[0], acts[0])
            k.w_bytes += self.nbytes(consts[0])
            return True
        return False

    def on_Mul(self, node, ins, outs) -> bool:  # noqa: N802
        return self._fuse_affine(node, ins, outs)

    on_Div = on_Mul
    on_Sub = on_Mul

    def on_Add(self, node, ins, outs) -> bool:  # noqa: N802
        if self._fuse_affine(node, ins, outs):
            return True
        if not self.block or len(ins) != 2 or not all(t in self.nchwc for t in ins):
            return False
        if self.dims(ins[0]) is None or self.dims(ins[0]) != self.dims(ins[1]):
            return False
        for i in (0, 1):
            k = self.single_use_kernel(ins[i])
            if k is not None and k.nchwc and k.op == "Conv" and k.act is None and not k.has_sum:
                other = ins[1 - i]
                k.has_sum = True
                k.in_bytes += self.nbytes(other, padded=True)
                self.absorb(k, node, outs[0], ins[i])
                return True
        return False

    on_Sum = on_Add

    def _fuse_activation(self, node, ins, outs) -> bool:
        x = ins[0]
        k = self.single_use_kernel(x)
        if k is None or k.act is not None:
            return False
        op = node.op_type
        if k.kind in CONV_KINDS and k.op == "Conv":
            if k.has_sum and op not in NCHWC_ACTIVATIONS:
                return False
            if op == "Clip" and not all(t in self.const for t in ins[1:] if t):
                return False
            k.act = op
            self.absorb(k, node, outs[0], x)
            return True
        if k.kind == "gemm" and op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid") \
                and k.op == "Gemm":
            k.act = op
            self.absorb(k, node, outs[0], x)
            return True
        return False

    def on_Relu(self, node, ins, outs) -> bool:  # noqa: N802
        return self._fuse_activation(node, ins, outs)

    on_Clip = on_Relu
    on_Sigmoid = on_Relu
    on_Tanh = on_Relu
    on_LeakyRelu = on_Relu
    on_HardSigmoid = on_Relu

    def _pool(self, node, ins, outs, global_pool: bool) -> bool:
        x = ins[0]
        xd = self.dims(x)
        if not self.block or xd is None or len(xd) != 4 or len(outs) > 1:
            return False
        if global_pool and x not in self.nchwc:
            return False
        if not global_pool and xd[1] % self.block:
            return False
        if not global_pool:
            self.need_nchwc(x)
        k = Kernel(node.name, node.op_type, "pool", macs=self.pool_macs(node, ins, outs),
                   in_bytes=self.act_bytes([x]),
                   out_bytes=self.nbytes(outs[0]) / max(1, xd[1]) * pad_channels(xd[1], self.block),
                   nchwc=True)
        self.add(k, node, outs)
        self.mark_nchwc(outs[0], xd[1])
        return True

    def on_MaxPool(self, node, ins, outs) -> bool:  # noqa: N802
        return self._pool(node, ins, outs, global_pool=False)

    on_AveragePool = on_MaxPool

    def on_GlobalAveragePool(self, node, ins, outs) -> bool:  # noqa: N802
        return self._pool(node, ins, outs, global_pool=True)

    on_GlobalMaxPool = on_GlobalAveragePool

    def on_MatMul(self, node, ins, outs) -> bool:  # noqa: N802
        return False   # generic() handles it as a gemm kernel

    # -- int8: onnxruntime's QDQ fusions
    def dequantize(self, t: str, consumer: str) -> str:
        """A DequantizeLinear that runs, for one consumer (onnxruntime gives each its own copy)."""
        if t in self.qweight:        # a float kernel's quantized weight: dequantized every run
            self.const.discard(t)
            q = self.qweight.pop(t)
            self.add(Kernel(f"DequantizeLinear({q})->{consumer}", "DequantizeLinear", "qdq",
                            in_bytes=self.nbytes(q), out_bytes=self.nbytes(t)), None, [t])
            return t
        q = self.deq[t]
        self.need_nchw_q(q)
        self.add(Kernel(f"DequantizeLinear({q})->{consumer}", "DequantizeLinear", "qdq",
                        in_bytes=self.nbytes(q), out_bytes=self.nbytes(t)), None, [t])
        return t

    def need_nchw_q(self, t: str) -> None:
        """An 8-bit tensor in QLinearConv's NHWC layout, read by an NCHW consumer: one Transpose."""
        if t in self.nhwc and t not in self.transposed:
            self.transposed.add(t)
            self.add(Kernel(f"Transpose({t})", "Transpose", "memory", in_bytes=self.nbytes(t),
                            out_bytes=self.nbytes(t)), None, [])

    def need_nhwc_q(self, t: str) -> None:
        if t not in self.nhwc and t not in self.const:
            self.nhwc.add(t)          # the NCHW tensor is transposed once; its NHWC copy serves every reader
            self.add(Kernel(f"Transpose({t})", "Transpose", "memory", in_bytes=self.nbytes(t),
                            out_bytes=self.nbytes(t)), None, [])

    def quantized_output(self, t: str, activations: bool = False) -> tuple[str, list[onnx.NodeProto]] | None:
        """The 8-bit output when ``t``'s only reader is a QuantizeLinear (for a convolution or GEMM also
        through a Relu/Clip, which onnxruntime drops before a Q): (Q output, nodes fused)."""
        chain: list[onnx.NodeProto] = []
        while True:
            readers = self.consumers.get(t, [])
            if len(readers) != 1 or t in self.outputs:
                return None
            n = readers[0]
            if n.op_type == "QuantizeLinear":
                return n.output[0], chain + [n]
            if not activations or n.op_type not in ("Relu", "Clip") or chain:
                return None
            chain.append(n)
            t = n.output[0]

    def quantize_before_view(self, node, ins, outs) -> bool:
        """onnxruntime moves a Q above a Reshape/Transpose/Squeeze/Unsqueeze (QDQ propagation): the Q reads
        the view's float input and the view then moves 8-bit data."""
        k = self.single_use_kernel(ins[0])
        if k is None or k.op not in Q_PROPAGATE_OPS or len(k.nodes) != 1 or k.fused or not k.in_bytes:
            return False
        ratio = self.nbytes(outs[0]) / max(1.0, self.nbytes(ins[0]))
        q = Kernel(node.name or "QuantizeLinear", "QuantizeLinear", "qdq", in_bytes=k.in_bytes,
                   out_bytes=k.in_bytes * ratio, w_bytes=self.const_bytes(ins[1:]), nodes=[node.name])
        self.kernels.insert(self.kernels.index(k), q)
        k.in_bytes *= ratio
        k.out_bytes *= ratio
        k.fused.append("QuantizeLinear")
        self.producer[outs[0]] = k
        return True

    def is_u8(self, t: str) -> bool:
        """Whether an 8-bit activation runs as uint8. On x86 (NCHWc hosts) onnxruntime turns an int8 Q -> DQ
        pair into uint8 where the Q feeds one DQ and that DQ one node (QDQS8ToU8, after DQs are made unique
        per node), and fuses convolutions only on uint8 data."""
        s = self.shapes.get(t)
        if s is None or s[1] == TensorProto.UINT8:
            return True
        readers = self.consumers.get(t, [])
        return (bool(self.block) and len(readers) == 1 and readers[0].op_type == "DequantizeLinear"
                and len(self.consumers.get(readers[0].output[0], [])) == 1)

    def fuse_qdq(self, node, ins, outs) -> bool:
        """A node reading DequantizeLinear outputs, replayed as onnxruntime's QDQ transformers run it."""
        op = node.op_type
        acts = [t for t in ins if t and t not in self.const]
        if not acts or not all(t in self.deq for t in acts):
            return False
        q_ins = [self.deq[t] for t in acts]
        if op in ("Conv", "Gemm", "MatMul"):
            return self.q_weighted(node, ins, outs, q_ins)
        fused = self.quantized_output(outs[0], activations=op in ("Relu", "Clip"))
        if fused is None:
            return False
        qout, chain = fused
        if op in ("Relu", "Clip"):            # dropped before the Q: the 8-bit tensor passes through
            self.alias[qout] = q_ins[0]
            self.skip.update(id(n) for n in chain)
            return True
        if op in DROP_QDQ_OPS:
            if op == "MaxPool" and q_ins[0] in self.nhwc:
                self.nhwc.add(qout)           # NhwcMaxPool
            else:
                self.need_nchw_q(q_ins[0])
            k = Kernel(node.name or op, op, op_kind(op), in_bytes=self.nbytes(q_ins[0]),
                       out_bytes=self.nbytes(qout),
                       macs=float(math.prod(self.dims(q_ins[0]) or [0])) if op == "MaxPool" else 0.0)
        elif op in QLINEAR_FUSED:
            if self.block and len({self.is_u8(t) for t in [*q_ins, qout]}) > 1:
                return False          # uint8 and int8 inputs (x86 S8S8): the float op runs
            if all(t in self.nhwc for t in q_ins):   # stays in the layout its inputs have
                self.nhwc.add(qout)
            else:
                for t in q_ins:
                    self.need_nchw_q(t)
            kind = QLINEAR_FUSED[op]
            k = Kernel(node.name or op, f"QLinear{op}", kind, in_bytes=sum(self.nbytes(t) for t in q_ins),
                       out_bytes=self.nbytes(qout),
                       macs=float(math.prod(self.dims(q_ins[0]) or [0])) if kind == "qpool" else 0.0)
        else:
            return False
        k.fused.append("QuantizeLinear")
        k.nodes.append(chain[-1].name)
        self.skip.update(id(n) for n in chain)
        self.add(k, node, [qout])
        return True

    def _int8_bytes(self, t: str) -> float:
        """Bytes of a constant as stored: the 8-bit (or int32 bias) tensor a DequantizeLinear reads."""
        return self.nbytes(self.qweight.get(t, t)) if t else 0.0

    def q_weighted(self, node, ins, outs, q_ins) -> bool:
        """DQ -> Conv -> [Relu] -> Q becomes QLinearConv (NHWC); DQ -> Gemm/MatMul a QGemm-like kernel,
        with its Q fused when there is one. A float weight is quantized by onnxruntime itself."""
        op = node.op_type
        x, w = ins[0], ins[1] if len(ins) > 1 else ""
        if x not in self.deq or w not in self.const:
            return False
        qx = self.deq[x]
        fused = self.quantized_output(outs[0], activations=op == "Conv")
        if op == "Conv":
            wd, xd = self.dims(w), self.dims(x)
            if fused is None or wd is None or xd is None or len(wd) != 4:
                return False          # without a Q after it onnxruntime keeps the float convolution
            qout, chain = fused
            if self.block and not (self.is_u8(qx) and self.is_u8(qout)):
                return False          # x86 runs int8 (S8S8) activations' convolutions in float
            od = self.dims(qout)
            if od is None:
                return False
            group = int(_attr(node, "group", 1))
            cout, cin_g, kh, kw = wd
            depthwise = group > 1 and cin_g == 1 and cout == group
            geo = self.conv_geometry(node, xd, od, kh, kw)
            self.need_nhwc_q(qx)
            bias = self._int8_bytes(ins[2]) if len(ins) > 2 and ins[2] else 0.0
            w_bytes = math.prod(wd) * weight_share(xd, od, kh, kw, *geo)
            k = Kernel(node.name or op, "QLinearConv", "qdwconv" if depthwise else "qconv",
                       macs=conv_macs(xd, od, cout, cin_g, kh, kw, *geo), in_bytes=self.nbytes(qx),
                       out_bytes=self.nbytes(qout), w_bytes=w_bytes + bias,
                       geometry=(cin_g, cout, od[2], od[3], kh, kw),
                       float_kind=conv_kind(kh, kw, depthwise, group))
            self.nhwc.add(qout)
        else:
            self.need_nchw_q(qx)
            qout, chain = fused if fused is not None else (outs[0], [])
            n_w = math.prod(self.dims(w) or [0])
            k = Kernel(node.name or op, "QGemm", "qgemm", macs=self.gemm_macs(node, ins, outs),
                       in_bytes=self.nbytes(qx), out_bytes=self.nbytes(qout),
                       w_bytes=n_w + sum(self._int8_bytes(t) for t in ins[2:3]), float_kind="gemm")
        for n in chain:
            k.fused.append(n.op_type)
            k.nodes.append(n.name)
            if n.op_type in ("Relu", "Clip"):
                k.act = n.op_type
        self.skip.update(id(n) for n in chain)
        self.add(k, node, [qout])
        return True

    # -- work
    def conv_geometry(self, node, xd, od, kh, kw):
        strides = list(_attr(node, "strides", [1, 1]))
        dil = list(_attr(node, "dilations", [1, 1]))
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin = []
            for i, k in enumerate((kh, kw)):
                total = max(0, (od[2 + i] - 1) * strides[i] + (k - 1) * dil[i] + 1 - xd[2 + i])
                begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        else:
            pads = list(_attr(node, "pads", [0, 0, 0, 0]))
            begin = pads[:2]
        return strides, begin, dil

    def gemm_macs(self, node, ins, outs) -> float:
        ad, od = self.dims(ins[0]), self.dims(outs[0])
        if not ad or not od:
            return 0.0
        k = ad[-2] if node.op_type == "Gemm" and _attr(node, "transA", 0) else ad[-1]
        return float(math.prod(od) * k)

    def pool_macs(self, node, ins, outs) -> float:
        # elements read: the same measure the profiler-event side can compute
        xd = self.dims(ins[0])
        return float(math.prod(xd)) if xd else 0.0


def detect_kernels(model: onnx.ModelProto, nchwc_block: int = 0,
                   input_shapes: dict[str, Sequence[int]] | None = None) -> list[Kernel]:
    """Kernels onnxruntime will run for ``model`` (see the module docstring)."""
    shapes = infer_shapes(model, input_shapes, strict=False)
    kernels = _Detector(model, shapes, nchwc_block).run()
    _attach_modules(model, kernels)
    return kernels


WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _attach_modules(model: onnx.ModelProto, kernels: Sequence[Kernel]) -> None:
    """Set each kernel's PyTorch module path, where the export recorded one.

    The path comes from the anchor node's scope (``exporters.onnx_facts.node_module_paths``),
    else from the first folded node that has one. A convolution with batch norm folded into it
    carries the batch norm's scope (``layer1.0.bn1``), so for a weighted op whose weight is named
    after its parameter (``layer1.0.conv1.weight``, as torch names them) the weight's module is
    used instead when it is the scope itself or a sibling of it (or no scope was recorded).
    """
    try:
        paths = node_module_paths(model)
    except (ValueError, SyntaxError):   # unreadable scope metadata: the node names have to do
        paths = {}
    nodes = {n.name: n for n in model.graph.node if n.name}
    inits = {i.name for i in model.graph.initializer}
    for k in kernels:
        path = next((paths[n] for n in k.nodes if n in paths), None)
        anchor = nodes.get(k.nodes[0]) if k.nodes else None
        if anchor is not None and anchor.op_type in WEIGHTED_OPS and len(anchor.input) > 1:
            w = anchor.input[1]
            if w in inits and w.endswith(".weight") and len(w) > len(".weight"):
                owner = w[: -len(".weight")]
                if path is None or owner == path or _parent(owner) == _parent(path) or _parent(owner) == path:
                    path = owner
        k.module = path


# operator domains onnxruntime's CPU build has kernels for; a node of any other domain needs a custom-op
# library the predictor knows nothing of (and the device's runtime would refuse the model)
RUNTIME_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc")


def load_model(path: str | Path) -> onnx.ModelProto:
    """The graph of an ONNX file, without external weight data (kernel detection needs shapes only);
    a node of an operator domain onnxruntime cannot run is refused in one line."""
    model = load_onnx(path, load_external_data=False)
    known = {*RUNTIME_DOMAINS, *(f.domain for f in model.functions)}     # model-local functions run too
    odd = next((n for n in model.graph.node if n.domain not in known), None)
    if odd is not None:
        raise EdgepruneError(f"{path}: node '{odd.name or odd.op_type}' is {odd.op_type} of the custom domain "
                             f"'{odd.domain}', which onnxruntime has no kernel for; no latency can be predicted")
    return model


# -- onnxruntime profiler events -------------------------------------------------------

def _event_shapes(items: list[dict]) -> list[tuple[list[int], int]]:
    out = []
    for item in items or []:
        for dtype, dims in item.items():
            out.append((list(dims), _EVENT_DTYPE_BYTES.get(dtype, 4)))
    return out


#: quantized ops whose prepacked weight the profiler does not list: (index of the weight input)
_PREPACKED_WEIGHT = {"QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3, "MatMulIntegerToFloat": 1}


def optimized_node_facts(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Per quantized node of onnxruntime's *optimized* graph (``SessionOptions.optimized_model_filepath``):
    its weight's dims and its attributes. The profiler lists neither for QLinearConv and QGemm (the
    weight is prepacked), and a convolution's geometry needs both."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    facts = {}
    for n in model.graph.node:
        i = _PREPACKED_WEIGHT.get(n.op_type)
        if i is not None and len(n.input) > i and n.input[i] in inits:
            facts[n.name] = {"weight": inits[n.input[i]],
                             "attrs": {a.name: helper.get_attribute_value(a) for a in n.attribute}}
    return facts


def _int32_bytes(items: list[dict], n: int) -> float:
    """Bytes of the int32 bias of ``n`` elements among a quantized node's listed inputs."""
    return sum(4.0 * n for item in items or [] for dtype, dims in item.items()
               if dtype == "int32" and list(dims) == [n])


def _qlinear_conv_from_event(k: Kernel, ins, outs, facts: dict[str, Any] | None,
                             items: list[dict] | None = None) -> None:
    """QLinearConv inputs: x, x_scale, x_zp, [w: prepacked, not listed], w_scale, w_zp, y_scale, y_zp, [B]."""
    if not facts or not ins or not outs or len(facts.get("weight", [])) != 4:
        return                        # no geometry: counted as a kernel launch and its bytes only
    attrs = facts.get("attrs", {})
    xd, od = list(ins[0][0]), list(outs[0][0])
    if len(xd) != 4 or len(od) != 4:
        return
    if attrs.get("channels_last"):
        xd, od = [xd[0], xd[3], xd[1], xd[2]], [od[0], od[3], od[1], od[2]]
    cout, cin_g, kh, kw = facts["weight"]
    group = int(attrs.get("group", 1))
    depthwise = group > 1 and cin_g == 1 and cout == group
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))[:2]
    dil = list(attrs.get("dilations", [1, 1]))
    k.kind = "qdwconv" if depthwise else "qconv"
    k.float_kind = conv_kind(kh, kw, depthwise, group)
    k.macs = conv_macs(xd, od, cout, cin_g, kh, kw, strides, pads, dil)
    k.geometry = (cin_g, cout, od[2], od[3], kh, kw)
    bias = _int32_bytes(items or [], cout)
    k.w_bytes = math.prod(facts["weight"]) * weight_share(xd, od, kh, kw, strides, pads, dil) + bias


def kernel_from_profile_event(name: str, args: dict[str, Any], facts: dict[str, Any] | None = None) -> Kernel:
    """The :class:`Kernel` for one node of an onnxruntime profile trace (``cat == "Node"``).

    ``facts`` (``optimized_node_facts``) gives a quantized node's weight dims and attributes, which the
    trace lacks; without them a QLinearConv is classified but has no MACs."""
    op = args.get("op_name", "?")
    ins = _event_shapes(args.get("input_type_shape", []))
    outs = _event_shapes(args.get("output_type_shape", []))
    in_b = float(args.get("activation_size", 0))
    w_b = float(args.get("parameter_size", 0))
    out_b = float(args.get("output_size", 0))
    k = Kernel(name, op, op_kind(op), in_bytes=in_b, out_bytes=out_b, w_bytes=w_b)
    if op in ("Conv", "FusedConv", "NchwcConv") and len(ins) >= 2 and outs:
        (xd, _), (wd, _), (od, _) = ins[0], ins[1], outs[0]
        if len(wd) == 4 and len(xd) == 4:
            depthwise = wd[1] == 1 and xd[1] == od[1] and xd[1] > 1
            group = max(1, xd[1] // wd[1]) if wd[1] else 1
            k.kind = conv_kind(wd[2], wd[3], depthwise, group)
            # the profiler gives no attributes: assume symmetric padding, stride from sizes
            geo = []
            for i in (2, 3):
                stride = max(1, round(xd[i] / od[i])) if od[i] > 1 else 1
                total = max(0, (od[i] - 1) * stride + wd[i] - xd[i])
                geo.append((stride, total // 2))
            strides, pads = [g[0] for g in geo], [g[1] for g in geo]
            k.macs = conv_macs(xd, od, od[1], wd[1], wd[2], wd[3], strides, pads)
            k.geometry = (wd[1], od[1], od[2], od[3], wd[2], wd[3])
            k.nchwc = name.endswith("_nchwc")
            k.has_sum = len(ins) >= 3 and ins[-1][0] == od
            raw_w = float(math.prod(wd) * 4)
            bias = max(0.0, w_b - raw_w) if w_b else 0.0
            k.w_bytes = raw_w * weight_share(xd, od, wd[2], wd[3], strides, pads) + bias
    elif k.kind == "gemm" and ins and outs:
        ad, od = ins[0][0], outs[0][0]
        if ad and od:
            k.macs = float(math.prod(od) * ad[-1])
            n_w = ad[-1] * od[-1]
            if not any(math.prod(d) == n_w for d, _ in ins[1:]):
                k.w_bytes += n_w * 4.0      # prepacked weights: the profiler does not list them
    elif op == "QLinearConv":
        _qlinear_conv_from_event(k, ins, outs, facts, args.get("input_type_shape", []))
    elif k.kind == "qgemm" and ins and outs:
        ad, od = ins[0][0], outs[0][0]
        if ad and od:
            k.macs = float(math.prod(od) * ad[-1])
            k.float_kind = "gemm"
            wd = (facts or {}).get("weight")
            n_w = math.prod(wd) if wd else ad[-1] * od[-1]
            k.w_bytes = float(n_w) + _int32_bytes(args.get("input_type_shape", []), od[-1])
    elif k.kind in ("pool", "qpool") and ins:
        k.macs = float(math.prod(ins[0][0]))
    return k
