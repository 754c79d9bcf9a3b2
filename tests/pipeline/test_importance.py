"""Direct-removal scores with prefix reuse equal the naive computation; proxies and modes behave."""

from __future__ import annotations

import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.blocks import discover
from edgeprune.pipeline.importance import CRITERIA, ScoreContext, candidates_for, removal_accuracy
from edgeprune.pipeline.prune import rank_blocks
from edgeprune.pipeline.resnet_cifar import resnet20


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = resnet20().eval()
    with torch.no_grad():  # non-trivial residual branches (the init zeroes the last BN)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.0)
                m.running_var.uniform_(0.5, 2.0)
    blocks = discover(model, (1, 1, 32, 32))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    return model, blocks, batches


def test_prefix_reuse_equals_naive(setup):
    model, blocks, batches = setup
    fast = removal_accuracy(model, blocks, batches, ScoreContext(reuse_prefix=True))
    slow = removal_accuracy(model, blocks, batches, ScoreContext(reuse_prefix=False))
    assert fast[0] == slow[0]
    assert fast[1].keys() == slow[1].keys()
    for name in slow[1]:
        assert fast[1][name][0] == slow[1][name][0]
        assert fast[1][name][1] == pytest.approx(slow[1][name][1], rel=1e-6, abs=1e-6)
    # the losses differ between blocks: the scores measure something
    assert len({round(v[1], 6) for v in slow[1].values()}) > 3


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_scores_every_block(setup, criterion):
    model, blocks, batches = setup
    cands = candidates_for(blocks, False)
    scores = CRITERIA[criterion](model, cands, batches, ScoreContext(seed=3))
    assert set(scores) == {b.name for b in cands}
    assert all(isinstance(s.importance, float) for s in scores.values())


def test_random_is_seeded(setup):
    model, blocks, batches = setup
    a = CRITERIA["random"](model, blocks, batches, ScoreContext(seed=1))
    b = CRITERIA["random"](model, blocks, batches, ScoreContext(seed=1))
    c = CRITERIA["random"](model, blocks, batches, ScoreContext(seed=2))
    assert a == b and a != c


def test_iterative_mode_removes_one_at_a_time(setup):
    model, blocks, batches = setup
    cands = candidates_for(blocks, False)
    ranking = rank_blocks(model, cands, batches, ScoreContext(), "direct", "iterative", k=3)
    assert len(ranking.order) == 3 and len(set(ranking.order)) == 3
    oneshot = rank_blocks(model, cands, batches, ScoreContext(), "direct", "oneshot")
    assert ranking.order[0] == oneshot.order[0]  # the first step is the one-shot choice
    assert len(oneshot.order) == len(cands)


def test_no_removable_block_is_clear(setup):
    _, blocks, _ = setup
    with pytest.raises(EdgepruneError, match="no removable block"):
        candidates_for([b for b in blocks if b.kind == "projection"], False)
