"""Check an exported ONNX model against the PyTorch model it came from, in onnxruntime.

Two input sets: random inputs (standard normal, seeded), and real validation images when
the caller has them. For each: max and mean absolute difference of every output, and top-1
agreement of the first output (``exporters.output_diff``, the comparison every check uses).
A check passes when each output's max difference is within ``atol + rtol * max|torch output|``
and, on real images, the top-1 agreement is at least ``min_top1_agreement``. Random inputs are
not held to top-1 agreement: their logits are often near-ties that a 1e-6 difference flips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters import runtime
from edgeprune.exporters.onnx_export import model_device, one_line
from edgeprune.exporters.output_diff import Comparison, compare_outputs

VERIFY_FAILED_EXIT = 1   # the model exported but does not compute what PyTorch computes


@dataclass
class VerifyConfig:
    atol: float = 1e-4
    rtol: float = 1e-4
    min_top1_agreement: float = 0.99
    random_inputs: int = 8
    real_images: int = 256        # at most this many of the images given
    seed: int = 0
    threads: int = 1
    device: str | None = None     # torch device for the reference run; None = the model's own


@dataclass
class VerifyResult:
    random: Comparison
    real: Comparison | None
    accuracy: dict[str, float] | None   # top-1 of torch and onnx on the real images, when labelled
    thresholds: dict[str, float]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def raise_for_failure(self) -> None:
        if self.failures:
            raise EdgepruneError("ONNX verification failed: " + "; ".join(self.failures),
                                 exit_code=VERIFY_FAILED_EXIT)


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], atol: float, rtol: float,
            min_top1_agreement: float | None = None, names: Sequence[str] | None = None) -> Comparison:
    """Two runs' outputs, one batch-stacked array per output in the same order (see
    ``exporters.output_diff``). Different output counts or shapes are an error here, not a
    failed check: the graphs do not describe the same model."""
    if len(reference) != len(candidate):
        raise EdgepruneError(f"the models have {len(reference)} and {len(candidate)} outputs")
    for r, c in zip(reference, candidate):
        if r.shape != c.shape:
            raise EdgepruneError(f"output shapes differ: {r.shape} vs {c.shape}")
    names = list(names) if names is not None else [f"#{i}" for i in range(len(reference))]
    return compare_outputs([dict(zip(names, reference))], [dict(zip(names, candidate))], atol, rtol,
                           min_top1_agreement)


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _flatten(o)]


def torch_outputs(model: nn.Module, x: np.ndarray, device: torch.device | str | None = None,
                  batch: int = 64) -> list[np.ndarray]:
    """Outputs of ``model`` in eval mode on the batch ``x`` (its training flag is restored)."""
    dev = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    parts: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(dev)
                parts.append([t.detach().float().cpu().numpy() for t in _flatten(model(xb))])
    finally:
        model.train(was_training)
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def random_inputs(input_shape: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *input_shape[1:]), dtype=np.float32)


def verify_onnx(model: nn.Module, onnx_path: str | Path, input_shape: Sequence[int],
                images: np.ndarray | torch.Tensor | None = None,
                labels: np.ndarray | torch.Tensor | None = None,
                config: VerifyConfig | None = None) -> VerifyResult:
    """Compare ``onnx_path`` in onnxruntime with ``model`` in PyTorch; see the module docstring."""
    cfg = config or VerifyConfig()
    try:
        sess = runtime.session(onnx_path, cfg.threads)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; one line for the user
        raise EdgepruneError(f"onnxruntime cannot load {Path(onnx_path).name}: {one_line(e)}",
                             exit_code=VERIFY_FAILED_EXIT) from e
    failures: list[str] = []

    names = [o.name for o in sess.get_outputs()]
    xr = random_inputs(input_shape, cfg.random_inputs, cfg.seed)
    rand = compare(torch_outputs(model, xr, cfg.device), runtime.run(sess, xr), cfg.atol, cfg.rtol, names=names)
    if not rand.within():
        failures.append(f"random inputs: {rand.reason}")

    real, accuracy = None, None
    if images is not None and len(images):
        xi = as_numpy(images[:cfg.real_images]).astype(np.float32)
        if tuple(xi.shape[1:]) != tuple(input_shape[1:]):
            raise EdgepruneError(f"validation images have shape {tuple(xi.shape[1:])}, "
                                 f"the model expects {tuple(input_shape[1:])}")
        ref, got = torch_outputs(model, xi, cfg.device), runtime.run(sess, xi)
        real = compare(ref, got, cfg.atol, cfg.rtol, cfg.min_top1_agreement, names=names)
        if not real.within():
            failures.append(f"real images: {real.reason}")
        if labels is not None:
            y = as_numpy(labels[:len(xi)]).astype(np.int64)
            accuracy = {"n": int(len(y)),
                        "torch_top1": float((ref[0].argmax(1) == y).mean()),
                        "onnx_top1": float((got[0].argmax(1) == y).mean())}
    return VerifyResult(random=rand, real=real, accuracy=accuracy, failures=failures,
                        thresholds={"atol": cfg.atol, "rtol": cfg.rtol,
                                    "min_top1_agreement": cfg.min_top1_agreement})
