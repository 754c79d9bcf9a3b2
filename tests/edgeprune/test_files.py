"""edgeprune.files on real files: atomic writes, staged folders, one-line read errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeprune import files
from edgeprune.errors import EdgepruneError
from edgeprune.files import (load_onnx, read_json, read_toml, replace_folder, save_torch_atomic, sha256_file,
                             sha256_files, sha256_json, staged_folder, write_bytes_atomic, write_json_atomic,
                             write_text_atomic)


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders the helpers would leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def one_line_error(excinfo, fragment: str) -> str:
    msg = str(excinfo.value)
    assert excinfo.value.exit_code == 2
    assert "\n" not in msg and fragment in msg, msg
    return msg


# ---------------------------------------------------------------- hashing

def test_sha256_file_and_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (3 << 20) + b"tail")        # more than one read chunk
    b.write_bytes(b"second")
    assert sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha256_files([a]) == sha256_file(a)
    assert sha256_files([a, b]) == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()


def test_sha256_json_is_order_independent():
    assert sha256_json({"a": 1, "b": [1, 2]}) == sha256_json({"b": [1, 2], "a": 1})
    assert sha256_json({"a": 1}) == hashlib.sha256(json.dumps({"a": 1}, sort_keys=True).encode()).hexdigest()
    assert len(sha256_json({"a": 1}, 10)) == 10 and sha256_json({"a": 1}).startswith(sha256_json({"a": 1}, 10))


# ---------------------------------------------------------------- atomic writes

def test_atomic_writes_write_and_replace(tmp_path):
    p = tmp_path / "sub" / "f.bin"                    # the folder is created
    assert write_bytes_atomic(p, b"one") == p and p.read_bytes() == b"one"
    write_bytes_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()
    write_json_atomic(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "j.json").read_text() == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'
    write_json_atomic(tmp_path / "j1.json", {"a": 1}, indent=None)
    assert (tmp_path / "j1.json").read_text() == '{"a": 1}\n'
    save_torch_atomic(tmp_path / "w.pt", {"w": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.arange(3))
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub") == []


def test_atomic_write_gets_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "f.txt", "x")
        with staged_folder(tmp_path / "d") as stage:
            (stage / "g").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


def test_write_failing_midway_keeps_the_old_file(tmp_path):
    p = tmp_path / "ckpt.pt"
    save_torch_atomic(p, {"w": torch.ones(2)})
    before = p.read_bytes()
    # torch.save writes the tensors' records, then fails pickling the lambda
    with pytest.raises(Exception):
        save_torch_atomic(p, {"w": torch.zeros(100_000), "f": lambda: 0})
    assert p.read_bytes() == before and leftovers(tmp_path) == []


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def half_then_interrupt(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(p, b"new contents")
    monkeypatch.undo()
    assert p.read_text() == "old" and leftovers(tmp_path) == []


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    p.write_text("old")

    def no_rename(src, dst):
        raise OSError("disk said no")

    monkeypatch.setattr(files.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk said no"):
        write_json_atomic(p, {"a": 1})
    monkeypatch.undo()
    assert p.read_text() == "old" and leftovers(tmp_path) == []


def test_strict_json_refuses_nan_in_one_line(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("old")
    with pytest.raises(EdgepruneError) as e:
        write_json_atomic(p, {"x": float("nan")}, strict=True)
    one_line_error(e, "cannot write m.json")
    with pytest.raises(EdgepruneError):
        write_json_atomic(p, {"x": object()}, strict=True)
    assert p.read_text() == "old" and leftovers(tmp_path) == []
    write_json_atomic(p, {"x": Path("a")})             # not strict: default=str
    assert json.loads(p.read_text()) == {"x": "a"}


# ---------------------------------------------------------------- folders

def test_staged_folder_renames_into_place(tmp_path):
    target = tmp_path / "out"
    with staged_folder(target) as stage:
        assert stage.parent == tmp_path and stage.is_dir() and not target.exists()
        (stage / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with staged_folder(target) as stage:             # an existing folder is replaced
        (stage / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert leftovers(tmp_path) == []


def test_staged_folder_failure_leaves_target_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_folder(target) as stage:
            (stage / "partial.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(tmp_path / "new"):
            raise KeyboardInterrupt
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []


def test_staged_folder_honours_check(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    calls = []

    def refuse_existing(t: Path) -> None:
        calls.append(t)
        if t.exists():
            raise EdgepruneError(f"{t} already exists; pass --force to replace it")

    with pytest.raises(EdgepruneError, match="already exists"):
        with staged_folder(target, check=refuse_existing):
            pytest.fail("the block must not run when check refuses")
    assert calls == [target] and leftovers(tmp_path) == []

    # the check runs again just before the swap: a target that appeared meanwhile is refused
    fresh = tmp_path / "fresh"
    with pytest.raises(EdgepruneError, match="already exists"):
        with staged_folder(fresh, check=refuse_existing) as stage:
            (stage / "new.txt").write_text("new")
            fresh.mkdir()
            (fresh / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in fresh.iterdir()) == ["theirs.txt"]
    assert leftovers(tmp_path) == [] and len(calls) == 3

    with staged_folder(tmp_path / "ok", check=refuse_existing) as stage:
        (stage / "x").write_text("x")
    assert (tmp_path / "ok" / "x").read_text() == "x"


def test_replace_folder_rolls_back(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "new.txt").write_text("new")
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    real = os.replace

    def fail_on_the_swap(a, b):
        if Path(a) == src:
            raise OSError("rename failed")
        real(a, b)

    monkeypatch.setattr(files.os, "replace", fail_on_the_swap)
    with pytest.raises(OSError, match="rename failed"):
        replace_folder(src, dst)
    monkeypatch.undo()
    assert sorted(p.name for p in dst.iterdir()) == ["old.txt"]
    assert (src / "new.txt").read_text() == "new"
    assert leftovers(tmp_path) == []                   # the holder of the old folder is gone

    assert replace_folder(src, dst) == dst
    assert sorted(p.name for p in dst.iterdir()) == ["new.txt"] and not src.exists()
    assert leftovers(tmp_path) == []


def test_replace_folder_refuses_a_file(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.write_text("a file")
    with pytest.raises(EdgepruneError) as e:
        replace_folder(src, dst)
    one_line_error(e, "is not a folder")
    assert dst.read_text() == "a file" and src.is_dir()


# ---------------------------------------------------------------- reads that fail in one line

@pytest.mark.parametrize("read, fmt, garbled, bad_bytes, good, expected", [
    (read_json, "JSON", '{"a": 1,\n\n  oops\n}', b"\xff\xfe\x00garbage", '{"a": [1, 2]}', {"a": [1, 2]}),
    (read_toml, "TOML", "name = \n[[x", b'name = "\xff"', 'name = "rpi4"\n[cpu]\ncores = 4\n',
     {"name": "rpi4", "cpu": {"cores": 4}}),
])
def test_reads_fail_in_one_line(tmp_path, read, fmt, garbled, bad_bytes, good, expected):
    with pytest.raises(EdgepruneError) as e:
        read(tmp_path / "missing", "prune record")
    assert one_line_error(e, "prune record not found: ").endswith("missing")
    with pytest.raises(EdgepruneError) as e:
        read(tmp_path, "prune record")
    one_line_error(e, "prune record is not a file")
    bad = tmp_path / "bad"
    bad.write_text(garbled)
    with pytest.raises(EdgepruneError) as e:
        read(bad, "device profile")
    one_line_error(e, f"device profile {bad} is not valid {fmt}")
    bad.write_bytes(bad_bytes)
    with pytest.raises(EdgepruneError) as e:
        read(bad)
    one_line_error(e, f"is not valid {fmt}")
    (tmp_path / "good").write_text(good)
    assert read(tmp_path / "good") == expected and read(str(tmp_path / "good")) == expected


def _tiny_model(path: Path, external: bool = False) -> Path:
    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data",
                  size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def test_load_onnx(tmp_path):
    with pytest.raises(EdgepruneError) as e:
        load_onnx(tmp_path / "missing.onnx")
    one_line_error(e, "model file not found")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage\nwith\nnewlines")
    with pytest.raises(EdgepruneError) as e:
        load_onnx(junk)
    one_line_error(e, f"{junk} is not a readable ONNX model")
    good = load_onnx(_tiny_model(tmp_path / "m.onnx"))
    assert [n.op_type for n in good.graph.node] == ["MatMul"]
    assert numpy_helper.to_array(good.graph.initializer[0]).shape == (64, 64)


def test_load_onnx_external_data(tmp_path):
    path = _tiny_model(tmp_path / "ext.onnx", external=True)
    assert load_onnx(path).graph.initializer[0].raw_data           # loaded from ext.onnx.data
    (tmp_path / "ext.onnx.data").unlink()
    proto = load_onnx(path, load_external_data=False)             # the graph alone still reads
    assert proto.graph.initializer[0].external_data
    with pytest.raises(EdgepruneError) as e:
        load_onnx(path)
    one_line_error(e, "is not a readable ONNX model")
