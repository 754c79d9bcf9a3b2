"""Published latencies and hardware figures for the ARM boards (see docs/devices.md).

None of these latencies was measured with onnxruntime: they are ncnn ``benchncnn``
figures (fp32, CPU, 224x224, batch 1). The ARM profiles are fitted to them and then
scaled by ``ORT_OVER_NCNN``, the onnxruntime-to-ncnn gap measured on one A73 board.
"""

from __future__ import annotations

from dataclasses import dataclass

NCNN_README = "Tencent/ncnn benchmark/README.md (benchncnn, fp32, CPU, average)"
NCNN_3485 = "Tencent/ncnn issue 3485 (benchncnn on a Pi 4 at 1.5 GHz)"


@dataclass(frozen=True)
class Reference:
    board: str           # profile name
    model: str           # torchvision architecture
    threads: int
    ms: float
    clock_ghz: float     # the clock the figure was measured at
    source: str


#: ncnn 4-thread fp32 figures from the shared reference sheet
REFERENCES: list[Reference] = [
    Reference("rpi4", "mobilenet_v2", 4, 72.62, 1.5, NCNN_3485),
    Reference("rpi4", "efficientnet_b0", 4, 94.39, 1.5, NCNN_3485),
    Reference("rpi4", "resnet18", 4, 176.18, 1.5, NCNN_3485),
    Reference("rpi4", "squeezenet1_1", 4, 46.65, 1.8, NCNN_README),
    Reference("rpi4", "mobilenet_v2", 4, 61.88, 1.8, NCNN_README),
    Reference("rpi4", "mobilenet_v3_large", 4, 47.53, 1.8, NCNN_README),
    Reference("rpi4", "efficientnet_b0", 4, 74.19, 1.8, NCNN_README),
    Reference("rpi4", "resnet18", 4, 123.12, 1.8, NCNN_README),
    Reference("rpi4", "resnet50", 4, 262.83, 1.8, NCNN_README),
    Reference("rpi5", "squeezenet1_1", 4, 7.38, 2.4, NCNN_README),
    Reference("rpi5", "mobilenet_v2", 4, 10.52, 2.4, NCNN_README),
    Reference("rpi5", "mobilenet_v3_large", 4, 7.35, 2.4, NCNN_README),
    Reference("rpi5", "efficientnet_b0", 4, 12.33, 2.4, NCNN_README),
    Reference("rpi5", "resnet18", 4, 19.96, 2.4, NCNN_README),
    Reference("rpi5", "resnet50", 4, 46.21, 2.4, NCNN_README),
    Reference("rpi3", "squeezenet1_1", 4, 85.22, 1.4, NCNN_README),
    Reference("rpi3", "mobilenet_v2", 4, 111.68, 1.4, NCNN_README),
    Reference("rpi3", "efficientnet_b0", 4, 135.86, 1.4, NCNN_README),
    Reference("rpi3", "resnet18", 4, 271.93, 1.4, NCNN_README),
    Reference("rpi3", "resnet50", 4, 587.42, 1.4, NCNN_README),
    Reference("jetson-nano", "squeezenet1_1", 4, 30.59, 1.43, NCNN_README),
    Reference("jetson-nano", "mobilenet_v2", 4, 33.83, 1.43, NCNN_README),
    Reference("jetson-nano", "mobilenet_v3_large", 4, 30.79, 1.43, NCNN_README),
    Reference("jetson-nano", "efficientnet_b0", 4, 70.60, 1.43, NCNN_README),
    Reference("jetson-nano", "resnet18", 4, 83.44, 1.43, NCNN_README),
    Reference("jetson-nano", "resnet50", 4, 204.08, 1.43, NCNN_README),
]

#: onnxruntime / ncnn latency on one ARM board (Khadas VIM3, Cortex-A73; gist by zihaomu):
#: ResNet-50 351.25 / 186.18 = 1.89, MobileNetV1 75.47 / 42.96 = 1.76; geometric mean.
ORT_OVER_NCNN = round((351.25 / 186.18 * 75.47 / 42.96) ** 0.5, 3)
ORT_OVER_NCNN_SOURCE = ("onnxruntime vs ncnn on a Khadas VIM3 (A73), gist by zihaomu: ResNet-50 "
                        "351.25 vs 186.18 ms, MobileNetV1 75.47 vs 42.96 ms; geometric mean of the ratios")
#: relative uncertainty assumed for carrying that gap to other boards and models
ORT_GAP_UNCERTAINTY = 0.25


@dataclass(frozen=True)
class Hardware:
    peak_gmacs: float     # all cores, fp32 multiply-accumulates per second / 1e9
    bandwidth_gbs: float  # memory bandwidth, GB/s
    source: str


HARDWARE: dict[str, Hardware] = {
    "rpi4": Hardware(4 * 4 * 1.5, 2.5, "Cortex-A72 8 FP32 FLOP/cycle/core (WikiChip, flatlib); "
                     "memcpy 2.2-2.8 GB/s (sbc-bench)"),
    "rpi5": Hardware(4 * 8 * 2.4, 5.6, "Cortex-A76 16 FP32 FLOP/cycle/core (WikiChip); memcpy 5.3-6.0 GB/s (sbc-bench)"),
    "rpi3": Hardware(4 * 4 * 1.4, 1.1, "Cortex-A53 taken as 8 FP32 FLOP/cycle/core like the A72 (no "
                     "figure in the reference sheet); memcpy ~1.1 GB/s on a Pi 3B (sbc-bench)"),
    "jetson-nano": Hardware(4 * 4 * 1.43, 3.9, "Cortex-A57 8 FP32 FLOP/cycle/core, ~45.8 GFLOPS (WikiChip); "
                            "memcpy 3.7-4.1 GB/s (sbc-bench)"),
}

#: architectures the figures name, with the input side benchncnn uses
REFERENCE_MODELS: dict[str, int] = {
    "squeezenet1_1": 227, "mobilenet_v2": 224, "mobilenet_v3_large": 224,
    "efficientnet_b0": 224, "resnet18": 224, "resnet50": 224,
}


def physics_model(hw: Hardware, node_us: float = 10.0) -> "LatencyModel":
    """A first-principles latency model: peak arithmetic, memory bandwidth, launch cost.

    The ARM fits scale its kernel groups to the published figures; on its own it is a
    roofline-style lower bound, not a prediction.
    """
    from edgeprune.devices.latency_fit import FITTED_FEATURES
    from edgeprune.devices.profiles import LatencyModel

    per_mmac = 1e3 / hw.peak_gmacs          # us per 1e6 MACs
    per_mb = 1e3 / hw.bandwidth_gbs         # us per 1e6 bytes
    unit = {"node": node_us, "mmac": per_mmac, "mb_in": per_mb, "mb_out": per_mb,
            "mb_w": per_mb, "mb_w_spill": 0.0}
    coeffs = {kind: {f: unit[f] for f in feats} for kind, feats in FITTED_FEATURES.items()}
    return LatencyModel(coefficients=coeffs, fitted_on="first principles (peak MAC rate, memory bandwidth)")
