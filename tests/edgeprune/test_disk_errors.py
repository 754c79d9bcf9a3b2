"""The disk may refuse a write: one line, exit 2, nothing partial left (a real write limit, RLIMIT_FSIZE)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

from builds import TINYNETS, brightness_npz  # tests/builds.py

from edgeprune.exporters.artifact import checksum_problems


def _limited(limit_bytes: int):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return set_limit


def test_export_that_hits_a_write_limit_fails_in_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    p = subprocess.run([sys.executable, "-m", "edgeprune", "export", "--out", str(out)], capture_output=True,
                       text=True, timeout=600, preexec_fn=_limited(200_000), env={"EDGEPRUNE_PROGRESS": "0",
                                                                                  "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "larger than allowed" in lines[0], p.stderr[-2000:]
    assert not out.exists() and not [q for q in tmp_path.iterdir() if q.name.startswith(".art")]


def test_build_that_hits_a_write_limit_ships_nothing_and_a_rerun_finishes_from_its_cache(tmp_path):
    """At 96x96 the artifact's test vectors (about 210 KB) are the build's largest file, larger than
    anything the cache holds (the exports are about 107 KB): the limit lets the cache be written and
    stops the artifact."""
    brightness_npz(tmp_path / "d.npz", 300, 100)
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "edgeprune", "build", "--model", "tinynets:tiny_resnet", "--input-size", "96",
           "--data", str(tmp_path / "d.npz"), "--score-images", "50", "--device", "rpi4", "--budget", "10s",
           "--levers", "blocks", "--bench-runs", "5", "--out", str(out), "--json"]
    env = {**os.environ, "EDGEPRUNE_PROGRESS": "0", "PYTHONPATH": str(TINYNETS)}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=_limited(150_000), env=env)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    (cache,) = (out / "cache").iterdir()
    assert lines[0].startswith(f"error: cannot write {cache}/.artifact.") and lines[0].endswith(
        "/golden.npz: File too large (the file is larger than allowed)"), lines[0]
    exports = sorted(cache.glob("*.onnx"))
    assert not (out / "artifact").exists()
    assert not [f for f in out.rglob("*") if "artifact" in f.name or f.name.endswith(".tmp")]  # no staging left
    written = {f: f.stat().st_mtime_ns for f in exports}

    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert checksum_problems(out / "artifact") == []
    assert {f: f.stat().st_mtime_ns for f in exports} == written      # the cached exports were reused
