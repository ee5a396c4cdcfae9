"""Real-process tests of the etcd process helpers (`bridge.etcd.embedded`,
`bridge.testing.cluster`) and of `bridge.etcd.client` (plus their pure parts)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from pyetcd import exceptions as etcd_exc

from bridge.errors import (
    Compacted,
    ConfigError,
    DuplicateKey,
    EtcdRefused,
    EtcdUnavailable,
    LeaseNotFound,
    MessageTooLarge,
    NoSpace,
    RequestTooLarge,
    StoreError,
    TooManyOperations,
)
from bridge.etcd import process
from bridge.etcd.client import (
    call_with_retry,
    is_retryable,
    make_client,
    parse_endpoint,
    rpc_error,
)
from bridge.etcd.process import free_port, free_ports, member_command
from bridge.testing.cluster import EtcdCluster, EtcdMember


def test_missing_binary_names_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(process, "DEBIAN_ETCD", "/nonexistent/etcd")
    with pytest.raises(ConfigError, match="etcd-server"):
        process.find_etcd_binary()


def test_free_ports_are_distinct_bindable_and_not_debians() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert not set(ports) & {2379, 2380}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_member_command_has_the_reference_flags() -> None:
    cmd = member_command("/bin/etcd", "m1", "/d", 1001, 1002, "m1=http://127.0.0.1:1002", "tok")
    text = " ".join(cmd)
    assert "--logger zap --log-level warn" in text
    assert "--auto-compaction-mode revision --auto-compaction-retention 10000" in text
    assert "--listen-client-urls http://127.0.0.1:1001" in text
    assert "--initial-cluster-state new --initial-cluster-token tok" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2379", ("127.0.0.1", 2379, False)),
        ("http://etcd1:32379", ("etcd1", 32379, False)),
        ("https://etcd1:2379/", ("etcd1", 2379, True)),
        ("[::1]:2379", ("::1", 2379, False)),
    ],
)
def test_parse_endpoint(text: str, expected: tuple[str, int, bool]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["", "etcd1", "ftp://h:1", "h:99999", "h:x", "http://h:1/v3"])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        parse_endpoint(text)


def test_make_client_rejects_half_credentials() -> None:
    with pytest.raises(ConfigError, match="username and password"):
        make_client(["127.0.0.1:1"], timeout=1.0, username="u")
    with pytest.raises(ConfigError, match="at least one"):
        make_client([], timeout=1.0)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_call_with_retry_backs_off_and_gives_up_at_deadline() -> None:
    clock = _FakeClock()

    def down() -> None:
        raise etcd_exc.ConnectionFailedError()

    with pytest.raises(StoreError) as info:
        call_with_retry(down, deadline_s=3.0, sleep=clock.sleep, clock=clock)
    assert isinstance(info.value.__cause__, etcd_exc.ConnectionFailedError)
    assert clock.sleeps[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert sum(clock.sleeps) == pytest.approx(3.0)


def test_call_with_retry_returns_after_transient_errors() -> None:
    clock = _FakeClock()
    errors: list[Exception] = [
        etcd_exc.ConnectionTimeoutError(),
        ValueError("Trying to use a failed node"),
        etcd_exc.NoServerAvailableError("none"),
    ]

    def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    assert call_with_retry(flaky, deadline_s=5.0, sleep=clock.sleep, clock=clock) == "ok"


def test_call_with_retry_propagates_other_errors_at_once() -> None:
    clock = _FakeClock()

    def broken() -> None:
        raise ValueError("bad key")

    with pytest.raises(ValueError, match="bad key"):
        call_with_retry(broken, deadline_s=5.0, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_retryable_grpc_errors() -> None:
    assert is_retryable(_RpcError(grpc.StatusCode.UNAVAILABLE, "x"))
    assert is_retryable(_RpcError(grpc.StatusCode.UNKNOWN, "etcdserver: leader changed"))
    assert not is_retryable(_RpcError(grpc.StatusCode.UNKNOWN, "something else"))
    assert not is_retryable(_RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "NOSPACE"))


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        (grpc.StatusCode.UNAVAILABLE, "connection refused", EtcdUnavailable),
        (grpc.StatusCode.UNKNOWN, "etcdserver: leader changed", EtcdUnavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests", EtcdUnavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max", MessageTooLarge),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", NoSpace),
        (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted",
            Compacted,
        ),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", LeaseNotFound),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: too many operations in txn request",
            TooManyOperations,
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", RequestTooLarge),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: duplicate key given in txn request",
            DuplicateKey,
        ),
        (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", EtcdRefused),
    ],
)
def test_grpc_errors_become_the_projects_classes(
    code: grpc.StatusCode, details: str, kind: type[StoreError]
) -> None:
    error = rpc_error(_RpcError(code, details))
    assert type(error) is kind
    assert details in str(error)


@pytest.mark.etcd
def test_single_node_put_get(etcd_client: Any, prefix: str) -> None:
    etcd_client.put(f"{prefix}/a", b"1")
    value, meta = etcd_client.get(f"{prefix}/a")
    assert value == b"1"
    assert meta.mod_revision > 0


@pytest.mark.etcd
def test_member_restart_keeps_data(tmp_path: Path) -> None:
    with EtcdCluster(1, tmp_path) as node:
        client = make_client(node.endpoints, timeout=2.0)
        try:
            client.put("/k", b"v")
            node.members[0].kill()
            node.members[0].restart()
            assert call_with_retry(lambda: client.get("/k")[0], deadline_s=10.0) == b"v"
        finally:
            client.close()
    assert not node.members[0].is_running()


@pytest.mark.etcd
def test_wait_healthy_reports_an_exited_member(tmp_path: Path) -> None:
    port = free_port()
    member = EtcdMember(
        process.find_etcd_binary(), "m1", tmp_path, port, port, "bogus", "tok"
    )  # an unparsable --initial-cluster makes etcd exit at once
    member.start()
    try:
        with pytest.raises(RuntimeError, match="exited"):
            member.wait_healthy(30.0)
    finally:
        member.kill()


def _gateway(endpoint: str, path: str, body: dict[str, str]) -> None:
    """POST to etcd's JSON gateway (etcdctl is not needed for the auth test)."""
    request = urllib.request.Request(
        f"http://{endpoint}/v3/{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5.0) as response:
        response.read()


@pytest.mark.etcd
def test_password_auth_on_a_plaintext_channel(tmp_path: Path) -> None:
    with EtcdCluster(1, tmp_path) as node:
        endpoint = node.endpoints[0]
        _gateway(endpoint, "auth/role/add", {"name": "root"})
        _gateway(endpoint, "auth/user/add", {"name": "root", "password": "s3cret"})
        _gateway(endpoint, "auth/user/grant", {"user": "root", "role": "root"})
        _gateway(endpoint, "auth/enable", {})
        client = make_client(node.endpoints, timeout=2.0, username="root", password="s3cret")
        try:
            client.put("/auth/k", b"v")
            assert client.get("/auth/k")[0] == b"v"
        finally:
            client.close()
        with pytest.raises(ConfigError, match="authentication as 'root' refused") as info:
            make_client(node.endpoints, timeout=2.0, username="root", password="wrong")
        assert "wrong" not in str(info.value)


def _client_on(cluster: EtcdCluster, target: EtcdMember) -> Any:
    """A failover client whose first endpoint in use is `target` (the choice is random)."""
    for _ in range(50):
        client = make_client(cluster.endpoints, timeout=2.0)
        if client.endpoint_in_use.netloc == target.endpoint:
            return client
        client.close()
    raise AssertionError("the client never chose the target endpoint")


def _follower(cluster: EtcdCluster) -> EtcdMember:
    leader = cluster.leader()
    return next(m for m in cluster.members if m is not leader)


@pytest.mark.etcd
@pytest.mark.failover
def test_cluster_has_a_leader_and_replicates(etcd_cluster: EtcdCluster, prefix: str) -> None:
    leader = etcd_cluster.leader()
    assert leader in etcd_cluster.members
    client = _client_on(etcd_cluster, _follower(etcd_cluster))
    try:
        client.put(f"{prefix}/x", b"y")
        for member in etcd_cluster.members:
            single = make_client([member.endpoint], timeout=2.0)
            try:
                assert single.get(f"{prefix}/x")[0] == b"y"
            finally:
                single.close()
    finally:
        client.close()


@pytest.mark.etcd
@pytest.mark.failover
def test_writes_survive_a_crashed_follower_in_use(etcd_cluster: EtcdCluster) -> None:
    follower = _follower(etcd_cluster)
    client = _client_on(etcd_cluster, follower)
    try:
        client.put("/f/0", b"0")
        follower.kill()
        started = time.monotonic()
        for i in range(1, 20):
            call_with_retry(lambda i=i: client.put(f"/f/{i}", str(i)), deadline_s=10.0)
        assert time.monotonic() - started < 5.0
        assert client.endpoint_in_use.netloc != follower.endpoint
        follower.restart()
        etcd_cluster.leader()
    finally:
        client.close()


@pytest.mark.etcd
@pytest.mark.failover
def test_a_hung_member_in_use_is_failed_over(etcd_cluster: EtcdCluster) -> None:
    follower = _follower(etcd_cluster)
    client = _client_on(etcd_cluster, follower)
    try:
        client.put("/h/0", b"0")
        follower.freeze()  # left frozen on purpose: stop() must thaw it
        started = time.monotonic()
        call_with_retry(lambda: client.put("/h/1", b"1"), deadline_s=10.0)
        # One 2-second client timeout, then the next member answers.
        assert time.monotonic() - started < 6.0
        assert client.endpoint_in_use.netloc != follower.endpoint
    finally:
        client.close()


@pytest.mark.etcd
@pytest.mark.failover
@pytest.mark.slow
def test_writes_resume_after_the_leader_crashes(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    client = make_client(etcd_cluster.endpoints, timeout=2.0)
    try:
        client.put("/l/0", b"0")
        leader.kill()
        started = time.monotonic()
        call_with_retry(lambda: client.put("/l/1", b"1"), deadline_s=15.0)
        assert time.monotonic() - started < 10.0
        assert etcd_cluster.leader() is not leader
    finally:
        client.close()


@pytest.mark.etcd
def test_cluster_without_base_dir_cleans_up_its_temp_dir() -> None:
    with EtcdCluster(1) as node:
        base = node.base_dir
        assert (base / "m1" / "etcd.log").exists()
        pid = node.members[0].pid
    assert not base.exists()
    assert pid is not None and not node.members[0].is_running()
