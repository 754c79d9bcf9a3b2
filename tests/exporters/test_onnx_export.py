"""export_onnx: the dynamo exporter, the TorchScript fallback, and models ONNX cannot express."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.onnx_facts import node_module_paths
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.exporters.verify import verify_onnx


class AlwaysTrueBranch(nn.Module):
    """torch.export refuses the data-dependent ``if``; tracing takes the branch, which is always right."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if (y * y).sum() >= 0:
            y = torch.relu(y)
        return y.mean((2, 3))


class Histogram(nn.Module):
    """torch.histc has no ONNX form in either exporter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, bins=4).unsqueeze(0)


def test_dynamo_export_names_io_and_keeps_module_paths(tiny, tmp_path):
    model, shape = tiny
    model.train()
    r = export_onnx(model, shape, tmp_path / "m.onnx")
    assert model.training, "the caller's training flag is restored"
    assert r.exporter == "dynamo" and r.fallback_reason is None and r.opset == 18
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == list(shape)
    paths = node_module_paths(proto)
    conv = next(n.name for n in proto.graph.node if n.op_type == "Conv")
    assert paths[conv] in ("0", "1")  # the Conv, with the BatchNorm "1" folded into it


def test_opset_flag(tiny, tmp_path):
    model, shape = tiny
    r = export_onnx(model, shape, tmp_path / "m.onnx", ExportConfig(opset=20))
    assert r.opset == 20
    assert any(o.version == 20 for o in onnx.load(str(tmp_path / "m.onnx")).opset_import if o.domain == "")


def test_falls_back_to_torchscript_with_the_reason(tmp_path, rng_images):
    torch.manual_seed(0)
    model = AlwaysTrueBranch().eval()
    r = export_onnx(model, (1, 1, 8, 8), tmp_path / "m.onnx")
    assert r.exporter == "torchscript"
    assert r.fallback_reason.startswith("dynamo exporter failed: ") and len(r.fallback_reason.splitlines()) == 1
    v = verify_onnx(model, tmp_path / "m.onnx", (1, 1, 8, 8), rng_images((1, 1, 8, 8), 16))
    assert v.passed, v.failures
    paths = node_module_paths(onnx.load(str(tmp_path / "m.onnx")))
    assert "conv" in paths.values()


def test_no_fallback_when_disabled(tmp_path):
    with pytest.raises(EdgepruneError, match="dynamo exporter"):
        export_onnx(AlwaysTrueBranch().eval(), (1, 1, 8, 8), tmp_path / "m.onnx", ExportConfig(fallback=False))
    assert not (tmp_path / "m.onnx").exists()


def test_an_operation_onnx_cannot_express_is_one_clear_line(tmp_path):
    with pytest.raises(EdgepruneError) as e:
        export_onnx(Histogram(), (1, 1, 4, 4), tmp_path / "m.onnx")
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg and "\x1b" not in msg
    assert msg.startswith("the model cannot be exported to ONNX (opset 18)")
    assert "aten::histc" in msg and "dynamo exporter" in msg and "torchscript exporter" in msg
    assert not (tmp_path / "m.onnx").exists()


def test_bad_input_shape(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(EdgepruneError, match="invalid input shape"):
        export_onnx(model, (1, 0, 8, 8), tmp_path / "m.onnx")


def test_dynamic_batch_runs_any_batch(tiny, tmp_path, rng_images):
    model, shape = tiny
    export_onnx(model, shape, tmp_path / "m.onnx", ExportConfig(dynamic_batch=True))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = rng_images(shape, 7)
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False])
def test_an_export_inside_autocast_is_the_float32_models_own(tiny, tmp_path, dynamo):
    """A caller's torch.autocast (a build's scoring runs under one) never reaches the file: the same graph and
    weights as an export outside it, every tensor float32, no cast to a reduced precision."""
    model, shape = tiny
    cfg = ExportConfig(dynamo=dynamo, fallback=False)
    export_onnx(model, shape, tmp_path / "plain.onnx", cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        export_onnx(model, shape, tmp_path / "autocast.onnx", cfg)
    plain, under = onnx.load(str(tmp_path / "plain.onnx")), onnx.load(str(tmp_path / "autocast.onnx"))
    assert [n.op_type for n in under.graph.node] == [n.op_type for n in plain.graph.node]
    assert "Cast" not in {n.op_type for n in under.graph.node}
    assert [(t.name, t.data_type, t.raw_data) for t in under.graph.initializer] == \
        [(t.name, t.data_type, t.raw_data) for t in plain.graph.initializer]
    types = {t.data_type for t in under.graph.initializer}
    assert onnx.TensorProto.FLOAT in types and not types & {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
    assert under.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
