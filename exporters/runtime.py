"""Small onnxruntime helpers shared by simplification, verification and the artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)  # errors only: warnings would garble the CLI's output


def session(model: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with a fixed thread count (the machine is shared; verification is not timed)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray, chunk: int = 64) -> list[np.ndarray]:
    """Run every output of ``sess`` on the batch ``x``, one image at a time when the batch is static.

    Returns one array per model output, each with ``len(x)`` rows.
    """
    inp = sess.get_inputs()[0]
    static = isinstance(inp.shape[0], int)
    step = int(inp.shape[0]) if static else chunk
    if static and len(x) % step:
        raise ValueError(f"batch of {len(x)} is not a multiple of the model's static batch {step}")
    parts = [sess.run(None, {inp.name: np.ascontiguousarray(x[i:i + step], dtype=np.float32)})
             for i in range(0, len(x), step)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
