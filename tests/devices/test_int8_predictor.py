"""int8 (QDQ) models: kernel detection against onnxruntime's own trace, int8 profile sections, predictions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.devices.calibrate import nchwc_block_here
from edgeprune.devices.kernel_graph import detect_kernels, load_model
from edgeprune.devices.latency_fit import profile_model
from edgeprune.devices.predictor import int8_info, predict
from edgeprune.devices.profiles import load_profile, profile_from_dict
from edgeprune.devices.suite import quantize_qdq
from edgeprune.errors import EdgepruneError

runner = CliRunner()
HOST = str(Path(__file__).resolve().parents[2] / "devices" / "profiles" / "host.toml")


def _c(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def tiny_model(c: int = 16, hw: int = 8) -> onnx.ModelProto:
    """Stem conv+relu, an inverted block (1x1 expand, depthwise 3x3, 1x1 project) with a residual add,
    global pooling, a fully connected head."""
    r = np.random.default_rng(0)
    inits = [_c("w0", r.standard_normal((c, 3, 3, 3)) * 0.2), _c("we", r.standard_normal((2 * c, c, 1, 1)) * 0.2),
             _c("wd", r.standard_normal((2 * c, 1, 3, 3)) * 0.2), _c("wp", r.standard_normal((c, 2 * c, 1, 1)) * 0.2),
             _c("b", np.zeros(c)), _c("b2", np.zeros(2 * c)),
             _c("fc", r.standard_normal((10, c)) * 0.2), _c("fcb", np.zeros(10))]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b"], ["c0"], name="stem", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "we", "b2"], ["c1"], name="expand", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], kernel_shape=[3, 3],
                         group=2 * c),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "wp", "b"], ["c3"], name="project", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c3", "r0"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="head", transB=1),
    ]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("int8")
    fp = d / "tiny.onnx"
    onnx.save(tiny_model(), fp)
    return {"fp32": fp, "u8": quantize_qdq(fp, d / "tiny_u8.onnx"),
            # the depthwise and projection convolutions left in float between int8 layers
            "mixed": quantize_qdq(fp, d / "tiny_mixed.onnx", exclude=["dw", "project"])}


def _per_class(kernels):
    """(class, op type) counts; onnxruntime names a float convolution with a fused activation FusedConv."""
    return Counter((k.kind, "Conv" if k.op == "FusedConv" else k.op) for k in kernels)


@pytest.mark.parametrize("which", ["u8", "mixed"])
def test_detected_kernels_match_the_onnxruntime_trace(models, which):
    path = models[which]
    traced = [k for k, _ in profile_model(path, rounds=1, burst=1, warmup=1, whole_model=False).kernels]
    mine = detect_kernels(load_model(path), nchwc_block_here())
    assert _per_class(traced) == _per_class(mine)
    qconvs = lambda ks: sorted((k.kind, round(k.macs), round(k.w_bytes)) for k in ks  # noqa: E731
                               if k.kind in ("qconv", "qdwconv", "qgemm"))
    assert qconvs(traced) == qconvs(mine) and qconvs(mine)
    kinds = {k.kind for k in mine}
    assert {"qconv", "qgemm", "qeltwise", "qpool", "qdq"} <= kinds
    if which == "u8":
        assert "qdwconv" in kinds
        assert not kinds & {"conv1x1", "conv3x3", "dwconv", "gemm"}     # every MAC in int8
    else:
        assert "dwconv" in kinds and "conv1x1" in kinds                 # the excluded layers run in float
        assert sum(k.kind == "qdq" for k in mine) > sum(k.kind == "qdq" for k in detect_kernels(
            load_model(models["u8"]), nchwc_block_here()))               # ... with a DQ before, a Q after


def test_quantized_kernels_move_one_byte_per_element(models):
    ks = detect_kernels(load_model(models["u8"]), 0)
    expand = next(k for k in ks if k.name == "expand")
    assert expand.kind == "qconv" and expand.float_kind == "conv1x1"
    assert expand.in_bytes == 16 * 8 * 8 and expand.out_bytes == 32 * 8 * 8      # uint8 in and out
    assert expand.w_bytes == 32 * 16 + 32 * 4                                     # int8 weights, int32 bias
    assert next(k for k in ks if k.name == "dw").kind == "qdwconv"


def test_int8_predictions_carry_precision_and_the_wider_band(models):
    for dev in ("host", "rpi5", "rpi4", "rpi3", "jetson-nano"):
        prof = load_profile(HOST if dev == "host" else dev)
        fp, q, mixed = (predict(models[w], prof) for w in ("fp32", "u8", "mixed"))
        assert fp.precision == "fp32" and fp.int8_mac_share == 0 and fp.expected_error == prof.expected_error
        assert q.precision == "int8" and q.int8_mac_share == 1.0
        assert mixed.precision == "mixed" and 0 < mixed.int8_mac_share < 1
        info = int8_info(prof)
        assert q.expected_error == mixed.expected_error == info["expected_error"] > prof.expected_error
        assert q.high_ms == pytest.approx(q.latency_ms * (1 + q.expected_error))
        assert q.to_dict()["precision"] == "int8" and q.latency_ms > 0


def test_boards_cost_quantized_convolutions_as_ratio_times_fp32(models):
    from edgeprune.devices.predictor import kernel_cost_us
    for dev in ("rpi5", "rpi4", "jetson-nano"):
        prof = load_profile(dev)
        lm = prof.latency_model
        info = int8_info(prof)
        assert info["dotprod"] == (dev == "rpi5")
        ks_q = detect_kernels(load_model(models["u8"]), 0)
        ks_f = detect_kernels(load_model(models["fp32"]), 0)
        q = next(k for k in ks_q if k.name == "expand")
        f = next(k for k in ks_f if k.name == "expand")
        assert kernel_cost_us(q, lm) == pytest.approx(info["ratio"] * kernel_cost_us(f, lm), rel=0.05)
    # a core with dot-product gains more from int8 than one without (relative to its own fp32)
    gain = {d: predict(models["u8"], d).latency_ms / predict(models["fp32"], d).latency_ms for d in ("rpi5", "rpi3")}
    assert gain["rpi5"] < gain["rpi3"]


@pytest.mark.parametrize("device", ["rpi4", "fitted"])
def test_one_int8_scale_is_recovered_from_whole_model_latencies(models, device):
    """Calibration over SSH fits one scale of the int8 arithmetic: on a board its int8/fp32 ratio, on a profile
    with fitted int8 constants those constants; the scale behind made-up latencies comes back."""
    from dataclasses import replace
    from edgeprune.devices import latency_fit as cal
    from edgeprune.devices.predictor import kernels_cost_us
    lm = load_profile("rpi4" if device == "rpi4" else HOST).latency_model
    if device == "fitted":       # int8 constants as a calibration here fits them (these: the fp32 ones, halved)
        c = lm.coefficients
        lm = replace(lm, coefficients={**c, "qconv": {f: v / 2 for f, v in c["conv1x1"].items()},
                                       "qdwconv": {f: v / 2 for f, v in c["dwconv"].items()},
                                       "qgemm": {f: v / 2 for f, v in c["gemm"].items()}, "qdq": dict(c["eltwise"])})
    true = cal.with_int8_scale(lm, 0.6)
    ms = lambda ks, m: (m.run_overhead_us + kernels_cost_us(ks, m)) * m.runtime_factor / 1e3   # noqa: E731
    ks = [detect_kernels(load_model(models[w]), lm.nchwc_block) for w in ("u8", "mixed")]
    timings = [cal.ModelTiming(f"m{i}", k, ms(k, true)) for i, k in enumerate(ks)]
    assert cal.fit_int8_scale(timings, lm) == pytest.approx(0.6, rel=1e-3)
    if device == "rpi4":
        assert true.int8.ratio == pytest.approx(0.6 * lm.int8.ratio, rel=1e-3) and true.coefficients == lm.coefficients
    else:
        assert true.coefficients["qconv"]["mmac"] == pytest.approx(0.6 * lm.coefficients["qconv"]["mmac"], rel=1e-4)
        assert true.coefficients["qdq"] == lm.coefficients["qdq"]          # only the arithmetic is scaled
    float_only = [cal.ModelTiming("f", detect_kernels(load_model(models["fp32"]), lm.nchwc_block), 1.0)]
    with pytest.raises(EdgepruneError, match="no quantized convolution"):
        cal.fit_int8_scale(float_only, lm)


def test_int8_section_is_validated():
    base = {"name": "b", "cpu": "x", "cores": 1, "clock_ghz": 1.0, "ram_gb": 1.0, "threads": 1,
            "providers": ["CPUExecutionProvider"], "latency_source": "x"}
    lm = {"coefficients": {"conv3x3": {"mmac": 1.0}}}
    ok = profile_from_dict({**base, "latency_model": {**lm, "int8": {"expected_error": 0.5, "source": "s",
                                                                      "dotprod": False, "ratio": 0.9}}})
    assert int8_info(ok) == {"dotprod": False, "ratio": 0.9, "expected_error": 0.5, "source": "s"}
    for bad, msg in [({"expected_error": 0.5, "source": "s", "speedup": 2}, "unknown key.*speedup"),
                     ({"expected_error": 0.5, "source": "s", "ratio": -1.0}, "ratio.*positive"),
                     ({"expected_error": 50, "source": "s"}, "expected_error"),
                     ({"source": "s"}, "missing required key 'expected_error'"),
                     ({"expected_error": 0.5, "source": "s", "dotprod": "yes"}, "dotprod.*bool")]:
        with pytest.raises(EdgepruneError, match=msg):
            profile_from_dict({**base, "latency_model": {**lm, "int8": bad}})
    with pytest.raises(EdgepruneError, match=r"unknown key.*\[latency_model\]"):
        profile_from_dict({**base, "latency_model": {**lm, "int9": {}}})


def test_predict_cli_on_an_int8_model(models):
    res = runner.invoke(app, ["predict", str(models["u8"]), "--device", "rpi5"])
    assert res.exit_code == 0, res.output
    assert "int8" in res.output and "qconv" in res.output
    res = runner.invoke(app, ["predict", str(models["u8"]), "--device", "rpi5", "--json"])
    assert res.exit_code == 0 and '"precision": "int8"' in res.output
