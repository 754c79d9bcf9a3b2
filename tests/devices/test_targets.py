"""``resolve_target``: the one decision between measured here, measured over SSH and predicted."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edgeprune.benchmarks.latency import BenchConfig
from edgeprune.benchmarks.targets import HostTarget
from edgeprune.devices.predictor import predict
from edgeprune.devices.profiles import load_profile
from edgeprune.devices.suite import synthetic_model
from edgeprune.devices.targets import PredictedTarget, RemoteTarget, bench_config, resolve_target
from edgeprune.errors import EdgepruneError


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(synthetic_model(2, seed=0, max_mmacs=5).model, path)
    return path


def board(tmp_path: Path, ssh: str = "pi@board.local:2222", python: str = "/opt/py/bin/python3") -> Path:
    text = load_profile("rpi4").path.read_text()
    text = (text.replace('ssh = ""', f'ssh = "{ssh}"').replace('python = "python3"', f'python = "{python}"')
            .replace('name = "rpi4"', 'name = "labpi"'))
    path = tmp_path / "labpi.toml"
    path.write_text(text)
    return path


def test_the_rules():
    # no profile, no ssh: here
    t = resolve_target()
    assert isinstance(t, HostTarget) and t.source == "measured:host"
    # the host profile: here, with its threads and providers
    t = resolve_target("host")
    assert isinstance(t, HostTarget) and t.settings.device == "host"
    # any other profile without ssh: predicted (build) or here anyway (bench, check, calibrate)
    t = resolve_target("rpi4")
    assert isinstance(t, PredictedTarget) and not t.measures and t.source == "predicted:rpi4"
    t = resolve_target("rpi4", otherwise="host")
    assert isinstance(t, HostTarget) and t.settings.threads == 4
    # --ssh first, whatever the profile
    for otherwise in ("predict", "host"):
        t = resolve_target("rpi4", "me@10.0.0.2:22", otherwise=otherwise)
        assert isinstance(t, RemoteTarget) and t.remote and t.measures
        assert t.source == "measured:ssh:rpi4" and t.address == "me@10.0.0.2:22"
        assert t.where == "over SSH on me@10.0.0.2:22" and t.python == "python3"
    # without a profile the address names the device
    t = resolve_target(None, "me@10.0.0.2")
    assert t.name == "me@10.0.0.2" and t.source == "measured:ssh:me@10.0.0.2"
    with pytest.raises(ValueError):
        resolve_target("host", otherwise="guess")


def test_the_profile_ssh_line(tmp_path):
    prof = board(tmp_path)
    t = resolve_target(str(prof))
    assert isinstance(t, RemoteTarget) and t.address == "pi@board.local:2222"
    assert t.python == "/opt/py/bin/python3" and t.source == "measured:ssh:labpi"
    assert t.settings.threads == 4 and t.settings.device == "labpi"
    # --ssh and --remote-python win over the profile's
    t = resolve_target(load_profile(str(prof)), "x@y", remote_python="/usr/bin/python3")
    assert t.address == "x@y" and t.python == "/usr/bin/python3"


def test_the_errors_of_resolve_ssh_stay(tmp_path):
    with pytest.raises(EdgepruneError, match="--remote-python needs a device"):
        resolve_target(None, remote_python="/usr/bin/python3")
    with pytest.raises(EdgepruneError, match="--ssh-config needs a device"):
        resolve_target("rpi4", ssh_config=str(tmp_path))
    with pytest.raises(EdgepruneError, match="--ssh-config file not found"):
        resolve_target(None, "me@host", ssh_config=str(tmp_path / "nope"))
    with pytest.raises(EdgepruneError, match="bad SSH target"):
        resolve_target(None, "-oProxyCommand=x")


def test_predicted_figure_is_the_build_dict(model):
    t = resolve_target("rpi4")
    p = predict(model, "rpi4")
    fig = t.figure(model, "p90")
    assert fig.to_dict() == {"value_ms": p.high_ms, "source": "predicted:rpi4", "predicted_ms": p.latency_ms,
                             "low_ms": p.low_ms, "high_ms": p.high_ms, "expected_error": p.expected_error}
    assert t.figure(model).value_ms == p.latency_ms
    assert t.prediction(model).kernels


def test_bench_config_applies_the_profile_then_flags():
    cfg = bench_config(BenchConfig(warmup=3), "rpi4", providers=["CPUExecutionProvider"])
    assert (cfg.threads, cfg.device, cfg.warmup) == (4, "rpi4", 3)
    assert bench_config(BenchConfig(threads=2), None).threads == 2
