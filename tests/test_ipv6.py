"""A real bridge on IPv6: dual stack (``[::]``) with IPv4 peers, and IPv6 only (``::1``).

RecCasters speak IPv4. Bound to ``[::]`` the bridge still announces over IPv4, its IPv4
peers arrive as ``::ffff:a.b.c.d`` and must match IPv4 networks in ``allow`` and be
shown as IPv4 addresses (issue 12, part 4).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from bridge.etcd.process import free_port
from bridge.etcd.store import Store
from bridge.testing.cluster import EtcdCluster
from bridge.testing.fakeioc import FakeIOC, find_bridge, make_ioc, upload_bytes
from bridge.testing.harness import BridgeProcess
from tests.helpers import poll

pytestmark = pytest.mark.etcd


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


def status(store: Store, prefix: str, iocid: str) -> Any:
    entry = store.get(f"{prefix}/iocs/{iocid}")
    return None if entry is None else json.loads(entry.value)


@needs_ipv6
def test_a_dual_stack_bridge_announces_over_ipv4_and_allows_mapped_ipv4_peers(
    tmp_path: Path, etcd_server: EtcdCluster, etcd_store: Store, prefix: str
) -> None:
    udp_port = free_port()
    port = free_port()
    process = BridgeProcess(
        tmp_path,
        endpoints=etcd_server.endpoints,
        prefix=prefix,
        announce_to=[f"127.0.0.1:{udp_port}"],
        recceiver={"bind": f"[::]:{port}", "allow": "127.0.0.2/32", "announceInterval": 0.5},
    )
    spec = make_ioc("DUAL", 4, hostname="v4")
    try:
        process.start().wait_ready()
        host, announced_port, key = find_bridge(udp_port, timeout=10)
        assert (host, announced_port) == ("127.0.0.1", port)
        # From 127.0.0.2 (allowed): stored, with the IOC's IPv4 address.
        allowed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        allowed.bind(("127.0.0.2", 0))
        allowed.connect((host, port))
        allowed.sendall(upload_bytes(spec, 1, key))
        doc = poll(
            lambda: (
                (status(etcd_store, prefix, "v4:DUAL") or {}).get("status") == "active"
                and status(etcd_store, prefix, "v4:DUAL")
            ),
            what="the IPv4 upload stored",
        )
        assert doc["ip"] == "127.0.0.2"
        # From 127.0.0.1 (not allowed): closed at once, logged as an IPv4 peer.
        refused = socket.create_connection((host, port), timeout=5)
        source = "{}:{}".format(*refused.getsockname())
        refused.settimeout(5)
        assert refused.recv(64) == b""
        refused.close()
        allowed.close()
        poll(lambda: "connection refused" in process.log_text(), what="the refusal logged")
    finally:
        process.stop()
    text = process.log_text()
    assert f"{source} connection refused: address not in [recceiver] allow" in text
    assert "::ffff:" not in text
    assert "cannot announce" not in text


@needs_ipv6
def test_a_bridge_on_ipv6_loopback_stores_ipv6_uploads(
    tmp_path: Path, etcd_server: EtcdCluster, etcd_store: Store, prefix: str
) -> None:
    port = free_port()
    process = BridgeProcess(
        tmp_path,
        endpoints=etcd_server.endpoints,
        prefix=prefix,
        recceiver={"bind": f"[::1]:{port}"},
    )
    ioc = FakeIOC(make_ioc("SIX", 3, hostname="v6"))
    try:
        process.start().wait_ready()
        ioc.connect("::1", port)
        doc = poll(
            lambda: (
                (status(etcd_store, prefix, "v6:SIX") or {}).get("status") == "active"
                and status(etcd_store, prefix, "v6:SIX")
            ),
            what="the IPv6 upload stored",
        )
        assert doc["ip"] == "::1"
    finally:
        ioc.close()
        process.stop()
    text = process.log_text()
    assert "[::1]:" in text  # peers shown as [address]:port
    assert "not announcing: the bridge listens on the IPv6 address ::1 only" in text
