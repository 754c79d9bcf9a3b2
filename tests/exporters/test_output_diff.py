"""The one output comparison: the exporter's checks and verify-arm use exporters.output_diff."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.output_diff import compare_outputs
from edgeprune.exporters.verify import compare


def test_manifest_figures_are_the_six_fields():
    ref = np.array([[0.0, 2.0], [3.0, -1.0]], np.float32)
    cmp = compare([ref], [ref + np.float32(1e-5)], atol=1e-4, rtol=1e-4)
    assert set(asdict(cmp)) == {"n", "max_abs_diff", "mean_abs_diff", "max_abs_reference", "tolerance",
                                "top1_agreement"}
    assert cmp.within() and cmp.n == 2 and cmp.top1_agreement == 1.0
    assert cmp.max_abs_reference == 3.0 and cmp.tolerance == pytest.approx(1e-4 + 3e-4)
    assert cmp.max_abs_diff == pytest.approx(1e-5, rel=1e-2)


def test_each_output_is_held_to_its_own_scale():
    logits = np.array([[5.0, -5.0]], np.float32)
    small = np.array([[0.01, 0.02]], np.float32)
    cmp = compare([logits, small], [logits, small + np.float32(5e-4)], atol=1e-4, rtol=1e-4, names=["logits", "aux"])
    assert not cmp.within() and "output 'aux' differs" in cmp.reason
    assert cmp.outputs["logits"]["max_abs_diff"] == 0.0
    assert cmp.tolerance == pytest.approx(1e-4 + 1e-4 * 0.02)     # that of the output differing most


def test_samples_are_pooled_and_sides_named():
    rng = np.random.default_rng(0)
    x86 = [{"y": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(3)]
    arm = [{"y": s["y"].copy()} for s in x86]
    arm[2]["y"][1] = arm[2]["y"][1][::-1].copy()
    cmp = compare_outputs(x86, arm, atol=10.0, min_top1_agreement=1.0, sides=("x86", "aarch64"))
    assert cmp.n == 6 and cmp.top1_agreement == pytest.approx(5 / 6) and "top-1" in cmp.reason
    missing = compare_outputs(x86, [{} for _ in x86], sides=("x86", "aarch64"))
    assert not missing.within() and "missing on the aarch64 side" in missing.reason
    assert compare_outputs(x86, x86[:1]).reason.startswith("the candidate side returned 1 results")


def test_top1_only_for_class_scores():
    ref = [{"y": np.zeros((3, 4, 4), np.float32)}]
    assert compare_outputs(ref, ref).top1_agreement is None
    flags = [{"b": np.array([True, False])}]
    cmp = compare_outputs(flags, [{"b": np.array([True, True])}])
    assert not cmp.within() and cmp.max_abs_diff is None and cmp.outputs["b"] == {"shape": [2], "equal": False}


def test_graphs_with_different_outputs_are_an_error_for_the_exporter():
    with pytest.raises(EdgepruneError, match="output shapes differ"):
        compare([np.zeros((1, 3))], [np.zeros((1, 4))], 1e-4, 1e-4)
    with pytest.raises(EdgepruneError, match="have 1 and 2 outputs"):
        compare([np.zeros((1, 3))], [np.zeros((1, 3))] * 2, 1e-4, 1e-4)
