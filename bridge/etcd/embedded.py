"""The embedded etcd the bridge supervises (how etcd is run: `bridge.etcd.process`).

`EmbeddedEtcdService` starts a single-node etcd on loopback ports that stay the same
from one start to the next (never 2379/2380, where Debian's own etcd.service listens),
with its data directory locked against a second bridge and its output in a log file
there (`bridge.etcd.datadir`); it hands the client endpoint to whoever awaits
`whenReady`, restarts etcd if it dies (at most `MAX_RESTARTS` per `RESTART_WINDOW_S`),
and stops it with SIGTERM (SIGKILL after `KILL_AFTER_S`).
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from collections.abc import Callable
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

from bridge.errors import ConfigError, StartupError
from bridge.etcd import datadir, process
from bridge.etcd.process import (
    check_health,
    detached,
    etcd_environment,
    free_ports,
    member_command,
)

HOST = "127.0.0.1"
MEMBER_NAME = "pvmeta"
#: Default bound on the first start (``[etcd] start_timeout`` overrides it).
STARTUP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
KILL_AFTER_S = 10.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# Lets a shutdown that also signalled etcd (Ctrl-C reaches the whole process
# group) reach stopService before we restart a process about to be stopped anyway.
RESTART_DELAY_S = 0.5


class _EtcdProcess(ProcessProtocol):
    """Reports the exit of one etcd process (its output goes to ``etcd.log``)."""

    def __init__(self) -> None:
        self._ended: list[Deferred[None]] = []
        self.reason: Failure | None = None

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
    """Runs one etcd on loopback with its data in `data_dir`, while the service runs.

    The first start is synchronous and bounded (`prepare`, from the bridge's
    ``privilegedStartService``, so that twistd exits non-zero when it fails): the data
    directory is locked (`bridge.etcd.datadir.DataDirLock`), etcd is spawned on the
    ports it had last time when they are free, with its output in ``etcd.log`` there,
    and awaited until healthy for at most `start_timeout` seconds. Then the service
    supervises it: an etcd that exits is restarted, at most `MAX_RESTARTS` times per
    `RESTART_WINDOW_S`; past that `on_give_up` is called with one line saying why.

    Args:
        data_dir: etcd's ``--data-dir``, also holding the files of `bridge.etcd.datadir`.
        reactor: spawns and reaps the process, and times the restarts.
        start_timeout: seconds the first start may take until etcd is healthy.
        on_give_up: called once etcd keeps exiting and is not restarted any more.
    """

    log = Logger()

    def __init__(
        self,
        data_dir: str,
        reactor: Any,
        start_timeout: float = STARTUP_TIMEOUT_S,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        # `reactor` is usually the global reactor module, which mypy cannot see as
        # a reactor; keep typed views of the three interfaces actually used.
        self._process_reactor: IReactorProcess = reactor
        self._clock: IReactorTime = reactor
        self._threads: IReactorThreads = reactor
        self.data_dir = data_dir
        self.start_timeout = start_timeout
        self.on_give_up = on_give_up
        self.endpoints: list[str] = []
        self.log_path = Path(data_dir) / datadir.LOG_FILE
        self._lock = datadir.DataDirLock(data_dir)
        self._command: list[str] = []
        self._process: _EtcdProcess | None = None
        self._restarts: collections.deque[float] = collections.deque()
        self._waiters: list[Deferred[list[str]]] = []
        self._outcome: list[str] | BaseException | None = None
        self._health: Deferred[None] | None = None
        self._pending_restart: IDelayedCall | None = None
        self._prepared = False

    @property
    def pid(self) -> int | None:
        """The etcd process id while one runs, else None."""
        if self._process is None or self._process.transport is None:
            return None
        pid = self._process.transport.pid
        return pid if isinstance(pid, int) else None

    def whenReady(self) -> Deferred[list[str]]:
        """Fires with ``["127.0.0.1:PORT"]`` once etcd is first healthy.

        Errbacks if the first start failed, or the service stops first.
        """
        if isinstance(self._outcome, BaseException):
            return fail(self._outcome)
        if self._outcome is not None:
            return succeed(list(self._outcome))
        waiter: Deferred[list[str]] = Deferred()
        self._waiters.append(waiter)
        return waiter

    # -- the first start: synchronous, bounded ------------------------------------------

    def prepare(self) -> None:
        """Lock the data directory, start etcd and wait until it is healthy (blocking).

        Does nothing once it succeeded. On failure nothing is left behind: etcd is
        stopped, the lock released.

        Raises:
            StartupError: one line: the binary is missing, the directory is held by
                another bridge (its PID) or unusable, or etcd exited or was not healthy
                within `start_timeout` (with what etcd said last).
        """
        if self._prepared:
            return
        try:
            binary = process.find_etcd_binary()
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        self._outcome = None
        self._lock.acquire()
        try:
            fresh = free_ports(2, HOST)
            client_port, peer_port = datadir.stable_ports(self.data_dir, (fresh[0], fresh[1]))
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
            self._wait_healthy(time.monotonic() + self.start_timeout)
        except BaseException as exc:
            self.abort()
            self._settle(exc)
            raise
        datadir.write_endpoint(self.data_dir, self.endpoints[0])
        self._prepared = True
        self._settle(list(self.endpoints))

    def _wait_healthy(self, deadline: float) -> None:
        """(blocking) Poll /health until true; raise `StartupError` if etcd exits or
        the deadline passes."""
        port = int(self.endpoints[0].rsplit(":", 1)[1])
        while not check_health(HOST, port, POLL_INTERVAL_S * 5):
            if self._exited():
                raise StartupError(self._failure_text("exited at start"))
            if time.monotonic() >= deadline:
                raise StartupError(
                    self._failure_text(f"was not healthy within {self.start_timeout:g} s")
                )
            time.sleep(POLL_INTERVAL_S)

    def _exited(self) -> bool:
        """True once the process has ended, without reaping it (the reactor reaps it)."""
        pid = self.pid
        if pid is None:
            return True
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _failure_text(self, what: str) -> str:
        said = datadir.last_words(self.log_path)
        return (
            f"the embedded etcd on {self.endpoints[0]} {what}"
            + (f": {said}" if said else "")
            + f" (its log: {self.log_path})"
        )

    def abort(self) -> None:
        """(blocking) Undo `prepare`: stop etcd (SIGKILL after `KILL_AFTER_S`), remove
        the endpoint file, release the lock. For a start that fails after `prepare`."""
        if self._lock.held:
            datadir.remove_endpoint(self.data_dir)
        self._prepared = False
        if self.pid is not None and not self._exited():
            self._signal("TERM")
            deadline = time.monotonic() + KILL_AFTER_S
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._exited():
                self._signal("KILL")
        self._lock.release()

    # -- supervision ----------------------------------------------------------------------

    def startService(self) -> None:
        """Supervise etcd; runs `prepare` first if nothing did (it blocks)."""
        self.prepare()
        super().startService()  # type: ignore[no-untyped-call]
        self._restarts.clear()
        if self._process is None:
            self._pending_restart = self._clock.callLater(0, self._restart)

    def stopService(self) -> Deferred[None]:
        """SIGTERM etcd; the result fires once it has exited (SIGKILL after 10 s)."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._lock.held:
            datadir.remove_endpoint(self.data_dir)
        self._cancel_pending()
        self._settle(RuntimeError("the embedded etcd was stopped before it was ready"))
        self._outcome, self._prepared = None, False
        process = self._process
        if process is None:
            self._lock.release()
            return succeed(None)
        killer = self._clock.callLater(KILL_AFTER_S, self._signal, "KILL")
        self._signal("TERM")

        def done(_: None) -> None:
            if killer.active():
                killer.cancel()
            self._lock.release()

        return process.whenEnded().addCallback(done)

    def _cancel_pending(self) -> None:
        """Stop the health poll and any scheduled restart (no delayed call is left)."""
        if self._health is not None:
            self._health.cancel()  # its errback clears self._health
        if self._pending_restart is not None and self._pending_restart.active():
            self._pending_restart.cancel()
        self._pending_restart = None

    def _spawn(self) -> None:
        log_path = datadir.rotate_log(self.data_dir)
        self.log.debug(
            "starting embedded etcd on {endpoint}, data in {data_dir}",
            endpoint=self.endpoints[0],
            data_dir=self.data_dir,
        )
        process = _EtcdProcess()
        command = detached(self._command)
        # etcd's output goes to its own file: its JSON lines are no bridge log lines.
        output = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        nothing = os.open(os.devnull, os.O_RDONLY)
        try:
            self._process_reactor.spawnProcess(
                process,
                command[0],
                command,
                env=etcd_environment(),
                childFDs={0: nothing, 1: output, 2: output},
            )
        finally:
            os.close(output)
            os.close(nothing)
        self._process = process
        process.whenEnded().addCallback(self._on_exit, process)

    def _signal(self, name: str) -> None:
        if self._process is not None and self._process.transport is not None:
            try:
                self._process.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass  # it ended on its own; processEnded is already on its way

    def _on_exit(self, _: None, process: _EtcdProcess) -> None:
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
            text = (
                f"the embedded etcd exited {len(self._restarts) + 1} times within "
                f"{RESTART_WINDOW_S:.0f} s ({reason.getErrorMessage()})"
            )
            said = datadir.last_words(self.log_path)
            text += (f"; it said: {said}" if said else "") + f" (its log: {self.log_path})"
            self._cancel_pending()
            self._settle(RuntimeError(text))
            if self.on_give_up is not None:
                self.on_give_up(text)
            else:
                self.log.error("{text}; not restarting it again", text=text)
            return
        self._restarts.append(now)
        self.log.warn(
            "embedded etcd exited unexpectedly ({reason}); restarting it (its log: {path})",
            reason=reason.getErrorMessage(),
            path=self.log_path,
        )
        self._pending_restart = self._clock.callLater(RESTART_DELAY_S, self._restart)

    def _restart(self) -> None:
        self._pending_restart = None
        if not self.running:
            return
        self._spawn()
        deadline = self._clock.seconds() + self.start_timeout
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
                raise RuntimeError(self._failure_text(f"was not healthy within {deadline:g} s"))
            await deferLater(self._clock, POLL_INTERVAL_S)
        self._health = None
        self.log.info("embedded etcd is healthy again on {endpoint}", endpoint=self.endpoints[0])
        datadir.write_endpoint(self.data_dir, self.endpoints[0])

    def _health_failed(self, failure: Failure) -> None:
        self._health = None
        if isinstance(failure.value, CancelledError):
            return
        self.log.error("{error}", error=failure.getErrorMessage())

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
