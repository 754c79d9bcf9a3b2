"""A real OpenSSH server on 127.0.0.1 for the SSH runner tests.

The server runs from its own config file on a free port with a throwaway host key; the
client side is an ssh config file (passed with -F) holding a throwaway key pair. Needs the
``openssh-server`` and ``openssh-client`` packages (``.ci/run`` installs them).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeprune-test",
                    "-f", str(path)], check=True)


@dataclass
class Sshd:
    port: int
    user: str
    client_config: Path      # ssh -F file: key, no known_hosts checks
    wrong_key_config: Path   # same, with a key the server does not accept
    proc: subprocess.Popen

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"


def available() -> str | None:
    """None if a test sshd can run here, else why not."""
    if not Path(SSHD).exists():
        return "sshd not installed (apt-get install openssh-server)"
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install openssh-client)"
    return None


def start(root: Path) -> Sshd:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for name in ("host_key", "client_key", "wrong_key"):
        _keygen(root / name)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    user = getpass.getuser()
    port = free_port()
    cfg = root / "sshd_config"
    cfg.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
        f"PidFile {root / 'sshd.pid'}", f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", f"AllowUsers {user}",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 50",
    ]) + "\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # privilege separation dir
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "sshd.log", "w"))
    for key, name in (("client_key", "client_config"), ("wrong_key", "wrong_config")):
        (root / name).write_text("\n".join([
            "Host *", f"  IdentityFile {root / key}", "  IdentitiesOnly yes",
            "  UserKnownHostsFile /dev/null", "  StrictHostKeyChecking no", "  LogLevel ERROR",
        ]) + "\n")
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()[-500:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.terminate()
        raise RuntimeError("sshd did not start listening")
    return Sshd(port, user, root / "client_config", root / "wrong_config", proc)


def stop(server: Sshd) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
