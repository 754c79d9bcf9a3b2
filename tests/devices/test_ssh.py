"""The SSH runner against a real sshd on 127.0.0.1 with a throwaway key."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgeprune.benchmarks.latency import BenchConfig, measure
from edgeprune.cli import app
from edgeprune.devices.ssh import SshConfig, measure_over_ssh, parse_target, run_ssh
from edgeprune.devices.suite import synthetic_model
from edgeprune.errors import EdgepruneError

sys.path.insert(0, str(Path(__file__).parent))
import sshd_helper  # noqa: E402

runner = CliRunner()
VENV_PY = sys.executable            # the far side's python with numpy + onnxruntime
CPU = ["CPUExecutionProvider"]

pytestmark = pytest.mark.skipif(sshd_helper.available() is not None,
                                reason=sshd_helper.available() or "")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = sshd_helper.start(tmp_path_factory.mktemp("sshd"))
    yield server
    sshd_helper.stop(server)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(synthetic_model(2, seed=0, max_mmacs=5).model, path)
    return path


def cfg(sshd, python=VENV_PY, config=None, target=None) -> SshConfig:
    return SshConfig(parse_target(target or sshd.target), python=python,
                     options=("-F", str(config or sshd.client_config)))


def test_target_parsing():
    t = parse_target("pi@raspberrypi.local:2222")
    assert (t.user, t.host, t.port) == ("pi", "raspberrypi.local", 2222)
    assert parse_target("mypi").destination == "mypi"
    assert parse_target("me@[::1]:22").scp_host == "me@[::1]"
    for bad in ("", "a@b:c", "-oProxyCommand=x", "a b"):
        with pytest.raises(EdgepruneError):
            parse_target(bad)


def test_measures_a_real_model_and_agrees_with_a_local_bench(sshd, model):
    remote = measure_over_ssh(model, cfg(sshd), "loopback", 1, CPU, warmup=5, runs=40)
    assert remote.source == "measured:ssh:loopback"
    assert remote.runs == 40 and remote.threads == 1 and remote.provider_used == "CPUExecutionProvider"
    assert remote.extra["ssh"] == sshd.target and remote.p50_ms > 0
    local = measure(model, BenchConfig(threads=1, warmup=5, runs=40))
    # same machine, same runner: the figures must be of the same size (the box is shared,
    # so only a loose bound holds)
    assert 0.33 < remote.p50_ms / local.p50_ms < 3.0
    assert remote.extra["model_sha256"] == local.extra["model_sha256"]


def test_external_data_travels_with_the_model(sshd, tmp_path):
    m = synthetic_model(4, seed=0, max_mmacs=5).model
    path = tmp_path / "ext.onnx"
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=256)
    assert (tmp_path / "ext.onnx.data").exists()
    r = measure_over_ssh(path, cfg(sshd), "loopback", 1, CPU, warmup=1, runs=5)
    assert r.runs == 5


def test_device_without_onnxruntime(sshd, model, tmp_path):
    # a python on the far side that cannot see onnxruntime (no site-packages)
    bare = tmp_path / "python-bare"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    with pytest.raises(EdgepruneError, match="has no onnxruntime for .*python-bare"):
        measure_over_ssh(model, cfg(sshd, python=str(bare)), "loopback", 1, CPU, runs=3)
    with pytest.raises(EdgepruneError, match="has no '/no/such/python3'"):
        measure_over_ssh(model, cfg(sshd, python="/no/such/python3"), "loopback", 1, CPU, runs=3)


def test_authentication_failure(sshd, model):
    with pytest.raises(EdgepruneError, match="authentication failed"):
        measure_over_ssh(model, cfg(sshd, config=sshd.wrong_key_config), "loopback", 1, CPU, runs=3)


def test_connection_refused(sshd, model):
    target = f"{sshd.user}@127.0.0.1:{sshd_helper.free_port()}"
    with pytest.raises(EdgepruneError, match="connection refused"):
        measure_over_ssh(model, cfg(sshd, target=target), "loopback", 1, CPU, runs=3)


def test_timeout_when_nothing_answers(sshd):
    with socket.socket() as silent:           # accepts TCP, never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        c = cfg(sshd, target=f"x@127.0.0.1:{silent.getsockname()[1]}")
        c.connect_timeout_s = 2
        with pytest.raises(EdgepruneError, match="timed out after 2s"):
            run_ssh(c, "true", "checking the device")


def test_remote_runner_error_is_one_line(sshd, tmp_path):
    bad = tmp_path / "bad.onnx"
    m = synthetic_model(2, seed=0, max_mmacs=5).model
    m.graph.node[0].op_type = "NoSuchOp"
    onnx.save(m, bad)
    with pytest.raises(EdgepruneError, match="onnxruntime cannot load") as e:
        measure_over_ssh(bad, cfg(sshd), "loopback", 1, CPU, runs=3)
    assert "\n" not in str(e.value)


def test_predict_cli_measures_over_ssh_in_a_subprocess(sshd, model):
    cmd = [sys.executable, "-c", "from edgeprune.cli import main; main()", "predict", str(model),
           "--device", "host", "--ssh", sshd.target, "--ssh-config", str(sshd.client_config),
           "--remote-python", VENV_PY, "--runs", "20", "--warmup", "2", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["measured"]["source"] == "measured:ssh:host" and d["measured"]["runs"] == 20
    assert d["prediction"]["latency_ms"] > 0 and "prediction_error" in d


def test_cli_unreachable_device_exit_code(sshd, model):
    r = runner.invoke(app, ["predict", str(model), "--device", "host", "--ssh",
                            f"{sshd.user}@127.0.0.1:{sshd_helper.free_port()}",
                            "--ssh-config", str(sshd.client_config)])
    assert r.exit_code == 2
    assert "connection refused" in r.output and "Traceback" not in r.output


def test_calibrate_over_ssh(sshd, tmp_path):
    out = tmp_path / "loop.toml"
    r = runner.invoke(app, ["calibrate", "--device", "host", "--ssh", sshd.target,
                            "--ssh-config", str(sshd.client_config), "--remote-python", VENV_PY,
                            "--synthetic", "8", "--max-mmacs", "10", "--no-architectures",
                            "--workdir", str(tmp_path / "suite"), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["mode"] == "timed" and len(d["models"]) == 8
    from edgeprune.devices.profiles import load_profile
    p = load_profile(str(out))
    assert p.ssh == sshd.target and set(p.latency_model.fit["group_scales"]) == {"conv", "dwconv", "rest"}
