"""The etcd server process: how it is found and run, and the embedded one the bridge supervises.

`find_etcd_binary`, `member_command`, `free_ports`, `etcd_environment` and
`check_health` say how an etcd process is run on loopback; the embedded service uses
them, and so do the test rigs (`bridge.testing.cluster`), so tests run etcd as the
bridge does.

`EmbeddedEtcdService` starts a single-node etcd on free loopback ports (never
2379/2380, where Debian's own etcd.service listens), hands the client endpoint to
whoever awaits `whenReady`, restarts etcd if it dies (at most `MAX_RESTARTS` per
`RESTART_WINDOW_S`), and stops it with SIGTERM (SIGKILL after `KILL_AFTER_S`).
While etcd is healthy its endpoint is also in ``<data_dir>/client-endpoint``.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import sys
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorProcess,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

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


HOST = "127.0.0.1"
MEMBER_NAME = "pvmeta"
STARTUP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
KILL_AFTER_S = 10.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# Lets a shutdown that also signalled etcd (Ctrl-C reaches the whole process
# group) reach stopService before we restart a process about to be stopped anyway.
RESTART_DELAY_S = 0.5
OUTPUT_LINES_KEPT = 20
# Written into the data dir while etcd is healthy, so that the `recsync` command
# can find the embedded etcd of a running bridge (its ports are chosen at start).
ENDPOINT_FILE = "client-endpoint"


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


class _EtcdProtocol(ProcessProtocol):
    """Forwards etcd's output to the log (keeping the tail) and reports its exit."""

    log = Logger(namespace="bridge.etcd.embedded.etcd")

    def __init__(self, tail: collections.deque[str]) -> None:
        self.tail = tail
        self._buffer = b""
        self._ended: list[Deferred[None]] = []
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.tail.append(line)
                self.log.info("{line}", line=line)

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        waiters, self._ended = self._ended, []
        for waiter in waiters:
            waiter.callback(None)

    def whenEnded(self) -> Deferred[None]:
        """Fires (with None; the exit status is in `reason`) once the process has ended.

        A Failure is never the result: it would run the waiters' errbacks.
        """
        if self.reason is not None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._ended.append(waiter)
        return waiter


class EmbeddedEtcdService(Service):
    """Runs one etcd on loopback with its data in `data_dir`, while the service runs."""

    log = Logger()

    def __init__(self, data_dir: str, reactor: Any) -> None:
        # `reactor` is usually the global reactor module, which mypy cannot see as
        # a reactor; keep typed views of the three interfaces actually used.
        self._process_reactor: IReactorProcess = reactor
        self._clock: IReactorTime = reactor
        self._threads: IReactorThreads = reactor
        self.data_dir = data_dir
        self.endpoints: list[str] = []
        self._command: list[str] = []
        self._process: _EtcdProtocol | None = None
        self._restarts: collections.deque[float] = collections.deque()
        self._tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES_KEPT)
        self._waiters: list[Deferred[list[str]]] = []
        self._outcome: list[str] | BaseException | None = None
        self._health: Deferred[None] | None = None
        self._pending_restart: IDelayedCall | None = None

    @property
    def pid(self) -> int | None:
        """The etcd process id while one runs, else None."""
        if self._process is None or self._process.transport is None:
            return None
        pid = self._process.transport.pid
        return pid if isinstance(pid, int) else None

    def whenReady(self) -> Deferred[list[str]]:
        """Fires with ``["127.0.0.1:PORT"]`` once etcd is first healthy.

        Errbacks if etcd does not become healthy within `STARTUP_TIMEOUT_S`, keeps
        exiting, or the service stops first.
        """
        if isinstance(self._outcome, BaseException):
            return fail(self._outcome)
        if self._outcome is not None:
            return succeed(list(self._outcome))
        waiter: Deferred[list[str]] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def startService(self) -> None:
        """Spawn etcd; raises `ConfigError` at once when the binary is missing."""
        binary = find_etcd_binary()
        super().startService()  # type: ignore[no-untyped-call]
        self._outcome = None
        self._restarts.clear()
        Path(self.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        client_port, peer_port = free_ports(2, HOST)
        self.endpoints = [f"{HOST}:{client_port}"]
        self._command = member_command(
            binary,
            MEMBER_NAME,
            self.data_dir,
            client_port,
            peer_port,
            f"{MEMBER_NAME}=http://{HOST}:{peer_port}",
            f"recsync-embedded-{uuid.uuid4().hex}",
            HOST,
        )
        self._spawn()
        self._watch_health(self._clock.seconds() + STARTUP_TIMEOUT_S)

    def stopService(self) -> Deferred[None]:
        """SIGTERM etcd; the result fires once it has exited (SIGKILL after 10 s)."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._endpoint_file().unlink(missing_ok=True)
        self._cancel_pending()
        self._settle(RuntimeError("the embedded etcd was stopped before it was ready"))
        process = self._process
        if process is None:
            return succeed(None)
        killer = self._clock.callLater(KILL_AFTER_S, self._signal, "KILL")
        self._signal("TERM")

        def cancel_killer(_: None) -> None:
            if killer.active():
                killer.cancel()

        return process.whenEnded().addCallback(cancel_killer)

    def _cancel_pending(self) -> None:
        """Stop the health poll and any scheduled restart (no delayed call is left)."""
        if self._health is not None:
            self._health.cancel()  # its errback clears self._health
        if self._pending_restart is not None and self._pending_restart.active():
            self._pending_restart.cancel()
        self._pending_restart = None

    def _spawn(self) -> None:
        self.log.info(
            "starting embedded etcd on {endpoint}, data in {data_dir}",
            endpoint=self.endpoints[0],
            data_dir=self.data_dir,
        )
        process = _EtcdProtocol(self._tail)
        command = detached(self._command)
        self._process_reactor.spawnProcess(process, command[0], command, env=etcd_environment())
        self._process = process
        process.whenEnded().addCallback(self._on_exit, process)

    def _signal(self, name: str) -> None:
        if self._process is not None and self._process.transport is not None:
            try:
                self._process.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass  # it ended on its own; processEnded is already on its way

    def _on_exit(self, _: None, process: _EtcdProtocol) -> None:
        """Supervision: restart an etcd that exited while the service runs."""
        reason = process.reason
        assert reason is not None
        if self._process is process:
            self._process = None
        if not self.running:
            self.log.info("embedded etcd stopped")
            return
        now = self._clock.seconds()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            self.log.error(
                "embedded etcd exited ({reason}) {count} times within {window:.0f} s; "
                "not restarting it again. Last output:\n{tail}",
                reason=reason.getErrorMessage(),
                count=len(self._restarts) + 1,
                window=RESTART_WINDOW_S,
                tail="\n".join(self._tail),
            )
            self._cancel_pending()
            self._settle(RuntimeError("the embedded etcd keeps exiting"))
            return
        self._restarts.append(now)
        self.log.warn(
            "embedded etcd exited unexpectedly ({reason}); restarting it",
            reason=reason.getErrorMessage(),
        )
        self._pending_restart = self._clock.callLater(RESTART_DELAY_S, self._restart)

    def _restart(self) -> None:
        self._pending_restart = None
        if not self.running:
            return
        self._spawn()
        deadline = self._clock.seconds() + STARTUP_TIMEOUT_S
        if self._health is None:
            self._watch_health(deadline)

    def _watch_health(self, deadline: float) -> None:
        self._health = Deferred.fromCoroutine(self._poll_health(deadline))
        self._health.addErrback(self._health_failed)

    async def _poll_health(self, deadline: float) -> None:
        """Poll /health until true; each probe is one short request in a thread."""
        port = int(self.endpoints[0].rsplit(":", 1)[1])
        pool = self._threads.getThreadPool()
        while not await deferToThreadPool(self._threads, pool, check_health, HOST, port, 1.0):
            if self._clock.seconds() >= deadline:
                raise RuntimeError(
                    f"the embedded etcd on {self.endpoints[0]} was not healthy within "
                    f"{STARTUP_TIMEOUT_S:.0f} s; last output:\n" + "\n".join(self._tail)
                )
            await deferLater(self._clock, POLL_INTERVAL_S)
        self._health = None
        self.log.info("embedded etcd is healthy on {endpoint}", endpoint=self.endpoints[0])
        self._write_endpoint_file()
        self._settle(list(self.endpoints))

    def _endpoint_file(self) -> Path:
        return Path(self.data_dir) / ENDPOINT_FILE

    def _write_endpoint_file(self) -> None:
        """Atomically record ``host:port`` (readers never see a partial file)."""
        target = self._endpoint_file()
        partial = target.with_name(ENDPOINT_FILE + ".tmp")
        partial.write_text(self.endpoints[0] + "\n", encoding="utf-8")
        os.replace(partial, target)

    def _health_failed(self, failure: Failure) -> None:
        self._health = None
        if isinstance(failure.value, CancelledError):
            return
        self.log.failure("embedded etcd did not become healthy", failure)
        self._settle(failure.value or RuntimeError(failure.getErrorMessage()))

    def _settle(self, outcome: list[str] | BaseException) -> None:
        """Record the first outcome and tell every `whenReady` waiter about it."""
        if self._outcome is None:
            self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, BaseException):
                waiter.errback(outcome)
            else:
                waiter.callback(list(outcome))
