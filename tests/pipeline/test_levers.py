import pytest

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.levers import PlanState, is_block_only, parse_levers, resolution_steps


def test_tokens_round_trip_and_are_canonical():
    s = PlanState().with_block("layer1.2").with_channel_step("features.3.conv.0.0").with_channel_step(
        "features.3.conv.0.0").with_resolution(48)
    tokens = s.tokens()
    assert tokens == ["channels:features.3.conv.0.0=2", "layer1.2", "resolution:48"]
    assert PlanState.from_tokens(list(reversed(tokens))) == s
    assert s.levers() == ["blocks", "channels", "resolution"]
    assert s.describe() == "1 block removed, 1 channel group shrunk (2 steps), input 48x48"
    assert PlanState().describe() == "unchanged"


def test_block_only_plans_are_bare_block_names():
    assert is_block_only(["layer1.0", "layer2.3"])
    assert not is_block_only(["layer1.0", "resolution:24"])
    assert PlanState.from_tokens(["layer1.0"]).levers() == ["blocks"]


@pytest.mark.parametrize("bad", ["channels:g", "channels:=3", "resolution:big"])
def test_bad_tokens_are_refused(bad):
    with pytest.raises(ValueError):
        PlanState.from_tokens([bad])


def test_parse_levers_accepts_commas_and_lists_known_ones():
    assert parse_levers(["resolution,blocks"]) == ["blocks", "resolution"]
    assert parse_levers(["channels", "blocks"]) == ["blocks", "channels"]
    with pytest.raises(EdgepruneError, match="unknown lever width; known: blocks, channels, resolution"):
        parse_levers(["blocks,width"])
    with pytest.raises(EdgepruneError, match="known"):
        parse_levers([""])


def test_resolution_steps():
    assert resolution_steps(64, 32, 8) == [56, 48, 40, 32]
    assert resolution_steps(32, 20, 8) == [24]
    assert resolution_steps(32, 32, 8) == []
    with pytest.raises(EdgepruneError, match="--min-resolution 40 is above the model's input size 32"):
        resolution_steps(32, 40, 8)
