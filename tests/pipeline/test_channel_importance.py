"""Channel-group criteria: one signature, the direct measurement's numbers, a dead step found by each."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.channel_importance import GROUP_CRITERIA, GroupContext, score_groups
from edgeprune.pipeline.channels import ChannelMasks, channel_groups, channel_orders, prune_channels, reestimate_batchnorm
from edgeprune.pipeline.evaluate import evaluate
from edgeprune.pipeline.models import randomize_batchnorm, state_fingerprint
from edgeprune.pipeline.resnet_cifar import CifarResNet

SHAPE = (1, 1, 32, 32)
DEAD = "layer2.1.conv1"


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/pipeline/conftest.py


@pytest.fixture(scope="module")
def setup():
    """A ResNet-20 whose group ``DEAD`` has the channels its first step removes zeroed (producers and
    consumers: the model computes what the pruned one would), BatchNorm statistics from the BN images,
    and scoring labels that are its own predictions (top-1 100%)."""
    torch.manual_seed(0)
    model = randomize_batchnorm(CifarResNet(20, in_channels=1)).eval()
    groups = channel_groups(model, SHAPE)
    orders = channel_orders(model, groups, SHAPE, "magnitude")
    ChannelMasks(model, groups, orders, {DEAD: 1}, SHAPE).apply(1.0)
    bn = [torch.randn(16, 1, 32, 32) for _ in range(2)]
    reestimate_batchnorm(model, bn)
    x = torch.randn(64, 1, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, groups, orders, bn, [(x[:32], y[:32]), (x[32:], y[32:])]


def test_every_criterion_scores_every_group_that_can_shrink(setup):
    model, groups, orders, bn, batches = setup
    before = state_fingerprint(model)
    ctx = GroupContext(SHAPE, orders, bn_batches=bn)
    steppable = {g.name: g for g in groups if g.max_steps}
    assert set(GROUP_CRITERIA) == {"direct", "magnitude", "bn-scale"}
    for name in GROUP_CRITERIA:
        scores = score_groups(model, groups, batches, ctx, name)
        assert set(scores) == set(steppable)
        for g, s in scores.items():
            assert (s.group, s.channels, s.kept) == (g, steppable[g].channels, steppable[g].kept(1))
            assert (s.top1 is None) == (name != "direct")
        # the dead step has no weight or scale (first by either proxy) and costs no top-1 when measured
        if name == "direct":
            assert scores[DEAD].top1 == 1.0 and abs(scores[DEAD].importance) < 1e-6
        else:
            assert min(scores, key=lambda g: (scores[g].importance, g)) == DEAD, name
    assert state_fingerprint(model) == before


def test_direct_is_the_measured_drop_after_batchnorm_reestimation(setup):
    model, groups, orders, bn, batches = setup
    shifted = copy.deepcopy(model)       # stale statistics: re-estimation alone changes its accuracy
    for m in shifted.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean += 0.5
    assert abs(evaluate(shifted, batches).loss - evaluate(model, batches).loss) > 1e-3
    scores = score_groups(shifted, groups, batches, GroupContext(SHAPE, orders, bn_batches=bn), "direct")
    other = "layer3.0.conv1"
    r = evaluate(reestimate_batchnorm(prune_channels(shifted, groups, orders, {other: 1}, SHAPE), bn), batches)
    assert scores[other].top1 == pytest.approx(r.top1) and scores[other].loss == pytest.approx(r.loss)
    # against the unpruned model re-estimated on the same images (which is ``model``: top-1 1.0)
    base = evaluate(model, batches)
    assert scores[other].importance == pytest.approx((1.0 - r.top1) + 1e-6 * (r.loss - base.loss))
    assert scores[DEAD].top1 == 1.0 and abs(scores[DEAD].importance) < 1e-6
    assert any(s.importance > 0 for s in scores.values())


def test_bad_requests(setup):
    model, groups, orders, bn, batches = setup
    with pytest.raises(EdgepruneError, match="unknown channel-group criterion 'l1'; choose from direct, magnitude, bn-scale"):
        score_groups(model, groups, batches, GroupContext(SHAPE, orders, bn_batches=bn), "l1")
    with pytest.raises(EdgepruneError, match="needs training images to re-estimate"):
        score_groups(model, groups, batches, GroupContext(SHAPE, orders), "direct")
