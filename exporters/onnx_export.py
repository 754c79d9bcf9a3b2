"""Export any ``nn.Module`` to ONNX with the exporter torch recommends, falling back when it fails.

``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript) is tried first. When it
cannot capture the model (data-dependent Python control flow, an unsupported construct)
the TorchScript exporter (``dynamo=False``) is tried, and the reason for the fallback is
recorded. When both fail the error is one line naming the operation ONNX cannot express.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx
import torch
from torch import nn

from edgeprune.errors import EdgepruneError, disk_error
from edgeprune.files import naming_disk_errors

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class ExportConfig:
    opset: int = 18
    dynamic_batch: bool = False
    input_name: str = "input"
    output_names: tuple[str, ...] = ("logits",)
    dynamo: bool = True            # try torch's recommended exporter first
    fallback: bool = True          # fall back to the TorchScript exporter when dynamo fails


@dataclass
class ExportResult:
    path: Path
    exporter: str                  # "dynamo" or "torchscript"
    fallback_reason: str | None    # why the dynamo exporter was not used, if it was not
    opset: int
    nodes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def one_line(exc: BaseException) -> str:
    """The most specific single line of an exporter exception (ANSI colours removed)."""
    text = _ANSI.sub("", str(exc))
    # The dynamo exporter ends with an "Exception summary" chain; its first entry is the root cause.
    m = re.search(r"## Exception summary\s*\n\s*\n?(.+)", text)
    if m:
        line = m.group(1).strip()
        return re.sub(r"^<class '([\w.]+)'>:\s*", r"\1: ", line)
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [s.strip() for s in _ANSI.sub("", str(cause)).splitlines() if s.strip()]
    return lines[0] if lines else type(cause).__name__


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Silence Python and C++ writes to stdout/stderr (the exporters print progress, IR graphs
    and warnings there), so that ``--json`` output stays parseable. Python warnings are ignored."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, cfg: ExportConfig) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if cfg.dynamic_batch else None
    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=cfg.opset, verbose=False,
        input_names=[cfg.input_name], output_names=list(cfg.output_names),
        dynamic_shapes=dynamic_shapes,
    )
    if program is None:
        raise RuntimeError("the dynamo exporter returned no program")
    program.save(str(path))


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, cfg: ExportConfig) -> None:
    dynamic_axes = None
    if cfg.dynamic_batch:
        dynamic_axes = {cfg.input_name: {0: "batch"}, **{n: {0: "batch"} for n in cfg.output_names}}
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=cfg.opset,
        input_names=[cfg.input_name], output_names=list(cfg.output_names),
        dynamic_axes=dynamic_axes, do_constant_folding=True,
    )


_EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path,
                config: ExportConfig | None = None) -> ExportResult:
    """Export ``model`` (any ``nn.Module``) for an input of ``input_shape`` (N, C, H, W) to ``path``.

    The model is exported in eval mode on its own device, with autocast off (a caller's
    ``torch.autocast`` would trace its casts into the graph: the file is always the model's own
    precision); its training flag is restored afterwards. Raises :class:`EdgepruneError` (exit code 2) with one line when neither
    exporter can express the model in ONNX.
    """
    cfg = config or ExportConfig()
    path = Path(path)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise EdgepruneError(f"invalid input shape {shape}: expected positive (N, C, H, W)")
    order = (["dynamo"] if cfg.dynamo else []) + (["torchscript"] if cfg.fallback or not cfg.dynamo else [])
    example = torch.randn(shape, device=model_device(model))
    was_training = model.training
    model.eval()
    failures: dict[str, str] = {}
    start = time.perf_counter()
    try:
        for name in order:
            try:
                with quiet_output(), torch.no_grad(), torch.autocast(example.device.type, enabled=False), \
                        naming_disk_errors(path):
                    _EXPORTERS[name](model, example, path, cfg)
                break
            except Exception as e:  # noqa: BLE001 - any exporter failure is recorded, then judged below
                path.unlink(missing_ok=True)
                if disk_error(e):       # the disk, not the model: another exporter would fail the same way
                    raise
                failures[name] = one_line(e)
        else:
            detail = "; ".join(f"{k} exporter: {v}" for k, v in failures.items())
            raise EdgepruneError(f"the model cannot be exported to ONNX (opset {cfg.opset}): {detail}")
    finally:
        model.train(was_training)
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), cfg.opset)
    return ExportResult(
        path=path, exporter=name,
        fallback_reason=f"dynamo exporter failed: {failures['dynamo']}" if "dynamo" in failures else None,
        opset=opset, nodes=len(proto.graph.node), seconds=round(time.perf_counter() - start, 3),
    )
