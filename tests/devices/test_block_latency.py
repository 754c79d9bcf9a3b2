""""The model minus these blocks": one dynamo export, per-block costs, exact subtraction."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeprune.devices.block_latency import block_latency_table, default_blocks, export_for_blocks, table_from_onnx
from edgeprune.devices.predictor import predict
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.resnet_cifar import resnet20

BLOCKS = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet20().eval()


@pytest.fixture(scope="module")
def exported(model):
    return export_for_blocks(model, torch.randn(1, 1, 32, 32))


@pytest.fixture(scope="module")
def table(exported):
    return table_from_onnx(exported, "host", BLOCKS)


def test_every_block_is_attributed_and_base_matches_predict(table, exported):
    for b in BLOCKS:
        assert table.costs[b].kernels >= 2, b            # two convolutions per basic block
    assert table.costs[""].kernels >= 2                  # stem and head stay outside the blocks
    assert table.base_ms == pytest.approx(predict(exported, "host").latency_ms, rel=1e-9)


def test_removing_blocks_subtracts_their_cost(table):
    saved = table.block_ms()
    assert all(v > 0 for v in saved.values())
    both = table.predict_without(["layer1.1", "layer3.2"])
    assert both == pytest.approx(table.base_ms - saved["layer1.1"] - saved["layer3.2"], rel=1e-6)
    est = table.estimate_without(["layer2.1"])
    assert est.low_ms < est.latency_ms < est.high_ms and est.removed == ["layer2.1"]


def test_table_agrees_with_exporting_the_variant(model, table):
    variant = copy.deepcopy(model)
    variant.layer1[1] = nn.Identity()
    variant.layer2[2] = nn.Identity()
    proto = export_for_blocks(variant, torch.randn(1, 1, 32, 32))
    direct = predict(proto, "host").latency_ms
    assert table.predict_without(["layer1.1", "layer2.2"]) == pytest.approx(direct, rel=0.02)


def test_nested_blocks_and_bad_names(exported, model):
    t = table_from_onnx(exported, "host", ["layer2"] + BLOCKS)
    assert t.predict_without(["layer2"]) == pytest.approx(
        t.predict_without(["layer2.0", "layer2.1", "layer2.2"]), rel=1e-9)
    with pytest.raises(EdgepruneError, match="unknown block 'layer9.0'"):
        t.predict_without(["layer9.0"])
    with pytest.raises(EdgepruneError, match="no module named 'nope'"):
        block_latency_table(model, torch.randn(1, 1, 32, 32), "host", ["nope"])


def test_default_blocks_are_the_residual_blocks(model):
    assert default_blocks(model) == BLOCKS


def test_model_without_scopes_is_refused(exported):
    stripped = copy.deepcopy(exported)
    for n in stripped.graph.node:
        del n.metadata_props[:]
    with pytest.raises(EdgepruneError, match="dynamo=True"):
        table_from_onnx(stripped, "host", BLOCKS)


def test_projection_block_replaced_by_its_shortcut(model, exported):
    t = table_from_onnx(exported, "host", BLOCKS + ["layer2.0.shortcut"])
    whole = t.predict_without(["layer2.0"])
    shortcut_only = t.predict_without(["layer2.0"], keep=["layer2.0.shortcut"])
    assert whole < shortcut_only < t.base_ms
    variant = copy.deepcopy(model)
    variant.layer2[0] = variant.layer2[0].shortcut           # the 1x1 projection alone
    direct = predict(export_for_blocks(variant, torch.randn(1, 1, 32, 32)), "host").latency_ms
    assert shortcut_only == pytest.approx(direct, rel=0.03)
