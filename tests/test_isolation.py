"""``RECCEIVER_*`` variables in the caller's environment configure every bridge key; the
bridges, tools and demo that tests run bring their own configuration and must not see
them (issue 12: they made the demo die and an end-to-end test fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.etcd.process import free_port
from bridge.etcd.store import Store
from bridge.testing.checks import content_problems, spec_iocid
from bridge.testing.cluster import EtcdCluster
from bridge.testing.fakeioc import FakeIOC, find_bridge, make_ioc
from bridge.testing.harness import BridgeProcess, child_env
from tests.helpers import poll

pytestmark = pytest.mark.etcd

REPO = Path(__file__).resolve().parent.parent

#: What an operator's shell might hold: every one of these would break a test bridge.
OPERATOR = {
    "RECCEIVER_RECCEIVER_BIND": "127.0.0.1:1",
    "RECCEIVER_RECCEIVER_ADDRLIST": "127.0.0.1:2",
    "RECCEIVER_RECCEIVER_PROCS": "show, frobnicate",
    "RECCEIVER_RECCEIVER_MAXACTIVE": "0",
    "RECCEIVER_ETCD_ENDPOINTS": "127.0.0.1:3",
    "RECCEIVER_ETCD_PREFIX": "/not-the-tests",
    "RECCEIVER_ETCD_DATA_DIR": "/nonexistent/etcd",
}


@pytest.fixture
def operator_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in OPERATOR.items():
        monkeypatch.setenv(name, value)
    yield


def test_the_variables_would_break_a_bridge(operator_environment: None) -> None:
    """So the tests below prove something: this process's own configuration breaks."""
    with pytest.raises(ConfigError):
        load_config(None)


def test_a_harness_bridge_ignores_the_callers_variables(
    operator_environment: None,
    tmp_path: Path,
    etcd_server: EtcdCluster,
    etcd_store: Store,
    prefix: str,
) -> None:
    assert all(name not in child_env() for name in OPERATOR)
    udp_port = free_port()
    process = BridgeProcess(
        tmp_path,
        endpoints=etcd_server.endpoints,
        prefix=prefix,
        announce_to=[f"127.0.0.1:{udp_port}"],
        recceiver={"announceInterval": 0.5},
    )
    spec = make_ioc("ISO-IOC", 5, hostname="iso")
    ioc = FakeIOC(spec)
    try:
        process.start().wait_ready()
        host, port, key = find_bridge(udp_port, timeout=10)
        ioc.connect(host, port, key)
        poll(
            lambda: not content_problems(etcd_store, prefix, {spec_iocid(spec): spec}, {"bridge"}),
            what="the upload stored under the test's prefix",
        )
    finally:
        ioc.close()
        process.stop()


def test_the_demo_ignores_the_callers_variables(operator_environment: None) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "demo/run.py", "--iocs", "1", "--records", "3", "--no-pyreccaster"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo-host:DEMO-IOC-1" in result.stdout
    assert "Traceback" not in result.stderr
