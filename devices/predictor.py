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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnx

from edgeprune.benchmarks.modelfile import check_dynamic_dims
from edgeprune.devices.fingerprint import differences, local
from edgeprune.devices.kernel_graph import Kernel, detect_kernels, load_model, spill_fraction
from edgeprune.devices.profiles import DeviceProfile, LatencyModel, load_profile
from edgeprune.errors import EdgepruneError

HOST = "host"       # the profile of the machine edgeprune runs on


def kernel_cost_us(k: Kernel, lm: LatencyModel, spill: float = 0.0) -> float:
    """Cost of one kernel; ``spill`` is its model's share of weights beyond the cache."""
    coeffs = lm.coefficients.get(k.kind) or lm.coefficients.get("other") or {}
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


def band(profile: DeviceProfile) -> float:
    return float(profile.expected_error) if profile.expected_error is not None else 0.0


def predict_kernels(kernels: Sequence[Kernel], profile: DeviceProfile) -> Prediction:
    lm = require_model(profile)
    spill = model_spill(kernels, lm)
    costs = [kernel_cost_us(k, lm, spill) * lm.runtime_factor / 1e3 for k in kernels]
    run_ms = lm.run_overhead_us * lm.runtime_factor / 1e3
    total = run_ms + sum(costs)
    err = band(profile)
    kc = [KernelCost(k.name, k.op, k.kind, c, c / total if total else 0.0, k.macs / 1e6,
                     list(k.fused), list(k.nodes), k.module) for k, c in zip(kernels, costs)]
    return Prediction(
        device=profile.name, latency_ms=total, low_ms=total * (1 - err), high_ms=total * (1 + err),
        expected_error=err, run_overhead_ms=run_ms, runtime_factor=lm.runtime_factor,
        threads=profile.threads, providers=list(profile.providers), kernels=kc,
        source=f"predicted:{profile.name}", basis=profile.latency_source,
        fitted_elsewhere=host_differences(profile))


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
