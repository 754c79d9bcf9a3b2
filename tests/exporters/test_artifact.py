"""The artifact folder: export and verification of three real models, files, checksums, atomicity."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeprune.errors import EdgepruneError
from edgeprune.exporters import artifact as artifact_mod
from edgeprune.exporters.artifact import (ArtifactConfig, build_artifact, checksum_problems, load_manifest,
                                          update_manifest)
from edgeprune.exporters.verify import VerifyConfig

MODELS = ("resnet56", "resnet18", "mobilenet_v2")


@pytest.mark.parametrize("name", MODELS)
def test_export_and_verification_pass(artifacts, name):
    path, manifest, _, shape, images = artifacts(name)
    ver = manifest["verification"]
    assert ver["passed"] and ver["failures"] == []
    assert ver["random"]["max_abs_diff"] <= ver["random"]["tolerance"]
    assert ver["real"]["n"] == len(images)
    assert ver["real"]["max_abs_diff"] <= ver["real"]["tolerance"]
    assert ver["real"]["top1_agreement"] >= 0.99
    # the outputs are not trivially small, so the comparison means something
    assert ver["real"]["max_abs_reference"] > 0.1
    assert manifest["export"]["exporter"] == "dynamo" and manifest["export"]["fallback_reason"] is None
    simp = manifest["export"]["simplify"]
    assert simp["applied"] and simp["nodes_after"] <= simp["nodes_before"]
    model = manifest["model"]
    assert model["inputs"] == [{"name": "input", "shape": list(shape), "dtype": "float32", "layout": "NCHW"}]
    assert model["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert model["opset"] == 18 and sum(model["operators"].values()) == model["nodes"]
    assert model["macs"] > 0 and model["parameters"] > 0
    assert manifest["memory"]["weight_bytes"] > 0 and manifest["memory"]["peak_activation_bytes"] > 0
    assert manifest["classes"][0] == "T-shirt/top" and manifest["preprocessing"]["layout"] == "NCHW"
    assert manifest["source"]["model"] == name
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "onnxsim", "edgeprune"}
    assert manifest["accuracy"]["exported_model"]["n"] == len(images)
    assert {p.name for p in path.iterdir()} == {"model.onnx", "model.ort", "required_operators.config",
                                                "golden.npz", "manifest.json"}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


@pytest.mark.parametrize("name", MODELS)
def test_ort_file_loads_and_gives_the_same_outputs(artifacts, name):
    path, manifest, model, shape, images = artifacts(name)
    golden = np.load(path / "golden.npz")
    x = golden["input"]
    assert x.shape == (8, *shape[1:]) and np.allclose(x, images[:8].numpy())
    onnx_sess = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_sess = ort.InferenceSession(str(path / "model.ort"), providers=["CPUExecutionProvider"])
    for i in range(len(x)):
        a = onnx_sess.run(None, {"input": x[i:i + 1]})[0]
        b = ort_sess.run(None, {"input": x[i:i + 1]})[0]
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(a, golden["logits"][i:i + 1], atol=1e-5, rtol=1e-5)
    config = (path / "required_operators.config").read_text()
    assert "ai.onnx;" in config and "/tmp" not in config
    assert manifest["ort_format"]["required_operators"] == [
        ln for ln in config.splitlines() if ln and not ln.startswith("#")]


@pytest.mark.parametrize("name", MODELS)
def test_every_sha256_matches_its_file(artifacts, name):
    path, manifest, *_ = artifacts(name)
    listed = manifest["files"]
    assert set(listed) == {"model.onnx", "model.ort", "required_operators.config", "golden.npz"}
    for fname, entry in listed.items():
        data = (path / fname).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    assert json.loads((path / "manifest.json").read_text()) == manifest
    assert checksum_problems(path) == []


def test_node_module_paths_survive_onnxsim(artifacts):
    path, manifest, *_ = artifacts("resnet56")
    proto = onnx.load(str(path / "model.onnx"))
    assert manifest["model"]["nodes_with_module_path"] == len(proto.graph.node)
    keys = {p.key for n in proto.graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.name_scopes" in keys
    assert "pkg.torch.onnx.stack_trace" not in keys  # build-machine paths stay home


def test_update_manifest_adds_a_section_and_keeps_checksums(tiny, tmp_path):
    model, shape = tiny
    out = build_artifact(model, shape, tmp_path / "a").path
    update_manifest(out, "latency", {"p50_ms": 1.5, "source": "measured:host"})
    (out / "report.md").write_text("# report\n")
    m = update_manifest(out, "verify_arm", {"verdict": "pass"})
    assert m["latency"]["p50_ms"] == 1.5 and m["verify_arm"] == {"verdict": "pass"}
    assert "report.md" in m["files"] and checksum_problems(out) == []
    assert load_manifest(out) == m
    with pytest.raises(EdgepruneError, match="maintained by edgeprune"):
        update_manifest(out, "files", {})
    with pytest.raises(EdgepruneError, match="not JSON"):
        update_manifest(out, "x", {"bad": object()})
    (out / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(EdgepruneError, match="model.onnx: sha256 does not match"):
        update_manifest(out, "latency", {})
    assert checksum_problems(out) == ["model.onnx: sha256 does not match the manifest"]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_failed_verification_leaves_no_folder(tiny, tmp_path):
    model, shape = tiny
    cfg = ArtifactConfig(verify=VerifyConfig(atol=-1.0, rtol=0.0))  # no difference can pass
    with pytest.raises(EdgepruneError, match="ONNX verification failed") as e:
        build_artifact(model, shape, tmp_path / "a", cfg)
    assert e.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_interruption_mid_export_leaves_no_folder_and_keeps_the_old_one(tiny, tmp_path, monkeypatch):
    model, shape = tiny
    old = build_artifact(model, shape, tmp_path / "a")
    before = (old.path / "manifest.json").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact_mod, "convert_to_ort", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_artifact(model, shape, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        build_artifact(model, shape, tmp_path / "a", ArtifactConfig(force=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert (tmp_path / "a" / "manifest.json").read_text() == before
    assert checksum_problems(tmp_path / "a") == []


def test_existing_folder_needs_force(tiny, tmp_path):
    model, shape = tiny
    first = build_artifact(model, shape, tmp_path / "a").manifest
    with pytest.raises(EdgepruneError, match="already exists; pass --force") as e:
        build_artifact(model, shape, tmp_path / "a")
    assert e.value.exit_code == 2
    second = build_artifact(model, shape, tmp_path / "a", ArtifactConfig(force=True)).manifest
    assert second["created_utc"] >= first["created_utc"]
    assert checksum_problems(tmp_path / "a") == [] and _leftovers(tmp_path) == []


def test_force_never_replaces_a_folder_that_is_not_an_artifact(tiny, tmp_path):
    model, shape = tiny
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(EdgepruneError, match="not an edgeprune artifact"):
        build_artifact(model, shape, precious, ArtifactConfig(force=True))
    assert (precious / "thesis.tex").read_text() == "x" and _leftovers(tmp_path) == []


def test_random_inputs_make_the_test_vectors_when_no_images(tiny, tmp_path):
    model, shape = tiny
    m = build_artifact(model, shape, tmp_path / "a").manifest
    assert m["verification"]["real"] is None and m["accuracy"] is None
    assert m["golden"]["inputs"].startswith("random") and "label" not in m["golden"]["arrays"]
    assert m["golden"]["raw"] is None and not any(k.startswith("raw_") for k in m["golden"]["arrays"])
    assert m["preprocessing"] is None and m["classes"] is None


def test_dynamic_batch(tiny, tmp_path, rng_images):
    model, shape = tiny
    cfg = ArtifactConfig()
    cfg.export.dynamic_batch = True
    m = build_artifact(model, shape, tmp_path / "a", cfg, images=rng_images(shape, 10)).manifest
    assert m["model"]["inputs"][0]["shape"][0] == "batch" and m["model"]["dynamic_batch"]
    sess = ort.InferenceSession(str(tmp_path / "a" / "model.ort"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": rng_images(shape, 5)})[0].shape == (5, 3)
    static = build_artifact(model, shape, tmp_path / "b").manifest
    assert m["memory"]["peak_activation_bytes"] == static["memory"]["peak_activation_bytes"]
    assert m["model"]["macs"] == static["model"]["macs"]
