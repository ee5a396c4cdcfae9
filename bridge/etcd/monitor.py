"""Is etcd there, and does it take writes? Checked once at start, then watched.

`EtcdMonitor.check` is the bridge's start-up probe (blocking, bounded by
``[etcd] start_timeout``): it connects as the bridge will (TLS trust, client
certificate, credentials), then sends one transaction that reads and would write a key
under the prefix, so a role that does not cover the prefix is found before any IOC
connects. Every failure is a `StartupError` whose one line says what to do.

Afterwards, as a service, it asks etcd for its status and alarms every `POLL_S` seconds
and reports (`Report`) what an operator needs, at the default log level and never more
than one line per `SUMMARY_S` seconds while nothing changes: an outage at once, naming
the endpoints and the error, then a summary with its duration, then one line when
etcd answers again; an alarm (NOSPACE: the database is over its quota) that makes etcd
refuse writes, with what to run, and when it is disarmed. `writable` is False while
such an alarm is raised: the bridge then neither announces nor takes new connections.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.errors import (
    ConfigError,
    EtcdRefused,
    NoSpace,
    StartupError,
    StoreError,
)
from bridge.etcd.backend import open_store
from bridge.etcd.client import parse_endpoint
from bridge.etcd.diagnose import answers_tls, explain
from bridge.etcd.ops import Compare, Get, MemberStatus, Put
from bridge.etcd.store import Store

#: Seconds between status requests while the bridge runs.
POLL_S = 2.0
#: While an outage or an alarm lasts, at most one summary line per this many seconds.
SUMMARY_S = 30.0
#: What etcd calls the alarm of a database over its quota.
NOSPACE = "NOSPACE"
#: What to run about it (README, "Several bridges, and what survives what").
NOSPACE_ADVICE = (
    "compact and defragment it (etcdctl compact <revision>; etcdctl defrag), raise "
    "--quota-backend-bytes if it is too small, then: etcdctl alarm disarm"
)


class Report:
    """Turns a stream of poll outcomes into the few log lines an operator needs.

    Pure apart from the `log` and `clock` it is given; `EtcdMonitor` feeds it.
    """

    def __init__(self, where: str, log: Logger, clock: Callable[[], float]) -> None:
        self.where = where
        self.log = log
        self.clock = clock
        #: When the current outage began; None while etcd answers.
        self.down_since: float | None = None
        self.reason = ""
        self._summarised = -math.inf
        #: The alarms etcd reports now (e.g. ``("NOSPACE",)``).
        self.alarms: tuple[str, ...] = ()
        self._alarm_since = 0.0

    def failed(self, reason: str | None) -> None:
        """A poll got no answer (`reason` None: nothing new to say about why)."""
        now = self.clock()
        self.reason = reason or self.reason or "no member answered"
        if self.down_since is None:
            self.down_since = self._summarised = now
            self.log.warn(
                "etcd at {where} does not answer: {reason}; uploads wait until it does",
                where=self.where,
                reason=self.reason,
            )
        elif now - self._summarised >= SUMMARY_S:
            self._summarised = now
            self.log.warn(
                "etcd at {where} still does not answer after {duration:.0f} s: {reason}",
                where=self.where,
                duration=now - self.down_since,
                reason=self.reason,
            )

    def answered(self, alarms: Sequence[str]) -> None:
        """A poll got etcd's status, with the alarms it reports."""
        now = self.clock()
        if self.down_since is not None:
            self.log.warn(
                "etcd at {where} answers again, after {duration:.0f} s",
                where=self.where,
                duration=now - self.down_since,
            )
            self.down_since = None
        self._alarms(tuple(sorted(set(alarms))), now)

    def _alarms(self, alarms: tuple[str, ...], now: float) -> None:
        if alarms and not self.alarms:
            self._alarm_since = self._summarised = now
            self.log.critical(
                "etcd refuses writes: alarm {alarms} raised{advice}; until it is disarmed "
                "the bridge takes no new uploads and does not announce",
                alarms=", ".join(alarms),
                advice=f" (its database is over its quota): {NOSPACE_ADVICE}"
                if NOSPACE in alarms
                else "",
            )
        elif alarms and now - self._summarised >= SUMMARY_S:
            self._summarised = now
            self.log.warn(
                "etcd still refuses writes after {duration:.0f} s: alarm {alarms}",
                duration=now - self._alarm_since,
                alarms=", ".join(alarms),
            )
        elif not alarms and self.alarms:
            self.log.warn(
                "etcd takes writes again after {duration:.0f} s (alarm {alarms} disarmed); "
                "taking uploads and announcing again",
                duration=now - self._alarm_since,
                alarms=", ".join(self.alarms),
            )
        self.alarms = alarms


class EtcdMonitor(Service):
    """The bridge's start-up probe of etcd, then a watch on its health (module docstring).

    Args:
        etcd: the ``[etcd]`` section.
        endpoints: the endpoints to use (the embedded etcd's, or ``etcd.endpoints``).
        probe_key: a key under the prefix the bridge will write (its bridge document).
        reactor: time and threads.
    """

    log = Logger()

    def __init__(self, etcd: Any, endpoints: Sequence[str], probe_key: str, reactor: Any) -> None:
        self.etcd = etcd
        self.endpoints = list(endpoints)
        self.probe_key = probe_key
        self.reactor = reactor
        self.where = ", ".join(self.endpoints)
        self.store: Store | None = None
        self.report = Report(self.where, self.log, reactor.seconds)
        self._loop: LoopingCall | None = None
        self._busy: Deferred[Any] | None = None

    @property
    def writable(self) -> bool:
        """False while etcd reports an alarm that refuses writes (NOSPACE)."""
        return not self.report.alarms

    @property
    def refusal(self) -> str | None:
        """Why new connections are refused now, or None."""
        if self.report.alarms:
            return f"etcd refuses writes (alarm {', '.join(self.report.alarms)})"
        return None

    # -- the start-up probe ---------------------------------------------------------------

    def check(self) -> None:
        """(blocking) Connect and probe etcd within ``start_timeout``; keeps the store.

        Raises:
            StartupError: one line saying what is wrong and what to do.
        """
        cfg = self.etcd
        deadline = time.monotonic() + cfg.start_timeout
        try:
            self.store = open_store(
                self.endpoints,
                timeout=cfg.timeout,
                deadline_s=cfg.start_timeout,
                username=cfg.username,
                password=cfg.password,
                ca=cfg.ca,
                cert=cfg.cert,
                key=cfg.key,
                auth_deadline_s=cfg.start_timeout,
            )
        except ConfigError as exc:  # TLS trust, client certificate, credentials
            raise StartupError(str(exc)) from None
        except StoreError as exc:  # logging in (with a user name) found nobody to answer
            self._plaintext_to_tls()
            waited = cfg.start_timeout - (deadline - time.monotonic())
            reason = explain(exc) or "no member answered"
            raise StartupError(self._unreachable(f"in {waited:.0f} s", reason)) from None
        try:
            self._probe(0.0)  # one attempt: if it fails, look closer before waiting
        except EtcdRefused as exc:
            raise StartupError(self._refused(exc)) from None
        except StoreError as first:
            self._plaintext_to_tls()
            reason = explain(first) or "no member answered"
            self.log.warn(
                "etcd at {where} does not answer yet ({reason}); trying for up to "
                "{timeout:g} s ([etcd] start_timeout)",
                where=self.where,
                reason=reason,
                timeout=cfg.start_timeout,
            )
            try:
                self._probe(max(0.0, deadline - time.monotonic()))
            except EtcdRefused as exc:
                raise StartupError(self._refused(exc)) from None
            except StoreError as exc:
                reason = explain(exc) or reason
                within = f"within {cfg.start_timeout:g} s ([etcd] start_timeout)"
                raise StartupError(self._unreachable(within, reason)) from None

    def _probe(self, deadline_s: float) -> None:
        """One transaction that reads the probe key and would write it (etcd checks the
        permissions of both branches), but never does: its compare cannot hold."""
        assert self.store is not None
        key = self.probe_key
        self.store.txn(
            [Compare.unmodified(key, -1)], [Put(key, b"")], [Get(key)], deadline_s=deadline_s
        )

    def _plaintext_to_tls(self) -> None:
        """Raise `StartupError` if a plaintext endpoint is really a TLS server."""
        cfg = self.etcd
        if cfg.ca or cfg.cert:
            return
        for text in self.endpoints:
            host, port, secure = parse_endpoint(text)
            if not secure and answers_tls(host, port):
                raise StartupError(
                    f"etcd at {text} speaks TLS, but the bridge was told to use plaintext: "
                    "write the endpoint as https://host:port and set [etcd] ca (and cert "
                    "and key if etcd asks for a client certificate)"
                )

    def _unreachable(self, waited: str, reason: str) -> str:
        return (
            f"etcd at {self.where} did not answer {waited}: {reason}; check that etcd "
            "runs and that [etcd] endpoints names its client URLs"
        )

    def _refused(self, exc: EtcdRefused) -> str:
        cfg = self.etcd
        text = str(exc)
        lowered = text.lower()
        if isinstance(exc, NoSpace):
            return (
                f"etcd at {self.where} refuses writes (alarm {NOSPACE}: its database is over "
                f"its quota): {NOSPACE_ADVICE}"
            )
        if "permission denied" in lowered and not cfg.username:
            return (
                f"etcd at {self.where} refuses a client without a user name (etcd: "
                "permission denied; authentication is enabled): set [etcd] username and "
                f"password, of a user whose role may read and write under {cfg.prefix}"
            )
        if "permission denied" in lowered:
            return (
                f"etcd user {cfg.username!r} may not read and write under {cfg.prefix} (etcd: "
                "permission denied): grant its role readwrite on the prefix (etcdctl role "
                f"grant-permission ROLE --prefix=true readwrite {cfg.prefix})"
            )
        if "user name is empty" in lowered or "authentication" in lowered:
            return (
                f"etcd at {self.where} requires authentication ({text}): set [etcd] "
                "username and password"
            )
        return f"etcd at {self.where} refused the bridge's first request: {text}"

    # -- while the bridge runs -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self._poll)
        self._loop.clock = self.reactor
        self._loop.start(POLL_S, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.store is not None:
            self.store.close()  # a status call in flight fails at once
        return None

    def _poll(self) -> Deferred[None] | None:
        if self.store is None or self._busy is not None:
            return None
        pool = self.reactor.getThreadPool()
        d: Deferred[MemberStatus] = deferToThreadPool(self.reactor, pool, self._status)
        self._busy = d
        return d.addCallbacks(self._answered, self._failed)

    def _status(self) -> MemberStatus:
        """(thread) One attempt, bounded by the client's per-call timeout."""
        assert self.store is not None
        return self.store.call(self.store.backend.status, deadline_s=0.0)

    def _answered(self, status: MemberStatus) -> None:
        self._busy = None
        self.report.answered(status.errors)

    def _failed(self, failure: Failure) -> None:
        self._busy = None
        if not self.running:
            return
        if isinstance(failure.value, EtcdRefused):
            # e.g. a role without the right to read the alarms: reachable, alarms unknown.
            self.report.answered(self.report.alarms)
            return
        if isinstance(failure.value, StoreError):
            self.report.failed(explain(failure.value))
            return
        self.log.failure("etcd status check failed", failure)
