"""Kernel detection and the latency predictor, on real ONNX graphs and real onnxruntime traces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.devices.latency_fit import profile_model
from edgeprune.devices.kernel_graph import conv_macs, detect_kernels, load_model, used_taps, valid_taps
from edgeprune.devices.predictor import predict
from edgeprune.devices.profiles import load_profile
from edgeprune.devices.suite import synthetic_model
from edgeprune.errors import EdgepruneError

runner = CliRunner()


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def residual_block_model(c: int = 16, hw: int = 8) -> onnx.ModelProto:
    """A stem conv, then one ResNet basic block (conv-bn-relu, conv-bn, add, relu), then a head."""
    rng = np.random.default_rng(0)
    inits = [
        _const("w0", rng.standard_normal((c, 3, 3, 3)) * 0.1),
        _const("w1", rng.standard_normal((c, c, 3, 3)) * 0.1), _const("w2", rng.standard_normal((c, c, 3, 3)) * 0.1),
        _const("s", np.ones(c)), _const("b", np.zeros(c)), _const("m", np.zeros(c)), _const("v", np.ones(c)),
        _const("fc", rng.standard_normal((10, c)) * 0.1), _const("fcb", np.zeros(10)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c2", "s", "b", "m", "v"], ["b2"], name="bn2"),
        helper.make_node("Add", ["b2", "r0"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="head", transB=1),
    ]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_fusion_rules_without_nchwc():
    ks = detect_kernels(residual_block_model(), nchwc_block=0)
    kinds = [k.kind for k in ks]
    assert kinds.count("conv3x3") == 3
    conv1 = next(k for k in ks if k.name == "conv1")
    assert conv1.fused == ["BatchNormalization", "Relu"] and conv1.act == "Relu"
    # without the NCHWc layout the residual Add stays a kernel of its own, the ReLU after it too
    assert "eltwise" in kinds and not any(k.has_sum for k in ks)
    assert kinds.count("gemm") == 1 and "reorder" not in kinds


def test_fusion_rules_with_nchwc_match_the_onnxruntime_trace(tmp_path):
    model = residual_block_model()
    ks = detect_kernels(model, nchwc_block=16)
    conv2 = next(k for k in ks if k.name == "conv2")
    assert conv2.has_sum and conv2.act == "Relu" and conv2.fused == ["BatchNormalization", "Add", "Relu"]
    # the stem reads the 3-channel NCHW input directly; the blocked tensor is reordered once,
    # after the (blocked) global pooling, for Flatten
    assert [k.kind for k in ks].count("reorder") == 1
    # the real onnxruntime profile of the same model has the same kernels (on AVX-512 hosts)
    from edgeprune.devices.calibrate import nchwc_block_here
    path = tmp_path / "block.onnx"
    onnx.save(model, path)
    traced = [k for k, _ in profile_model(path, rounds=2, burst=2, warmup=1).kernels]
    mine = detect_kernels(model, nchwc_block_here())
    summary = lambda kl: sorted((k.kind, round(k.macs), round(k.out_bytes)) for k in kl)  # noqa: E731
    assert summary(traced) == summary(mine)


def test_valid_taps_and_macs():
    # 3x3, stride 1, pad 1 on a 4-wide row: the edges lose one tap each
    assert valid_taps(4, 4, 3, 1, 1) == 4 * 3 - 2
    assert used_taps(1, 1, 3, 1, 1) == 1            # a 1x1 map only ever meets the centre tap
    assert conv_macs([1, 8, 1, 1], [1, 16, 1, 1], 16, 8, 3, 3, [1, 1], [1, 1]) == 16 * 8
    assert conv_macs([1, 8, 32, 32], [1, 16, 32, 32], 16, 8, 1, 1, [1, 1], [0, 0]) == 32 * 32 * 16 * 8


def test_prediction_is_deterministic_and_banded():
    model = synthetic_model(3, seed=0).model
    a, b = predict(model, "host"), predict(model, "host")
    assert a.latency_ms == b.latency_ms and a.latency_ms > 0
    assert [k.cost_ms for k in a.kernels] == [k.cost_ms for k in b.kernels]
    err = load_profile("host").expected_error
    assert a.low_ms == pytest.approx(a.latency_ms * (1 - err))
    assert a.high_ms == pytest.approx(a.latency_ms * (1 + err))
    assert sum(k.cost_ms for k in a.kernels) + a.run_overhead_ms == pytest.approx(a.latency_ms)
    assert a.source == "predicted:host"


def test_more_work_predicts_slower_on_every_device():
    small = residual_block_model(c=16, hw=8)
    big = residual_block_model(c=64, hw=32)
    for dev in ("host", "rpi3", "rpi4", "rpi5", "jetson-nano"):
        assert predict(big, dev).latency_ms > predict(small, dev).latency_ms


def test_arm_boards_rank_as_their_hardware():
    model = synthetic_model(5, seed=0).model
    ms = {d: predict(model, d).latency_ms for d in ("rpi3", "rpi4", "rpi5")}
    assert ms["rpi5"] < ms["rpi4"] < ms["rpi3"]


def test_profile_without_latency_model(tmp_path):
    f = tmp_path / "bare.toml"
    f.write_text('name = "bare"\ncpu = "x"\ncores = 1\nclock_ghz = 1.0\nram_gb = 1\nthreads = 1\n'
                 'providers = ["CPUExecutionProvider"]\nlatency_source = "none"\n')
    with pytest.raises(EdgepruneError, match="no latency model.*calibrate"):
        predict(residual_block_model(), str(f))


def test_bad_model_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a protobuf at all" * 10)
    with pytest.raises(EdgepruneError, match="not a readable ONNX model"):
        load_model(junk)
    with pytest.raises(EdgepruneError, match="not found"):
        load_model(tmp_path / "missing.onnx")


def test_predict_cli_text_and_json(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(synthetic_model(1, seed=0).model, path)
    r = runner.invoke(app, ["predict", str(path), "--device", "rpi4", "--top", "3"])
    assert r.exit_code == 0, r.output
    assert "predicted" in r.output and "Heaviest kernels" in r.output and "+-" in r.output
    r = runner.invoke(app, ["predict", str(path), "--device", "rpi4", "--json"])
    d = json.loads(r.stdout)["prediction"]
    assert d["device"] == "rpi4" and d["low_ms"] < d["latency_ms"] < d["high_ms"]
    assert len(d["kernels"]) <= 10 and d["n_kernels"] >= len(d["kernels"])
    r = runner.invoke(app, ["predict", str(tmp_path / "nope.onnx")])
    assert r.exit_code == 2 and "not found" in r.output


def test_dynamic_batch_and_shape_override(tmp_path):
    m = residual_block_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    one = predict(m, "host").latency_ms
    four = predict(m, "host", {"x": [4, 3, 8, 8]}).latency_ms
    assert four > one
    with pytest.raises(EdgepruneError, match="unknown model input"):
        predict(m, "host", {"nope": [1, 3, 8, 8]})


def test_predict_names_kernels_by_module_path(tmp_path):
    """A dynamo export records module paths: conv kernels (batch norm folded in) name their conv."""
    from edgeprune.exporters.onnx_export import export_onnx
    from edgeprune.pipeline.resnet_cifar import CifarResNet

    path = tmp_path / "tiny.onnx"
    res = export_onnx(CifarResNet(8, 10, 1, widths=(4, 8, 16)).eval(), (1, 1, 32, 32), path)
    assert res.exporter == "dynamo"
    r = runner.invoke(app, ["predict", str(path), "--device", "rpi4", "--top", "100", "--json"])
    assert r.exit_code == 0, r.output
    kernels = json.loads(r.stdout)["prediction"]["kernels"]
    assert all({"name", "module", "kind", "cost_ms"} <= set(k) for k in kernels)
    by_module = {k["module"]: k for k in kernels}
    for conv in ("conv1", "layer1.0.conv1", "layer1.0.conv2", "layer3.0.conv1", "layer3.0.shortcut.0"):
        assert by_module[conv]["kind"].startswith("conv") and by_module[conv]["name"].startswith("node_")
    assert by_module["fc"]["kind"] == "gemm"
    assert not any(k["module"] and k["module"].endswith(("bn1", "bn2")) for k in kernels)
    r = runner.invoke(app, ["predict", str(path), "--device", "rpi4", "--top", "5"])
    assert r.exit_code == 0, r.output
    assert "module" in r.output and "layer" in r.output and "node_Conv" not in r.output


def test_kernels_without_module_metadata_fall_back_to_node_names(tmp_path):
    m = residual_block_model()
    assert {k.module for k in detect_kernels(m)} == {None}
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    r = runner.invoke(app, ["predict", str(path), "--device", "rpi4", "--json"])
    assert {k["module"] for k in json.loads(r.stdout)["prediction"]["kernels"]} == {None}
    r = runner.invoke(app, ["predict", str(path), "--device", "rpi4", "--top", "3"])
    assert r.exit_code == 0 and "conv1" in r.output


def test_a_custom_domain_op_is_refused_not_predicted(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    from typer.testing import CliRunner

    from edgeprune.cli import app
    g = helper.make_graph([helper.make_node("MyOp", ["x"], ["y"], domain="my.company")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("my.company", 1)])
    onnx.save(m, tmp_path / "custom.onnx")
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "custom.onnx"), "--device", "rpi4"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "custom domain 'my.company'" in r.stderr, r.output
