"""The ``etcd`` processor: stores every session's transactions in etcd (data model v1).

`EtcdProcessor` is the Twisted side of `EtcdWriter` (bridge/processors/etcdwriter.py):
it owns dedicated thread pools (the blocking store must never run on the reactor
thread), the store (`bridge.etcd.store`, created in `startService`: a gRPC client
must not be created before twistd forks), the bridge's one lease and its refresh, the
watch on alive keys that drives the dead-bridge sweep (bridge/processors/sweep.py),
and the shutdown handover.

Two pools: commits and sweeps share the big one, while the lease refresh and shutdown
calls have a small one of their own, so uploads stuck in an etcd outage can never
starve the lease keep-alive. The watch (`bridge.etcd.watch`) runs in a thread of its
own: it resumes after errors and compaction (a full sweep, `Sweeper.resync`, then on
from its revision) and follows the client to another member when it fails over.

Shutdown (`prepare_stop`, called by the service before it closes the sessions): if
another bridge is registered, this bridge unregisters and *hands its IOCs over*: their
sessions end without writing anything, the alive keys expire with the lease, and a
surviving bridge marks an IOC inactive ``grace`` seconds later unless it reconnected
elsewhere first, so a consumer never sees inactive-then-active for an IOC that moves.
The last bridge marks its IOCs inactive at once, also those other stopped bridges
handed over (`Sweeper.sweep_orphans`), and revokes its lease.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

import bridge
from bridge import documents as docs
from bridge.errors import ConfigError, EtcdOutage, EtcdRefused, StoreError
from bridge.etcd.backend import open_store
from bridge.etcd.ops import Delete, Event, Get, Lease
from bridge.etcd.store import Store
from bridge.etcd.watch import ReactorWatch, Watch
from bridge.interfaces import IProcessor, IStoreHealth, IUnchangedRuns
from bridge.model import Transaction, iso_time
from bridge.processors.etcdwriter import EtcdWriter
from bridge.processors.sweep import Sweeper

__all__ = ["EtcdProcessor", "EtcdWriter", "build"]

#: Worker threads for etcd calls: bounds concurrent requests (measured: no gain beyond
#: 8-16 in flight) and how many calls an outage can hold.
POOL_SIZE = 16
POOL_NAME = "recsync-etcd"
#: Lease refresh and shutdown calls: never queued behind commits.
CONTROL_POOL_SIZE = 2
CONTROL_POOL_NAME = "recsync-etcd-control"
#: Seconds between attempts to get a lease while etcd is unreachable.
GRANT_RETRY_S = 1.0
#: Bound, seconds, on each etcd call made while stopping (etcd may be down).
STOP_CALL_S = 5.0
#: Seconds `stopService` waits for work in flight before it stops etcd retries.
STOP_WAIT_S = 5.0
#: Seconds an alive key of another bridge may stay away before its IOC is swept,
#: when the configuration has no ``grace``.
DEFAULT_GRACE_S = 2.0

EndpointsReady = Callable[[], "Deferred[list[str]]"]
#: Opens the store on the given endpoints (blocking; raises `ConfigError`, `StoreError`).
Connect = Callable[[Sequence[str]], Store]


@implementer(IProcessor, IUnchangedRuns, IStoreHealth)
class EtcdProcessor(Service):
    """Stores transactions in etcd; holds the bridge's lease; sweeps dead bridges' IOCs.

    Args:
        etcd_config: ``endpoints``, ``prefix``, ``lease_ttl``, ``timeout``, ``username``,
            ``password``, ``ca``, ``cert``, ``key``, ``max_outage`` (how long etcd may stay
            unreachable before calls fail, see `Store`) and optionally ``grace``.
        bridge_id: this bridge's id.
        reactor: provides time, threads and callLater.
        endpoints_ready: for an embedded etcd, returns the endpoints once it is healthy;
            None means ``etcd_config.endpoints``.
        connect: opens the store on the endpoints; None means a gRPC client with the
            configuration's settings (`open_store`). Tests pass other backends.
    """

    log = Logger()

    def __init__(
        self,
        etcd_config: Any,
        bridge_id: str,
        reactor: Any,
        endpoints_ready: EndpointsReady | None = None,
        connect: Connect | None = None,
    ) -> None:
        self.config = etcd_config
        self.bridge_id = bridge_id
        self.reactor = reactor
        self.keys = docs.Keys(etcd_config.prefix)
        self.host = socket.gethostname()
        #: Revoke the lease at stop (alive keys and the bridge document vanish at once).
        #: `prepare_stop` sets it when this is the last bridge; otherwise the lease is
        #: left to expire, which is what hands the IOCs over (module docstring).
        self.revoke_on_stop = False
        self.writer: EtcdWriter | None = None
        self.sweeper: Sweeper | None = None
        self._endpoints_ready = endpoints_ready
        self._connect_store = connect or self._open_store
        self._tcp_port: int | None = None
        self._pool: ThreadPool | None = None
        self._control: ThreadPool | None = None
        self.store: Store | None = None
        self._lease: Lease | None = None
        self._lease_lock = threading.Lock()
        self._started = ""
        self._ready: bool | Failure = False
        self._waiters: list[Deferred[None]] = []
        self._busy: set[Deferred[Any]] = set()
        self._refresher: LoopingCall | None = None
        self._checks: dict[str, IDelayedCall] = {}
        #: The watch on alive keys, once the lease is held.
        self.alive_watch: ReactorWatch | None = None
        self._stopping = False
        #: When etcd last answered the lease refresh (reactor seconds).
        self._last_contact = -math.inf
        #: Set by `prepare_stop` when no other bridge is registered.
        self._last_bridge = False
        #: IStoreHealth: times etcd answered the lease grant or refresh, and new leases
        #: taken after etcd lost one (read by bridge/web/metrics.py).
        self.lease_refreshes = 0
        self.lease_renewals = 0

    # -- IProcessor ----------------------------------------------------------------------

    def commit(self, transaction: Transaction) -> Deferred[None]:
        """Apply `transaction` in the pool, after the lease is held."""
        if not transaction.connected and self.writer is not None:
            self.writer.closing(transaction.session_id)  # now, not once a thread is free
        if self._ready is True:
            return self._in_pool(self._apply, transaction)
        return self.whenReady().addCallback(lambda _: self._in_pool(self._apply, transaction))

    def can_store(self) -> bool:
        """False before the lease is granted, and while etcd has not answered the lease
        refresh for longer than the lease TTL (the bridge's alive keys are gone then).
        The announcer asks it (`bridge.server.announce`)."""
        return (
            self._ready is True
            and self.reactor.seconds() - self._last_contact <= self.config.lease_ttl
        )

    def known_runs(self, session_id: int) -> list[str] | None:
        """IUnchangedRuns: the run digests of the IOC's stored upload (`EtcdWriter`)."""
        return self.writer.known_runs(session_id) if self.writer is not None else None

    def whenReady(self) -> Deferred[None]:
        """Fires once the client is connected and the bridge's lease is granted."""
        if self._ready is True:
            return defer.succeed(None)
        if isinstance(self._ready, Failure):
            return defer.fail(self._ready)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    @property
    def lease(self) -> Lease | None:
        """The bridge's current lease, None before it is granted."""
        return self._lease

    @property
    def watching(self) -> bool:
        """True while the alive-key watch is established (diagnostics, tests)."""
        return self.alive_watch is not None and self.alive_watch.established

    @property
    def rewatches(self) -> int:
        """How often the alive-key watch had to be opened again."""
        return self.alive_watch.rewatches if self.alive_watch is not None else 0

    @property
    def tcp_port(self) -> int | None:
        return self._tcp_port

    @tcp_port.setter
    def tcp_port(self, port: int | None) -> None:
        """The bridge's TCP port, published in the bridge document (re-put if running)."""
        self._tcp_port = port
        if self._ready is True and not self._stopping:
            self._in_pool(self._put_bridge).addErrback(self._log_failure, "bridge document")

    def _apply(self, transaction: Transaction) -> None:
        assert self.writer is not None
        self.writer.apply(transaction)

    # -- start -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopping = False
        self._pool = ThreadPool(minthreads=1, maxthreads=POOL_SIZE, name=POOL_NAME)
        self._pool.start()
        self._control = ThreadPool(
            minthreads=1, maxthreads=CONTROL_POOL_SIZE, name=CONTROL_POOL_NAME
        )
        self._control.start()
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._start_failed)

    async def _start(self) -> None:
        if self._endpoints_ready is not None:
            endpoints = list(await self._endpoints_ready())
        else:
            endpoints = list(self.config.endpoints)
        if self._stopping:
            return
        await self._in_control(self._connect, endpoints)
        if self._stopping:
            return
        self._contact()
        self._set_ready(True)
        self._refresher = LoopingCall(self._refresh)
        self._refresher.clock = self.reactor
        self._refresher.start(self._refresh_interval(), now=False)
        self._start_watch()  # sweeps once first: bridges may have died unwatched

    def _refresh_interval(self) -> float:
        return max(float(self.config.lease_ttl) / 3.0, 0.1)

    def _open_store(self, endpoints: Sequence[str]) -> Store:
        cfg = self.config
        return open_store(
            endpoints,
            timeout=cfg.timeout,
            deadline_s=float(cfg.max_outage),
            username=cfg.username,
            password=cfg.password,
            ca=cfg.ca,
            cert=cfg.cert,
            key=cfg.key,
        )

    def _connect(self, endpoints: list[str]) -> None:
        """(thread) Store, writer and sweeper, then the lease and the bridge document."""
        self.store = self._connect_store(endpoints)
        self.writer = EtcdWriter(
            self.store,
            self.keys,
            self.bridge_id,
            self._current_lease,
            self.reactor.seconds,
            self._renew,
        )
        self.sweeper = Sweeper(
            self.store,
            self.keys,
            self.writer.index,
            self.reactor.seconds,
            self.writer.serves,
        )
        self._started = iso_time(self.reactor.seconds())
        self._grant()

    def _current_lease(self) -> Lease:
        assert self._lease is not None, "no commit is applied before the lease is granted"
        return self._lease

    def _grant(self) -> None:
        """(thread) A new lease with the bridge document on it; retries until stopped."""
        assert self.store is not None
        while True:
            try:
                self._lease = self.store.grant(max(1, math.ceil(self.config.lease_ttl)))
                self._put_bridge()
                return
            except EtcdRefused:
                raise  # e.g. a role that does not cover the prefix: trying again is no use
            except StoreError as exc:
                if self._stopping:
                    raise
                # Reported once, with its duration, by bridge.etcd.monitor.
                self.log.debug("etcd unreachable, still trying to get a lease: {error}", error=exc)
                time.sleep(GRANT_RETRY_S)

    def _put_bridge(self) -> None:
        """(thread)"""
        assert self.store is not None and self._lease is not None
        doc = docs.bridge_document(self.host, self._tcp_port, bridge.__version__, self._started)
        self.store.put(self.keys.bridge(self.bridge_id), docs.dumps(doc), self._lease.id)

    def _set_ready(self, outcome: bool | Failure) -> None:
        self._ready = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(None)

    def _start_failed(self, failure: Failure) -> None:
        if self._ready is not True:
            self._set_ready(failure)
        # Bad settings or credentials, or etcd unreachable: the service that waited
        # for us logs those in one line; anything else is a bug worth a traceback.
        expected = isinstance(failure.value, ConfigError | StoreError)
        if not self._stopping and not expected:
            self.log.failure("etcd processor could not start", failure)

    # -- lease -----------------------------------------------------------------------------

    def _refresh(self) -> Deferred[None]:
        d = self._in_control(self._refresh_blocking)
        d.addCallback(self._contact)
        d.addErrback(self._log_failure, "lease refresh")
        return d

    def _contact(self, _: object = None) -> None:
        self._last_contact = self.reactor.seconds()
        self.lease_refreshes += 1

    @property
    def last_contact(self) -> float | None:
        """IStoreHealth: when etcd last answered the lease refresh (reactor seconds)."""
        return None if math.isinf(self._last_contact) else self._last_contact

    def _refresh_blocking(self) -> None:
        """(thread) Keep the lease alive; if it expired meanwhile, start over with a new one."""
        assert self.writer is not None and self.store is not None
        lease = self._current_lease()
        if self.store.refresh(lease.id) <= 0:
            self._renew(lease)
        self.writer.retry_unfinished()

    def _renew(self, stale: Lease) -> None:
        """(thread) etcd lost lease `stale` (it expired in an outage): take a new one.

        Called by the refresh and by any write that found the lease gone; the first
        caller grants, later ones find the new lease and return. Then every live
        session's alive key and IOC document are put back (`EtcdWriter.reassert`).
        """
        with self._lease_lock:
            current = self._lease
            if current is not None and current.id != stale.id:
                return
            if self.writer is not None and self.writer.stopping:
                raise StoreError("the bridge's lease expired while it stops")
            self.log.warn(
                "the bridge's etcd lease expired (etcd outage?); taking a new one "
                "and re-announcing the live sessions"
            )
            self._grant()
            self.lease_renewals += 1
        self.reactor.callFromThread(self._reassert)

    def _reassert(self) -> None:
        if not self._stopping and self.writer is not None:
            self._in_control(self.writer.reassert).addErrback(
                self._log_failure, "re-announcing the live sessions"
            )

    # -- dead-bridge sweep -----------------------------------------------------------------

    def _start_watch(self) -> None:
        """Watch alive keys: a sweep of everything first (`Sweeper.resync`), then every
        deletion from its revision on; again after a compaction."""
        if self._stopping or self.store is None:
            return
        watch = Watch(
            self.store,
            self.keys.alive_prefix(),
            reload=self._resync,
            prev_kv=True,
            probe_interval=self._refresh_interval(),
        )
        self.alive_watch = ReactorWatch(self.reactor, watch, self._on_alive_events)
        self.alive_watch.startService()

    def _resync(self) -> int:
        """(watch thread)"""
        assert self.sweeper is not None
        return self.sweeper.resync()

    def _on_alive_events(self, events: list[Event]) -> None:
        if self._stopping:
            return
        for event in events:
            if event.kind == "delete":
                self._alive_deleted(event)

    def _alive_deleted(self, event: Event) -> None:
        """Schedule a sweep check unless the key was on our current lease.

        Judged by lease, not by bridge id: a restarted bridge keeps its id, and the
        alive keys of its previous incarnation expire under the new one's eyes. Our
        own IOCs are safe anyway (`Sweeper.is_local`); this only saves reads.
        """
        lease = self._lease
        if lease is not None and event.prev is not None and event.prev.lease == lease.id:
            return
        iocid = self.keys.split(event.key)[-1]
        pending = self._checks.get(iocid)
        if pending is None or not pending.active():
            self._checks[iocid] = self.reactor.callLater(self._grace(), self._check, iocid)

    def _grace(self) -> float:
        return float(getattr(self.config, "grace", DEFAULT_GRACE_S))

    def _check(self, iocid: str) -> None:
        assert self.sweeper is not None
        self._checks.pop(iocid, None)
        if not self._stopping:
            self._in_pool(self.sweeper.mark_dead, iocid).addErrback(
                self._log_failure, f"sweep of IOC {iocid}"
            )

    # -- stop ------------------------------------------------------------------------------

    def prepare_stop(self) -> Deferred[None]:
        """The bridge is about to close every session: hand its IOCs over, or not.

        With another bridge registered, unregister and hand over (the module
        docstring); as the last bridge, let the sessions' ends mark the IOCs inactive
        and revoke the lease at `stopService`. If etcd cannot be reached, hand over:
        nothing can be written anyway, and the lease expires on its own.
        """
        if self._ready is not True or self.writer is None:
            return defer.succeed(None)
        self.writer.stopping = True
        return self._in_control(self._prepare_stop).addErrback(
            self._log_failure, "shutdown handover"
        )

    def _prepare_stop(self) -> None:
        """(thread)"""
        assert self.writer is not None
        try:
            others = self._unregister()
        except StoreError as exc:
            self.writer.handing_over = True
            self.log.warn(
                "stopping without etcd ({error}): this bridge's IOCs stay as they "
                "are until its lease expires and another bridge sweeps them",
                error=exc,
            )
            return
        if others:
            self.writer.handing_over = True
            self.log.info(
                "stopping: bridges {others} keep running; this bridge's IOCs are handed over "
                "(alive keys expire with the lease in {ttl} s; an IOC not back by then plus "
                "{grace} s is marked inactive by them)",
                others=", ".join(sorted(others)),
                ttl=self.config.lease_ttl,
                grace=self._grace(),
            )
        else:
            self._last_bridge = True
            self.revoke_on_stop = True
            self.log.info("stopping: no other bridge is running; marking IOCs inactive")

    def _unregister(self) -> list[str]:
        """(thread) Delete our bridge document; return the ids of the other bridges."""
        assert self.store is not None
        own = self.keys.bridge(self.bridge_id)
        result = self.store.txn(
            [], [Delete(own), Get(self.keys.bridges_prefix(), prefix=True)], deadline_s=STOP_CALL_S
        )
        return [self.keys.split(entry.key)[-1] for entry in result.results[1]]

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for call in self._checks.values():
            if call.active():
                call.cancel()
        self._checks.clear()
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        if self.writer is not None:
            self.writer.stopping = True
        if self.alive_watch is not None:
            # Its thread may be in a sweep that retries: waited for, and aborted, as busy.
            self._track(self.alive_watch.stopService())
        await self._drain()
        if self.store is not None:
            if self._last_bridge and self.sweeper is not None and self._lease is not None:
                d = self._in_control(self._sweep_orphans)
                await d.addErrback(self._log_failure, "sweep of handed-over IOCs")
            if self.revoke_on_stop and self._lease is not None:
                await self._in_control(self._revoke).addErrback(self._log_failure, "revoke")
            self.store.close()
        for pool in (self._pool, self._control):
            if pool is not None:
                pool.stop()

    async def _drain(self) -> None:
        """Wait for calls in flight; past `STOP_WAIT_S`, stop their etcd retries."""
        waited = 0.0
        while self._busy and waited < STOP_WAIT_S:
            await deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
        if self._busy and self.store is not None:
            self.log.warn("etcd calls still retrying at shutdown: abandoned")
            self.store.abort()
        while self._busy:
            await defer.DeferredList(list(self._busy), consumeErrors=True)

    def _sweep_orphans(self) -> None:
        """(thread)"""
        assert self.sweeper is not None
        swept = self.sweeper.sweep_orphans(self._current_lease().id)
        if swept:
            self.log.info(
                "stopping: {n} IOCs of bridges that stopped earlier marked inactive", n=swept
            )

    def _revoke(self) -> None:
        """(thread)"""
        assert self.store is not None
        self.store.revoke(self._current_lease().id, deadline_s=STOP_CALL_S)

    # -- helpers ---------------------------------------------------------------------------

    def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``fn(*args)`` on the pool; the Deferred is tracked until it fires."""
        assert self._pool is not None
        return self._track(deferToThreadPool(self.reactor, self._pool, fn, *args))

    def _in_control(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Like `_in_pool`, on the small pool of the lease and shutdown calls."""
        assert self._control is not None
        return self._track(deferToThreadPool(self.reactor, self._control, fn, *args))

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self._busy.add(d)

        def done(result: object) -> object:
            self._busy.discard(d)
            return result

        return d.addBoth(done)

    def _log_failure(self, failure: Failure, what: str) -> None:
        if isinstance(failure.value, EtcdOutage):
            # The outage itself is reported once, with its duration (bridge.etcd.monitor).
            self.log.debug("etcd processor: {what} failed: {e}", what=what, e=failure.value)
        elif not self._stopping and isinstance(failure.value, StoreError):
            self.log.warn(
                "etcd processor: {what} failed: {error}",
                what=what,
                error=failure.getErrorMessage(),
            )
        elif not self._stopping:
            self.log.failure("etcd processor: {what} failed", failure, what=what)
        else:
            self.log.warn(
                "etcd processor: {what} failed while stopping: {error}",
                what=what,
                error=failure.value,
            )


def build(
    config: Any,
    bridge_id: str,
    reactor: Any,
    endpoints_ready: EndpointsReady | None = None,
    **_: Any,
) -> EtcdProcessor:
    """Registry entry (bridge.processors.BUILTIN): `config` is the bridge config or its
    ``[etcd]`` section."""
    return EtcdProcessor(
        getattr(config, "etcd", config), bridge_id, reactor, endpoints_ready=endpoints_ready
    )
