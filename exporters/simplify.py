"""Simplify an ONNX model with onnxsim, keeping the original when onnxsim fails or changes outputs.

onnxsim drops the per-node metadata the dynamo exporter writes (the PyTorch module path of
each node); it is copied back onto every surviving node of the same name and operator.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxsim

from edgeprune.exporters import runtime
from edgeprune.exporters.onnx_facts import copy_node_metadata
from edgeprune.exporters.onnx_export import one_line, quiet_output
from edgeprune.exporters.verify import compare


@dataclass
class SimplifyResult:
    applied: bool
    reason: str | None            # why the simplified graph was not kept, if it was not
    nodes_before: int
    nodes_after: int              # nodes of the graph kept
    nodes_simplified: int | None  # nodes of onnxsim's graph, kept or not (None: onnxsim failed)
    max_abs_diff: float | None    # simplified vs original outputs on the check inputs
    nodes_with_module_metadata: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def simplify_onnx(src: str | Path, dst: str | Path, check_inputs: np.ndarray,
                  atol: float = 1e-4, rtol: float = 1e-4, threads: int = 1,
                  enabled: bool = True) -> SimplifyResult:
    """Simplify ``src`` into ``dst``; keep ``src``'s graph when onnxsim fails, its own check
    fails, or the outputs on ``check_inputs`` move beyond ``atol + rtol * max|output|``.
    With ``enabled=False`` the graph is copied as is (metadata handling still applies)."""
    start = time.perf_counter()
    original = onnx.load(str(src))
    simplified, reason, diff = None, None, None
    if not enabled:
        reason = "simplification disabled"
    else:
        simplified, reason, diff = _simplify_checked(original, check_inputs, atol, rtol, threads)
    kept = simplified if simplified is not None and reason is None else original
    with_meta, _ = copy_node_metadata(original, kept)
    onnx.save(kept, str(dst))
    return SimplifyResult(
        applied=kept is simplified, reason=reason,
        nodes_before=len(original.graph.node), nodes_after=len(kept.graph.node),
        nodes_simplified=len(simplified.graph.node) if simplified is not None else None,
        max_abs_diff=diff, nodes_with_module_metadata=with_meta,
        seconds=round(time.perf_counter() - start, 3),
    )


def _simplify_checked(original: onnx.ModelProto, check_inputs: np.ndarray, atol: float, rtol: float,
                      threads: int) -> tuple[onnx.ModelProto | None, str | None, float | None]:
    """(onnxsim's graph or None, why it must not be kept or None, max abs output difference)."""
    simplified, reason, diff = None, None, None
    try:
        with quiet_output():
            candidate, ok = onnxsim.simplify(onnx.ModelProto.FromString(original.SerializeToString()),
                                             check_n=0, certify=False)
        if not ok:
            reason = "onnxsim's own check failed"
        else:
            simplified = candidate
    except Exception as e:  # noqa: BLE001 - any onnxsim failure means: keep the original
        reason = f"onnxsim failed: {one_line(e)}"
    if simplified is not None:
        try:
            ref = runtime.run(runtime.session(original.SerializeToString(), threads), check_inputs)
        except Exception as e:  # noqa: BLE001 - verification reports this for the graph kept
            return None, f"onnxruntime cannot run the exported graph: {one_line(e)}", None
        try:
            got = runtime.run(runtime.session(simplified.SerializeToString(), threads), check_inputs)
            cmp = compare(ref, got, atol, rtol)
            diff = cmp.max_abs_diff
            if not cmp.within():
                reason = f"onnxsim changed the outputs: max abs diff {diff:.3g} > {cmp.tolerance:.3g}"
        except Exception as e:  # noqa: BLE001 - a simplified graph onnxruntime rejects is not kept
            reason = f"onnxruntime rejected the simplified graph: {one_line(e)}"
    return simplified, reason, diff
