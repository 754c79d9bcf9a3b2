"""The build cache names a stage's file from the stage and its config, and survives torn writes."""

from __future__ import annotations

from edgeprune.build.cache import BuildCache


def test_files_are_named_by_stage_and_config(tmp_path):
    a = BuildCache.for_inputs(tmp_path, {"model": "m", "seed": 0})
    assert a.folder == BuildCache.for_inputs(tmp_path, {"seed": 0, "model": "m"}).folder   # key order is irrelevant
    assert a.folder != BuildCache.for_inputs(tmp_path, {"model": "m", "seed": 1}).folder
    ft = {"removed": ["b1"], "lr": 0.01}
    assert a.path("finetuned", ft, ".pt") == a.path("finetuned", dict(ft), ".pt")
    assert a.path("finetuned", ft, ".pt") != a.path("finetuned", {**ft, "lr": 0.02}, ".pt")
    assert a.path("finetuned", ft, ".pt").parent == a.folder and a.path("plans").name == "plans.json"


def test_save_load_and_a_torn_file_reads_as_absent(tmp_path):
    c = BuildCache(tmp_path / "c")
    assert c.load("memo") is None
    c.save("memo", {"a": [0.5, 1.0]})
    assert c.load("memo") == {"a": [0.5, 1.0]}
    c.path("memo").write_text('{"a": [0.5,')          # what an interrupted writer of old left behind
    assert c.load("memo") is None
    assert [p.name for p in c.folder.iterdir()] == ["memo.json"]   # no temporary files left
