"""Static figures from ONNX shape inference: memory, MACs, operators, module paths; onnxsim's handling."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.onnx_facts import count_macs, infer_shapes, node_module_paths, operator_counts, parameter_count
from edgeprune.exporters.memory import static_memory
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.exporters.simplify import simplify_onnx


def residual_graph(batch: int | str = 1) -> onnx.ModelProto:
    """x[1,4,8,8] -> Conv(4->8, 3x3, pad 1) -> Relu -> Conv(8->4, 1x1) -> Add(x) -> Flatten -> Gemm(256->10).

    Activations (float32 bytes): x 1024, c1 2048, r1 2048, c2 1024, s 1024, f 1024, y 40.
    Live while Relu runs: x (needed by Add), c1, r1 = 5120 bytes, the peak.
    """
    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(w(8, 4, 3, 3), "w1"), numpy_helper.from_array(w(4, 8, 1, 1), "w2"),
             numpy_helper.from_array(w(10, 256), "wf"), numpy_helper.from_array(w(10), "bf")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "x"], ["s"], name="add"),
        helper.make_node("Flatten", ["s"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    g = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def test_static_memory_by_hand(tmp_path):
    onnx.save(residual_graph(), str(tmp_path / "r.onnx"))
    mem = static_memory(tmp_path / "r.onnx")
    assert mem.weight_bytes == 4 * (8 * 4 * 9 + 4 * 8 + 10 * 256 + 10)
    assert mem.peak_activation_bytes == 1024 + 2048 + 2048
    assert mem.peak_node == "relu1" and set(mem.peak_live_tensors) == {"x", "c1", "r1"}
    assert mem.largest_activation_bytes == 2048
    assert (mem.input_bytes, mem.output_bytes, mem.unknown_shapes) == (1024, 40, [])


def test_dynamic_batch_figures_are_given_at_the_batch_asked_for():
    assert static_memory(residual_graph("N")).peak_activation_bytes == 5120
    assert static_memory(residual_graph("N"), batch=4).peak_activation_bytes == 4 * 5120
    assert count_macs(residual_graph("N"), batch=2) == 2 * count_macs(residual_graph())


def test_macs_operators_parameters_by_hand():
    m = residual_graph()
    assert count_macs(m) == 8 * 64 * (4 * 9) + 4 * 64 * 8 + 10 * 256
    assert operator_counts(m) == {"Conv": 2, "Add": 1, "Flatten": 1, "Gemm": 1, "Relu": 1}
    assert parameter_count(m) == 8 * 4 * 9 + 4 * 8 + 10 * 256 + 10


def test_shape_inference_makes_inputs_static_and_leaves_the_model_alone():
    m = residual_graph("N")
    before = m.SerializeToString()
    F = TensorProto.FLOAT
    assert infer_shapes(m)["c1"] == ([1, 8, 8, 8], F)
    assert infer_shapes(m, batch=3)["y"] == ([3, 10], F)
    assert infer_shapes(m, {"x": [2, 4, 8, 8]})["s"] == ([2, 4, 8, 8], F)
    assert infer_shapes(m)["w1"] == ([8, 4, 3, 3], F)          # initializers: their own dims
    assert m.SerializeToString() == before
    with pytest.raises(EdgepruneError, match="unknown model input"):
        infer_shapes(m, {"nope": [1]})
    with pytest.raises(EdgepruneError, match="has 2 dims, the model expects 4"):
        infer_shapes(m, {"x": [1, 4]})


def mystery_graph(batch: int | str) -> onnx.ModelProto:
    """x -> Relu -> a custom-domain op ONNX has no schema for -> Relu -> y; value_info types its output at batch 1."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mystery", ["a"], ["b"], domain="com.example"),
             helper.make_node("Relu", ["b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
                          value_info=[helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def test_value_info_is_a_hint_only_for_the_shapes_it_was_written_for():
    assert infer_shapes(mystery_graph(1))["b"] == ([1, 3], TensorProto.FLOAT)
    # at another input shape the declared shapes are stale: b and y are left unknown (missing)
    resized = infer_shapes(mystery_graph(1), {"x": [2, 3]}, strict=False)
    assert resized["a"][0] == [2, 3] and "b" not in resized and "y" not in resized
    assert "b" not in infer_shapes(mystery_graph("N"), batch=2)
    partial = mystery_graph("N")          # a dimension inference cannot resolve is None
    partial.graph.node[1].CopyFrom(helper.make_node("Reshape", ["a", "target"], ["b"]))
    partial.graph.input.append(helper.make_tensor_value_info("target", TensorProto.INT64, [2]))
    assert infer_shapes(partial)["b"] == ([None, None], TensorProto.FLOAT)


def test_static_model_at_another_batch_is_predicted_at_that_batch():
    from edgeprune.devices.predictor import predict

    static, dynamic = residual_graph(1), residual_graph("N")
    for v in ("c1", "r1", "c2", "s", "f"):     # value_info written for batch 1, as exporters do
        static.graph.value_info.append(helper.make_tensor_value_info(v, TensorProto.FLOAT, None))
    static = onnx.shape_inference.infer_shapes(static)
    assert predict(static, "rpi4", {"x": [4, 4, 8, 8]}).latency_ms == predict(dynamic, "rpi4", {"x": [4, 4, 8, 8]}).latency_ms


def test_unreadable_model_is_one_clear_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model at all")
    with pytest.raises(EdgepruneError, match="not a readable ONNX model"):
        static_memory(tmp_path / "bad.onnx")


def test_module_paths_from_torchscript_scope_names():
    nodes = [helper.make_node("Relu", ["a"], ["b"], name="/features/features.17/conv/conv.2/Relu"),
             helper.make_node("Relu", ["b"], ["c"], name="/Flatten"),
             helper.make_node("Relu", ["c"], ["d"], name="node_7")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1])])
    assert node_module_paths(helper.make_model(g)) == {"/features/features.17/conv/conv.2/Relu": "features.17.conv.2",
                                                       "/Flatten": ""}


def relu6_net() -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The TorchScript exporter writes each ReLU6's bounds as Constant nodes; onnxsim merges them."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    return model, (1, 3, 16, 16)


def test_onnxsim_shrinks_a_torchscript_graph_and_node_metadata_is_restored(tmp_path, make_model, rng_images):
    model, shape = relu6_net()
    ts = export_onnx(model, shape, tmp_path / "ts.onnx", ExportConfig(dynamo=False))
    r = simplify_onnx(ts.path, tmp_path / "ts_sim.onnx", rng_images(shape, 4))
    assert r.applied and r.nodes_after < r.nodes_before and r.max_abs_diff <= 1e-4
    # onnxsim merges the duplicated ReLU6 bounds
    assert operator_counts(onnx.load(str(tmp_path / "ts_sim.onnx")))["Constant"] < \
        operator_counts(onnx.load(str(ts.path)))["Constant"]

    model, shape = make_model("resnet56")
    dyn = export_onnx(model, shape, tmp_path / "dyn.onnx")
    r = simplify_onnx(dyn.path, tmp_path / "dyn_sim.onnx", rng_images(shape, 4))
    kept = onnx.load(str(tmp_path / "dyn_sim.onnx"))
    assert r.applied and r.nodes_with_module_metadata == len(kept.graph.node)
    assert node_module_paths(kept) == node_module_paths(onnx.load(str(dyn.path)))
    assert all(p.key != "pkg.torch.onnx.stack_trace" for n in kept.graph.node for p in n.metadata_props)


def test_simplified_graph_that_changes_outputs_is_not_kept(tmp_path, rng_images):
    model, shape = relu6_net()
    ts = export_onnx(model, shape, tmp_path / "ts.onnx", ExportConfig(dynamo=False))
    # a negative tolerance: no output is close enough, as if onnxsim had changed the model
    r = simplify_onnx(ts.path, tmp_path / "out.onnx", rng_images(shape, 2), atol=-1.0, rtol=0.0)
    assert not r.applied and r.reason.startswith("onnxsim changed the outputs")
    assert r.nodes_after == r.nodes_before and r.nodes_simplified < r.nodes_before
    assert len(onnx.load(str(tmp_path / "out.onnx")).graph.node) == r.nodes_before


def test_simplification_can_be_disabled(tiny, tmp_path, rng_images):
    model, shape = tiny
    e = export_onnx(model, shape, tmp_path / "m.onnx")
    r = simplify_onnx(e.path, tmp_path / "o.onnx", rng_images(shape, 2), enabled=False)
    assert not r.applied and r.reason == "simplification disabled" and r.nodes_simplified is None
