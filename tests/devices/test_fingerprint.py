"""Profiles know where they were fitted: fingerprints read, compared, stored, and said in predictions."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeprune.benchmarks.ort_runner import cpu_features
from edgeprune.cli import app
from edgeprune.devices.fingerprint import Fingerprint, differences, local
from edgeprune.devices.predictor import predict
from edgeprune.devices.profiles import load_profile, save_profile
from edgeprune.errors import EdgepruneError

runner = CliRunner()

XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx_vnni amx_tile amx_int8\n"
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma sha_ni\n"
PI4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n"
PI5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"


def test_kernel_features_from_cpuinfo():
    assert cpu_features(XEON) == ["amx", "avx-vnni", "avx2", "avx512", "avx512-vnni"]
    assert cpu_features(EPYC) == ["avx2"]
    assert cpu_features(PI4) == ["neon"]
    assert cpu_features(PI5) == ["dotprod", "fp16", "neon"]
    assert cpu_features("") == []


def test_differences_name_each_way_the_machine_differs():
    xeon = Fingerprint("x86_64", "Intel(R) Xeon(R) Processor", tuple(cpu_features(XEON)), 2, "1.32.0")
    epyc = Fingerprint("x86_64", "AMD EPYC 7B13", tuple(cpu_features(EPYC)), 16, "1.20.1")
    assert differences(xeon, xeon) == []
    assert differences(xeon, epyc) == ["CPU 'AMD EPYC 7B13', not 'Intel(R) Xeon(R) Processor'",
                                       "lacks amx, avx-vnni, avx512, avx512-vnni", "16 cores, not 2",
                                       "onnxruntime 1.20.1, not 1.32.0"]
    # what a profile left out is not compared; a profile without a fingerprint says so
    assert differences(Fingerprint("x86_64", features=("avx2",)), epyc) == []
    assert differences(None, epyc) == ["the profile does not record the machine it was fitted on"]


def test_profiles_store_and_validate_fingerprints(tmp_path):
    assert load_profile("rpi4").fingerprint.features == ("neon",)
    assert load_profile("rpi5").fingerprint.features == ("dotprod", "fp16", "neon")
    host = load_profile("host")
    mine = replace(host, fingerprint=replace(local(), source="test"))
    back = load_profile(str(save_profile(mine, tmp_path / "mine.toml")))
    assert back.fingerprint == mine.fingerprint
    text = host.path.read_text()
    (tmp_path / "bad.toml").write_text(text.replace('features = ["amx"', 'features = ["avx1024", "amx"'))
    with pytest.raises(EdgepruneError, match=r"bad.toml: \[fingerprint\] unknown feature\(s\) avx1024"):
        load_profile(str(tmp_path / "bad.toml"))
    fp_part = text[text.index("[fingerprint]"):]
    (tmp_path / "bad.toml").write_text(text.replace(fp_part, fp_part.replace("cores = 2", 'cores = "2"')))
    with pytest.raises(EdgepruneError, match=r"\[fingerprint\] cores must be a positive integer"):
        load_profile(str(tmp_path / "bad.toml"))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp") / "m.onnx"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False)
    return path


def test_a_host_profile_fitted_elsewhere_is_said_in_every_prediction(tiny_onnx, tmp_path):
    host = load_profile("host")
    elsewhere = save_profile(replace(host, fingerprint=Fingerprint("x86_64", "AMD EPYC 7B13", ("avx2",), 16)),
                             tmp_path / "epyc.toml")
    here = save_profile(replace(host, fingerprint=replace(local(), source="test")), tmp_path / "here.toml")
    assert predict(tiny_onnx, str(here)).fitted_elsewhere == []
    diffs = predict(tiny_onnx, str(elsewhere)).fitted_elsewhere
    assert f"CPU {local().cpu!r}, not 'AMD EPYC 7B13'" in diffs and not any("lacks" in d for d in diffs)
    r = runner.invoke(app, ["predict", str(tiny_onnx), "--device", str(elsewhere)])
    said = " ".join(r.stderr.split())      # rich wraps at the runner's 80 columns
    assert r.exit_code == 0 and "profile 'host' was fitted on another machine" in said
    assert "edgeprune calibrate --device host" in said
    r = runner.invoke(app, ["predict", str(tiny_onnx), "--device", str(elsewhere), "--json"])
    assert json.loads(r.stdout)["prediction"]["fitted_elsewhere"] == diffs
    r = runner.invoke(app, ["predict", str(tiny_onnx), "--device", str(here)])
    assert r.exit_code == 0 and "another machine" not in r.stderr
    # a board's profile predicts that board, not this machine: nothing to compare
    assert predict(tiny_onnx, "rpi4").fitted_elsewhere == []


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The shipped profiles with the host one fitted on another machine, and an empty user cache."""
    import edgeprune.devices.profiles as profiles

    bundled = tmp_path / "bundled"
    bundled.mkdir()
    for p in profiles._bundled_dir().glob("*.toml"):
        (bundled / p.name).write_text(p.read_text())
    host = load_profile("host")
    save_profile(replace(host, fingerprint=Fingerprint("x86_64", "AMD EPYC 7B13", ("avx2",), 16)),
                 bundled / "host.toml")
    monkeypatch.setattr(profiles, "_bundled_dir", lambda: bundled)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return bundled, host


def test_host_names_this_machines_cached_calibration_when_the_bundled_one_was_fitted_elsewhere(tmp_path, elsewhere,
                                                                                             tiny_onnx):
    from edgeprune.devices.profiles import calibrated_host_path

    bundled, host = elsewhere
    mine = calibrated_host_path()
    assert mine.parent.parent.parent == tmp_path / "cache" and not mine.exists()
    assert load_profile("host").path == bundled / "host.toml"
    assert predict(tiny_onnx, "host").fitted_elsewhere          # said, as above
    save_profile(replace(host, fingerprint=replace(local(), source="test"), expected_error=0.05), mine)
    assert load_profile("host").path == mine and load_profile("host").expected_error == 0.05
    assert predict(tiny_onnx, "host").fitted_elsewhere == []
    assert load_profile("rpi4").path == bundled / "rpi4.toml"    # only host is this machine


def test_host_on_an_unfitted_machine_is_calibrated_once_or_refused(tmp_path, elsewhere, tiny_onnx):
    from edgeprune.devices.calibrate import CalibrationConfig, ensure_host_calibrated
    from edgeprune.devices.profiles import calibrated_host_path

    r = runner.invoke(app, ["predict", str(tiny_onnx), "--device", "host", "--no-calibrate"])
    said = " ".join(r.stderr.split())
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert "this one has no calibration yet: run 'edgeprune calibrate --device host --quick'" in said
    lines = []
    tiny = CalibrationConfig(quick=True, synthetic=8, architectures=False, max_mmacs=10, workdir=tmp_path / "suite")
    assert ensure_host_calibrated(True, lines.append, tiny) == calibrated_host_path()
    assert "calibrating this one once" in lines[0]
    assert load_profile("host").path == calibrated_host_path()
    assert ensure_host_calibrated(False) is None                   # cached: nothing more to do
    r = runner.invoke(app, ["predict", str(tiny_onnx), "--device", "host", "--no-calibrate"])
    assert r.exit_code == 0 and "another machine" not in r.stderr, r.output
