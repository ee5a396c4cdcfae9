"""`EmbeddedEtcdService` under the real reactor, with a real etcd child process."""

from __future__ import annotations

import json
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
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from bridge.errors import ConfigError, StartupError
from bridge.etcd import datadir, embedded, process
from bridge.etcd.client import call_with_retry, make_client
from bridge.etcd.datadir import ENDPOINT_FILE, LOCK_FILE, LOG_FILE
from bridge.etcd.embedded import EmbeddedEtcdService
from bridge.testing.harness import child_env
from tests.helpers import poll


def _require_etcd() -> None:
    try:
        process.find_etcd_binary()
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
        self.patch(process, "DEBIAN_ETCD", "/nonexistent/etcd")
        service = EmbeddedEtcdService(os.path.join(empty, "data"), reactor)
        with pytest.raises(StartupError, match="etcd-server"):
            service.startService()
        assert not service.running
        assert service.pid is None
        assert not os.path.exists(os.path.join(empty, "data"))


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
        # Detached (see bridge.etcd.process.detached): terminal signals go to the bridge only.
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
    def test_data_and_address_survive_a_service_restart(self) -> Any:
        first = yield self._start()
        yield deferToThread(_put_then_get, first, "/e/keep", b"1")
        yield self.service.stopService()
        endpoints = yield self._start()
        assert endpoints == first  # the same port: `recsync` and people find it again
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
    def test_a_second_service_on_the_directory_is_refused_naming_the_first(self) -> Any:
        endpoints = yield self._start()
        second = EmbeddedEtcdService(self.data_dir, reactor)
        with pytest.raises(StartupError) as refused:
            second.prepare()
        assert str(refused.value) == (
            f"the embedded etcd's data directory {self.data_dir} is in use by another "
            f"bridge (PID {os.getpid()}): stop that bridge, or give this one another "
            "[etcd] data_dir"
        )
        assert second.pid is None
        # The first one's files are untouched: recsync still finds it.
        assert datadir.read_endpoint(self.data_dir) == endpoints[0]
        assert datadir.holder(self.data_dir) == os.getpid()
        yield self.service.stopService()
        assert datadir.holder(self.data_dir) is None

    @inlineCallbacks
    def test_etcd_writes_its_own_log_in_the_data_directory(self) -> Any:
        yield self._start()
        yield self.service.stopService()
        log = os.path.join(self.data_dir, LOG_FILE)
        with open(log, encoding="utf-8") as f:
            # etcd's own JSON lines (its gRPC library adds plain ones now and then).
            lines = [json.loads(line) for line in f if line.startswith("{")]
        assert lines and all("level" in line and "msg" in line for line in lines)
        assert os.path.exists(os.path.join(self.data_dir, LOCK_FILE))

    def test_an_etcd_that_cannot_start_is_one_line_and_leaves_nothing_behind(self) -> None:
        os.makedirs(self.data_dir)
        with open(os.path.join(self.data_dir, "member"), "w") as f:
            f.write("not a directory")  # etcd cannot use this data directory
        with pytest.raises(StartupError) as failed:
            self.service.prepare()
        text = str(failed.value)
        assert text.startswith("the embedded etcd on 127.0.0.1:")
        assert "exited at start: " in text and "\n" not in text
        assert text.endswith(f"(its log: {os.path.join(self.data_dir, LOG_FILE)})")
        assert self.service.pid is None or not _alive(self.service.pid)
        assert datadir.holder(self.data_dir) is None
        assert datadir.read_endpoint(self.data_dir) is None

    @inlineCallbacks
    def test_an_etcd_that_keeps_exiting_is_given_up_with_one_line(self) -> Any:
        self.patch(embedded, "MAX_RESTARTS", 1)
        given_up: list[str] = []
        self.service.on_give_up = given_up.append
        endpoints = yield self._start()
        first = self.service.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # restarted once
        yield _poll(lambda: self.service.pid not in (None, first))
        second = self.service.pid
        assert second is not None
        self.pids.append(second)
        host, port = endpoints[0].rsplit(":", 1)
        yield _poll(lambda: process.check_health(host, int(port), 0.5))
        os.kill(second, signal.SIGKILL)  # not again
        yield _poll(lambda: bool(given_up))
        assert self.service.pid is None
        assert given_up[0].startswith("the embedded etcd exited 2 times within 60 s")
        assert "\n" not in given_up[0]


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
        "from bridge.etcd.process import detached\n"
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
