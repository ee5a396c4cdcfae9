"""`EmbeddedEtcdService` under the real reactor, with a real etcd child process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from bridge.errors import ConfigError
from bridge.etcd import embedded
from bridge.etcd.client import call_with_retry, make_client
from bridge.etcd.embedded import ENDPOINT_FILE, EmbeddedEtcdService
from bridge.testing.harness import child_env
from tests.helpers import poll


def _require_etcd() -> None:
    try:
        embedded.find_etcd_binary()
    except ConfigError as exc:
        if os.environ.get("CI"):
            raise
        raise SkipTest(f"no etcd server binary: {exc}") from None


def _scratch_dir(test: TestCase) -> str:
    """A fresh directory outside the working tree (trial's mktemp is cwd-relative)."""
    path = tempfile.mkdtemp(prefix="recsync-embedded-")
    test.addCleanup(shutil.rmtree, path, True)
    return path


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _put_then_get(endpoints: list[str], key: str, value: bytes) -> bytes:
    client = make_client(endpoints, timeout=2.0)
    try:
        call_with_retry(lambda: client.put(key, value), deadline_s=10.0)
        result: bytes = call_with_retry(lambda: client.get(key)[0], deadline_s=10.0)
        return result
    finally:
        client.close()


@inlineCallbacks
def _poll(condition: Callable[[], bool], timeout: float = 20.0) -> Any:
    """Wait (without blocking the reactor) until `condition()` holds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        yield deferLater(reactor, 0.05)


class MissingBinaryTests(TestCase):
    def test_start_without_etcd_names_the_debian_package(self) -> None:
        empty = _scratch_dir(self)
        self.patch(os, "environ", {**os.environ, "PATH": empty})
        self.patch(embedded, "DEBIAN_ETCD", "/nonexistent/etcd")
        service = EmbeddedEtcdService(os.path.join(empty, "data"), reactor)
        with pytest.raises(ConfigError, match="etcd-server"):
            service.startService()
        assert not service.running
        assert service.pid is None


@pytest.mark.etcd
class EmbeddedEtcdServiceTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        _require_etcd()
        self.data_dir = os.path.join(_scratch_dir(self), "etcd")
        self.service = EmbeddedEtcdService(self.data_dir, reactor)
        self.pids: list[int] = []
        self.addCleanup(self._stop_and_check)

    @inlineCallbacks
    def _stop_and_check(self) -> Any:
        if self.service.running:
            yield self.service.stopService()
        left = [pid for pid in self.pids if _pid_exists(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"etcd left running: {left}"

    @inlineCallbacks
    def _start(self) -> Any:
        self.service.startService()
        assert self.service.pid is not None
        self.pids.append(self.service.pid)
        endpoints = yield self.service.whenReady()
        return endpoints

    @inlineCallbacks
    def test_start_put_stop(self) -> Any:
        endpoints = yield self._start()
        assert endpoints == self.service.endpoints
        host, port = endpoints[0].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) not in (2379, 2380)
        value = yield deferToThread(_put_then_get, endpoints, "/e/k", b"v")
        assert value == b"v"
        # Detached (see bridge.etcd.embedded.detached): terminal signals go to the bridge only.
        assert self.service.pid is not None
        assert os.getsid(self.service.pid) == self.service.pid != os.getsid(0)
        endpoint_file = os.path.join(self.data_dir, ENDPOINT_FILE)
        with open(endpoint_file, encoding="utf-8") as f:
            assert f.read().strip() == endpoints[0]
        # A second waiter after readiness gets the same answer at once.
        again = yield self.service.whenReady()
        assert again == endpoints
        pid = self.service.pid
        yield self.service.stopService()
        assert pid is not None and not _pid_exists(pid)
        assert self.service.pid is None
        assert not os.path.exists(endpoint_file)

    @inlineCallbacks
    def test_data_survives_a_service_restart(self) -> Any:
        endpoints = yield self._start()
        yield deferToThread(_put_then_get, endpoints, "/e/keep", b"1")
        yield self.service.stopService()
        # New ports on the second start; the data dir is the same.
        endpoints = yield self._start()
        value = yield deferToThread(
            lambda: call_with_retry(
                lambda: _get(endpoints, "/e/keep"),
                deadline_s=10.0,
            )
        )
        assert value == b"1"

    @inlineCallbacks
    def test_a_crashed_etcd_is_restarted(self) -> Any:
        endpoints = yield self._start()
        first = self.service.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        yield _poll(lambda: self.service.pid not in (None, first))
        assert self.service.pid is not None
        self.pids.append(self.service.pid)
        value = yield deferToThread(_put_then_get, endpoints, "/e/after", b"2")
        assert value == b"2"

    @inlineCallbacks
    def test_stop_before_ready_fails_waiters(self) -> Any:
        self.service.startService()
        assert self.service.pid is not None
        self.pids.append(self.service.pid)
        ready: Deferred[list[str]] = self.service.whenReady()
        yield self.service.stopService()
        with pytest.raises(RuntimeError, match="stopped before"):
            yield ready


def _get(endpoints: list[str], key: str) -> bytes:
    client = make_client(endpoints, timeout=2.0)
    try:
        value: bytes = client.get(key)[0]
        return value
    finally:
        client.close()


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_detached_command_has_its_own_session_and_ends_with_its_parent() -> None:
    # The parent stands in for the bridge: it starts a detached child, then dies.
    script = (
        "import subprocess, sys\n"
        "from bridge.etcd.embedded import detached\n"
        "child = subprocess.Popen(detached(['/bin/sleep', '120']))\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = child_env()
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        # Its own session: a Ctrl-C for the bridge's process group never reaches it.
        poll(lambda: os.getsid(pid) == pid, what="the child's own session")
        assert os.getpgid(pid) != os.getpgid(parent.pid)
        parent.kill()
        parent.wait()
        poll(lambda: not _alive(pid), timeout=10, what="the child to end with its parent")
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
