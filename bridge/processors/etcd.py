"""The ``etcd`` processor: stores every session's transactions in etcd (data model v1).

`EtcdProcessor` is the Twisted side of `EtcdWriter` (bridge/processors/etcdwriter.py):
it owns dedicated thread pools (the blocking client must never run on the reactor
thread), the client (created in `startService`, after twistd forks, as the shared etcd
reference section 6 requires), the bridge's one lease and its refresh, the watch on
alive keys that drives the dead-bridge sweep (bridge/processors/sweep.py), and the
shutdown handover.

Two pools: commits and sweeps share the big one, while the lease refresh and the watch
have a small one of their own, so uploads stuck in an etcd outage can never starve the
lease keep-alive.

The watch follows the client: a watch stream on a hung (SIGSTOPped) member stays silent
without any error, so after every lease refresh the processor checks which member the
client uses now and, when it has failed over, moves the watch there (from the last
revision seen + 1; events of the old stream are ignored from then on).

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
from collections.abc import Callable
from typing import Any

from pyetcd import transactions as tx
from pyetcd.events import DeleteEvent
from pyetcd.exceptions import RevisionCompactedError
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
from bridge import keys as k
from bridge.errors import ConfigError, StoreError
from bridge.etcdclient import make_client
from bridge.interfaces import IProcessor, IStoreHealth, IUnchangedRuns
from bridge.model import Transaction, iso_time
from bridge.processors.etcdwriter import EtcdWriter
from bridge.processors.sweep import Sweeper

__all__ = ["EtcdProcessor", "EtcdWriter", "build"]

#: Worker threads for etcd calls: bounds concurrent requests (shared etcd reference
#: section 6 measured no gain beyond 8-16) and how many calls an outage can hold.
POOL_SIZE = 16
POOL_NAME = "recsync-etcd"
#: Lease refresh, watch, resync and shutdown calls: never queued behind commits.
CONTROL_POOL_SIZE = 2
CONTROL_POOL_NAME = "recsync-etcd-control"
#: Seconds between attempts to get a lease while etcd is unreachable.
GRANT_RETRY_S = 1.0
#: Bound, seconds, on each etcd call made while stopping (etcd may be down).
STOP_CALL_S = 5.0
#: Seconds `stopService` waits for work in flight before it stops etcd retries.
STOP_WAIT_S = 5.0
#: Seconds between attempts to re-add a failed watch.
REWATCH_DELAY_S = 1.0
#: Seconds an alive key of another bridge may stay away before its IOC is swept,
#: when the configuration has no ``grace``.
DEFAULT_GRACE_S = 2.0

EndpointsReady = Callable[[], "Deferred[list[str]]"]


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
    """

    log = Logger()

    def __init__(
        self,
        etcd_config: Any,
        bridge_id: str,
        reactor: Any,
        endpoints_ready: EndpointsReady | None = None,
    ) -> None:
        self.config = etcd_config
        self.bridge_id = bridge_id
        self.reactor = reactor
        self.keys = k.Keys(etcd_config.prefix)
        self.host = socket.gethostname()
        #: Revoke the lease at stop (alive keys and the bridge document vanish at once).
        #: `prepare_stop` sets it when this is the last bridge; otherwise the lease is
        #: left to expire, which is what hands the IOCs over (module docstring).
        self.revoke_on_stop = False
        self.writer: EtcdWriter | None = None
        self.sweeper: Sweeper | None = None
        self._endpoints_ready = endpoints_ready
        self._tcp_port: int | None = None
        self._pool: ThreadPool | None = None
        self._control: ThreadPool | None = None
        self._client: Any = None
        self._lease: Any = None
        self._lease_lock = threading.Lock()
        self._started = ""
        self._ready: bool | Failure = False
        self._waiters: list[Deferred[None]] = []
        self._busy: set[Deferred[Any]] = set()
        self._refresher: LoopingCall | None = None
        self._checks: dict[str, IDelayedCall] = {}
        self._rewatch: IDelayedCall | None = None
        self._last_revision = 0
        #: Numbers the watches added; callbacks of an older one are ignored.
        self._watch_generation = 0
        #: The member (``host:port``) the current watch was added on.
        self._watch_endpoint: str | None = None
        self._stopping = False
        #: When etcd last answered the lease refresh (reactor seconds).
        self._last_contact = -math.inf
        #: Set by `prepare_stop` when no other bridge is registered.
        self._last_bridge = False
        #: True while the alive-key watch is established (diagnostics, tests).
        self.watching = False
        #: How often the watch had to be added again after an error.
        self.rewatches = 0
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
        The announcer asks it (`bridge.announce`)."""
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
    def lease(self) -> Any:
        """The bridge's current lease (a pyetcd Lease), None before it is granted."""
        return self._lease

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
        self._refresher.start(max(self.config.lease_ttl / 3.0, 0.1), now=False)
        self._start_watch()  # sweeps once first: bridges may have died unwatched

    def _connect(self, endpoints: list[str]) -> None:
        """(thread) Client, writer and sweeper, then the lease and the bridge document."""
        cfg = self.config
        self._client = make_client(
            endpoints,
            timeout=cfg.timeout,
            username=cfg.username,
            password=cfg.password,
            ca=cfg.ca,
            cert=cfg.cert,
            key=cfg.key,
        )
        self.writer = EtcdWriter(
            self._client,
            self.keys,
            self.bridge_id,
            lambda: self._lease,
            self.reactor.seconds,
            float(cfg.max_outage),
            self._renew,
        )
        self.sweeper = Sweeper(
            self.writer.store,
            self.keys,
            self.writer.index,
            self.reactor.seconds,
            self.writer.serves,
        )
        self._started = iso_time(self.reactor.seconds())
        self._grant()

    def _grant(self) -> None:
        """(thread) A new lease with the bridge document on it; retries until stopped."""
        assert self.writer is not None
        while True:
            try:
                self._lease = self.writer.store.call(
                    lambda: self._client.lease(max(1, math.ceil(self.config.lease_ttl)))
                )
                self._put_bridge()
                return
            except StoreError as exc:
                if self._stopping:
                    raise
                self.log.warn("etcd unreachable, still trying to get a lease: {error}", error=exc)
                time.sleep(GRANT_RETRY_S)

    def _put_bridge(self) -> None:
        """(thread)"""
        assert self.writer is not None
        doc = k.bridge_document(self.host, self._tcp_port, bridge.__version__, self._started)
        self.writer.store.call(
            lambda: self._client.put(
                self.keys.bridge(self.bridge_id), k.dumps(doc), lease=self._lease
            )
        )

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
        d.addBoth(lambda _: self._follow_client())
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
        assert self.writer is not None
        lease = self._lease
        responses = self.writer.store.call(lambda: list(self._client.refresh_lease(lease.id)))
        if not responses or responses[0].TTL <= 0:
            self._renew(lease)
        self.writer.retry_unfinished()

    def _renew(self, stale: Any) -> None:
        """(thread) etcd lost lease `stale` (it expired in an outage): take a new one.

        Called by the refresh and by any write that found the lease gone; the first
        caller grants, later ones find the new lease and return. Then every live
        session's alive key and IOC document are put back (`EtcdWriter.reassert`).
        """
        with self._lease_lock:
            current = self._lease
            if current is not None and current.id != getattr(stale, "id", stale):
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
        if not self._stopping:
            self._watch_generation += 1
            generation = self._watch_generation
            d = self._in_control(self._add_watch, generation)
            d.addErrback(self._watch_failed, generation)

    def _add_watch(self, generation: int) -> None:
        """(thread) Watch alive keys from the last revision seen + 1.

        With no revision known yet (start), or when that revision is compacted (events
        were lost), sweep everything first and watch from the sweep's revision.
        """
        assert self.sweeper is not None
        if self._last_revision > 0:
            try:
                self._watch(self._last_revision + 1, generation)
                return
            except RevisionCompactedError:
                self.log.info("alive-key history compacted; full resync")
        self._watch(self.sweeper.resync() + 1, generation)

    def _watch(self, revision: int, generation: int) -> None:
        """(thread)"""
        self._last_revision = revision - 1
        endpoint = self._endpoint_in_use()  # before: the watch goes to this one or a later

        def on_watch_thread(response: Any) -> None:
            """(watch thread) Every callback goes to the reactor."""
            self.reactor.callFromThread(self._on_watch, generation, response)

        self._client.add_watch_prefix_callback(
            self.keys.alive_prefix(), on_watch_thread, prev_kv=True, start_revision=revision
        )
        self.reactor.callFromThread(self._watch_added, generation, endpoint)

    def _watch_added(self, generation: int, endpoint: str | None) -> None:
        if generation == self._watch_generation:
            self.watching = True
            self._watch_endpoint = endpoint

    def _endpoint_in_use(self) -> str | None:
        endpoint = getattr(self._client, "endpoint_in_use", None)
        return getattr(endpoint, "netloc", None)

    def _follow_client(self) -> None:
        """Move the watch to the member the client uses now, if it failed over.

        A watch on a hung member gets no error, just no events; the lease refresh
        notices the hang (timeout) and the client fails over, which is seen here.
        """
        if self._stopping or not self.watching:
            return
        current = self._endpoint_in_use()
        if current is not None and current != self._watch_endpoint:
            self.log.info(
                "etcd client moved from {old} to {new}; moving the alive-key watch",
                old=self._watch_endpoint,
                new=current,
            )
            self.watching = False
            self.rewatches += 1
            self._start_watch()

    def _watch_failed(self, failure: Failure, generation: int) -> None:
        if not self._stopping and generation == self._watch_generation:
            self.log.warn("cannot watch alive keys, retrying: {error}", error=failure.value)
            self._watch_lost()

    def _watch_lost(self) -> None:
        self.watching = False
        self.rewatches += 1
        if self._rewatch is None or not self._rewatch.active():
            self._rewatch = self.reactor.callLater(REWATCH_DELAY_S, self._start_watch)

    def _on_watch(self, generation: int, response: Any) -> None:
        if self._stopping or generation != self._watch_generation:
            return
        if response is None or isinstance(response, BaseException):
            self.log.info("alive-key watch ended ({error!r}); re-adding", error=response)
            if isinstance(response, RevisionCompactedError):
                self._last_revision = 0  # forces a full resync
            self._watch_lost()
            return
        for event in response.events:
            self._last_revision = max(self._last_revision, event.mod_revision)
            if isinstance(event, DeleteEvent):
                self._alive_deleted(event)

    def _alive_deleted(self, event: Any) -> None:
        """Schedule a sweep check unless the key was on our current lease.

        Judged by lease, not by bridge id: a restarted bridge keeps its id, and the
        alive keys of its previous incarnation expire under the new one's eyes. Our
        own IOCs are safe anyway (`Sweeper.is_local`); this only saves reads.
        """
        lease = self._lease
        if lease is not None and getattr(event, "prev_lease", None) == lease.id:
            return
        iocid = self.keys.split(event.key.decode("utf-8"))[-1]
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
        assert self.writer is not None
        own = self.keys.bridge(self.bridge_id)
        prefix = self.keys.bridges_prefix()
        _, responses = self.writer.store.call(
            lambda: self._client.transaction(
                compare=[],
                success=[tx.Delete(own), tx.Get(prefix, _prefix_end(prefix))],
                failure=[],
            ),
            deadline_s=STOP_CALL_S,
        )
        found = responses[1] if len(responses) > 1 else []
        return [self.keys.split(meta.key.decode("utf-8"))[-1] for _, meta in found]

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for call in [*self._checks.values(), self._rewatch]:
            if call is not None and call.active():
                call.cancel()
        self._checks.clear()
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        if self.writer is not None:
            self.writer.stopping = True
        await self._drain()
        if self._client is not None:
            if self._last_bridge and self.sweeper is not None and self._lease is not None:
                d = self._in_control(self._sweep_orphans)
                await d.addErrback(self._log_failure, "sweep of handed-over IOCs")
            if self.revoke_on_stop and self._lease is not None:
                await self._in_control(self._revoke).addErrback(self._log_failure, "revoke")
            self._client.close()
        for pool in (self._pool, self._control):
            if pool is not None:
                pool.stop()

    async def _drain(self) -> None:
        """Wait for calls in flight; past `STOP_WAIT_S`, stop their etcd retries."""
        waited = 0.0
        while self._busy and waited < STOP_WAIT_S:
            await deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
        if self._busy and self.writer is not None:
            self.log.warn("etcd calls still retrying at shutdown: abandoned")
            self.writer.store.abort()
        while self._busy:
            await defer.DeferredList(list(self._busy), consumeErrors=True)

    def _sweep_orphans(self) -> None:
        """(thread)"""
        assert self.sweeper is not None
        swept = self.sweeper.sweep_orphans(self._lease.id)
        if swept:
            self.log.info(
                "stopping: {n} IOCs of bridges that stopped earlier marked inactive", n=swept
            )

    def _revoke(self) -> None:
        """(thread)"""
        assert self.writer is not None
        self.writer.store.call(
            lambda: self._client.revoke_lease(self._lease.id), deadline_s=STOP_CALL_S
        )

    # -- helpers ---------------------------------------------------------------------------

    def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``fn(*args)`` on the pool; the Deferred is tracked until it fires."""
        assert self._pool is not None
        return self._track(deferToThreadPool(self.reactor, self._pool, fn, *args))

    def _in_control(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Like `_in_pool`, on the small pool of the lease and the watch."""
        assert self._control is not None
        return self._track(deferToThreadPool(self.reactor, self._control, fn, *args))

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self._busy.add(d)

        def done(result: object) -> object:
            self._busy.discard(d)
            return result

        return d.addBoth(done)

    def _log_failure(self, failure: Failure, what: str) -> None:
        if not self._stopping and isinstance(failure.value, StoreError):
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


def _prefix_end(prefix: str) -> str:
    """The first key after every key under `prefix` (its last character incremented)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


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
