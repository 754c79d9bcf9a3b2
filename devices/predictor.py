"""Predict the latency of an ONNX model on a device, with an error band.

The model is a sum over kernels, as in nn-Meter and LitePred: the graph is turned into
the kernels onnxruntime will execute (``graph.detect_kernels``: batch norm folded,
activations and residual adds fused, x86 NCHWc layout replayed where the device uses
it), each kernel gets work features from ONNX shape inference (MACs, activation bytes in
and out, weight bytes, one launch), and its cost is the dot product of those features
with its class's constants in the device profile::

    latency = runtime_factor * (run_overhead + sum_k sum_f coeff[class(k)][f] * feature_f(k))

Every prediction carries the profile's ``expected_error`` as a relative band.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import onnx

from edgeprune.benchmarks.modelfile import check_dynamic_dims
from edgeprune.devices.fingerprint import differences, local
from edgeprune.devices.kernel_graph import Kernel, detect_kernels, load_model, spill_fraction
from edgeprune.devices.kernels import INT8_KINDS, INT8_MAC_KINDS
from edgeprune.devices.profiles import DeviceProfile, LatencyModel, load_profile
from edgeprune.errors import EdgepruneError

HOST = "host"       # the profile of the machine edgeprune runs on


#: int8 classes costed, where a profile has no constants for them, as the fp32 class of the same work
INT8_STANDIN = {"qeltwise": "eltwise", "qpool": "pool", "qdq": "eltwise"}


def kernel_cost_us(k: Kernel, lm: LatencyModel, spill: float = 0.0) -> float:
    """Cost of one kernel; ``spill`` is its model's share of weights beyond the cache.

    An int8 kernel of a class the profile has no constants for (the ARM boards): a quantized convolution
    or GEMM costs ``[latency_model.int8] ratio`` x the fp32 cost of the same work (its fp32 class, 4-byte
    tensors); Q/DQ and quantized element-wise or pooling kernels cost what the fp32 class costs for their
    bytes.
    """
    coeffs = lm.coefficients.get(k.kind)
    if coeffs is None and k.kind in INT8_KINDS:
        if k.float_kind:
            twin = replace(k, kind=k.float_kind, in_bytes=4 * k.in_bytes, out_bytes=4 * k.out_bytes,
                           w_bytes=4 * k.w_bytes)
            ratio = lm.int8.ratio if lm.int8 is not None and lm.int8.ratio is not None else 1.0
            return ratio * kernel_cost_us(twin, lm, spill)
        coeffs = lm.coefficients.get(INT8_STANDIN.get(k.kind, "other"))
    coeffs = coeffs or lm.coefficients.get("other") or {}
    feats = k.features(spill)
    return sum(c * feats.get(f, 0.0) for f, c in coeffs.items())


def model_spill(kernels: Sequence[Kernel], lm: LatencyModel) -> float:
    return spill_fraction(sum(k.w_bytes for k in kernels), lm.cache_mb)


def kernels_cost_us(kernels: Sequence[Kernel], lm: LatencyModel, spill: float | None = None) -> float:
    """Sum of kernel costs, without run overhead or runtime factor.

    ``spill`` defaults to that of a model made of exactly these kernels.
    """
    s = model_spill(kernels, lm) if spill is None else spill
    return sum(kernel_cost_us(k, lm, s) for k in kernels)


@dataclass
class KernelCost:
    name: str
    op: str
    kind: str
    cost_ms: float
    share: float
    mmacs: float
    fused: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list, repr=False)
    module: str | None = None       # PyTorch module path ("" = the top module; None = not recorded)

    @property
    def label(self) -> str:
        """The module path where the export recorded one, else the ONNX node name."""
        return self.module or self.name


@dataclass
class Prediction:
    device: str
    latency_ms: float
    low_ms: float
    high_ms: float
    expected_error: float           # relative half-width of the band
    run_overhead_ms: float
    runtime_factor: float
    threads: int
    providers: list[str]
    kernels: list[KernelCost]
    source: str                     # "predicted:<device>"
    basis: str                      # how the constants were obtained
    fitted_elsewhere: list[str] = field(default_factory=list)   # how this machine differs from the
                                    # one a profile of the machine at hand (host) was fitted on
    precision: str = "fp32"         # "fp32", "int8" (every MAC-carrying kernel quantized) or "mixed"
    int8_mac_share: float = 0.0     # share of the model's MACs done by quantized kernels

    def heaviest(self, n: int = 10) -> list[KernelCost]:
        return sorted(self.kernels, key=lambda k: k.cost_ms, reverse=True)[:n]

    def to_dict(self, top: int | None = 10) -> dict[str, Any]:
        d = asdict(self)
        ks = self.heaviest(top) if top is not None else self.kernels
        d["kernels"] = [{k: v for k, v in asdict(kc).items() if k != "nodes"} for kc in ks]
        d["n_kernels"] = len(self.kernels)
        return d


def require_model(profile: DeviceProfile) -> LatencyModel:
    """The profile's latency model, or a one-line error saying how to get one."""
    if profile.latency_model is None:
        raise EdgepruneError(
            f"device profile '{profile.name}' has no latency model; measure it with "
            f"'edgeprune calibrate --device {profile.name}' or pass a calibrated profile file")
    return profile.latency_model


def band(profile: DeviceProfile, int8: bool = False) -> float:
    """The profile's relative error band; ``int8``: that of a model with quantized kernels (never narrower)."""
    fp32 = float(profile.expected_error) if profile.expected_error is not None else 0.0
    return max(fp32, int8_info(profile)["expected_error"]) if int8 else fp32


#: a profile with no [latency_model.int8]: its int8 band is this multiple of the fp32 band (at least 0.3)
UNKNOWN_INT8_BAND = 2.0


def int8_info(profile: DeviceProfile) -> dict[str, Any]:
    """How ``profile`` predicts int8 models, for a report or manifest: ``dotprod`` (the core has the int8
    dot-product instructions; None where unknown or not ARM), ``ratio`` (int8/fp32 time of a quantized
    convolution; None where int8 constants are fitted), ``expected_error`` (the band of an int8
    prediction), ``source``."""
    lm = profile.latency_model
    i8 = lm.int8 if lm is not None else None
    if i8 is not None:
        return {"dotprod": i8.dotprod, "ratio": i8.ratio, "expected_error": i8.expected_error, "source": i8.source}
    fp = profile.fingerprint
    arm = fp is not None and (fp.machine or "").lower() in ("aarch64", "arm64")
    fp32 = float(profile.expected_error or 0.0)
    return {"dotprod": ("dotprod" in fp.features) if arm and fp.features is not None else None, "ratio": None,
            "expected_error": round(max(0.3, UNKNOWN_INT8_BAND * fp32), 4),
            "source": f"profile '{profile.name}' has no [latency_model.int8]: int8 kernels are costed as fp32 "
                      f"work and the band is {UNKNOWN_INT8_BAND:g}x the fp32 band (at least 30%); 'edgeprune calibrate' "
                      "fits int8 figures from measurements"}


def precision_of(kernels: Sequence[Kernel]) -> tuple[str, float]:
    """("fp32" | "int8" | "mixed", share of MACs in quantized kernels)."""
    macs = [(k.macs, k.kind in INT8_MAC_KINDS) for k in kernels if k.macs and
            (k.kind in INT8_MAC_KINDS or k.kind in ("conv1x1", "conv3x3", "convkxk", "gconv", "dwconv", "gemm"))]
    total = sum(m for m, _ in macs)
    share = sum(m for m, q in macs if q) / total if total else 0.0
    if not any(k.kind in INT8_KINDS for k in kernels):
        return "fp32", 0.0
    return ("int8" if share >= 1.0 - 1e-9 else "mixed"), share


def predict_kernels(kernels: Sequence[Kernel], profile: DeviceProfile) -> Prediction:
    lm = require_model(profile)
    spill = model_spill(kernels, lm)
    costs = [kernel_cost_us(k, lm, spill) * lm.runtime_factor / 1e3 for k in kernels]
    run_ms = lm.run_overhead_us * lm.runtime_factor / 1e3
    total = run_ms + sum(costs)
    precision, share = precision_of(kernels)
    err = band(profile, int8=precision != "fp32")
    kc = [KernelCost(k.name, k.op, k.kind, c, c / total if total else 0.0, k.macs / 1e6,
                     list(k.fused), list(k.nodes), k.module) for k, c in zip(kernels, costs)]
    return Prediction(
        device=profile.name, latency_ms=total, low_ms=total * (1 - err), high_ms=total * (1 + err),
        expected_error=err, run_overhead_ms=run_ms, runtime_factor=lm.runtime_factor,
        threads=profile.threads, providers=list(profile.providers), kernels=kc,
        source=f"predicted:{profile.name}", basis=profile.latency_source,
        fitted_elsewhere=host_differences(profile), precision=precision, int8_mac_share=round(share, 4))


def host_differences(profile: DeviceProfile) -> list[str]:
    """For the profile of the machine at hand (``host``, bundled or calibrated): how this machine differs
    from the one it was fitted on (empty: the same). A board's profile predicts that board, not this
    machine: nothing to compare."""
    return differences(profile.fingerprint, local()) if profile.name == HOST else []


def as_profile(device: DeviceProfile | str) -> DeviceProfile:
    return device if isinstance(device, DeviceProfile) else load_profile(device)


def model_kernels(model: str | Path | onnx.ModelProto, profile: DeviceProfile,
                  input_shapes: dict[str, Sequence[int]] | None = None) -> list[Kernel]:
    lm = require_model(profile)
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    check_dynamic_dims(proto, input_shapes)
    return detect_kernels(proto, lm.nchwc_block, input_shapes)


def predict(model: str | Path | onnx.ModelProto, device: DeviceProfile | str,
            input_shapes: dict[str, Sequence[int]] | None = None) -> Prediction:
    """Predicted latency of ``model`` (a path or ModelProto) on ``device`` (name, path or profile).

    A dynamic batch is taken as 1; any other dynamic input dimension must be fixed by ``input_shapes``.
    """
    profile = as_profile(device)
    return predict_kernels(model_kernels(model, profile, input_shapes), profile)
