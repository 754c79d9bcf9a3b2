"""SSH addresses of devices: ``user@host[:port]``, parsed once.

Its own module, importing nothing else of edgeprune's devices, so that device profiles
(whose ``ssh`` line is checked on load) and the SSH runner (:mod:`edgeprune.devices.ssh`,
which loads profiles) can both use it at module level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeprune.errors import EdgepruneError

# neither part may start with "-": ssh would read "-oProxyCommand=...@host" as an option
_TARGET = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)"
    r"(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class SshTarget:
    host: str                 # host name, ssh-config alias or address (IPv6 without brackets)
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        """``user@host`` as ssh expects it (port goes to -p / -P)."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def scp_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        s = f"{self.user}@{host}" if self.user else host
        return f"{s}:{self.port}" if self.port else s


def parse_target(text: str) -> SshTarget:
    """Parse ``user@host[:port]`` (user and port optional; ``[v6addr]:port`` accepted)."""
    m = _TARGET.match(text.strip()) if text else None
    if not m:
        raise EdgepruneError(
            f"bad SSH target {text!r}; expected user@host or user@host:port")
    port = int(m.group("port")) if m.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise EdgepruneError(f"bad SSH port {port} in {text!r}; expected 1-65535")
    return SshTarget(host=m.group("host").strip("[]"), user=m.group("user"), port=port)
