"""verify-arm: the aarch64 onnxruntime under qemu user-mode emulation, compared with x86.

Every test that emulates uses the real emulator, the real Debian arm64 packages and the
real PyPI aarch64 wheels; the environment is prepared once per test session (cold, into a
fresh cache) and reused. Where qemu-aarch64 is missing and cannot be installed (not root,
no apt-get), those tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.devices import arm_verify as av
from edgeprune.devices.arm_cores import CORES, core_from_profile, fake_cpuinfo
from edgeprune.devices.arm_emulator import emulate, find_qemu, run_on_arm
from edgeprune.devices.arm_userland import ArmEnv, prepare_arm_env
from edgeprune.devices.fingerprint import local
from edgeprune.errors import EdgepruneError
from edgeprune.exporters.output_diff import compare_outputs

runner = CliRunner()
FMNIST = Path(__file__).resolve().parents[2] / "pipeline" / "assets" / "fmnist_subset.npz"


# -- fixtures -----------------------------------------------------------------------------

def _install_qemu() -> str | None:
    """Install Debian's qemu-user-static when it is missing; the reason if it cannot be."""
    if shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64"):
        return None
    if not shutil.which("apt-get"):
        return "qemu-aarch64-static is missing and there is no apt-get to install qemu-user-static"
    if os.geteuid() != 0:
        return "qemu-aarch64-static is missing and installing qemu-user-static needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "-q", "update"], ["apt-get", "-q", "-y", "install", "qemu-user-static"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return f"could not install qemu-user-static: {(proc.stderr or proc.stdout).strip()[-200:]}"
    return None


@pytest.fixture(scope="session")
def qemu() -> Path:
    reason = _install_qemu()
    if reason:
        pytest.skip(reason)
    return find_qemu()


@pytest.fixture(scope="session")
def arm_cache(tmp_path_factory, qemu) -> Path:
    return tmp_path_factory.mktemp("arm-cache")


@pytest.fixture(scope="session")
def arm_env(arm_cache, qemu) -> ArmEnv:
    env = prepare_arm_env(av.DEFAULT_ORT_VERSION, arm_cache, str(qemu))
    assert not env.from_cache
    return env


def _tiny_cnn(seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def _export(model, path: Path) -> Path:
    import torch

    torch.onnx.export(model, (torch.randn(1, 1, 28, 28),), str(path), dynamo=True,
                      input_names=["input"], output_names=["logits"], external_data=False)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return _export(_tiny_cnn(0), tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def other_onnx(tmp_path_factory) -> Path:
    return _export(_tiny_cnn(1), tmp_path_factory.mktemp("models") / "other.onnx")


@pytest.fixture()
def artifact(tmp_path) -> Path:
    """A real artifact of the exporter, with Fashion-MNIST validation images as golden vectors."""
    from edgeprune.exporters.artifact import ArtifactConfig, build_artifact

    data = np.load(FMNIST)
    x = ((data["x_val"][:8].astype(np.float32) / 255 - 0.286) / 0.353)[:, None]
    out = tmp_path / "artifact"
    build_artifact(_tiny_cnn(0), [1, 1, 28, 28], out, ArtifactConfig(ort_format=False, golden_count=4),
                   images=x, labels=data["y_val"][:8], preprocess={"mean": [0.286], "std": [0.353]})
    return out


# -- with the emulator --------------------------------------------------------------------------

def test_artifact_passes_and_manifest_gets_verify_arm(artifact, arm_env, arm_cache):
    from edgeprune.exporters.artifact import checksum_problems

    res = runner.invoke(app, ["verify-arm", str(artifact), "--device", "rpi4", "--cache-dir", str(arm_cache)])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and " ms" not in res.output      # never an emulated latency
    section = json.loads((artifact / "manifest.json").read_text())["verify_arm"]
    assert section["verdict"] == "pass"
    assert section["qemu_cpu"] == "cortex-a72" and section["device"] == "rpi4"
    assert section["onnxruntime_aarch64"] == arm_env.ort_version
    assert section["inputs"].startswith("golden.npz") and section["samples"] == 4
    assert section["top1_agreement"] == 1.0
    assert section["max_abs_diff"] <= section["tolerance"]
    assert "asimd" in section["hwcaps"]
    assert not any(k in section for k in ("env_path", "env_prepare_s", "latency_ms"))
    assert checksum_problems(artifact) == []


@pytest.mark.skipif(not any("vnni" in f for f in local().features or ()),
                    reason="the x86 reference of an Arm int8 file (signed activations) differs from aarch64 by up to "
                           "10% of its largest output on an AVX2 host without VNNI (seen on an AMD EPYC, 2026-12-08): "
                           "outside verify-arm's int8 criterion, a limitation of the host reference not yet handled")
def test_int8_artifact_passes_on_cores_with_and_without_dot_product(tmp_path, arm_env, arm_cache):
    """An int8 artifact (signed activations and weights, as for Arm) on the Pi 5's A76 (SDOT) and the Pi 4's A72
    (none): the classes agree with x86 and the outputs within the int8 criterion, recorded in the manifest."""
    from edgeprune.exporters.artifact import ArtifactConfig, build_artifact
    from edgeprune.exporters.quantize import Quantization, QuantizeConfig, precision_for

    data = np.load(FMNIST)
    x = ((data["x_val"][:8].astype(np.float32) / 255 - 0.286) / 0.353)[:, None]
    calib = ((data["x_train"][:16].astype(np.float32) / 255 - 0.286) / 0.353)[:, None]
    out = tmp_path / "int8"
    q = Quantization(QuantizeConfig(calibration_images=16), precision_for("aarch64", ["neon", "dotprod"]), calib)
    build_artifact(_tiny_cnn(0), [1, 1, 28, 28], out, ArtifactConfig(ort_format=False, golden_count=4),
                   images=x, labels=data["y_val"][:8], quantize=q)
    for device, core in (("rpi5", "cortex-a76"), ("rpi4", "cortex-a72")):
        res = runner.invoke(app, ["verify-arm", str(out), "--device", device, "--cache-dir", str(arm_cache)])
        assert res.exit_code == 0, res.output
        section = json.loads((out / "manifest.json").read_text())["verify_arm"]
        assert section["qemu_cpu"] == core and section["precision"] == "int8" and section["top1_agreement"] == 1.0
        assert "int8" in section["criterion"] and section["max_abs_diff"] <= section["tolerance"]
        assert ("asimddp" in section["hwcaps"]) == (device == "rpi5")


def test_bare_onnx_in_a_subprocess_on_cortex_a53(tiny_onnx, arm_env, arm_cache):
    cmd = [sys.executable, "-c", "from edgeprune.cli import main; main()", "verify-arm", str(tiny_onnx),
           "--cpu", "cortex-a53", "--samples", "3", "--cache-dir", str(arm_cache), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdict"] == "pass" and out["qemu_cpu"] == "cortex-a53" and out["device"] is None
    assert out["inputs"].startswith("random") and out["samples"] == 3
    assert out["env_from_cache"] is True
    assert out["outputs"]["logits"]["shape"] == [1, 10]


def test_a_different_model_on_the_arm_side_is_reported(tiny_onnx, other_onnx, arm_env, qemu):
    feeds = av.random_feeds(av.model_inputs(tiny_onnx), 3, seed=0)
    x86 = av.run_on_host(tiny_onnx, feeds)
    arm = run_on_arm(arm_env, qemu, "cortex-a72", other_onnx, feeds)
    assert arm.ok, arm.error
    same = compare_outputs(x86, run_on_arm(arm_env, qemu, "cortex-a72", tiny_onnx, feeds).outputs)
    assert same.within()
    cmp = compare_outputs(x86, arm.outputs)
    assert not cmp.within()
    assert cmp.max_abs_diff > cmp.tolerance
    assert "differs by" in cmp.reason


def test_a_model_the_arm_side_cannot_load_fails_the_verdict(tiny_onnx, arm_env, qemu, tmp_path):
    feeds = av.random_feeds(av.model_inputs(tiny_onnx), 1, seed=0)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    run = run_on_arm(arm_env, qemu, "cortex-a72", broken, feeds)
    assert not run.ok and run.error
    assert run.info["machine"] == "aarch64"


def test_second_preparation_comes_from_the_cache(arm_env, arm_cache, qemu):
    again = prepare_arm_env(av.DEFAULT_ORT_VERSION, arm_cache, str(qemu))
    assert again.from_cache and again.path == arm_env.path
    assert again.info["wheels_sha256"] == arm_env.info["wheels_sha256"]


def test_failed_preparation_leaves_nothing_in_the_cache(tmp_path, qemu):
    with pytest.raises(EdgepruneError, match="0.0.1"):
        prepare_arm_env("0.0.1", tmp_path, str(qemu))
    assert list(tmp_path.iterdir()) == []


def test_unknown_core_is_one_line_exit_2(tiny_onnx, qemu):
    res = runner.invoke(app, ["verify-arm", str(tiny_onnx), "--cpu", "pentium"])
    assert res.exit_code == 2
    assert "cannot emulate 'pentium'" in res.output and "Traceback" not in res.output


# -- without the emulator -------------------------------------------------------------------

def test_missing_emulator_is_one_line_exit_2(tiny_onnx, tmp_path):
    res = runner.invoke(app, ["verify-arm", str(tiny_onnx), "--qemu", str(tmp_path / "qemu-aarch64-static")])
    assert res.exit_code == 2
    assert "emulator not found" in res.output and "Traceback" not in res.output


def test_no_emulator_on_path_in_a_subprocess(tiny_onnx, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRUNE_QEMU"}
    env["PATH"] = str(tmp_path)           # nothing to find there
    cmd = [sys.executable, "-c", "from edgeprune.cli import main; main()", "verify-arm", str(tiny_onnx)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "qemu-aarch64-static not found" in lines[0]
    assert "apt-get install qemu-user-static" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["/no/such/model.onnx"], "no such file"),
    (["{tmp}"], "no model.onnx"),
    (["{model}", "--onnxruntime", "latest"], "release number"),
    (["{model}", "--samples", "0"], "at least 1"),
    (["{model}", "--device", "host"], "not an ARM core"),
])
def test_bad_input_is_one_line_exit_2(args, message, tiny_onnx, tmp_path):
    args = [a.format(tmp=tmp_path, model=tiny_onnx) for a in args]
    res = runner.invoke(app, ["verify-arm", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


# -- the pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize("device, core", [("rpi3", "cortex-a53"), ("rpi4", "cortex-a72"),
                                          ("rpi5", "cortex-a76"), ("jetson-nano", "cortex-a57")])
def test_profiles_map_to_qemu_cores(device, core):
    assert core_from_profile(device) == core
    assert core in CORES


def test_fake_cpuinfo_names_the_emulated_core():
    text = fake_cpuinfo("cortex-a72", 2)
    assert text.count("processor\t:") == 2
    assert "CPU part\t: 0xd08" in text and "CPU implementer\t: 0x41" in text
    assert fake_cpuinfo("unknown-core", 2) is None


def test_golden_vectors_are_cut_into_model_batches(tmp_path):
    spec = [av.InputSpec("input", [1, 1, 4, 4], np.dtype(np.float32))]
    np.savez(tmp_path / "g.npz", input=np.zeros((5, 1, 4, 4), np.float64), logits=np.zeros((5, 3)))
    feeds = av.golden_feeds(tmp_path / "g.npz", spec, samples=3)
    assert len(feeds) == 3 and feeds[0]["input"].shape == (1, 1, 4, 4) and feeds[0]["input"].dtype == np.float32
    np.savez(tmp_path / "bad.npz", input=np.zeros((5, 1, 8, 8), np.float32))
    with pytest.raises(EdgepruneError, match="the model takes"):
        av.golden_feeds(tmp_path / "bad.npz", spec, samples=3)


def test_compare_reports_shape_and_top1_disagreement():
    a = [{"y": np.array([[0.0, 1.0]], np.float32)}]
    assert not compare_outputs(a, [{"y": np.array([[0.0, 1.0, 2.0]], np.float32)}]).within()
    flipped = compare_outputs(a, [{"y": np.array([[1.0, 0.0]], np.float32)}], atol=10, min_top1_agreement=1.0)
    assert not flipped.within() and flipped.top1_agreement == 0.0 and "top-1" in flipped.reason


def test_compare_non_finite_values():
    nan, inf = np.float32("nan"), np.float32("inf")
    ref = [{"y": np.array([[nan, inf, 1.0]], np.float32)}]
    same = compare_outputs(ref, [{"y": np.array([[nan, inf, 1.0]], np.float32)}])
    assert same.within() and same.max_abs_diff == 0.0 and same.max_abs_reference == 1.0
    for other in ([[nan, -inf, 1.0]], [[0.0, inf, 1.0]], [[nan, 5.0, 1.0]]):
        cmp = compare_outputs(ref, [{"y": np.array(other, np.float32)}], sides=("x86", "aarch64"))
        assert not cmp.within() and "non-finite values that differ between x86 and aarch64" in cmp.reason


def test_guest_sees_the_emulated_core_in_proc_cpuinfo(arm_env, qemu, tmp_path):
    """The per-run /proc/cpuinfo that keeps onnxruntime >= 1.28 alive under qemu 7.2."""
    proc = emulate(qemu, "cortex-a53", arm_env.root, tmp_path,
                       ["-c", "print(open('/proc/cpuinfo').read())"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "CPU part\t: 0xd03" in proc.stdout and "CPU implementer\t: 0x41" in proc.stdout


def test_a_truncated_golden_npz_is_one_line(tmp_path):
    from edgeprune.devices.arm_verify import InputSpec, golden_feeds

    good = tmp_path / "golden.npz"
    np.savez(good, input=np.zeros((4, 1, 8, 8), np.float32))
    spec = [InputSpec("input", [1, 1, 8, 8], np.dtype(np.float32))]
    assert len(golden_feeds(good, spec, 2)) == 2
    data = good.read_bytes()
    for cut in (len(data) // 2, 40):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(EdgepruneError) as e:
            golden_feeds(bad, spec, 2)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)
