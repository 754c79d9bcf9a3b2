"""Mixed precision by direct measurement: which layers to keep in fp32 when int8 costs too much.

The seed's principle applied to precision. With every layer quantized, the accuracy drop against the
float file is measured (onnxruntime, on the scoring images). When it exceeds ``max_drop`` points, each
quantized layer is kept in fp32 alone and the top-1 it regains is measured (loss breaks ties); the
layers are then kept in fp32 in that order, one more at a time, each set measured, until the drop is
within ``max_drop``, or until the model no longer fits (``fits``: more float layers only slow it
further), or until no layer regains anything. Calibration runs once (its ranges are cached), so each
measurement costs one rewrite of the graph and one evaluation.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeprune.exporters.quantize import (OnnxAccuracy, Precision, QuantizeConfig, QuantizeResult, onnx_accuracy,
                                          quantize_onnx)


@dataclass
class Step:
    kept_fp32: list[str]
    top1: float
    loss: float
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return {"kept_fp32": self.kept_fp32, "top1": self.top1, "loss": self.loss, "fits": self.fits}


@dataclass
class MixedPrecision:
    """What mixed precision found: the float file's and the all-int8 file's accuracy, the chosen
    quantization and its accuracy, and every layer set measured."""

    fp32: OnnxAccuracy
    all_int8: OnnxAccuracy
    chosen: QuantizeResult
    accuracy: OnnxAccuracy
    max_drop: float
    met: bool
    gains: dict[str, float] = field(default_factory=dict)   # layer -> top-1 points regained kept alone in fp32
    steps: list[Step] = field(default_factory=list)

    @property
    def drop(self) -> float:
        """Points of top-1 the chosen quantization loses against the float file."""
        return 100 * (self.fp32.top1 - self.accuracy.top1)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.fp32.images, "fp32_top1": self.fp32.top1, "all_int8_top1": self.all_int8.top1,
                "chosen_top1": self.accuracy.top1, "drop_points": round(self.drop, 4), "max_drop_points": self.max_drop,
                "met": self.met, "kept_fp32": self.chosen.kept_fp32,
                "gains_points": {k: round(v, 4) for k, v in self.gains.items()},
                "steps": [s.to_dict() for s in self.steps]}

    def to_record(self) -> dict[str, Any]:
        """What the search found, to find it again without measuring (``from_record``)."""
        return {"fp32": self.fp32.to_dict(), "all_int8": self.all_int8.to_dict(), "accuracy": self.accuracy.to_dict(),
                "kept_fp32": self.chosen.kept_fp32, "max_drop": self.max_drop, "met": self.met, "gains": self.gains,
                "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_record(cls, record: dict[str, Any], chosen: QuantizeResult) -> "MixedPrecision":
        """A search's outcome from its record and ``chosen``, the file re-quantized with its ``kept_fp32``."""
        return cls(OnnxAccuracy(**record["fp32"]), OnnxAccuracy(**record["all_int8"]), chosen,
                   OnnxAccuracy(**record["accuracy"]), record["max_drop"], record["met"], dict(record["gains"]),
                   [Step(**st) for st in record["steps"]])


def is_record(obj: Any) -> bool:
    """A ``MixedPrecision.to_record`` as JSON gives it back (a build cache's check)."""
    acc = {"top1", "loss", "images"}
    return (isinstance(obj, dict) and all(isinstance(obj.get(k), dict) and set(obj[k]) == acc
                                          for k in ("fp32", "all_int8", "accuracy"))
            and isinstance(obj.get("kept_fp32"), list) and all(isinstance(x, str) for x in obj["kept_fp32"])
            and isinstance(obj.get("gains"), dict) and isinstance(obj.get("steps"), list)
            and all(isinstance(st, dict) and set(st) == {"kept_fp32", "top1", "loss", "fits"} for st in obj["steps"])
            and isinstance(obj.get("met"), bool) and isinstance(obj.get("max_drop"), (int, float)))


def mixed_precision(src: str | Path, dst: str | Path, calibration: np.ndarray,
                    batches: Sequence[tuple[Any, Any]], cfg: QuantizeConfig, precision: Precision, max_drop: float,
                    cache: Path, fits: Callable[[Path], bool] = lambda _p: True,
                    say: Callable[[str], None] = lambda _m: None) -> MixedPrecision:
    """Quantize ``src`` to ``dst`` keeping in fp32 the fewest layers, in the order of the top-1 each
    regains, that bring the drop on the labelled ``batches`` within ``max_drop`` points while ``fits(file)`` holds.
    ``dst`` always ends up holding the best quantization reached (the lowest drop that fits)."""
    dst = Path(dst)
    fp32 = onnx_accuracy(src, batches)
    work = Path(tempfile.mkdtemp(prefix=".mixed-", dir=dst.parent))
    try:
        def measure(keep: list[str], out: Path) -> tuple[QuantizeResult, OnnxAccuracy]:
            r = quantize_onnx(src, out, calibration, replace(cfg, keep_fp32=tuple(keep)), precision, cache)
            return r, onnx_accuracy(out, batches)

        base, base_acc = measure(list(cfg.keep_fp32), dst)
        best = MixedPrecision(fp32, base_acc, base, base_acc, max_drop, False)
        best.met = best.drop <= max_drop
        best.steps.append(Step(base.kept_fp32, base_acc.top1, base_acc.loss, True))
        if best.met:
            return best
        say(f"int8 loses {best.drop:.2f} points of top-1 on {fp32.images} scoring images (more than {max_drop:g}): "
            f"measuring what each of {sum(l.precision == 'int8' for l in base.layers)} layers regains in fp32")
        regained: list[tuple[float, float, str]] = []
        for layer in [l.name for l in base.layers if l.precision == "int8"]:
            _, acc = measure([*base.kept_fp32, layer], work / "one.onnx")
            gain = 100 * (acc.top1 - base_acc.top1)
            best.gains[layer] = gain
            regained.append((gain, base_acc.loss - acc.loss, layer))
        order = [name for gain, loss_gain, name in sorted(regained, reverse=True) if gain > 0 or loss_gain > 0]
        kept = list(base.kept_fp32)
        for layer in order:
            kept.append(layer)
            trial = work / "trial.onnx"
            r, acc = measure(kept, trial)
            ok = fits(trial)
            best.steps.append(Step(r.kept_fp32, acc.top1, acc.loss, ok))
            if not ok:
                say(f"keeping {len(kept)} layers in fp32 no longer fits the budget")
                break
            if acc.top1 > best.accuracy.top1 or (acc.top1 == best.accuracy.top1 and acc.loss < best.accuracy.loss):
                shutil.copyfile(trial, dst)
                best.chosen, best.accuracy = replace(r, path=dst), acc
            if best.drop <= max_drop:
                best.met = True
                break
        return best
    finally:
        shutil.rmtree(work, ignore_errors=True)
