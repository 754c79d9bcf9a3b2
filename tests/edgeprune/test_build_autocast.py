"""`edgeprune build --autocast`: the precision used and why in the JSON, manifest and report; a cache of its own
for a reduced precision (fp32 builds keep theirs); the artifact an fp32 export all the same."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from builds import brightness_npz, factories_importable  # tests/builds.py

from edgeprune.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build-autocast")
    brightness_npz(tmp / "tiny.npz", 400, 200)
    factories_importable()
    args = ["--model", "tinynets:tiny_resnet", "--input-size", "16", "--data", str(tmp / "tiny.npz"),
            "--device", "rpi4", "--score-images", "100", "--finetune-epochs", "0.2", "--bench-runs", "5",
            "--bench-rounds", "3", "--levers", "blocks", "--shortlist", "1"]
    return tmp, args


def _build(env, out: str, budget: str, *extra: str) -> tuple[int, dict]:
    tmp, args = env
    r = runner.invoke(app, ["build", *args, "--budget", budget, "--out", str(tmp / out), "--json", *extra])
    assert r.exit_code in (0, 3), r.output
    return r.exit_code, json.loads(r.stdout)


def test_the_precision_is_recorded_and_a_reduced_one_has_a_cache_of_its_own(env):
    tmp, _ = env
    caches = lambda: sorted(p.name for p in (tmp / "u" / "cache").iterdir())   # noqa: E731
    code, off = _build(env, "u", "0.001ms", "--autocast", "off")      # unreachable: answered from latencies
    assert code == 3 and off["torch"] == {"device": "cpu", "autocast": {
        "dtype": None, "choice": "off", "reason": "--autocast off", "used": "fp32"}}
    fp32_cache = caches()
    _, auto = _build(env, "u", "0.001ms")                             # auto on a CPU: off, the same cache
    assert auto["torch"]["autocast"]["used"] == "fp32" and auto["torch"]["autocast"]["choice"] == "auto"
    assert caches() == fp32_cache and len(fp32_cache) == 1
    _, bf16 = _build(env, "u", "0.001ms", "--autocast", "bf16")
    assert bf16["torch"]["autocast"]["used"] == "bf16"
    assert len(caches()) == 2 and set(fp32_cache) < set(caches())     # bf16 scores never serve an fp32 build


def test_a_bf16_build_records_bf16_and_ships_an_fp32_file(env):
    _, floor = _build(env, "u", "0.001ms", "--autocast", "bf16")
    budget = f"{(floor['search']['base']['latency_ms'] + floor['best_reachable_ms']) / 2:.4f}ms"
    code, out = _build(env, "b", budget, "--autocast", "bf16")
    assert code == 0 and out["removed"], out["message"]
    assert out["torch"]["autocast"]["used"] == "bf16" and out["accuracy"]["after_finetune"] is not None
    art = Path(out["artifact"])
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["build"]["torch"] == out["torch"] and manifest["build"]["config"]["autocast"] == "bf16"
    report = (art / "report.md").read_text()
    assert "after fine-tune (torch, bf16)" in report and "Torch ran on cpu in bf16 (--autocast bf16 on a CPU)" in report
    proto = onnx.load(str(art / "model.onnx"))
    reduced = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
    types = {t.data_type for t in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT in types and not types & reduced
    assert not [n for n in proto.graph.node if n.op_type == "Cast" and
                any(a.name == "to" and a.i in reduced for a in n.attribute)]
    # onnxruntime's figure of the fp32 file stays close to torch's under bf16
    assert abs(out["accuracy"]["onnx_fp32"] - out["accuracy"]["after_finetune"]) <= 0.05
