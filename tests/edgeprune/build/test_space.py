"""The plan space's measurement: the joint search re-estimates BatchNorm for every plan, never on the original."""

from __future__ import annotations

import copy

import pytest
import torch

from builds import brightness_npz, factories_importable  # tests/builds.py

from edgeprune.build import stages
from edgeprune.build.config import BuildConfig
from edgeprune.build.space import StateOracle, bn_batches
from edgeprune.pipeline.channels import reestimate_batchnorm
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.pipeline.models import state_fingerprint


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("space")
    brightness_npz(tmp / "tiny.npz", 400, 200)
    factories_importable()
    cfg = BuildConfig.from_flags({"model": "tinynets:tiny_wide_resnet", "input_size": 16, "data": str(tmp / "tiny.npz"),
                                  "score_images": 60, "budget": "1ms", "out": str(tmp / "b")})
    inputs = stages.load_inputs(cfg, lambda m: None)
    sp = stages.plan_space(inputs, lambda m: None)
    for m in sp.model.modules():         # stale statistics, so that re-estimation shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean += 0.3
    return sp, inputs


def test_every_plan_is_measured_with_reestimated_batchnorm(space):
    sp, inputs = space
    before = state_fingerprint(sp.model)
    oracle = StateOracle(sp, inputs.held.score, 64, torch.device("cpu"))
    batches = list(sp.bundle.batches("val", 64, indices=inputs.held.score))
    fresh = reestimate_batchnorm(copy.deepcopy(sp.model), bn_batches(sp.bundle))
    assert oracle([]) == pytest.approx((lambda r: (r.top1, r.loss))(evaluate(fresh, batches)))
    assert oracle([])[1] != pytest.approx(evaluate(sp.model, batches).loss)
    block = sp.candidates[0]
    plain = sp.model_for([block], torch.device("cpu"))          # for a fine-tune: a block plan as removed
    measured = sp.model_for([block], torch.device("cpu"), reestimate=True)
    assert evaluate(measured, batches).loss == pytest.approx(oracle([block])[1])
    assert evaluate(plain, batches).loss != pytest.approx(oracle([block])[1])
    assert state_fingerprint(sp.model) == before
