"""INT8: onnxruntime's static QDQ quantization of an exported model, its accuracy through onnxruntime, and
mixed precision keeping in fp32 the layer int8 hurts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.artifact import ArtifactConfig, build_artifact, checksum_problems
from edgeprune.exporters.mixed_precision import mixed_precision
from edgeprune.exporters.onnx_export import ExportConfig, export_onnx
from edgeprune.exporters.quantize import (MIN_CALIBRATION_IMAGES, Quantization, QuantizeConfig, calibration_cache,
                                          file_sizes, onnx_accuracy, precision_for, quantize_onnx, weighted_layers)
from edgeprune.exporters import runtime

X86 = precision_for("x86_64", ["avx2", "avx512", "avx512-vnni"])


class Net(nn.Module):
    """Two inputs channels; the second is ignored by the first convolution (zero weights) but fed a huge noise,
    so quantizing the model's input (which only the first convolution reads) loses the first channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16 * 6 * 6, 10)
        with torch.no_grad():
            self.conv1.weight[:, 1] = 0

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


def images(n: int, noise: float, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 2, 12, 12)).astype(np.float32)
    x[:, 1] *= noise
    return x


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """The float model exported, and labels: its own predictions on the evaluation images."""
    tmp = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    model = Net().eval()
    path = export_onnx(model, (1, 2, 12, 12), tmp / "fp32.onnx", ExportConfig()).path
    return tmp, model, path


def labels_of(path, x) -> np.ndarray:
    return runtime.run(runtime.session(path), x)[0].argmax(axis=1)


def test_quantized_model_is_int8_smaller_and_as_accurate_on_clean_inputs(model_files):
    tmp, _, fp32 = model_files
    calib, x = images(64, 1.0, 0), images(200, 1.0, 1)
    y = labels_of(fp32, x)
    r = quantize_onnx(fp32, tmp / "int8.onnx", calib, QuantizeConfig(calibration_images=64), X86)
    proto = onnx.load(str(r.path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert [l.precision for l in r.layers] == ["int8"] * 3 and r.kept_fp32 == []
    weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(weights) == 3                                   # every weight is stored as int8
    d = r.to_dict()
    assert d["activations"] == "uint8" and d["weights"] == "int8" and d["reduce_range"] is False
    assert file_sizes(r.path)["bytes"] < file_sizes(fp32)["bytes"]
    acc = onnx_accuracy(r.path, [(x[:128], y[:128]), (x[128:], y[128:])])   # batches add up
    assert acc.images == 200 and acc.top1 >= 0.9          # the float file scores 1.0 on its own labels
    assert onnx_accuracy(fp32, [(x, y)]).top1 == 1.0


def test_precision_follows_onnxruntime_guidance_per_cpu():
    assert precision_for("x86_64", ["avx2"]).reduce_range is True          # no VNNI: 7-bit weights
    assert precision_for("x86_64", ["avx2"]).activations == "uint8"
    arm = precision_for("aarch64", ["neon", "dotprod"])
    assert (arm.activations, arm.weights, arm.reduce_range) == ("int8", "int8", False) and "SDOT" in arm.reason
    assert "lacks the dot-product" in precision_for("aarch64", ["neon"]).reason


def test_bad_quantization_inputs_are_one_line_errors(model_files, tmp_path):
    tmp, _, fp32 = model_files
    with pytest.raises(EdgepruneError, match=f"at least {MIN_CALIBRATION_IMAGES} images"):
        QuantizeConfig(calibration_images=4)
    with pytest.raises(EdgepruneError, match="needs 32 images .* only 20"):
        quantize_onnx(fp32, tmp_path / "q.onnx", images(20, 1, 0), QuantizeConfig(calibration_images=32), X86)
    with pytest.raises(EdgepruneError, match="no layer 'nope' to keep in fp32"):
        quantize_onnx(fp32, tmp_path / "q.onnx", images(16, 1, 0),
                      QuantizeConfig(calibration_images=16, keep_fp32=("nope",)), X86)
    with pytest.raises(EdgepruneError, match="must be one of minmax"):
        QuantizeConfig(method="kl")
    old = onnx.load(str(fp32))
    old.opset_import[0].version = 11
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.raises(EdgepruneError, match="opset 11.*needs opset >= 13"):
        quantize_onnx(tmp_path / "old.onnx", tmp_path / "q.onnx", images(16, 1, 0), QuantizeConfig(calibration_images=16), X86)
    assert not (tmp_path / "q.onnx").exists() and not list(tmp_path.glob(".q.onnx*"))


def test_mixed_precision_keeps_in_fp32_the_layer_whose_int8_costs_the_accuracy(model_files):
    tmp, _, fp32 = model_files
    calib, x = images(64, 1000.0, 0), images(300, 1000.0, 1)     # the ignored channel: huge noise
    y = labels_of(fp32, x)
    cfg = QuantizeConfig(calibration_images=64)
    cache = calibration_cache(tmp, fp32, calib, cfg)
    first = weighted_layers(onnx.load(str(fp32)))[0].name
    mp = mixed_precision(fp32, tmp / "mixed.onnx", calib, [(x, y)], cfg, X86, 5.0, cache)
    assert mp.fp32.top1 == 1.0 and mp.all_int8.top1 < 0.85       # the input's quantization loses channel 0
    assert mp.met and mp.chosen.kept_fp32 == [first] and mp.drop <= 5.0
    assert mp.gains[first] == max(mp.gains.values()) > 15
    assert onnx_accuracy(tmp / "mixed.onnx", [(x, y)]).top1 == mp.accuracy.top1
    assert cache.is_file()                                          # calibrated once, reused by every trial
    # a budget that no float layer fits: nothing kept, not met, the best reached is still written
    stuck = mixed_precision(fp32, tmp / "stuck.onnx", calib, [(x, y)], cfg, X86, 5.0, cache, fits=lambda _p: False)
    assert not stuck.met and stuck.chosen.kept_fp32 == [] and not stuck.steps[-1].fits
    assert (tmp / "stuck.onnx").is_file()


def test_artifact_ships_the_int8_model_with_its_precision_sizes_and_verification(model_files, tmp_path):
    _, model, fp32 = model_files
    x = torch.from_numpy(images(64, 1.0, 2))
    y = torch.from_numpy(labels_of(fp32, x.numpy()))
    q = Quantization(QuantizeConfig(calibration_images=32), X86, images(32, 1.0, 0), tmp_path)
    r = build_artifact(model, (1, 2, 12, 12), tmp_path / "art", ArtifactConfig(), images=x, labels=y, quantize=q)
    m = r.manifest
    assert m["precision"]["model"] == "int8" and m["precision"]["int8_layers"] == 3
    assert m["sizes"]["int8"]["bytes"] < m["sizes"]["fp32"]["bytes"]
    v = m["verification"]["int8"]
    assert v["top1_agreement"] >= 0.9 and v["onnx_fp32_top1"] == 1.0
    shipped = onnx.load(str(r.path / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in shipped.graph.node)
    golden = np.load(r.path / "golden.npz")
    out_name = runtime.session(r.path / "model.onnx").get_outputs()[0].name
    np.testing.assert_allclose(runtime.run(runtime.session(r.path / "model.onnx"), golden["input"] if "input" in golden
                                           else golden[shipped.graph.input[0].name])[0], golden[out_name], atol=1e-5)
    assert not checksum_problems(r.path) and not (r.path / ".work").exists()
