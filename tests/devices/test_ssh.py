"""The SSH runner against a real sshd on 127.0.0.1 with a throwaway key."""

from __future__ import annotations

import json
import signal
import os
import socket
import subprocess
import sys
import time
import uuid
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
    for bad in ("", "a@b:c", "-oProxyCommand=x", "a b", "-oProxyCommand=touch@host", "-l@host", "pi@-oX"):
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


def test_remote_target_figure_is_the_build_dict(sshd, model, tmp_path):
    from edgeprune.devices.targets import RemoteTarget, resolve_target

    prof = board_profile(sshd, tmp_path)
    t = resolve_target(str(prof), ssh_config=str(sshd.client_config))
    assert isinstance(t, RemoteTarget) and t.address == sshd.target and t.python == VENV_PY
    fig = t.figure(model, "p90", runs=5)
    r = fig.measured
    assert r.runs == 5 and r.threads == 4 and r.extra["ssh"] == sshd.target
    assert fig.to_dict() == {"value_ms": r.p90_ms, "source": "measured:ssh:labpi", "p50_ms": r.p50_ms,
                             "p90_ms": r.p90_ms, "threads": 4, "provider": "CPUExecutionProvider"}


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
    # --quick over SSH: the 24 synthetic networks alone (at most 30 measurements on the board); --max-mmacs
    # keeps them tiny here
    r = runner.invoke(app, ["calibrate", "--device", "host", "--ssh", sshd.target,
                            "--ssh-config", str(sshd.client_config), "--remote-python", VENV_PY,
                            "--quick", "--max-mmacs", "10",
                            "--workdir", str(tmp_path / "suite"), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["mode"] == "timed" and len(d["models"]) == 24
    cv = d["cross_validated"]                     # the error it reports, from held-out folds
    assert cv["n"] == 24 and 0 <= cv["median_abs_rel_err"] <= cv["p90_abs_rel_err"]
    from edgeprune.devices.profiles import load_profile
    p = load_profile(str(out))
    assert p.ssh == sshd.target and set(p.latency_model.fit["group_scales"]) == {"conv", "dwconv", "rest"}
    # and 6 int8 copies of them: 30 measurements. One scale of the int8 arithmetic is fitted: of the host
    # profile's int8 constants where it has them (a calibration of this machine), else of its int8/fp32 ratio
    i8 = d["int8"]
    assert len(i8["models"]) == 6 and i8["cross_validated"]["n"] == 6
    host = load_profile("host").latency_model
    scale = p.latency_model.fit["int8_scale"]
    if "qconv" in host.coefficients:
        assert i8["ratio"] is None and p.latency_model.coefficients["qconv"]["mmac"] == \
            pytest.approx(scale * host.coefficients["qconv"]["mmac"], rel=1e-4)
    else:
        assert "qconv" not in p.latency_model.coefficients and i8["ratio"] == pytest.approx(scale, rel=1e-3)
    assert p.latency_model.int8.expected_error == i8["expected_error"] and "over SSH" in p.sources["int8"]
    # the device's own facts, as its onnxruntime runner reported them (the loopback device is this machine)
    from edgeprune.devices.fingerprint import local
    assert (p.fingerprint.machine, p.fingerprint.features, p.fingerprint.cores) == \
        (local().machine, local().features, local().cores)
    assert "runner" in p.fingerprint.source


def test_calibrating_a_board_over_ssh_fits_its_int8_ratio(sshd, tmp_path):
    """A board profile costs int8 convolutions as a ratio of fp32: calibration measures int8 copies of the
    suite on the device and refits that ratio (the loopback device is this x86 CPU, so its types are x86's)."""
    from edgeprune.devices.profiles import load_profile
    from edgeprune.devices.predictor import predict
    prof = board_profile(sshd, tmp_path)
    shipped = load_profile(str(prof)).latency_model.int8
    out = tmp_path / "labpi-cal.toml"
    r = runner.invoke(app, ["calibrate", "--device", str(prof), *ssh_flags(sshd), "--quick", "--synthetic", "8",
                            "--int8", "4", "--max-mmacs", "10", "--workdir", str(tmp_path / "suite"),
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    i8 = json.loads(r.stdout)["int8"]
    assert len(i8["models"]) == 4 and i8["activations"] == "uint8"
    p = load_profile(str(out))
    lm = p.latency_model
    assert not {"qconv", "qgemm"} & set(lm.coefficients)                  # still costed by ratio
    assert lm.int8.ratio == pytest.approx(i8["ratio"]) and lm.int8.ratio != shipped.ratio
    assert lm.int8.ratio == pytest.approx(shipped.ratio * lm.fit["int8_scale"], rel=1e-3)
    assert lm.int8.dotprod is None                                         # measured on x86, not an Arm core
    q8 = sorted((tmp_path / "suite").glob("calib_*_q*.onnx"))[0]
    assert predict(q8, p).expected_error == max(p.expected_error, i8["expected_error"])
    # --int8 0: nothing measured quantized, and the board's shipped int8 figures are kept
    r = runner.invoke(app, ["calibrate", "--device", str(prof), *ssh_flags(sshd), "--quick", "--synthetic", "8",
                            "--int8", "0", "--max-mmacs", "10", "--workdir", str(tmp_path / "suite"),
                            "--out", str(out), "--force", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["int8"] is None and load_profile(str(out)).latency_model.int8 == shipped


# -- edgeprune bench / check on the device ------------------------------------------------

def ssh_flags(sshd) -> list[str]:
    return ["--ssh", sshd.target, "--ssh-config", str(sshd.client_config),
            "--remote-python", VENV_PY]


def board_profile(sshd, tmp_path: Path, name: str = "labpi") -> Path:
    """The bundled rpi4 profile with its ssh line pointing at the test sshd."""
    from edgeprune.devices.profiles import load_profile

    text = load_profile("rpi4").path.read_text()
    assert 'ssh = ""' in text and 'python = "python3"' in text and 'name = "rpi4"' in text
    text = (text.replace('ssh = ""', f'ssh = "{sshd.target}"')
            .replace('python = "python3"', f'python = "{VENV_PY}"')
            .replace('name = "rpi4"', f'name = "{name}"'))
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_bench_over_ssh_latency_and_memory_on_the_device(sshd, model):
    r = runner.invoke(app, ["bench", str(model), *ssh_flags(sshd), "--runs", "40",
                            "--warmup", "5", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    (res,) = d["results"]
    assert res["source"] == f"measured:ssh:{sshd.target}" and res["extra"]["ssh"] == sshd.target
    assert res["runs"] == 40 and res["threads"] == 1 and res["extra"]["remote_python"] == VENV_PY
    local = measure(model, BenchConfig(threads=1, warmup=5, runs=40))
    assert 0.33 < res["p50_ms"] / local.p50_ms < 3.0      # same box, same runner (loose: shared)
    assert res["extra"]["model_sha256"] == local.extra["model_sha256"]
    (mem,) = d["memory"]                                   # measured there, in fresh processes
    assert mem["source"] == res["source"] and mem["repeats"] == 3
    assert len(mem["samples"]["arena_on"]) == 3 and len(mem["samples"]["arena_off"]) == 3
    assert mem["arena_on_peak_bytes"] > 0 and mem["file_bytes"] == model.stat().st_size
    assert any("over SSH" in n for n in d["notes"])


def test_profile_with_an_ssh_line_makes_bench_measure_on_the_device(sshd, model, tmp_path):
    prof = board_profile(sshd, tmp_path)
    r = runner.invoke(app, ["bench", str(model), "--device", str(prof), "--ssh-config",
                            str(sshd.client_config), "--runs", "20", "--warmup", "2",
                            "--no-memory", "--profile", "--top", "3", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    (res,) = d["results"]
    assert res["source"] == "measured:ssh:labpi" and res["extra"]["ssh"] == sshd.target
    assert res["threads"] == 4            # the rpi4 profile's threads, not the default 1
    assert res["extra"]["remote_python"] == VENV_PY and res["runs"] == 20
    assert 1 <= len(res["extra"]["profile"]["top_ops"]) <= 3 and d["memory"] == []
    # --threads still overrides the profile
    r = runner.invoke(app, ["bench", str(model), "--device", str(prof), "--ssh-config",
                            str(sshd.client_config), "--threads", "1", "--runs", "5",
                            "--no-memory", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["threads"] == 1
    # and check --device that.toml gates on the device too
    r = runner.invoke(app, ["check", str(model), "--device", str(prof), "--ssh-config",
                            str(sshd.client_config), "--budget", "10s", "--json"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)
    assert v["latency"]["source"] == "measured:ssh:labpi" and v["latency"]["threads"] == 4


def test_bench_vs_over_ssh_is_refused(sshd, model):
    r = runner.invoke(app, ["bench", str(model), "--vs", str(model), *ssh_flags(sshd)])
    assert r.exit_code == 2
    assert "--vs is not available over SSH" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_bench_unreachable_device_is_one_line(sshd, model):
    r = runner.invoke(app, ["bench", str(model), "--ssh",
                            f"{sshd.user}@127.0.0.1:{sshd_helper.free_port()}",
                            "--ssh-config", str(sshd.client_config), "--runs", "3"])
    assert r.exit_code == 2
    assert "connection refused" in r.output and len(r.output.strip().splitlines()) == 1


def test_ssh_flags_without_a_target_are_refused(model, tmp_path):
    r = runner.invoke(app, ["bench", str(model), "--remote-python", "/usr/bin/python3"])
    assert r.exit_code == 2 and "--remote-python needs a device" in r.output
    r = runner.invoke(app, ["bench", str(model), "--ssh", "me@127.0.0.1",
                            "--ssh-config", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "--ssh-config file not found" in r.output


def test_baseline_on_the_device_and_check_over_ssh_in_a_subprocess(sshd, model, tmp_path):
    cli = [sys.executable, "-c", "from edgeprune.cli import main; main()"]
    base = tmp_path / "board.json"
    proc = subprocess.run([*cli, "bench", str(model), *ssh_flags(sshd), "--runs", "30",
                           "--warmup", "3", "--no-memory", "--save-baseline", str(base)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"measured:ssh:{sshd.target}" in proc.stdout and "baseline written" in proc.stdout
    saved = json.loads(base.read_text())
    assert saved["latency"]["source"] == f"measured:ssh:{sshd.target}"
    assert saved["latency"]["extra"]["ssh"] == sshd.target and saved["settings"]["threads"] == 1

    # the same model on the same device passes (absolute mode: stored figures from the device)
    proc = subprocess.run([*cli, "check", str(model), "--baseline", str(base), *ssh_flags(sshd),
                           "--tolerance", "300%", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v = json.loads(proc.stdout)
    assert v["verdict"] == "pass" and v["mode"] == "absolute"
    assert v["latency"]["source"] == f"measured:ssh:{sshd.target}"
    assert [c["name"] for c in v["checks"]] == ["latency-absolute"]

    # a device baseline is not silently checked on this host, nor a host one on the device
    proc = subprocess.run([*cli, "check", str(model), "--baseline", str(base)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"--ssh {sshd.target}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    host_base = tmp_path / "host.json"
    r = runner.invoke(app, ["bench", str(model), "--runs", "5", "--no-memory",
                            "--save-baseline", str(host_base)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["check", str(model), "--baseline", str(host_base), *ssh_flags(sshd)])
    assert r.exit_code == 2 and "measured on this host" in r.output


def test_check_budget_over_ssh_judges_the_device_figure(sshd, model):
    r = runner.invoke(app, ["check", str(model), *ssh_flags(sshd), "--budget", "0.0001ms",
                            "--max-memory", "100GB", "--json"])
    assert r.exit_code == 1, r.output
    v = json.loads(r.stdout)
    assert v["verdict"] == "fail" and v["latency"]["source"] == f"measured:ssh:{sshd.target}"
    assert v["memory"]["source"] == f"measured:ssh:{sshd.target}"
    assert {c["name"]: c["passed"] for c in v["checks"]} == {"latency-budget": False,
                                                             "memory-budget": True}


def test_build_judges_the_budget_on_the_device_measured_over_ssh(sshd, tmp_path):
    """A budget the unpruned model meets: the artifact's device figures come from the board."""
    tests = Path(__file__).resolve().parent.parent / "edgeprune"
    rng = np.random.default_rng(0)
    y = np.arange(60) % 10
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 255, (30, 16, 16), dtype=np.uint8), y_train=y[:30],
             x_val=rng.integers(0, 255, (30, 16, 16), dtype=np.uint8), y_val=y[30:])
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.run([sys.executable, "-m", "edgeprune", "build", "--model", "tinynets:tiny_resnet",
                        "--input-size", "16", "--data", str(tmp_path / "d.npz"), "--score-images", "10",
                        "--device", "host", "--budget", "10s", "--ssh", sshd.target, "--ssh-config",
                        str(sshd.client_config), "--remote-python", VENV_PY, "--bench-runs", "5",
                        "--out", str(tmp_path / "b"), "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["removed"] == [] and "without removing anything" in out["message"]
    lat = json.loads((tmp_path / "b" / "artifact" / "manifest.json").read_text())["latency"]
    assert lat["device_after"]["source"] == lat["device_before"]["source"] == "measured:ssh:host"
    assert 0 < lat["device_after"]["p50_ms"] <= 10_000


def test_a_remote_python_that_hangs_is_stopped_by_the_ssh_timeout(sshd, model, tmp_path):
    """The probe answers, then the benchmark never does: --ssh-timeout stops it with one line."""
    sleepy = tmp_path / "sleepy-python"
    sleepy.write_text(f'#!/bin/sh\ncase "$1" in -c) exec {VENV_PY} "$@";; *) exec sleep 120;; esac\n')
    sleepy.chmod(0o755)
    started = time.monotonic()
    r = runner.invoke(app, ["bench", str(model), "--ssh", sshd.target, "--ssh-config", str(sshd.client_config),
                            "--remote-python", str(sleepy), "--ssh-timeout", "3", "--no-memory", "--runs", "5"])
    assert time.monotonic() - started < 60
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "longer than 3s" in r.stderr and "--ssh-timeout" in r.stderr
    r = runner.invoke(app, ["bench", str(model), "--ssh", sshd.target, "--ssh-timeout", "0"])
    assert r.exit_code == 2 and "--ssh-timeout must be positive" in r.stderr


def test_a_failed_device_check_leaves_no_folder_there(sshd, model):
    before = set(Path("/tmp").glob("edgeprune.*"))
    r = runner.invoke(app, ["bench", str(model), "--ssh", sshd.target, "--ssh-config", str(sshd.client_config),
                            "--remote-python", "/nonexistent/python3", "--no-memory", "--runs", "3"])
    assert r.exit_code == 2 and "has no '/nonexistent/python3'" in r.stderr, r.output
    assert set(Path("/tmp").glob("edgeprune.*")) - before == set()     # its folder was made first, then removed


# -- an interrupted measurement leaves nothing on the device ------------------------------

def runner_pids(model_name: str) -> list[int]:
    """Processes running ``python ort_runner.py MODEL_NAME`` (the runner on the loopback "device")."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:           # it ended while we looked
            continue
        if argv[1:3] == [b"ort_runner.py", model_name.encode()]:
            pids.append(int(cmdline.parent.name))
    return pids


def wait_for(what: str, condition, proc: subprocess.Popen, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, f"bench ended before {what}: {proc.stderr.read()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def default_signals() -> None:
    """A shell that starts the suite in the background has SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_remote_bench_stops_the_runner_and_removes_its_folder(sshd, model, tmp_path, sig, code):
    name = f"interrupt-{uuid.uuid4().hex[:12]}.onnx"      # finds this test's folder and runner, nobody else's
    (tmp_path / name).write_bytes(model.read_bytes())
    cmd = [sys.executable, "-m", "edgeprune", "bench", str(tmp_path / name), *ssh_flags(sshd), "--warmup", "0",
           "--time-budget", "300", "--runs", "100000000", "--no-memory"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    try:
        copied = wait_for("the folder on the device", lambda: list(Path("/tmp").glob(f"edgeprune.*/{name}")), proc)
        folder = copied[0].parent
        wait_for("the runner on the device", lambda: runner_pids(name), proc)
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == code
        stderr = proc.stderr.read()
        assert stderr.strip().splitlines() == [f"error: interrupted by {sig.name}"], stderr
        assert not folder.exists() and not list(Path("/tmp").glob(f"edgeprune.*/{name}"))
        deadline = time.monotonic() + 30
        while runner_pids(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner_pids(name) == [], "the runner still runs on the device"
    finally:                      # a failed test leaves no runner burning a core for 300 s
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in runner_pids(name):
            os.kill(pid, signal.SIGKILL)
