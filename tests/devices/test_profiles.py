"""Device profiles: bundled files load and validate, bad files give one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeprune.cli import app
from edgeprune.devices.profiles import (dumps_profile, list_profiles, load_profile, profile_from_dict,
                                        save_profile)
from edgeprune.errors import EdgepruneError

runner = CliRunner()
REQUIRED = {"host", "rpi3", "rpi4", "rpi5", "jetson-nano"}

VALID = """
name = "mine"
cpu = "Cortex-A55"
cores = 4
clock_ghz = 1.8
ram_gb = 2
threads = 4
providers = ["CPUExecutionProvider"]
latency_source = "measured"
expected_error = 0.2
"""


def test_bundled_profiles_are_complete():
    profiles = {p.name: p for p in list_profiles()}
    assert REQUIRED <= set(profiles)
    for p in profiles.values():
        assert p.threads >= 1 and p.cores >= 1 and p.clock_ghz > 0 and p.ram_gb > 0
        assert p.providers and p.providers[-1] == "CPUExecutionProvider"
        assert p.latency_model is not None, p.name
        assert p.expected_error is not None and 0 < p.expected_error < 1, p.name
        assert p.latency_source and p.sources.get("latency_model"), p.name
        assert p.latency_model.coefficients


def test_arm_profiles_state_their_runtime_gap_and_residuals():
    for name in ("rpi3", "rpi4", "rpi5", "jetson-nano"):
        lm = load_profile(name).latency_model
        assert lm.runtime_factor > 1.0          # onnxruntime slower than the ncnn figures
        assert lm.nchwc_block == 0
        assert lm.fit["residuals"]
        assert "runtime_factor" in load_profile(name).sources


def test_user_profile_by_path_and_round_trip(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(VALID)
    p = load_profile(str(f))
    assert p.name == "mine" and p.threads == 4 and p.latency_model is None and p.path == f
    host = load_profile("host")
    out = save_profile(host, tmp_path / "copy.toml")
    again = load_profile(str(out))
    assert again.latency_model.coefficients == host.latency_model.coefficients
    assert again.expected_error == host.expected_error
    assert again.sources == host.sources


@pytest.mark.parametrize("text, needle", [
    ("name = ", "not valid TOML"),
    (VALID.replace('cpu = "Cortex-A55"\n', ""), "missing required key 'cpu'"),
    (VALID.replace("cores = 4", 'cores = "four"'), "'cores' must be int"),
    (VALID.replace("threads = 4", "threads = 0"), "'threads' must be positive"),
    (VALID.replace('["CPUExecutionProvider"]', '["CPUProvider"]'), "unknown onnxruntime provider"),
    (VALID.replace("expected_error = 0.2", "expected_error = 20.0"), "relative error"),
    (VALID + 'ssh = "user@host:99999"\n', "bad SSH port"),
    (VALID + "[latency_model.coefficients.conv9x9]\nnode = 1.0\n", "unknown kernel class 'conv9x9'"),
    (VALID + "[latency_model.coefficients.conv3x3]\nflops = 1.0\n", "unknown feature 'flops'"),
    (VALID + "[latency_model.coefficients.conv3x3]\nnode = -1.0\n", "non-negative"),
])
def test_malformed_profile_gives_one_clear_line(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(EdgepruneError) as e:
        load_profile(str(f))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_device_and_missing_file():
    with pytest.raises(EdgepruneError, match="unknown device 'rpi9'.*rpi4"):
        load_profile("rpi9")
    with pytest.raises(EdgepruneError, match="not found"):
        load_profile("/nonexistent/dev.toml")


def test_dumped_profile_is_valid_toml():
    import tomllib
    text = dumps_profile(load_profile("rpi4"), "header line")
    assert text.startswith("# header line")
    assert profile_from_dict(tomllib.loads(text)).name == "rpi4"


def test_devices_cli_table_json_and_detail():
    r = runner.invoke(app, ["devices"])
    assert r.exit_code == 0, r.output
    for name in REQUIRED:
        assert name in r.output
    r = runner.invoke(app, ["devices", "--json"])
    data = json.loads(r.stdout)
    assert {d["name"] for d in data} >= REQUIRED
    assert all("expected_error" in d and "latency_source" in d for d in data)
    r = runner.invoke(app, ["devices", "rpi4"])
    assert r.exit_code == 0 and "Cortex-A72" in r.output and "sources" in r.output


def test_devices_cli_unknown_device_subprocess():
    proc = subprocess.run([sys.executable, "-c", "from edgeprune.cli import main; main()",
                           "devices", "nosuchboard"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown device 'nosuchboard'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
