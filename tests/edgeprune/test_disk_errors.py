"""The disk may refuse a write: one line, exit 2, nothing partial left (a real write limit, RLIMIT_FSIZE)."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys


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
