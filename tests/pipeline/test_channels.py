"""Channel groups from Torch-Pruning's dependency graph: discovery, ranking, exact pruning, BN re-estimation."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.onnx_export import export_onnx
from edgeprune.pipeline.blocks import discover, remove_blocks
from edgeprune.pipeline.channels import (CHANNEL_CRITERIA, ChannelGroup, ChannelMasks, channel_groups, channel_orders,
                                         cubic_share,
                                         prune_channels, reestimate_batchnorm)
from edgeprune.pipeline.finetune import FinetuneConfig, finetune
from edgeprune.pipeline.models import randomize_batchnorm, state_fingerprint
from edgeprune.pipeline.resnet_cifar import CifarResNet

RESNET_SHAPE, MOBILENET_SHAPE, CAT_SHAPE = (1, 1, 32, 32), (1, 3, 32, 32), (1, 3, 16, 16)


class CatNet(nn.Module):
    """A stem, two branches (one without BatchNorm) concatenated, a conv over the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(40, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.c(torch.cat([torch.relu(self.a(x)), self.b(x)], 1))
        return self.fc(x.mean((2, 3)))


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/pipeline/conftest.py


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _roots_kept(model: nn.Module, groups, steps) -> None:
    for g in groups:
        root = model.get_submodule(g.name)
        out = root.out_features if isinstance(root, nn.Linear) else root.out_channels
        assert out == g.kept(steps.get(g.name, 0))
        if steps.get(g.name, 0):
            assert out % g.multiple == 0


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = randomize_batchnorm(CifarResNet(20, in_channels=1))
    return model, channel_groups(model, RESNET_SHAPE)


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()  # BatchNorms as initialised: gamma 1
    return model, channel_groups(model, MOBILENET_SHAPE)


@pytest.fixture(scope="module")
def catnet():
    torch.manual_seed(0)
    model = randomize_batchnorm(CatNet())
    return model, channel_groups(model, CAT_SHAPE)


@pytest.mark.parametrize("which,classifier", [("resnet", "fc"), ("mobilenet", "classifier.1"), ("catnet", "fc")])
def test_groups_found_and_the_output_is_never_a_group(which, classifier, request):
    model, groups = request.getfixturevalue(which)
    names = [g.name for g in groups]
    assert names and names == sorted(set(names))
    assert classifier not in names
    assert all(g.members.get(classifier) != "out" for g in groups)
    for g in groups:
        assert g.channels >= 2 * g.multiple and g.max_steps >= 1 and g.step % g.multiple == 0
        assert g.members[g.name] in ("out", "both")
        kept = [g.kept(s) for s in range(g.max_steps + 1)]
        assert kept == sorted(kept, reverse=True) and len(set(kept)) == len(kept)
        assert all(k % g.multiple == 0 for k in kept[1:]) and kept[-1] >= max(g.multiple, g.channels // 4)
        assert g.to_dict()["members"] == g.members


def test_resnet_stage_groups_span_the_residual_adds(resnet):
    _, groups = resnet
    # 3 stages, plus the inner channels of each of the 9 blocks
    assert len(groups) == 12
    stage2 = next(g for g in groups if g.members.get("layer2.1.conv2") == "out")
    # every conv writing into the stage's adds, the convs reading from them, the BNs on them
    for name in ("layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"):
        assert stage2.members[name] == "out"
    for name in ("layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.shortcut.0"):
        assert stage2.members[name] == "in"
    assert stage2.members["layer2.0.bn2"] == stage2.members["layer2.0.shortcut.1"] == "both"
    assert stage2.channels == 32
    stage1 = next(g for g in groups if "layer1.0.conv2" in g.members)
    assert stage1.members["conv1"] == "out" and stage1.members["layer2.0.conv1"] == "in"
    inner = next(g for g in groups if g.name == "layer3.1.conv1")
    assert inner.members == {"layer3.1.conv1": "out", "layer3.1.bn1": "both", "layer3.1.conv2": "in"}


def test_steps_round_to_the_multiple_and_stop_at_the_minimum():
    model = nn.Sequential(nn.Conv2d(3, 100, 1), nn.ReLU(), nn.Conv2d(100, 4, 1))
    (g,) = channel_groups(model, (1, 3, 4, 4))
    # step: 12.5 channels rounded to 16; minimum: 25 rounded up to 32
    assert (g.name, g.channels, g.step, g.max_steps, g.members) == ("0", 100, 16, 4, {"0": "out", "2": "in"})
    assert [g.kept(s) for s in range(5)] == [100, 80, 64, 48, 32]
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="0..4"):
            g.kept(bad)
    (g,) = channel_groups(model, (1, 3, 4, 4), multiple=4)
    assert (g.step, g.max_steps, g.kept(g.max_steps)) == (12, 6, 28)
    assert ChannelGroup(**g.to_dict()) == g
    wide = channel_groups(CifarResNet(20), RESNET_SHAPE, multiple=16)
    assert {g.channels for g in wide} == {32, 64}  # 16-channel groups are below 2 * multiple
    assert all(g.step % 16 == 0 and g.kept(g.max_steps) >= 16 for g in wide)


def test_pruned_resnet_runs_traces_and_keeps_its_blocks(resnet):
    model, groups = resnet
    before = state_fingerprint(model)
    orders = channel_orders(model, groups, RESNET_SHAPE, "magnitude")
    steps = {g.name: g.max_steps if i % 2 else 1 for i, g in enumerate(groups)}
    pruned = prune_channels(model, groups, orders, steps, RESNET_SHAPE)
    assert state_fingerprint(model) == before and not pruned.training
    x = torch.randn(2, *RESNET_SHAPE[1:])
    assert pruned(x).shape == model(x).shape == (2, 10)
    assert _params(pruned) < _params(model)
    _roots_kept(pruned, groups, steps)
    assert pruned.conv1.in_channels == 1
    traced = fx.symbolic_trace(pruned)
    assert torch.allclose(traced(x), pruned(x))
    assert [b.name for b in discover(pruned, RESNET_SHAPE)] == [b.name for b in discover(model, RESNET_SHAPE)]


def test_prune_channels_is_order_independent(resnet):
    model, groups = resnet
    orders = channel_orders(model, groups, RESNET_SHAPE, "bn-scale")
    steps = {g.name: (i % 3) % (g.max_steps + 1) for i, g in enumerate(groups)}
    a = prune_channels(model, groups, orders, steps, RESNET_SHAPE).state_dict()
    b = prune_channels(model, groups, orders, dict(reversed(list(steps.items()))), RESNET_SHAPE).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_depthwise_convs_stay_depthwise(mobilenet):
    model, groups = mobilenet
    assert any(g.members[g.name] == "both" for g in groups)  # a depthwise conv can root a group
    orders = channel_orders(model, groups, MOBILENET_SHAPE, "magnitude")
    steps = {g.name: g.max_steps for g in groups}
    pruned = prune_channels(model, groups, orders, steps, MOBILENET_SHAPE)
    assert pruned(torch.randn(MOBILENET_SHAPE)).shape == (1, 10)
    assert _params(pruned) < _params(model) / 4
    _roots_kept(pruned, groups, steps)
    depthwise = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17
    assert all(m.groups == m.in_channels == m.out_channels == m.weight.shape[0] for m in depthwise)
    assert pruned.features[0][0].in_channels == 3


def test_concat_prunes_the_right_channels_in_any_order(catnet):
    model, groups = catnet
    assert {g.name for g in groups} == {"a", "b.0", "c.0", "stem.0"}
    assert groups[0].members == {"a": "out", "c.0": "in"}
    orders = channel_orders(model, groups, CAT_SHAPE, "magnitude")
    steps = {"b.0": 1, "a": 1, "c.0": 1}
    pruned = prune_channels(model, groups, orders, steps, CAT_SHAPE)
    again = prune_channels(model, groups, orders, dict(sorted(steps.items())), CAT_SHAPE).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in pruned.state_dict().items())
    assert pruned.c[0].in_channels == 8 + 16
    # removing a channel of a or b is the same as c not reading it; removing one of c's, fc not reading it
    ref = copy.deepcopy(model)
    by = {g.name: g for g in groups}
    with torch.no_grad():
        for name, offset in (("a", 0), ("b.0", 16)):
            gone = orders[name][:by[name].channels - by[name].kept(1)]
            ref.c[0].weight[:, [offset + i for i in gone]] = 0
        ref.fc.weight[:, orders["c.0"][:by["c.0"].channels - by["c.0"].kept(1)]] = 0
    x = torch.randn(4, *CAT_SHAPE[1:])
    assert torch.allclose(pruned(x), ref(x), atol=1e-5)


def test_orders_by_criterion(resnet, mobilenet, catnet):
    model, groups = resnet
    magnitude = channel_orders(model, groups, RESNET_SHAPE, "magnitude")
    scale = channel_orders(model, groups, RESNET_SHAPE, "bn-scale")
    assert set(CHANNEL_CRITERIA) == {"magnitude", "bn-scale"}
    for g in groups:
        assert sorted(magnitude[g.name]) == sorted(scale[g.name]) == list(range(g.channels))
    assert all(magnitude[g.name] != scale[g.name] for g in groups)
    assert channel_orders(model, groups, RESNET_SHAPE, "magnitude") == magnitude
    stage1 = next(g for g in groups if g.name == "conv1")
    gammas = sum(model.get_submodule(n).weight.detach().abs() for n, r in stage1.members.items() if r == "both")
    assert scale["conv1"] == sorted(range(16), key=lambda i: gammas[i].item())
    # untrained BatchNorms all have gamma 1: ties go by index
    model, groups = mobilenet
    assert all(o == list(range(len(o))) for o in channel_orders(model, groups, MOBILENET_SHAPE, "bn-scale").values())
    model, groups = catnet
    with pytest.raises(EdgepruneError, match="channel group a has no affine BatchNorm"):
        channel_orders(model, groups, CAT_SHAPE, "bn-scale")


def test_bad_requests_are_refused(catnet):
    model, groups = catnet
    with pytest.raises(EdgepruneError, match="unknown channel criterion 'l1'; choose from magnitude, bn-scale"):
        channel_orders(model, groups, CAT_SHAPE, "l1")
    orders = channel_orders(model, groups, CAT_SHAPE, "magnitude")
    with pytest.raises(ValueError, match="no channel group named nope"):
        prune_channels(model, groups, orders, {"nope": 1}, CAT_SHAPE)
    g = next(g for g in groups if g.name == "c.0")
    for bad in (-1, g.max_steps + 1):
        with pytest.raises(ValueError, match=rf"c\.0: steps must be in 0\.\.{g.max_steps}"):
            prune_channels(model, groups, orders, {"c.0": bad}, CAT_SHAPE)
    with pytest.raises(ValueError, match="needs an order"):
        prune_channels(model, groups, {}, {"c.0": 1}, CAT_SHAPE)
    with pytest.raises(ValueError, match="does not match the model"):
        prune_channels(prune_channels(model, groups, orders, {"c.0": 1}, CAT_SHAPE), groups, orders, {"c.0": 1},
                       CAT_SHAPE)


class GroupedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


class BareWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.w = nn.Conv2d(3, 32, 3, padding=1), nn.Parameter(torch.randn(32, 32, 1, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.conv2d(torch.relu(self.a(x)), self.w).mean((2, 3)))


class FixedSplit(nn.Module):
    """The split sizes are written in the code: pruning ``a`` cannot update them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(16, 16, 1), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(self.a(x), [16, 16], 1)
        return self.fc(torch.cat([self.b(p), q], 1).mean((2, 3)))


@pytest.mark.parametrize("make,message", [
    (GroupedConv, r"torch-pruning cannot handle layer b \(Conv2d, groups=4\)"),
    (BareWeight, r"torch-pruning cannot handle parameter w \(shape \(32, 32, 1, 1\)\)"),
    # channel shuffle: TP's reshape index mapping divides by zero
    (lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
     r"torch-pruning cannot build the dependency graph of this model \(ZeroDivisionError in "
     r"update_reshape_index_mapping"),
])
def test_models_torch_pruning_cannot_handle(make, message):
    with pytest.raises(EdgepruneError, match=message) as e:
        channel_groups(make().eval(), (1, 3, 16, 16))
    assert "\n" not in str(e.value)


def test_a_wrong_input_shape_is_named():
    with pytest.raises(EdgepruneError, match=r"the model fails on an input of shape \(1, 1, 16, 16\) \(RuntimeError: "
                                             r"Given groups=1, weight of size \[16, 3, 3, 3\]"):
        channel_groups(CatNet(), (1, 1, 16, 16))


class FullyConv(nn.Module):
    """Runs on an unbatched (C, H, W) image too, as TP tries first for a bare batch-of-one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.seen = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1), set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(x.dim())
        return self.b(torch.relu(self.a(x)))


def test_the_graph_is_traced_on_the_batched_input():
    model = FullyConv().eval()
    assert [g.name for g in channel_groups(model, (1, 3, 8, 8))] == ["a"]
    assert model.seen == {4}


def test_a_pruned_model_that_no_longer_runs_is_refused():
    model = FixedSplit().eval()
    groups = channel_groups(model, (1, 3, 16, 16))
    assert [g.name for g in groups] == ["a", "b"]
    with pytest.raises(EdgepruneError, match=r"cannot handle channel group a: the pruned model fails \(RuntimeError"):
        prune_channels(model, groups, {"a": list(range(32))}, {"a": 1}, (1, 3, 16, 16))


def test_reestimate_batchnorm_gives_the_batch_statistics(mobilenet):
    model = copy.deepcopy(mobilenet[0])
    weights = {k: v.clone() for k, v in model.named_parameters()}
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    bn = model.features[0][1]
    feats = [model.features[0][0](x).detach() for x in batches]
    assert reestimate_batchnorm(model, iter(batches)) is model
    assert torch.allclose(bn.running_mean, sum(f.mean((0, 2, 3)) for f in feats) / 2, atol=1e-5)
    assert torch.allclose(bn.running_var, sum(f.var((0, 2, 3)) for f in feats) / 2, rtol=1e-4)
    assert bn.momentum == 0.1 and not any(m.training for m in model.modules())
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    deep = model.features[17].conv[3]
    assert not torch.allclose(deep.running_var, torch.ones_like(deep.running_var))
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_batchnorm(model, [])


def test_pruned_model_exports_to_onnx(catnet, tmp_path):
    model, groups = catnet
    orders = channel_orders(model, groups, CAT_SHAPE, "magnitude")
    pruned = prune_channels(model, groups, orders, {g.name: g.max_steps for g in groups}, CAT_SHAPE)
    path = tmp_path / "pruned.onnx"
    export_onnx(pruned, CAT_SHAPE, path)
    x = torch.randn(CAT_SHAPE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, pruned(x).detach().numpy(), atol=1e-4)


# ---------------------------------------------------------------- gradual pruning

def test_cubic_share_rises_from_nothing_to_all_by_the_ramp():
    shares = [cubic_share(s, 100) for s in range(0, 101, 5)]
    assert shares[0] == 0.0 and cubic_share(75, 100) == 1.0 and shares[-1] == 1.0
    assert all(a <= b for a, b in zip(shares, shares[1:]))
    assert cubic_share(25, 100) > 25 / 75          # cubic: most of the removal early, as Zhu & Gupta


@pytest.mark.parametrize("which,shape", [("resnet", RESNET_SHAPE), ("mobilenet", MOBILENET_SHAPE),
                                         ("catnet", CAT_SHAPE)])
def test_masks_compute_what_the_pruned_model_computes(which, shape, request):
    model, groups = request.getfixturevalue(which)
    model = randomize_batchnorm(copy.deepcopy(model))     # outputs of a size that a difference shows in
    orders = channel_orders(model, groups, shape, "magnitude")
    steps = {g.name: g.max_steps for g in groups[::2]}
    masks = ChannelMasks(model, groups, orders, steps, shape)
    x = torch.randn(4, *shape[1:])
    with torch.no_grad():
        before = model(x)
        masks.apply(0.5)
        half = model(x)
        masks.apply(1.0)
        masked = model(x)
        pruned = prune_channels(model, groups, orders, steps, shape)(x)
    assert not torch.allclose(before, masked) and not torch.allclose(half, masked)
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=1e-4)


def test_masks_survive_a_fine_tune_step(resnet):
    model, groups = resnet
    model = copy.deepcopy(model)
    orders = channel_orders(model, groups, RESNET_SHAPE, "magnitude")
    steps = {groups[0].name: groups[0].max_steps}
    masks = ChannelMasks(model, groups, orders, steps, RESNET_SHAPE)
    x, y = torch.randn(16, *RESNET_SHAPE[1:]), torch.randint(0, 10, (16,))
    finetune(model, lambda ep: [(x, y)] * 3, 48, FinetuneConfig(epochs=1, batch_size=16, augment="none"),
             progress=None, after_step=masks.after_step)
    dead = masks.removed[groups[0].name]
    root = model.get_submodule(groups[0].name)
    assert float(root.weight.detach()[dead].abs().sum()) == 0.0        # zeroed again after the last step
    assert float(root.weight.detach().abs().sum()) > 0.0


def test_masks_reroot_a_group_whose_root_is_in_a_removed_block(mobilenet):
    """A residual stage's group spans blocks; named by a layer inside one the plan removes, it is still
    pruned through another of its producers, to the same structure as pruning first."""
    model, groups = mobilenet
    blocks = discover(model, MOBILENET_SHAPE)
    removable = {b.name for b in blocks if b.kind == "identity"}
    g = next(g for g in groups if g.max_steps and any(g.name.startswith(b + ".") for b in removable)
             and any(r == "out" and not any(n.startswith(b + ".") for b in removable) for n, r in g.members.items()))
    block = next(b for b in removable if g.name.startswith(b + "."))
    orders = channel_orders(model, groups, MOBILENET_SHAPE, "magnitude")
    first = remove_blocks(prune_channels(model, groups, orders, {g.name: 1}, MOBILENET_SHAPE), [block], blocks,
                          replace_projection=True)
    gradual = remove_blocks(model, [block], blocks, replace_projection=True)
    masks = ChannelMasks(gradual, groups, orders, {g.name: 1}, MOBILENET_SHAPE)
    assert [m.name for m in masks.groups] != [g.name] and masks.steps          # re-rooted, not dropped
    masks.apply(1.0)
    after = prune_channels(gradual, masks.groups, masks.orders, masks.steps, MOBILENET_SHAPE)
    assert {k: v.shape for k, v in after.state_dict().items()} == {k: v.shape for k, v in first.state_dict().items()}
