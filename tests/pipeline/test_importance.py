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


# ---------------------------------------------------------------- prefix reuse within a memory bound

class _Res(torch.nn.Module):
    def __init__(self, c: int, out: int | None = None) -> None:
        super().__init__()
        out = out or c
        self.f = torch.nn.Sequential(torch.nn.Conv2d(c, out, 3, padding=1), torch.nn.BatchNorm2d(out),
                                     torch.nn.ReLU(), torch.nn.Conv2d(out, out, 3, padding=1))
        self.proj = torch.nn.Conv2d(c, out, 1) if out != c else None

    def forward(self, x):
        return torch.relu(self.f(x) + (self.proj(x) if self.proj is not None else x))


class _Branchy(torch.nn.Module):
    """Skips that span one, two and three blocks, two blocks reading one value, a dead node, and the
    input read again at the end: the graph from block k on reads values from well before k."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b1, self.b2, self.b3, self.b4 = _Res(8), _Res(8), _Res(8), _Res(8)
        self.p1, self.p2 = _Res(8), _Res(8, 8)
        self.b5 = _Res(16, 12)                       # a projection block
        self.head = torch.nn.Linear(12, 10)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        a = self.b1(s)
        b = self.b2(a)
        c = self.b3(b) + s                           # read 3 blocks after it was made
        d = self.b4(c) * 0.5 + a                     # 3 blocks
        e = self.p1(d) + self.p2(d) - b              # two blocks read d; b 4 blocks later
        x.size(0)                                    # dead: nothing reads it
        f = self.b5(torch.cat([e, c], 1))            # c 3 blocks later
        return self.head(f.mean((2, 3))) + x.mean()  # the input read at the very end


def _perturb_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.0)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _assert_same(model, blocks, batches):
    fast = removal_accuracy(model, blocks, batches, ScoreContext(reuse_prefix=True))
    slow = removal_accuracy(model, blocks, batches, ScoreContext(reuse_prefix=False))
    assert fast == slow                              # bit-identical, not approximately equal
    return slow


def test_prefix_reuse_equals_naive_on_a_branchy_graph():
    torch.manual_seed(0)
    model = _perturb_bn(_Branchy())
    blocks = discover(model, (1, 3, 8, 8))
    assert {b.name for b in blocks} == {"b1", "b2", "b3", "b4", "p1", "p2", "b5"}
    assert {b.name for b in blocks if b.kind == "projection"} == {"b5"}
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in (6, 5)]
    _, per = _assert_same(model, blocks, batches)
    assert len({round(v[1], 6) for v in per.values()}) > 4


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_prefix_reuse_equals_naive_on_torchvision(arch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _perturb_bn(getattr(torchvision.models, arch)(num_classes=10))
    blocks = discover(model, (1, 3, 32, 32))
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(3, 3, 32, 32, generator=g), torch.randint(0, 10, (3,), generator=g))]
    _assert_same(model, blocks, batches)


def test_prefix_reuse_holds_only_what_the_rest_of_the_graph_reads(monkeypatch):
    """When any node runs (in the full pass or in a candidate's suffix) the values held are exactly
    the earlier nodes some node at or after it reads: nothing dead is kept, no prefix is copied."""
    import torch.fx as fx

    from edgeprune.pipeline.importance import trace_with_blocks_as_leaves
    torch.manual_seed(0)
    model = _perturb_bn(_Branchy())
    blocks = discover(model, (1, 3, 8, 8))
    nodes = list(trace_with_blocks_as_leaves(model, [b.name for b in blocks]).graph.nodes)
    index = {n.name: i for i, n in enumerate(nodes)}
    live = [{n.name for n in nodes[:i] if any(index[u.name] >= i for u in n.users)} for i in range(len(nodes))]
    seen: list[int] = []
    run_node = fx.Interpreter.run_node

    def checked(self, node):
        i = index[node.name]
        assert {n.name for n in self.env} == live[i], node.name
        seen.append(len(self.env))
        return run_node(self, node)

    monkeypatch.setattr(fx.Interpreter, "run_node", checked)
    batches = [(torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,)))]
    removal_accuracy(model, blocks, batches, ScoreContext(reuse_prefix=True))
    assert max(seen) <= 5 < len(nodes) // 2


def test_norm_ratio_is_taken_batch_by_batch_with_the_same_numbers(setup):
    """The ratios come from each batch as it runs; they equal those of the block's own graph run on
    the block's kept inputs (the way it was computed before)."""
    import torch.fx as fx

    from edgeprune.pipeline.blocks import analyse
    model, blocks, batches = setup
    scores = CRITERIA["norm-ratio"](model, blocks, batches, ScoreContext())
    for b in blocks:
        inputs = []
        h = model.get_submodule(b.name).register_forward_hook(lambda m, i, o: inputs.append(i[0]))
        with torch.no_grad():
            for x, _ in batches:
                model(x)
        h.remove()
        res = analyse(model.get_submodule(b.name))
        interp, ratios = fx.Interpreter(res.graph, garbage_collect_values=False), []
        with torch.no_grad():
            for x in inputs:
                interp.run(x)
                ratios.append(interp.env[res.branch].flatten(1).norm(dim=1)
                              / interp.env[res.shortcut].flatten(1).norm(dim=1).clamp_min(1e-12))
        assert scores[b.name].importance == torch.cat(ratios).mean().item(), b.name
