"""How an etcd server process is found and run on loopback.

`find_etcd_binary`, `member_command`, `free_ports`, `etcd_environment`, `check_health`
and `detached` are used by the embedded etcd (`bridge.etcd.embedded`) and by the test
rigs (`bridge.testing.cluster`), so tests run etcd as the bridge does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.request
from collections.abc import Sequence

from bridge.errors import ConfigError

DEBIAN_ETCD = "/usr/bin/etcd"
COMMON_FLAGS = (
    "--logger",
    "zap",
    "--log-level",
    "warn",
    "--auto-compaction-mode",
    "revision",
    "--auto-compaction-retention",
    "10000",
)
# Debian's etcd.service listens here; our own instances must never collide with it.
RESERVED_PORTS = frozenset({2379, 2380})


def find_etcd_binary() -> str:
    """Path of the etcd server binary: PATH first, then Debian's location.

    Raises `ConfigError` naming the Debian package when neither exists.
    """
    found = shutil.which("etcd")
    if found:
        return found
    if os.access(DEBIAN_ETCD, os.X_OK):
        return DEBIAN_ETCD
    raise ConfigError(
        "etcd binary not found on PATH or at /usr/bin/etcd: install Debian's etcd-server "
        "package (apt-get install etcd-server) or set [etcd] endpoints"
    )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct currently free TCP ports on `host`, none of them 2379/2380.

    The sockets stay bound until all ports are chosen, so the ports are distinct.
    A port can still be taken by someone else before etcd binds it; that race is
    accepted (the kernel hands out ephemeral ports far apart).
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port not in RESERVED_PORTS:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One currently free TCP port on `host` (never 2379/2380)."""
    return free_ports(1, host)[0]


def member_command(
    binary: str,
    name: str,
    data_dir: str,
    client_port: int,
    peer_port: int,
    initial_cluster: str,
    token: str,
    host: str = "127.0.0.1",
    *,
    client_scheme: str = "http",
    extra_flags: Sequence[str] = (),
) -> list[str]:
    """The argv for one etcd member listening on `host` only.

    `initial_cluster` is ``name=http://host:peer,...`` for every member. The
    ``new`` cluster state is ignored by etcd once the data dir holds a member, so the
    same command also restarts the member. ``client_scheme="https"`` with TLS flags in
    `extra_flags` (``--cert-file`` ...) gives a member that serves clients over TLS.
    """
    client_url = f"{client_scheme}://{host}:{client_port}"
    peer_url = f"http://{host}:{peer_port}"
    return [
        binary,
        "--name", name,
        "--data-dir", data_dir,
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", initial_cluster,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        *COMMON_FLAGS,
        *extra_flags,
    ]  # fmt: skip


def etcd_environment() -> dict[str, str]:
    """This process's environment without ``ETCD_*`` variables.

    etcd reads ``ETCD_<FLAG>`` variables and refuses to start when one shadows a
    command-line flag, so a stray variable in the caller's shell must not leak in.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


def check_health(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when ``http://host:port/health`` answers ``{"health": "true"}``."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout) as resp:
            body = json.loads(resp.read().decode("utf-8"))
    except (OSError, ValueError):
        # Refused, reset, timed out, HTTP error (503 while there is no leader), bad JSON.
        return False
    return isinstance(body, dict) and body.get("health") == "true"


#: Run by `detached`: a session of its own, a signal when the parent dies, then exec.
_DETACH = """
import ctypes, os, signal, sys
os.setsid()
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: the bridge's own stop is the only one
if os.getppid() == 1:
    sys.exit("recsync-bridge exited before its embedded etcd started")
os.execv(sys.argv[1], sys.argv[1:])
"""


def detached(command: list[str]) -> list[str]:
    """`command`, run so that it outlives neither the bridge nor a signal meant for it.

    The embedded etcd gets a session of its own, so a Ctrl-C in the bridge's terminal
    (SIGINT to the whole foreground group) does not kill etcd before the bridge has
    marked its IOCs inactive; the bridge stops etcd itself once it is done. In
    return, Linux sends etcd SIGTERM when the bridge process dies in any other way,
    so no etcd is left behind.
    """
    return [sys.executable, "-c", _DETACH, *command]
