"""Shared fixtures: real etcd processes on loopback, a client, and a unique key prefix.

The process helpers live in `bridge.testing.cluster`; this file only wires them to pytest.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import ConfigError
from bridge.etcd.backend import GrpcBackend
from bridge.etcd.client import call_with_retry, make_client
from bridge.etcd.process import find_etcd_binary
from bridge.etcd.store import Store
from bridge.testing.cluster import EtcdCluster


def _etcd_binary_or_skip() -> str:
    """The etcd binary; skip when it is missing, except under CI where that is a failure."""
    try:
        return find_etcd_binary()
    except ConfigError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no etcd server binary: {exc}")


@pytest.fixture(scope="session", autouse=True)
def no_operator_environment() -> Iterator[None]:
    """The caller's ``RECCEIVER_*`` variables configure every bridge key; tests bring
    their own configurations, so those variables are set aside for the session (in
    this process; child processes get `bridge.testing.harness.child_env`)."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("RECCEIVER_")}
    for name in saved:
        del os.environ[name]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One single-node etcd for the whole session; use `prefix` to keep tests apart."""
    binary = _etcd_binary_or_skip()
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd-server"), binary=binary) as server:
        yield server
    _assert_stopped(server)


@pytest.fixture
def etcd_client(etcd_server: EtcdCluster) -> Iterator[Any]:
    """A failover client (`pyetcd.MultiEndpointEtcd3Client`) on the session server."""
    client = make_client(etcd_server.endpoints, timeout=2.0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def etcd_store(etcd_client: Any) -> Store:
    """A `Store` on `etcd_client` (closed with it)."""
    return Store(GrpcBackend(etcd_client), 10.0)


@pytest.fixture
def prefix(etcd_client: Any) -> Iterator[str]:
    """A key prefix no other test uses; everything under it is deleted afterwards."""
    value = f"/t-{uuid.uuid4().hex[:12]}"
    yield value
    call_with_retry(lambda: etcd_client.delete_prefix(value), deadline_s=10.0)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A fresh three-member cluster, stopped (no process left) after the test."""
    binary = _etcd_binary_or_skip()
    with EtcdCluster(3, tmp_path / "cluster", binary=binary) as cluster:
        yield cluster
    _assert_stopped(cluster)


def _assert_stopped(cluster: EtcdCluster) -> None:
    left = [member.pid for member in cluster.members if member.is_running()]
    assert not left, f"etcd processes left running: {left}"
