"""Block discovery on every architecture family the issue lists, and exact removal."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.blocks import discover, remove_blocks, shortcut_modules
from edgeprune.pipeline.resnet_cifar import resnet56

# (architecture, input size, blocks, projection blocks)
FAMILIES = [
    ("resnet18", 64, 8, 3), ("resnet34", 64, 16, 3), ("resnet50", 64, 16, 4), ("resnet101", 32, 33, 4),
    ("resnext50_32x4d", 32, 16, 4), ("wide_resnet50_2", 32, 16, 4), ("mobilenet_v2", 32, 10, 0),
    ("mobilenet_v3_small", 32, 6, 0), ("mobilenet_v3_large", 32, 10, 0), ("efficientnet_b0", 32, 9, 0),
    ("regnet_x_400mf", 32, 22, 4), ("regnet_y_400mf", 32, 16, 4),
]


@pytest.mark.parametrize("arch,size,n,n_proj", FAMILIES)
def test_discovery_counts_and_kinds(arch, size, n, n_proj):
    model = torchvision.models.get_model(arch).eval()
    blocks = discover(model, (1, 3, size, size))
    assert len(blocks) == n
    assert sum(b.kind == "projection" for b in blocks) == n_proj
    assert all(b.params > 0 and b.macs > 0 for b in blocks)
    stages = [b.stage for b in blocks]
    assert stages == sorted(stages)
    # removing every identity block gives a model that still runs and is smaller
    ids = [b.name for b in blocks if b.kind == "identity"]
    pruned = remove_blocks(model, ids, blocks)
    assert pruned(torch.randn(1, 3, size, size)).shape == (1, 1000)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_bundled_resnet56_blocks():
    blocks = discover(resnet56(), (1, 1, 32, 32))
    assert len(blocks) == 27
    assert [b.name for b in blocks if b.kind == "projection"] == ["layer2.0", "layer3.0"]
    assert [b.stage for b in blocks] == [1] * 9 + [2] * 9 + [3] * 9
    b = blocks[1]
    # two 3x3 convs 16->16 at 32x32: 2 * 16*16*9 * 32*32 MACs; BN params 4*16
    assert b.macs == 2 * 16 * 16 * 9 * 32 * 32 and b.params == 2 * 16 * 16 * 9 + 4 * 16
    assert b.activation


def test_zeroed_identity_block_removal_is_bit_identical():
    model = resnet56().eval()
    blocks = discover(model, (1, 1, 32, 32))
    with torch.no_grad():
        for name in ("layer1.3", "layer2.5", "layer3.8"):
            model.get_submodule(name).bn2.weight.zero_()
            model.get_submodule(name).bn2.bias.zero_()
    x = torch.randn(4, 1, 32, 32)
    pruned = remove_blocks(model, ["layer1.3", "layer2.5", "layer3.8"], blocks)
    assert torch.equal(pruned(x), model(x))
    assert isinstance(pruned.get_submodule("layer1.3"), nn.Identity)
    assert not isinstance(model.get_submodule("layer1.3"), nn.Identity)  # the input model is untouched


def test_projection_needs_option_and_becomes_shortcut():
    model = resnet56().eval()
    blocks = discover(model, (1, 1, 32, 32))
    with pytest.raises(EdgepruneError, match="--replace-projection"):
        remove_blocks(model, ["layer2.0"], blocks)
    pruned = remove_blocks(model, ["layer2.0"], blocks, replace_projection=True)
    block = model.get_submodule("layer2.0")
    x = torch.randn(2, 16, 32, 32).clamp_min(0)
    assert torch.equal(pruned.get_submodule("layer2.0")(x), torch.relu(block.shortcut(x)))
    assert pruned(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_unknown_block_name_is_clear():
    model = resnet56()
    with pytest.raises(EdgepruneError, match="no removable block named layer9"):
        remove_blocks(model, ["layer9"], input_shape=(1, 1, 32, 32))


def test_pruned_model_trains_and_replays_by_name():
    model = resnet56().eval()
    blocks = discover(model, (1, 1, 32, 32))
    names = ["layer1.2", "layer3.4"]
    a, b = remove_blocks(model, names, blocks), remove_blocks(model, names, blocks)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(a(x), b(x))
    a.train()
    loss = a(x).sum()
    loss.backward()
    assert a.fc.weight.grad is not None


def test_model_without_blocks_has_none():
    assert discover(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), (1, 1, 8, 8)) == []


def test_shortcut_modules_name_what_a_replaced_projection_keeps():
    m = resnet56().eval()
    assert shortcut_modules(m, "layer2.0") == ["layer2.0.shortcut.0", "layer2.0.shortcut.1"]
    assert shortcut_modules(m, "layer2.1") == []                        # identity shortcut: nothing stays
    tv = torchvision.models.resnet18().eval()
    assert shortcut_modules(tv, "layer3.0") == ["layer3.0.downsample.0", "layer3.0.downsample.1"]
    with pytest.raises(EdgepruneError):
        shortcut_modules(m, "conv1")
