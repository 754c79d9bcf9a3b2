"""The calibration suite: seeded, synthetic CNNs built directly as ONNX graphs.

The latency model is fitted on these and never on the models it is judged on (the
bundled ResNet-56 and torchvision ResNet-18/50 and MobileNetV2). Like nn-Meter's kernel
sampling, each network draws its layers at random from the building blocks of modern
CNNs — dense convolutions of kernel 1/3/5/7 at various strides, widths and resolutions,
depthwise convolutions, basic and bottleneck residual blocks, inverted residuals,
squeeze-excite gates, concatenated branches, pooling, hard-swish and a classifier head —
so that every kernel class is seen at many sizes. Graphs are written with
``onnx.helper`` (no torch export), so the suite is fast to build on a small device host.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


class _Net:
    """A tiny graph builder: tensors are names, shapes are tracked as [N, C, H, W]."""

    def __init__(self, name: str, c: int, hw: int, rng: random.Random) -> None:
        self.name, self.rng = name, rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0
        self.x = "input"
        self.shape = [1, c, hw, hw]
        self.inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(self.shape))]
        self.np_rng = np.random.default_rng(rng.randrange(1 << 30))
        self.macs = 0

    def _id(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def _const(self, arr: np.ndarray, base: str) -> str:
        name = self._id(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def conv(self, x: str, shape: list[int], cout: int, k: int, stride: int = 1,
             group: int = 1, act: str | None = "Relu") -> tuple[str, list[int]]:
        cin = shape[1]
        fan_in = cin // group * k * k
        w = (self.np_rng.standard_normal((cout, cin // group, k, k)) *
             math.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (self.np_rng.standard_normal(cout) * 0.01).astype(np.float32)
        out = self._id("conv")
        pad = k // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, self._const(w, "w"), self._const(b, "b")], [out], name=out,
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group))
        h = (shape[2] + 2 * pad - k) // stride + 1
        oshape = [1, cout, h, h]
        self.macs += cout * h * h * (cin // group) * k * k
        return self.act(out, act), oshape

    def act(self, x: str, act: str | None) -> str:
        if act is None:
            return x
        out = self._id(act.lower())
        if act == "Clip":
            lo = self._const(np.array(0.0, np.float32), "lo")
            hi = self._const(np.array(6.0, np.float32), "hi")
            self.nodes.append(helper.make_node("Clip", [x, lo, hi], [out], name=out))
        else:
            self.nodes.append(helper.make_node(act, [x], [out], name=out))
        return out

    def binary(self, op: str, a: str, b: str) -> str:
        out = self._id(op.lower())
        self.nodes.append(helper.make_node(op, [a, b], [out], name=out))
        return out

    def pool(self, op: str, x: str, shape: list[int]) -> tuple[str, list[int]]:
        out = self._id(op.lower())
        if op == "GlobalAveragePool":
            self.nodes.append(helper.make_node(op, [x], [out], name=out))
            return out, [1, shape[1], 1, 1]
        self.nodes.append(helper.make_node(op, [x], [out], name=out, kernel_shape=[3, 3],
                                           strides=[2, 2], pads=[1, 1, 1, 1]))
        h = (shape[2] + 2 - 3) // 2 + 1
        return out, [1, shape[1], h, h]

    def head(self, x: str, shape: list[int], classes: int) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            pooled, _ = self.pool("GlobalAveragePool", x, shape)
        else:
            pooled = self._id("mean")
            axes = self._const(np.array([2, 3], np.int64), "axes")
            self.nodes.append(helper.make_node("ReduceMean", [x, axes], [pooled], name=pooled,
                                               keepdims=1))
        flat = self._id("flatten")
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
        w = (self.np_rng.standard_normal((classes, shape[1])) * 0.01).astype(np.float32)
        b = np.zeros(classes, np.float32)
        self.nodes.append(helper.make_node("Gemm", [flat, self._const(w, "fc_w"), self._const(b, "fc_b")],
                                           ["output"], name="fc", transB=1))
        self.macs += classes * shape[1]

    def model(self, classes: int) -> onnx.ModelProto:
        out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes])
        g = helper.make_graph(self.nodes, self.name, self.inputs, [out], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgeprune.calibration")
        m.ir_version = 8
        return m


# -- blocks ----------------------------------------------------------------------------

def _plain(net: _Net, x, s, rng):
    k = rng.choice([k for k in (1, 3, 3, 5, 7) if k <= max(1, s[2] // 2)])
    return net.conv(x, s, _width(rng, s[1]), k, rng.choice([1, 1, 2]),
                    act=rng.choice(["Relu", "Relu", "Clip", None]))


def _basic(net: _Net, x, s, rng):
    c = s[1]
    y, s1 = net.conv(x, s, c, 3)
    y, s1 = net.conv(y, s1, c, 3, act=None)
    return net.act(net.binary("Add", y, x), "Relu"), s1


def _bottleneck(net: _Net, x, s, rng):
    c = s[1]
    mid = max(8, c // rng.choice([2, 4]))
    y, s1 = net.conv(x, s, mid, 1)
    y, s1 = net.conv(y, s1, mid, 3)
    y, s1 = net.conv(y, s1, c, 1, act=None)
    return net.act(net.binary("Add", y, x), "Relu"), s1


def _downsample(net: _Net, x, s, rng):
    cout = min(512, s[1] * 2)
    y, s1 = net.conv(x, s, cout, 3, 2)
    y, s1 = net.conv(y, s1, cout, 3, act=None)
    sc, _ = net.conv(x, s, cout, 1, 2, act=None)
    return net.act(net.binary("Add", y, sc), "Relu"), s1


def _inverted(net: _Net, x, s, rng):
    c = s[1]
    e = c * rng.choice([3, 4, 6])
    k = rng.choice([3, 3, 5]) if s[2] >= 10 else 3
    stride = rng.choice([1, 1, 2])
    act = rng.choice(["Clip", "Relu", "HardSwish"])
    y, s1 = net.conv(x, s, e, 1, act=None if act == "HardSwish" else act)
    if act == "HardSwish":
        y = net.act(y, "HardSwish")
    y, s1 = net.conv(y, s1, e, k, stride, group=e, act=None if act == "HardSwish" else act)
    if act == "HardSwish":
        y = net.act(y, "HardSwish")
    if rng.random() < 0.35:                          # squeeze-excite gate
        g, gs = net.pool("GlobalAveragePool", y, s1)
        g, gs = net.conv(g, gs, max(8, e // 4), 1)
        g, gs = net.conv(g, gs, e, 1, act="Sigmoid")
        y = net.binary("Mul", y, g)
    cout = c if stride == 1 and rng.random() < 0.6 else _width(rng, c)
    y, s2 = net.conv(y, s1, cout, 1, act=None)
    if stride == 1 and cout == c:
        y = net.binary("Add", y, x)
    return y, s2


def _branches(net: _Net, x, s, rng):
    a, sa = net.conv(x, s, max(8, s[1] // 2), 1)
    b, _ = net.conv(x, s, max(8, s[1] // 2), 3)
    out = net._id("concat")
    net.nodes.append(helper.make_node("Concat", [a, b], [out], name=out, axis=1))
    return out, [1, sa[1] * 2, sa[2], sa[3]]


def _pool(net: _Net, x, s, rng):
    return net.pool(rng.choice(["MaxPool", "AveragePool"]), x, s)


BLOCKS = {"plain": _plain, "basic": _basic, "bottleneck": _bottleneck,
          "downsample": _downsample, "inverted": _inverted, "branches": _branches,
          "pool": _pool}


def _width(rng: random.Random, c: int) -> int:
    return int(min(512, max(8, round(c * rng.choice([0.5, 1, 1.5, 2]) / 8) * 8)))


@dataclass
class SuiteModel:
    name: str
    model: onnx.ModelProto
    macs: int


def synthetic_model(index: int, seed: int = 0, max_mmacs: float = 250.0) -> SuiteModel:
    """Network number ``index`` of the suite drawn with ``seed`` (deterministic)."""
    rng = random.Random(seed * 100003 + index)
    hw = rng.choice([16, 24, 32, 48, 56, 64, 80, 96, 112])
    if max_mmacs < 50:          # small suites (tests): small inputs keep the stem small too
        hw = min(hw, 32)
    cin = rng.choice([1, 3, 3, 8])
    net = _Net(f"calib_s{seed}_{index:03d}", cin, hw, rng)
    x, s = net.conv("input", net.shape, rng.choice([8, 16, 24, 32, 48, 64]),
                    rng.choice([3, 3, 5, 7]), rng.choice([1, 2]))
    depth = rng.randint(3, 18)
    for _ in range(depth):
        name = rng.choice(list(BLOCKS))
        if name in ("pool", "downsample") and s[2] < 4:
            continue
        if name == "downsample" and s[1] >= 512:
            continue
        saved = (len(net.nodes), len(net.inits), net.macs)
        x2, s2 = BLOCKS[name](net, x, s, rng)
        if net.macs > max_mmacs * 1e6:       # over budget: undo this block and stop
            del net.nodes[saved[0]:], net.inits[saved[1]:]
            net.macs = saved[2]
            break
        x, s = x2, s2
    classes = rng.choice([10, 100, 1000])
    net.head(x, s, classes)
    return SuiteModel(net.name, net.model(classes), net.macs)


def synthetic_suite(count: int = 48, seed: int = 0, max_mmacs: float = 250.0) -> list[SuiteModel]:
    return [synthetic_model(i, seed, max_mmacs) for i in range(count)]


# -- real architectures ------------------------------------------------------------------

#: torchvision architectures in the calibration suite, with the input side they run at.
#: None of them is in the validation set (ResNet-56, ResNet-18, ResNet-50, MobileNetV2).
TORCHVISION_SUITE: list[tuple[str, int]] = [
    ("resnet34", 64), ("resnet34", 112), ("resnext50_32x4d", 64), ("wide_resnet50_2", 48),
    ("mobilenet_v3_small", 128), ("mobilenet_v3_large", 96), ("shufflenet_v2_x1_0", 96),
    ("squeezenet1_1", 96), ("efficientnet_b0", 96), ("mnasnet1_0", 96),
    ("regnet_y_400mf", 96), ("googlenet", 96), ("densenet121", 64), ("resnet101", 48),
    ("mnasnet0_5", 160), ("mobilenet_v3_large", 160), ("efficientnet_b0", 128),
    ("regnet_x_400mf", 128), ("resnext50_32x4d", 96), ("shufflenet_v2_x0_5", 160),
    ("squeezenet1_0", 128), ("mnasnet1_0", 144), ("resnet101", 80), ("resnet34", 160),
    ("googlenet", 128), ("wide_resnet50_2", 80),
]


def export_torchvision(arch: str, size: int, path: str, seed: int = 0) -> None:
    """Export a randomly initialised torchvision ``arch`` at ``1x3xSIZExSIZE`` to ``path``."""
    import contextlib
    import io

    import torch
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    model = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), path, dynamo=True,
                          verbose=False)


def quantize_qdq(src: str | Path, dst: str | Path, activations: str = "uint8", exclude: Sequence[str] = (),
                 images: int = 4, seed: int = 0, reduce_range: bool = False) -> Path:
    """An int8 QDQ copy of the ONNX model ``src`` at ``dst``, made as the tool ships it: onnxruntime's
    ``quant_pre_process`` then ``quantize_static`` (per-channel int8 weights, ``activations`` uint8 or int8,
    MinMax calibration on ``images`` random normal inputs, one per call: the models have a static batch
    of 1). ``exclude`` names nodes left in float (mixed precision); ``reduce_range``: 7-bit weights, onnxruntime's
    advice for x86 without VNNI."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src), load_external_data=False)
    inp = model.graph.input[0]
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    feeds = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(images)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[activations]
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="edgeprune_q8_") as tmp:
        pre = str(Path(tmp) / "pre.onnx")
        whole = str(Path(tmp) / "whole.onnx")      # a suite export keeps its weights in a .data file beside it:
        onnx.save(onnx.load(str(src)), whole)      # the pre-processor's shape inference wants them inline
        quant_pre_process(whole, pre, skip_symbolic_shape=True)
        quantize_static(pre, str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                        reduce_range=reduce_range)
    return dst
