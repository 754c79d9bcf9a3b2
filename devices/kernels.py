"""Kernel classes and per-kernel features of the latency model.

A *kernel* is what the runtime actually executes: a convolution with its folded batch
norm, fused activation and fused residual add is one kernel, as in nn-Meter's kernel
detection. Every kernel gets a class (``KINDS``) and a few work features (``FEATURES``);
a device's latency model holds, per class, the microseconds one unit of each feature
costs. This module defines that vocabulary; ``predictor`` builds kernels from a graph.
"""

from __future__ import annotations

from pathlib import Path

from edgeprune.errors import EdgepruneError

#: kernel classes, with what falls into each
KINDS: dict[str, str] = {
    "conv1x1": "dense (group=1) convolution with a 1x1 kernel",
    "conv3x3": "dense convolution with a 3x3 kernel",
    "convkxk": "dense convolution with any other kernel size (5x5, 7x7, ...)",
    "gconv": "grouped convolution that is not depthwise (ResNeXt, RegNet), any kernel size",
    "dwconv": "depthwise convolution (one group per input channel)",
    "gemm": "fully connected layer: Gemm, MatMul",
    "pool": "max/average pooling, global pooling, ReduceMean",
    "eltwise": "element-wise and activation nodes that are not fused into a kernel",
    "memory": "data movement: Concat, Split, Transpose, Pad, Slice, Gather, Resize",
    "reorder": "layout conversion the runtime inserts (onnxruntime NCHWc on x86)",
    "view": "shape-only nodes: Reshape, Flatten, Squeeze, Unsqueeze, Identity, Shape",
    "other": "any other operator",
    "qconv": "quantized (int8) dense or grouped convolution: QLinearConv, any kernel size",
    "qdwconv": "quantized depthwise convolution (QLinearConv with one group per channel)",
    "qgemm": "quantized fully connected layer: QGemm, QLinearMatMul, MatMulIntegerToFloat",
    "qeltwise": "quantized element-wise ops: QLinearAdd, QLinearMul, QLinearConcat, QLinearSigmoid, ...",
    "qpool": "quantized average pooling: QLinearGlobalAveragePool, QLinearAveragePool",
    "qdq": "a QuantizeLinear or DequantizeLinear that runs (graph edges, float layers between int8 ones)",
}

#: the kernel classes of quantized (int8) work; their costs on a board without fitted int8 constants
#: come from ``[latency_model.int8]`` (see ``predictor``)
INT8_KINDS = ("qconv", "qdwconv", "qgemm", "qeltwise", "qpool", "qdq")
#: int8 classes that do the arithmetic of a model (a model's int8 share of MACs counts these)
INT8_MAC_KINDS = ("qconv", "qdwconv", "qgemm")

#: per-kernel work features; coefficients are microseconds per unit
FEATURES: dict[str, str] = {
    "node": "one kernel launch (fixed overhead per kernel)",
    "mmac": "one million multiply-accumulates",
    "mb_in": "one MB (1e6 bytes) of activation input read",
    "mb_out": "one MB of activation output written",
    "mb_w": "one MB of weights read",
    "mb_w_spill": ("one MB of weights read from beyond the cache: weight bytes x "
                   "max(0, 1 - cache_mb / the model's total weight MB)"),
}


def validate_coefficients(coeffs: dict[str, dict[str, float]], where: Path | str) -> None:
    """Raise a one-line error for an unknown kernel class or feature name."""
    for kind, feats in coeffs.items():
        if kind not in KINDS:
            raise EdgepruneError(
                f"device profile {where}: unknown kernel class '{kind}' in latency_model."
                f"coefficients; known: {', '.join(KINDS)}")
        for feat in feats:
            if feat not in FEATURES:
                raise EdgepruneError(
                    f"device profile {where}: unknown feature '{feat}' in latency_model."
                    f"coefficients.{kind}; known: {', '.join(FEATURES)}")
