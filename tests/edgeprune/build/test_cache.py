"""The build cache names a stage's file from the stage and its config, and survives torn writes."""

from __future__ import annotations

import os

import pytest

from edgeprune.build.cache import BuildCache, str_lists, wall_runs
from edgeprune.build.run import build_lock
from edgeprune.errors import EdgepruneError
from edgeprune.pipeline.plan import AccuracyOracle


def test_files_are_named_by_stage_and_config(tmp_path):
    a = BuildCache.for_inputs(tmp_path, {"model": "m", "seed": 0})
    assert a.folder == BuildCache.for_inputs(tmp_path, {"seed": 0, "model": "m"}).folder   # key order is irrelevant
    assert a.folder != BuildCache.for_inputs(tmp_path, {"model": "m", "seed": 1}).folder
    ft = {"removed": ["b1"], "lr": 0.01}
    assert a.path("finetuned", ft, ".pt") == a.path("finetuned", dict(ft), ".pt")
    assert a.path("finetuned", ft, ".pt") != a.path("finetuned", {**ft, "lr": 0.02}, ".pt")
    assert a.path("finetuned", ft, ".pt").parent == a.folder and a.path("plans").name == "plans.json"


def test_save_load_and_a_torn_file_reads_as_absent(tmp_path):
    said: list[str] = []
    c = BuildCache(tmp_path / "c", say=said.append)
    assert c.load("memo") is None and said == []        # absent is not corrupt
    c.save("memo", {"a": [0.5, 1.0]})
    assert c.load("memo") == {"a": [0.5, 1.0]}
    assert [p.name for p in c.folder.iterdir()] == ["memo.json"]   # no temporary files left
    c.path("memo").write_text('{"a": [0.5,')          # what an interrupted writer of old left behind
    assert c.load("memo") is None
    assert said == ["discarded a corrupt cache file memo.json: recomputing"]
    assert list(c.folder.iterdir()) == []             # discarded: the stage writes it afresh


@pytest.mark.parametrize("stored", [
    [["a", 0.5]], {"a": 0.5}, {"a": [0.5]}, {"a": [0.5, "x"]}, {"a": [True, 1.0]}, {"a": [0.5, 1.0, 2.0]},
    {"a": None}, "memo", 3,
])
def test_a_memo_of_the_wrong_shape_is_discarded(tmp_path, stored):
    said: list[str] = []
    c = BuildCache(tmp_path / "c", say=said.append)
    c.save("accuracy-memo", stored)
    assert c.load("accuracy-memo", valid=AccuracyOracle.valid_memo) is None
    assert said == ["discarded a corrupt cache file accuracy-memo.json (of the wrong shape): recomputing"]
    assert not c.path("accuracy-memo").exists()


def test_validators_accept_what_the_build_writes(tmp_path):
    c = BuildCache(tmp_path / "c")
    good = {"": [0.9, 0.3], "b1,b2": [0.5, 1], "b3": [0.1, float("inf")]}
    c.save("accuracy-memo", good)
    assert c.load("accuracy-memo", valid=AccuracyOracle.valid_memo) == good
    assert str_lists({"l1": ["b1", "b2"], "random": []}) and not str_lists({"l1": "b1"})
    assert not str_lists({"l1": ["b1", 2]}) and not str_lists([["b1"]])
    assert wall_runs({"runs": [1.5, 2]}) and wall_runs({"runs": []})
    assert not wall_runs({"runs": ["x"]}) and not wall_runs([1.0]) and not wall_runs({"runs": 3})


def test_sweep_removes_what_interrupted_writers_left(tmp_path):
    c = BuildCache(tmp_path / "c")
    c.save("memo", {})
    (c.folder / ".plan-abc.onnx.tmp-x1y2").mkdir()
    (c.folder / ".plan-abc.onnx.tmp-x1y2" / "plan-abc.onnx").write_bytes(b"half")
    (c.folder / ".memo.json.k3j.tmp").write_text("{")
    (c.folder / "artifact").mkdir()
    c.sweep()
    assert sorted(p.name for p in c.folder.iterdir()) == ["artifact", "memo.json"]


def test_build_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    out = tmp_path / "out"
    with build_lock(out) as lock:
        assert lock == out / ".lock" and f"pid {os.getpid()} " in lock.read_text()
        with pytest.raises(EdgepruneError) as e:
            with build_lock(out):
                pass
        msg = str(e.value)
        assert e.value.exit_code == 2 and "\n" not in msg
        assert f"another build is using {out}: held by pid {os.getpid()} " in msg and "started 20" in msg
    with build_lock(out):                  # released on exit
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgepruneError, match="exists and is not a folder"):
        with build_lock(tmp_path / "file"):
            pass
