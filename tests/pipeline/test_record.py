"""Prune records are data: a record never runs code without --trust-code, never reaches outside its folder,
never names itself, and every malformed field is a one-line error naming the field and the file."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.blocks import discover
from edgeprune.pipeline.models import ModelSpec, load_model
from edgeprune.pipeline.record import load_prune_record, save_prune_record

runner = CliRunner()

MARKER_FACTORY = """
open({marker!r}, "w").close()          # importing this module is running code
import torch.nn as nn
def tiny(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
"""


def _one_line_refusal(r, *words):
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.fixture
def delivery(tmp_path, monkeypatch):
    """A delivery folder: a record whose base is a factory module lying beside it that marks its import."""
    folder = tmp_path / "delivery"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "evil_nets_rec.py").write_text(MARKER_FACTORY.format(marker=str(marker)))
    import torch.nn as nn
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 10))
    _, rec = save_prune_record(folder / "pruned.pt", model, {"name": "evil_nets_rec:tiny", "input_size": 8}, [],
                               False, {})
    monkeypatch.chdir(folder)
    yield rec, marker
    sys.modules.pop("evil_nets_rec", None)


def test_record_naming_a_factory_beside_it_runs_nothing_without_trust_code(delivery):
    rec, marker = delivery
    for cmd in (["blocks"], ["eval"], ["export", "--out", "x.onnx"]):
        r = runner.invoke(app, [*cmd, "--model", str(rec)])
        _one_line_refusal(r, "evil_nets_rec:tiny", "--trust-code")
        assert not marker.exists()
    r = runner.invoke(app, ["blocks", "--model", str(rec), "--trust-checkpoint"])   # not the same consent
    _one_line_refusal(r, "--trust-code")
    assert not marker.exists()


def test_record_naming_a_factory_loads_with_trust_code(delivery):
    rec, marker = delivery
    r = runner.invoke(app, ["blocks", "--model", str(rec), "--trust-code", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["input_shape"] == [1, 1, 8, 8] and marker.exists()


def test_record_fields_never_grant_consent(delivery):
    rec, marker = delivery
    data = json.loads(rec.read_text())
    data["model"].update(trust_code=True, trust_checkpoint=True)
    rec.write_text(json.dumps(data))
    _one_line_refusal(runner.invoke(app, ["blocks", "--model", str(rec)]), "--trust-code")
    assert not marker.exists()


def _record(tmp_path, name="r.json", **fields):
    rec = {"schema": "edgeprune/prune-record", "schema_version": 1, "model": {"name": "cifar_resnet20"},
           "removed": [], "weights": "w.pt", **fields}
    path = tmp_path / name
    path.write_text(json.dumps(rec))
    return path


def test_record_naming_os_fork_is_refused_and_nothing_forks(tmp_path, monkeypatch):
    import os
    calls = []
    monkeypatch.setattr(os, "fork", lambda: calls.append(1) or 0)
    rec = _record(tmp_path, model={"name": "os:fork"})
    _one_line_refusal(runner.invoke(app, ["blocks", "--model", str(rec)]), "os:fork", "--trust-code")
    assert calls == []


@pytest.mark.parametrize("model, words", [
    ({"name": "r.json"}, ("itself",)),
    ({"name": "other.json"}, ("names a prune record",)),
])
def test_record_naming_itself_or_another_record_is_one_line(tmp_path, model, words):
    rec = _record(tmp_path, model=model)
    _record(tmp_path, "other.json", model={"name": "r.json"})          # a cycle r -> other -> r
    r = runner.invoke(app, ["blocks", "--model", str(rec)])
    _one_line_refusal(r, "model.name", *words)
    r = runner.invoke(app, ["blocks", "--model", str(tmp_path / "other.json")])
    _one_line_refusal(r, "model.name")


@pytest.mark.parametrize("weights", ["../w.pt", "/etc/passwd", "sub/../../w.pt", "..\\w.pt", "C:\\w.pt"])
def test_record_weights_stay_in_the_records_folder(tmp_path, weights):
    folder = tmp_path / "d"
    folder.mkdir()
    rec = _record(folder, weights=weights)
    _one_line_refusal(runner.invoke(app, ["blocks", "--model", str(rec)]), "'weights'", str(rec))


def test_record_weights_through_a_link_out_of_the_folder_are_refused(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (tmp_path / "outside.pt").write_bytes(b"x")
    (folder / "w.pt").symlink_to(tmp_path / "outside.pt")
    with pytest.raises(EdgepruneError, match="outside the record's folder"):
        load_prune_record(ModelSpec(str(_record(folder))))


@pytest.mark.parametrize("fields, key", [
    ({"model": "cifar_resnet20"}, "'model'"),
    ({"model": {"name": 3}}, "'model.name'"),
    ({"model": {"name": "cifar_resnet20", "num_classes": "10"}}, "'model.num_classes'"),
    ({"model": {"name": "cifar_resnet20", "input_size": True}}, "'model.input_size'"),
    ({"model": {"name": "resnet9000"}}, "'model.name'"),
    ({"removed": "layer1.0"}, "'removed'"),
    ({"removed": [1, 2]}, "'removed'"),
    ({"weights": ["w.pt"]}, "'weights'"),
    ({"replace_projection": "false"}, "'replace_projection'"),
    ({"weights_sha256": 7}, "'weights_sha256'"),
])
def test_record_fields_of_the_wrong_type_are_one_line(tmp_path, fields, key):
    rec = _record(tmp_path, **fields)
    _one_line_refusal(runner.invoke(app, ["blocks", "--model", str(rec)]), key, str(rec))


def test_prune_of_a_pruned_model_records_the_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = load_model(ModelSpec("cifar_resnet20"))
    found = [b for b in discover(base.model, base.input_shape) if b.kind == "identity"]
    from edgeprune.pipeline.blocks import remove_blocks
    one = remove_blocks(base.model, [found[0].name], discover(base.model, base.input_shape), False)
    save_prune_record(tmp_path / "p1.pt", one, base.spec.to_dict(), [found[0].name], False, {})
    first = load_model(ModelSpec("p1.json"))
    two = remove_blocks(first.model, [found[1].name], discover(first.model, first.input_shape), False)
    _, rec = save_prune_record(tmp_path / "p2.pt", two, first.spec.to_dict(), [found[1].name], False, {})
    data = json.loads(rec.read_text())
    assert data["model"]["name"] == "cifar_resnet20" and data["removed"] == [found[0].name, found[1].name]
    assert load_model(ModelSpec(str(rec))).source["removed_blocks"] == data["removed"]
