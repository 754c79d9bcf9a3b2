"""The int8 lever of a build (``--levers ...,int8``).

1. **Does int8 pay on the budget's device?** The original model, exported and quantized (onnxruntime's
   static QDQ, the types onnxruntime recommends for the device's CPU: :func:`target_precision`), is judged
   by the build's target beside the float file: predicted for a board (the predictor's int8 kernels, with
   their wider band), measured for the host or over SSH. Int8 is taken only when its figure is lower
   (:class:`Int8Lever`), and only when the float model does not meet the budget as it is.
2. **The budget it leaves the float plan.** The plan search then aims at ``budget / ratio`` in float
   terms, and each short-listed plan is judged as the int8 file it will become (``fit_budget``); the
   re-search tightens as usual when one comes out over.
3. **Mixed precision, by direct measurement**, on the chosen plan after fine-tune
   (:func:`quantize_chosen`, ``exporters.mixed_precision``): the fewest layers kept in fp32 that bring the
   drop on the scoring images within ``--max-int8-drop`` while the file still fits the budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from edgeprune.benchmarks.targets import LatencyFigure
from edgeprune.devices.fingerprint import local
from edgeprune.devices.predictor import HOST
from edgeprune.devices.profiles import DeviceProfile
from edgeprune.exporters.mixed_precision import MixedPrecision, is_record, mixed_precision
from edgeprune.exporters.quantize import (Precision, QuantizeConfig, calibration_cache, precision_for,
                                          quantize_onnx)
from edgeprune.pipeline.distributed import on_main

if TYPE_CHECKING:
    from edgeprune.build.space import PlanSpace
    from edgeprune.build.stages import Inputs

INT8 = "int8"


def target_precision(profile: DeviceProfile) -> Precision:
    """onnxruntime's recommended integer types for the CPU the budget is judged on (this machine for
    ``host``, the board's core from its profile's fingerprint otherwise)."""
    fp = local() if profile.name == HOST or profile.fingerprint is None else profile.fingerprint
    return precision_for(fp.machine or "x86_64", fp.features)


@dataclass
class Int8Lever:
    """Whether int8 pays on the device: the original model's float and int8 figures there."""

    precision: Precision
    fp32: LatencyFigure
    int8: LatencyFigure
    taken: bool
    reason: str
    ratio: float                    # int8 / fp32 time of the original: interleaved on the host, else the figures'
    interleaved: bool = False

    @property
    def basis(self) -> str:
        return (f"{self.ratio:.2f}x, " + ("timed side by side on this machine" if self.interleaved else self.int8.source))

    def to_dict(self) -> dict[str, Any]:
        return {"taken": self.taken, "reason": self.reason, "ratio": round(self.ratio, 4),
                "original_fp32_ms": self.fp32.value_ms, "original_int8_ms": self.int8.value_ms,
                "source": self.int8.source, "ratio_timed_side_by_side": self.interleaved, "int8_band": [self.int8.low_ms, self.int8.high_ms],
                "activations": self.precision.activations, "weights": self.precision.weights,
                "reduce_range": self.precision.reduce_range, "precision_reason": self.precision.reason}


def calibration_images(inputs: "Inputs", space: "PlanSpace", tokens: Sequence[str]) -> np.ndarray:
    """The training images int8 ranges are calibrated on, at the plan's input size: a seeded draw of
    ``--calibration-images`` (all of them when there are fewer: the quantizer then says how many it needs)."""
    bundle = space.data_of(tokens)
    drawn = bundle.sample("train", inputs.cfg.quantize.calibration_images, inputs.cfg.seed)
    return bundle.preprocess.apply(bundle.x_train[drawn]).numpy()


def quantized_file(inputs: "Inputs", space: "PlanSpace", tokens: Sequence[str], fp32: Path, name: str) -> Path:
    """``fp32`` quantized with the build's settings (every layer int8), cached beside it as ``name``."""
    precision = target_precision(inputs.profile)
    out = inputs.cache.path(name, {"plan": sorted(tokens), "quantize": inputs.cfg.quantize.to_dict(),
                                   "precision": asdict(precision)}, ".onnx")
    if not out.exists():
        calib = calibration_images(inputs, space, tokens)
        quantize_onnx(fp32, out, calib, inputs.cfg.quantize, precision,
                      calibration_cache(inputs.cache.folder, fp32, calib, inputs.cfg.quantize))
    return out


def int8_lever(inputs: "Inputs", space: "PlanSpace", original: Path, judge: Callable[[Path], LatencyFigure],
               say: Callable[[str], None], side_by_side: Callable[[Path, Path], float] | None = None,
               fp32: LatencyFigure | None = None) -> Int8Lever:
    """Whether int8 pays and is needed: both figures of the original float file on the build's target.
    ``side_by_side(a, b)``: a/b timed interleaved, where the target is this machine (two figures timed one
    after the other on a shared machine can differ by more than int8 gains); its ratio then decides.
    ``fp32``: the original's figure when the build has measured it already (the anchor), else judged here."""
    say(f"int8 lever: quantizing the original model to judge int8 on {inputs.profile.name}")
    precision = target_precision(inputs.profile)
    q = on_main(lambda: quantized_file(inputs, space, [], original, "original-int8"))
    fp32, int8 = fp32 or judge(original), judge(q)
    measured = on_main(lambda: side_by_side(q, original)) if side_by_side is not None else None
    ratio = measured if measured is not None else int8.value_ms / fp32.value_ms
    budget = inputs.cfg.search.budget_ms
    lever = Int8Lever(precision, fp32, int8, False, "", ratio, measured is not None)
    if ratio >= 1:
        lever.reason = (f"int8 does not pay on {inputs.profile.name}: {int8.value_ms:.2f} ms int8 against "
                        f"{fp32.value_ms:.2f} ms fp32 ({lever.basis})")
    elif fp32.value_ms <= budget:
        lever.reason = f"the float model meets {budget:g} ms as it is ({fp32.value_ms:.2f} ms): int8 not needed"
    else:
        lever.taken = True
        lever.reason = (f"int8 takes the original from {fp32.value_ms:.2f} to {int8.value_ms:.2f} ms on "
                        f"{inputs.profile.name} ({lever.basis}); {precision.activations} activations, "
                        f"{precision.weights} weights")
    say(lever.reason)
    return lever


def host_note(precision: Precision, device: str) -> str | None:
    """When the shipped int8 file has other integer types than onnxruntime recommends for this machine (an Arm
    board's file timed on an x86 host): why its host figures say nothing of the device's. None otherwise."""
    here = local()
    mine = precision_for(here.machine or "x86_64", here.features)
    if (precision.activations, precision.reduce_range) == (mine.activations, mine.reduce_range):
        return None
    return (f"the host timed the file made for {device} ({precision.activations} activations), not the "
            f"{mine.activations} activations onnxruntime recommends for this {here.machine} CPU: its int8 kernels run "
            f"such a file slowly here (docs/int8-benchmark.md: 1.5-1.7x the fp32 time on x86), and the host "
            f"predictor's int8 constants were fitted on {mine.activations} files, so neither host figure is "
            f"{device}'s")


@dataclass
class Int8Choice:
    """The chosen plan's quantization: the float file it was made from and what mixed precision found."""

    fp32_file: Path
    config: QuantizeConfig          # with the layers kept in fp32
    precision: Precision
    calibration: np.ndarray
    mixed: MixedPrecision

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "mixed_precision": self.mixed.to_dict()}


def quantize_chosen(inputs: "Inputs", space: "PlanSpace", tokens: Sequence[str], fp32: Path,
                    fits: Callable[[Path], bool], say: Callable[[str], None]) -> Int8Choice:
    """Mixed precision for the fine-tuned plan's float file ``fp32``, measured on the scoring images. Its
    outcome is cached (keyed by the file, the quantization, the types and what ``fits`` judges against), so a
    resumed build re-quantizes the chosen layer set once instead of measuring every set again."""
    cfg, bundle = inputs.cfg, space.data_of(tokens)
    calib = calibration_images(inputs, space, tokens)
    precision = target_precision(inputs.profile)
    dst = fp32.with_name(fp32.stem + "-int8.onnx")
    calib_cache = calibration_cache(inputs.cache.folder, fp32, calib, cfg.quantize)
    key = {"fp32": fp32.name, "quantize": cfg.quantize.to_dict(), "precision": asdict(precision),
           "max_drop": cfg.search.max_int8_drop, "device": inputs.profile.name, "budget_ms": cfg.search.budget_ms,
           "metric": cfg.search.metric, "confidence": cfg.search.confidence}
    record = inputs.cache.load("mixed-precision", key, is_record)
    if record is not None:
        chosen = quantize_onnx(fp32, dst, calib, replace(cfg.quantize, keep_fp32=tuple(record["kept_fp32"])),
                               precision, calib_cache)
        mixed = MixedPrecision.from_record(record, chosen)
        say(f"int8: mixed precision found in the cache ({len(record['steps'])} layer sets measured before)")
    else:
        score = list(bundle.batches("val", cfg.search.batch_size, indices=inputs.held.score))
        say(f"quantizing to int8 ({cfg.quantize.method} calibration on {len(calib)} training images), measuring on "
            f"{len(inputs.held.score)} scoring images")
        mixed = mixed_precision(fp32, dst, calib, score, cfg.quantize, precision, cfg.search.max_int8_drop,
                                calib_cache, fits, say)
        on_main(lambda: inputs.cache.save("mixed-precision", mixed.to_record(), key))
    kept = mixed.chosen.kept_fp32
    say(f"int8: {mixed.accuracy.top1:.2%} on the scoring images against {mixed.fp32.top1:.2%} in fp32 "
        f"({mixed.drop:.2f} points lost)" + (f", {len(kept)} layers kept in fp32: {', '.join(kept)}" if kept else ""))
    return Int8Choice(fp32, QuantizeConfig(**{**cfg.quantize.to_dict(), "keep_fp32": tuple(kept)}), precision,
                      calib, mixed)
