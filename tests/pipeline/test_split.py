"""The scoring / held-out split of the validation images: stratified by class, seeded, interleaved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.data import DataSpec, load_data
from edgeprune.pipeline.prune import HeldOut, split_val

SIZES = [300, 200, 100, 250, 150]          # class-ordered, uneven: 1,000 validation images


@pytest.fixture(scope="module")
def ordered(tmp_path_factory):
    """An .npz whose validation labels come class by class (as an ImageFolder's files do)."""
    y = np.concatenate([np.full(n, c) for c, n in enumerate(SIZES)]).astype(np.int64)
    x = (np.arange(len(y) * 64) % 251).astype(np.uint8).reshape(len(y), 1, 8, 8)
    path = tmp_path_factory.mktemp("split") / "ordered.npz"
    np.savez(path, x_train=x[:20], y_train=y[:20], x_val=x, y_val=y)
    return load_data(DataSpec(str(path), classes=["a", "b", "c", "d", "e"]), (1, 1, 8, 8), 5)


def _counts(bundle, idx):
    return torch.bincount(bundle.y_val[idx], minlength=len(SIZES)).tolist()


def _assert_prefixes_stratified(bundle, idx):
    """Every prefix holds each class within one image of its share of the whole list."""
    labels = bundle.y_val[idx]
    onehot = torch.nn.functional.one_hot(labels, len(SIZES)).to(torch.float64)
    prefix = onehot.cumsum(0)                                  # (k, classes): counts in the first k
    share = onehot.sum(0) / len(idx)
    expected = torch.arange(1, len(idx) + 1, dtype=torch.float64)[:, None] * share
    assert (prefix - expected).abs().max().item() <= 1.0


def test_exact_per_class_counts_by_largest_remainder(ordered):
    held = split_val(ordered, 137)
    # 137 x share = 41.1, 27.4, 13.7, 34.25, 20.55: floors sum to 135, the two largest remainders get one more
    assert _counts(ordered, held.score) == [41, 27, 14, 34, 21]
    assert _counts(ordered, held.final) == [259, 173, 86, 216, 129]
    assert len(held.score) == 137 and not held.shared
    together = torch.cat([held.score, held.final])
    assert sorted(together.tolist()) == list(range(sum(SIZES)))      # a partition, nothing repeated
    assert held.score_counts == {"a": 41, "b": 27, "c": 14, "d": 34, "e": 21}
    assert held.final_counts == {"a": 259, "b": 173, "c": 86, "d": 216, "e": 129}


def test_old_first_n_split_would_have_seen_one_class(ordered):
    held = split_val(ordered, 100)
    assert _counts(ordered, torch.arange(100)) == [100, 0, 0, 0, 0]   # what "the first N" gave
    assert all(c > 0 for c in _counts(ordered, held.score))
    assert all(c > 0 for c in _counts(ordered, held.final[:256]))     # the golden-vector prefix


def test_orders_are_interleaved_so_every_prefix_is_stratified(ordered):
    held = split_val(ordered, 137)
    _assert_prefixes_stratified(ordered, held.final)
    _assert_prefixes_stratified(ordered, held.score)
    # the first 256 held-out images (golden vectors): 256 x share = 76.8, 51.3, 25.5, 64.1, 38.3
    assert all(abs(got - want) <= 1 for got, want in zip(_counts(ordered, held.final[:256]),
                                                          [76.8, 51.3, 25.5, 64.1, 38.3]))


def test_deterministic_for_a_seed_and_different_for_another(ordered):
    a, b = split_val(ordered, 137, seed=0), split_val(ordered, 137, seed=0)
    assert torch.equal(a.score, b.score) and torch.equal(a.final, b.final)
    assert split_val(ordered, 137).score.tolist() == a.score.tolist()            # seed defaults to 0
    c = split_val(ordered, 137, seed=1)
    assert set(c.score.tolist()) != set(a.score.tolist())
    assert _counts(ordered, c.score) == _counts(ordered, a.score)                  # same strata
    assert c.seed == 1 and a.seed == 0


def test_describe_and_to_dict(ordered):
    held = split_val(ordered, 137, seed=3)
    d = held.to_dict()
    assert d["method"] == "stratified" and d["seed"] == 3 and d["shared"] is False
    assert d["score_images"] == 137 and d["final_images"] == 863
    assert d["per_class"]["c"] == {"score": 14, "final": 86}
    text = held.describe()
    assert "137 scoring images" in text and "863 held out" in text and "seed 3" in text and "c 14" in text
    even = split_val(ordered, 1000 - 100)     # still a split: n == score_images + 100
    assert not even.shared


def test_small_sets_share_images_stratified(ordered):
    held = split_val(ordered, 950)            # fewer than score_images + 100 images
    assert held.shared and len(held.final) == 1000 and len(held.score) == 950
    assert _counts(ordered, held.score) == [285, 190, 95, 238, 142]
    assert sorted(held.final.tolist()) == list(range(1000))
    assert "shared" in held.describe()
    everything = split_val(ordered, 5000)
    assert everything.shared and sorted(everything.score.tolist()) == list(range(1000))
    with pytest.raises(EdgepruneError, match="must be positive"):
        split_val(ordered, 0)


def test_heldout_still_builds_positionally():
    h = HeldOut(torch.arange(3), torch.arange(3, 9))
    assert not h.shared and h.to_dict()["score_images"] == 3


def test_default_data_is_fifty_per_class():
    bundle = load_data(DataSpec(), (1, 1, 32, 32))
    held = split_val(bundle, 500)
    assert set(held.score_counts.values()) == {50} and set(held.final_counts.values()) == {150}
    assert len(held.final) == 1500


def test_imagefolder_split_covers_every_class(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f"class{c}" for c in range(4)]
    for split, n in (("train", 2), ("val", 60)):
        for cls in names:
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    bundle = load_data(DataSpec(str(tmp_path)), (1, 3, 8, 8), 4)
    assert bundle.y_val[:60].unique().tolist() == [0]       # files come class by class
    held = split_val(bundle, 100)
    assert held.score_counts == {n: 25 for n in names} and held.final_counts == {n: 35 for n in names}
    assert torch.bincount(bundle.y_val[held.final[:40]], minlength=4).tolist() == [10, 10, 10, 10]


def test_score_command_passes_its_seed_to_the_split(ordered):
    import json

    from typer.testing import CliRunner

    from edgeprune.cli import app

    runner = CliRunner()
    args = ["score", "--model", "cifar_resnet20", "--num-classes", "5", "--input-size", "8",
            "--data", ordered.name, "--score-images", "50", "--criterion", "l1", "--json"]
    out = [json.loads(runner.invoke(app, args + ["--seed", str(s)]).stdout) for s in (0, 4)]
    assert [o["split"]["seed"] for o in out] == [0, 4]
    assert out[0]["split"]["per_class"]["2"] == {"score": 5, "final": 95} and out[0]["images"] == 50
