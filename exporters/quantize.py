"""INT8 with onnxruntime's own quantizer: static QDQ quantization of an exported model.

:func:`quantize_onnx` runs ``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel weights
by default) calibrated on training images with MinMax, Entropy or Percentile ranges. The integer types
follow onnxruntime's guidance for CPU inference, per target (:func:`precision_for`): unsigned 8-bit
activations and signed weights on x86 (``reduce_range`` where the CPU lacks VNNI, against saturation),
signed activations and weights on Arm. Layers named in ``keep_fp32`` (module path, or node name) stay in
float: that is how the build's mixed precision keeps the layers int8 hurts most.

Calibration ranges are computed once per model and images and kept in a cache file beside the output
(``calibration_cache``), so quantizing the same model again with other layers kept in fp32 costs only
the rewrite, not another calibration.

:func:`onnx_accuracy` is the figure a user reads: onnxruntime's top-1 and loss of a file, on images.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import onnx

from edgeprune.errors import EdgepruneError
from edgeprune.exporters import runtime
from edgeprune.exporters.onnx_facts import node_module_paths

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
MIN_CALIBRATION_IMAGES = 16          # fewer and one odd image decides an activation's range
TYPES = ("uint8", "int8")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
MIN_OPSET = 13                       # per-channel QDQ (axis on QuantizeLinear/DequantizeLinear)


@dataclass
class QuantizeConfig:
    """How to quantize; every field validated when the config is made."""

    method: str = "minmax"                 # calibration: minmax, entropy, percentile
    calibration_images: int = 128          # training images the ranges are computed on
    per_channel: bool = True               # one weight scale per output channel
    activations: str | None = None         # uint8 / int8; None: onnxruntime's choice for the target
    weights: str | None = None             # int8 / uint8; None: onnxruntime's choice for the target
    reduce_range: bool | None = None       # 7-bit weights; None: the target's choice
    keep_fp32: tuple[str, ...] = ()        # layers (module path or ONNX node name) left in float

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise EdgepruneError(f"--int8-calibration must be one of {', '.join(CALIBRATION_METHODS)}, "
                                 f"got {self.method!r}")
        if self.calibration_images < MIN_CALIBRATION_IMAGES:
            raise EdgepruneError(f"int8 calibration needs at least {MIN_CALIBRATION_IMAGES} images, "
                                 f"got --calibration-images {self.calibration_images}")
        for name in ("activations", "weights"):
            value = getattr(self, name)
            if value is not None and value not in TYPES:
                raise EdgepruneError(f"int8 {name} type must be one of {', '.join(TYPES)}, got {value!r}")
        self.keep_fp32 = tuple(sorted(set(self.keep_fp32)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_fp32"] = list(self.keep_fp32)
        return d


@dataclass(frozen=True)
class Precision:
    """The integer types for one target, and why."""

    activations: str
    weights: str
    reduce_range: bool
    reason: str


def precision_for(machine: str, features: Sequence[str] | None) -> Precision:
    """onnxruntime's recommended types for CPU inference on ``machine`` (x86_64, aarch64) with these
    kernel features (``devices.fingerprint``: avx512-vnni, avx-vnni, dotprod, ...)."""
    feats = set(features or ())
    if machine in ("aarch64", "arm64"):
        dot = "dotprod" in feats
        return Precision("int8", "int8", False,
                         "onnxruntime's guidance for Arm CPUs: signed 8-bit activations and weights, full range"
                         + ("; the core has the dot-product instructions (SDOT)" if dot else
                            "; the core lacks the dot-product instructions, so int8 may not pay (see the prediction)"))
    vnni = bool(feats & {"avx512-vnni", "avx-vnni"})
    return Precision("uint8", "int8", not vnni,
                     "onnxruntime's guidance for x86 CPUs: unsigned 8-bit activations, signed weights"
                     + (" (VNNI: full range)" if vnni else
                        "; no VNNI, so weights use 7 bits (reduce_range) against saturation"))


@dataclass
class Layer:
    """A weighted layer of the graph and the precision it runs in."""

    name: str                          # module path where the export recorded one, else the node name
    node: str
    op: str
    precision: str = "int8"


@dataclass
class QuantizeResult:
    path: Path
    config: QuantizeConfig
    precision: Precision
    layers: list[Layer] = field(default_factory=list)

    @property
    def kept_fp32(self) -> list[str]:
        return [l.name for l in self.layers if l.precision == "fp32"]

    def to_dict(self) -> dict[str, Any]:
        p = self.precision
        return {"format": "QDQ", "method": self.config.method, "calibration_images": self.config.calibration_images,
                "per_channel": self.config.per_channel, "activations": self.config.activations or p.activations,
                "weights": self.config.weights or p.weights,
                "reduce_range": p.reduce_range if self.config.reduce_range is None else self.config.reduce_range,
                "reason": p.reason, "layers": {l.name: l.precision for l in self.layers},
                "int8_layers": sum(l.precision == "int8" for l in self.layers), "fp32_layers": self.kept_fp32}


def weighted_layers(proto: onnx.ModelProto) -> list[Layer]:
    """Every Conv/Gemm/MatMul with a constant weight, named by its module path where recorded."""
    inits = {i.name for i in proto.graph.initializer}
    paths = node_module_paths(proto)
    out, seen = [], set()
    for n in proto.graph.node:
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits:
            w = n.input[1]
            name = (w[:-len(".weight")] if w.endswith(".weight") and len(w) > 7 else None) or paths.get(n.name) or n.name
            if name in seen:
                name = n.name
            seen.add(name)
            out.append(Layer(name, n.name, n.op_type))
    return out


class _Images:
    """onnxruntime's CalibrationDataReader protocol over an array of images (one batch per call)."""

    def __init__(self, name: str, images: np.ndarray, batch: int) -> None:
        self.name, self.images, self.batch, self.i = name, images, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.images):
            return None
        x = self.images[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self.i = 0


def _types(cfg: QuantizeConfig, precision: Precision):
    from onnxruntime.quantization import QuantType
    kinds = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    act = kinds[cfg.activations or precision.activations]
    wt = kinds[cfg.weights or precision.weights]
    reduce = precision.reduce_range if cfg.reduce_range is None else cfg.reduce_range
    return act, wt, reduce


def calibration_cache(folder: str | Path, src: str | Path, images: np.ndarray, cfg: QuantizeConfig) -> Path:
    """Where the ranges of ``src`` calibrated on ``images`` with ``cfg``'s method are kept in ``folder``:
    named by a hash of the model file and the images, so another model or image set never reads them."""
    h = hashlib.sha256(Path(src).read_bytes())
    h.update(np.ascontiguousarray(images[:cfg.calibration_images], dtype=np.float32).tobytes())
    return Path(folder) / f"calibration-{h.hexdigest()[:16]}-{cfg.method}-{cfg.calibration_images}.json"


def quantize_onnx(src: str | Path, dst: str | Path, images: np.ndarray, cfg: QuantizeConfig,
                  precision: Precision, cache: Path | None = None) -> QuantizeResult:
    """Quantize the float model ``src`` to ``dst`` (QDQ), calibrated on ``images`` (N, C, H, W, preprocessed
    training images; the first ``cfg.calibration_images`` are used). ``cache``: a calibration-range file
    to read, or to write for the next call. One line on any failure; ``dst`` is written atomically."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    src, dst = Path(src), Path(dst)
    proto = onnx.load(str(src))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise EdgepruneError(f"{src.name} has opset {opset}: onnxruntime's per-channel QDQ quantization needs "
                             f"opset >= {MIN_OPSET}; re-export it")
    if len(images) < cfg.calibration_images:
        raise EdgepruneError(f"int8 calibration needs {cfg.calibration_images} images (--calibration-images), "
                             f"only {len(images)} were given")
    layers = weighted_layers(proto)
    if not layers:
        raise EdgepruneError(f"{src.name} has no Conv, Gemm or MatMul with constant weights: nothing to quantize")
    names = {l.name for l in layers} | {l.node for l in layers}
    unknown = sorted(set(cfg.keep_fp32) - names)
    if unknown:
        raise EdgepruneError(f"no layer {unknown[0]!r} to keep in fp32; layers: "
                             + ", ".join(l.name for l in layers[:8]) + (", ..." if len(layers) > 8 else ""))
    keep = {l.node for l in layers if l.name in cfg.keep_fp32 or l.node in cfg.keep_fp32}
    inp = proto.graph.input[0]
    dim0 = inp.type.tensor_type.shape.dim[0] if inp.type.tensor_type.shape.dim else None
    batch = dim0.dim_value if dim0 is not None and dim0.HasField("dim_value") and dim0.dim_value > 0 else 32
    reader = _Images(inp.name, np.asarray(images[:cfg.calibration_images]), batch)
    act, wt, reduce = _types(cfg, precision)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        with _quiet():
            quantize_static(str(src), tmp, reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                            reduce_range=reduce, activation_type=act, weight_type=wt,
                            nodes_to_exclude=sorted(keep), calibrate_method=method,
                            calibration_cache_path=str(cache) if cache is not None else None,
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": act.name == "QInt8"})
        quantized = onnx.load(tmp)
        runtime.session(tmp)                   # onnxruntime must load what it wrote
    except EdgepruneError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except Exception as e:  # noqa: BLE001 - the quantizer and onnxruntime raise many types
        Path(tmp).unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise EdgepruneError(f"onnxruntime could not quantize {src.name}: {first}") from None
    os.replace(tmp, dst)
    quantized_nodes = _int8_nodes(quantized)
    for l in layers:
        l.precision = "int8" if l.node in quantized_nodes else "fp32"
    return QuantizeResult(dst, cfg, precision, layers)


def _int8_nodes(proto: onnx.ModelProto) -> set[str]:
    """Weighted nodes whose weight is a DequantizeLinear of an integer constant (so they run quantized)."""
    dq_out = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in proto.graph.node
            if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in dq_out}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer prints progress and logs warnings; the CLI's output stays ours."""
    import logging
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.getLogger().setLevel(level)


# ---------------------------------------------------------------- what ships: onnxruntime's figures

@dataclass
class OnnxAccuracy:
    top1: float
    loss: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def onnx_accuracy(path: str | Path, batches: Iterable[tuple[Any, Any]], threads: int = 1) -> OnnxAccuracy:
    """onnxruntime's top-1 and mean cross-entropy of the model file on labelled ``(images, labels)`` batches
    (arrays or tensors; a bundle's ``batches(...)`` streams, so the images need not all be in memory)."""
    sess = runtime.session(path, threads)
    correct, loss, n = 0, 0.0, 0
    for images, labels in batches:
        logits = runtime.run(sess, np.asarray(images, dtype=np.float32))[0].astype(np.float64)
        y = np.asarray(labels, dtype=np.int64)
        if logits.ndim != 2 or len(logits) != len(y):
            raise EdgepruneError(f"{Path(path).name}: output of shape {list(logits.shape)} is not one row of class "
                                 f"scores per image")
        z = logits - logits.max(axis=1, keepdims=True)
        loss += float(np.sum(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
        correct += int(np.sum(logits.argmax(axis=1) == y))
        n += len(y)
    if not n:
        raise EdgepruneError(f"{Path(path).name}: no labelled images to measure its accuracy on")
    return OnnxAccuracy(correct / n, loss / n, n)


def file_sizes(path: str | Path) -> dict[str, int]:
    """A model file's bytes on disk and gzip-compressed (level 9), as a firmware image would carry it."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}


@dataclass
class Quantization:
    """What ``build_artifact`` needs to ship an int8 model: how, for which target, calibrated on what."""

    config: QuantizeConfig
    precision: Precision
    calibration: np.ndarray
    cache_folder: Path | None = None     # where calibration ranges are kept between calls
