"""Do two runs of a model compute the same outputs? One comparison for every check that asks.

Used for the exported ONNX graph against PyTorch, onnxsim's graph and the ``.ort`` file
against the exported graph (``exporters.verify.compare``), and the aarch64 onnxruntime
against x86 (``devices.arm_verify``). Only numpy is imported.

For each output (arrays as float64, over every sample):

* ``max_abs_diff`` / ``mean_abs_diff``: of ``|candidate - reference|`` where both are finite;
* ``max_abs_reference``: the largest finite ``|reference|``, the scale the difference is read against;
* ``tolerance``: ``atol + rtol * max_abs_reference``.

It passes when every output's ``max_abs_diff <= tolerance``, no non-finite value differs
(NaN on both sides at the same place agrees; finite on one side only does not), the
outputs have the same names and shapes, and, when ``min_top1_agreement`` is given and top-1
applies, enough rows agree. Outputs that are not numbers (booleans, strings) must be equal.

Top-1 agreement is that of the first output's arg-max per row, for a floating
``(rows, classes)`` output with at least two classes; None otherwise.

The headline figures: ``max_abs_diff`` and ``tolerance`` of the output that differs most,
the largest ``max_abs_reference``, the mean of the outputs' ``mean_abs_diff``, and ``n``,
the rows of the first output. They are the six dataclass fields (what ``asdict`` gives, what
manifests record); ``outputs`` (figures per output) and ``problems`` (why it does not
pass, in words) are plain attributes.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

Outputs = Mapping[str, np.ndarray]   # one run: output name -> array


@dataclass
class Comparison:
    n: int                            # rows of the first output, over all samples
    max_abs_diff: float | None        # None when no output is numeric
    mean_abs_diff: float | None
    max_abs_reference: float | None
    tolerance: float | None
    top1_agreement: float | None      # None where top-1 does not apply
    per_output: InitVar[dict[str, dict[str, Any]] | None] = None
    failures: InitVar[list[str] | None] = None

    def __post_init__(self, per_output: dict[str, dict[str, Any]] | None, failures: list[str] | None) -> None:
        self.outputs: dict[str, dict[str, Any]] = dict(per_output or {})
        self.problems: list[str] = list(failures or [])

    def within(self) -> bool:
        """True when the two runs agree (see the module docstring)."""
        return not self.problems

    @property
    def reason(self) -> str:
        return "; ".join(self.problems) if self.problems else "outputs agree within tolerance"


def compare_outputs(reference: Sequence[Outputs], candidate: Sequence[Outputs], atol: float = 1e-4,
                    rtol: float = 1e-4, min_top1_agreement: float | None = None,
                    sides: tuple[str, str] = ("reference", "candidate")) -> Comparison:
    """Compare ``candidate`` with ``reference``: one mapping of outputs per sample (run) each.

    ``sides`` names the two in the problems reported (e.g. ``("x86", "aarch64")``).
    """
    ref_side, cand_side = sides
    if len(reference) != len(candidate) or not reference:
        return Comparison(0, None, None, None, None, None,
                          failures=[f"the {cand_side} side returned {len(candidate)} results "
                                    f"for {len(reference)} inputs"])
    names = list(reference[0])
    per_output: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    worst: tuple[float, float] | None = None        # (max_abs_diff, tolerance) of the output differing most
    for name in names:
        if any(name not in c for c in candidate):
            problems.append(f"output '{name}' missing on the {cand_side} side")
            continue
        ref = [r[name] for r in reference]
        got = [c[name] for c in candidate]
        if any(r.shape != g.shape for r, g in zip(ref, got)):
            problems.append(f"output '{name}' has shape {got[0].shape} on {cand_side}, {ref[0].shape} on {ref_side}")
            continue
        if not all(np.issubdtype(r.dtype, np.number) for r in ref):
            equal = all(np.array_equal(r, g) for r, g in zip(ref, got))
            per_output[name] = {"shape": list(ref[0].shape), "equal": equal}
            if not equal:
                problems.append(f"output '{name}' differs")
            continue
        figures, nonfinite_differs = _numeric_figures(ref, got, atol, rtol)
        per_output[name] = figures
        diff, tol = figures["max_abs_diff"], figures["tolerance"]
        if worst is None or diff >= worst[0]:
            worst = (diff, tol)
        if nonfinite_differs:
            problems.append(f"output '{name}' has non-finite values that differ between {ref_side} and {cand_side}")
        elif diff > tol:
            problems.append(f"output '{name}' differs by {diff:.3g} (tolerance {tol:.3g})")
    top1 = _top1_agreement([r[names[0]] for r in reference], [c.get(names[0]) for c in candidate]) if names else None
    if min_top1_agreement is not None and top1 is not None and top1 < min_top1_agreement:
        problems.append(f"top-1 agrees on {top1:.1%} of the rows (need {min_top1_agreement:.1%})")
    numeric = [f for f in per_output.values() if "max_abs_diff" in f]
    return Comparison(
        n=_rows([r[names[0]] for r in reference]) if names else 0,
        max_abs_diff=worst[0] if worst else None,
        mean_abs_diff=float(np.mean([f["mean_abs_diff"] for f in numeric])) if numeric else None,
        max_abs_reference=max(f["max_abs_reference"] for f in numeric) if numeric else None,
        tolerance=worst[1] if worst else None,
        top1_agreement=top1, per_output=per_output, failures=problems)


def _numeric_figures(ref: list[np.ndarray], got: list[np.ndarray], atol: float,
                     rtol: float) -> tuple[dict[str, Any], bool]:
    """Figures of one numeric output over its samples, and whether non-finite values differ."""
    r64 = [r.astype(np.float64) for r in ref]
    g64 = [g.astype(np.float64) for g in got]
    nonfinite_differs = False
    abs_diffs = []
    for r, g in zip(r64, g64):
        finite = np.isfinite(r) & np.isfinite(g)
        same = (r == g) | (np.isnan(r) & np.isnan(g))
        nonfinite_differs |= bool((~finite & ~same).any())
        abs_diffs.append(np.abs(np.subtract(r, g, out=np.zeros_like(r), where=finite)))
    scale = max(float(np.max(np.abs(np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)), initial=0.0)) for r in r64)
    figures = {"shape": list(ref[0].shape),
               "max_abs_diff": max(float(np.max(d, initial=0.0)) for d in abs_diffs),
               "mean_abs_diff": float(np.mean([d.mean() if d.size else 0.0 for d in abs_diffs])),
               "max_abs_reference": scale,
               "tolerance": atol + rtol * scale}
    return figures, nonfinite_differs


def _rows(arrays: list[np.ndarray]) -> int:
    return int(sum(a.shape[0] if a.ndim else 1 for a in arrays))


def _top1_agreement(ref: list[np.ndarray], got: list[np.ndarray | None]) -> float | None:
    """Fraction of rows whose arg-max agrees, for (rows, classes) outputs; None otherwise."""
    if any(g is None or g.shape != r.shape for r, g in zip(ref, got)):
        return None
    if ref[0].ndim != 2 or ref[0].shape[1] < 2 or not np.issubdtype(ref[0].dtype, np.floating):
        return None
    agree = [np.argmax(r, axis=1) == np.argmax(g, axis=1) for r, g in zip(ref, got)]
    return float(np.mean(np.concatenate(agree)))
