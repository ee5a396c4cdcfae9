"""The ``etcd`` processor: stores every session's transactions in etcd (data model v1).

`EtcdProcessor` is the Twisted side of `EtcdWriter` (bridge/processors/etcdwriter.py):
it owns a dedicated thread pool (the blocking client must never run on the reactor
thread), the client (created in `startService`, after twistd forks, as the shared etcd
reference section 6 requires), the bridge's one lease and its refresh, and the watch on
alive keys that drives the dead-bridge sweep (bridge/processors/sweep.py).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Any

from pyetcd.events import DeleteEvent
from pyetcd.exceptions import RevisionCompactedError
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

import bridge
from bridge import keys as k
from bridge.errors import StoreError
from bridge.etcdclient import make_client
from bridge.interfaces import IProcessor
from bridge.model import Transaction, iso_time
from bridge.processors.etcdwriter import EtcdWriter
from bridge.processors.sweep import Sweeper

__all__ = ["EtcdProcessor", "EtcdWriter", "build"]

#: Worker threads for etcd calls: bounds concurrent requests (shared etcd reference
#: section 6 measured no gain beyond 8-16) and how many calls an outage can hold.
POOL_SIZE = 16
POOL_NAME = "recsync-etcd"
#: Seconds between attempts to re-add a failed watch.
REWATCH_DELAY_S = 1.0
#: Seconds an alive key of another bridge may stay away before its IOC is swept,
#: when the configuration has no ``grace``.
DEFAULT_GRACE_S = 2.0

EndpointsReady = Callable[[], "Deferred[list[str]]"]


@implementer(IProcessor)
class EtcdProcessor(Service):
    """Stores transactions in etcd; holds the bridge's lease; sweeps dead bridges' IOCs.

    Args:
        etcd_config: ``endpoints``, ``prefix``, ``lease_ttl``, ``timeout``, ``username``,
            ``password``, ``ca``, ``cert``, ``key``, ``max_outage`` (the retry deadline of
            every etcd call) and optionally ``grace``.
        bridge_id: this bridge's id.
        reactor: provides time, threads and callLater.
        endpoints_ready: for an embedded etcd, returns the endpoints once it is healthy;
            None means ``etcd_config.endpoints``.
    """

    log = Logger()

    def __init__(self, etcd_config: Any, bridge_id: str, reactor: Any,
                 endpoints_ready: EndpointsReady | None = None) -> None:
        self.config = etcd_config
        self.bridge_id = bridge_id
        self.reactor = reactor
        self.keys = k.Keys(etcd_config.prefix)
        self.host = socket.gethostname()
        #: Revoke the lease at stop (alive keys vanish at once); off: the server ends
        #: every session with a disconnect transaction before stopping processors.
        self.revoke_on_stop = False
        self.writer: EtcdWriter | None = None
        self.sweeper: Sweeper | None = None
        self._endpoints_ready = endpoints_ready
        self._tcp_port: int | None = None
        self._pool: ThreadPool | None = None
        self._client: Any = None
        self._lease: Any = None
        self._started = ""
        self._ready: bool | Failure = False
        self._waiters: list[Deferred[None]] = []
        self._busy: set[Deferred[Any]] = set()
        self._refresher: LoopingCall | None = None
        self._checks: dict[str, IDelayedCall] = {}
        self._rewatch: IDelayedCall | None = None
        self._last_revision = 0
        self._stopping = False
        #: True while the alive-key watch is established (diagnostics, tests).
        self.watching = False
        #: How often the watch had to be added again after an error.
        self.rewatches = 0

    # -- IProcessor ----------------------------------------------------------------------

    def commit(self, transaction: Transaction) -> Deferred[None]:
        """Apply `transaction` in the pool, after the lease is held."""
        if self._ready is True:
            return self._in_pool(self._apply, transaction)
        return self.whenReady().addCallback(lambda _: self._in_pool(self._apply, transaction))

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
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._start_failed)

    async def _start(self) -> None:
        if self._endpoints_ready is not None:
            endpoints = list(await self._endpoints_ready())
        else:
            endpoints = list(self.config.endpoints)
        if self._stopping:
            return
        await self._in_pool(self._connect, endpoints)
        if self._stopping:
            return
        self._set_ready(True)
        self._refresher = LoopingCall(self._refresh)
        self._refresher.clock = self.reactor
        self._refresher.start(max(self.config.lease_ttl / 3.0, 0.1), now=False)
        self._start_watch()  # sweeps once first: bridges may have died unwatched

    def _connect(self, endpoints: list[str]) -> None:
        """(thread) Client, writer and sweeper, then the lease and the bridge document."""
        cfg = self.config
        self._client = make_client(endpoints, timeout=cfg.timeout, username=cfg.username,
                                   password=cfg.password, ca=cfg.ca, cert=cfg.cert,
                                   key=cfg.key)
        self.writer = EtcdWriter(self._client, self.keys, self.bridge_id, lambda: self._lease,
                                 self.reactor.seconds, float(cfg.max_outage))
        self.sweeper = Sweeper(self.writer.store, self.keys, self.writer.index,
                               self.reactor.seconds, self.writer.serves)
        self._started = iso_time(self.reactor.seconds())
        self._grant()

    def _grant(self) -> None:
        """(thread) A new lease with the bridge document on it; retries until stopped."""
        assert self.writer is not None
        while True:
            try:
                self._lease = self.writer.store.call(
                    lambda: self._client.lease(max(1, math.ceil(self.config.lease_ttl))))
                self._put_bridge()
                return
            except StoreError as exc:
                if self._stopping:
                    raise
                self.log.warn("etcd unreachable, still trying to get a lease: {error}",
                              error=exc)

    def _put_bridge(self) -> None:
        """(thread)"""
        assert self.writer is not None
        doc = k.bridge_document(self.host, self._tcp_port, bridge.__version__, self._started)
        self.writer.store.call(lambda: self._client.put(
            self.keys.bridge(self.bridge_id), k.dumps(doc), lease=self._lease))

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
        if not self._stopping:
            self.log.failure("etcd processor could not start", failure)

    # -- lease -----------------------------------------------------------------------------

    def _refresh(self) -> Deferred[None]:
        d = self._in_pool(self._refresh_blocking)
        d.addErrback(self._log_failure, "lease refresh")
        return d

    def _refresh_blocking(self) -> None:
        """(thread) Keep the lease alive; if it expired meanwhile, start over with a new one."""
        assert self.writer is not None
        lease = self._lease
        responses = self.writer.store.call(lambda: list(self._client.refresh_lease(lease.id)))
        if not responses or responses[0].TTL <= 0:
            self.log.warn("the bridge's etcd lease expired (etcd outage?); taking a new one "
                          "and re-announcing the live sessions")
            self._grant()
            self.writer.reassert()
        self.writer.retry_unfinished()

    # -- dead-bridge sweep -----------------------------------------------------------------

    def _start_watch(self) -> None:
        if not self._stopping:
            self._in_pool(self._add_watch).addErrback(self._watch_failed)

    def _add_watch(self) -> None:
        """(thread) Watch alive keys from the last revision seen + 1.

        With no revision known yet (start), or when that revision is compacted (events
        were lost), sweep everything first and watch from the sweep's revision.
        """
        assert self.sweeper is not None
        if self._last_revision > 0:
            try:
                self._watch(self._last_revision + 1)
                return
            except RevisionCompactedError:
                self.log.info("alive-key history compacted; full resync")
        self._watch(self.sweeper.resync() + 1)

    def _watch(self, revision: int) -> None:
        """(thread)"""
        self._last_revision = revision - 1
        self._client.add_watch_prefix_callback(
            self.keys.alive_prefix(), self._on_watch_thread, prev_kv=True,
            start_revision=revision)
        self.reactor.callFromThread(setattr, self, "watching", True)

    def _watch_failed(self, failure: Failure) -> None:
        if not self._stopping:
            self.log.warn("cannot watch alive keys, retrying: {error}", error=failure.value)
            self._watch_lost()

    def _watch_lost(self) -> None:
        self.watching = False
        self.rewatches += 1
        if self._rewatch is None or not self._rewatch.active():
            self._rewatch = self.reactor.callLater(REWATCH_DELAY_S, self._start_watch)

    def _on_watch_thread(self, response: Any) -> None:
        """(watch thread) Every callback goes to the reactor."""
        self.reactor.callFromThread(self._on_watch, response)

    def _on_watch(self, response: Any) -> None:
        if self._stopping:
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
            grace = float(getattr(self.config, "grace", DEFAULT_GRACE_S))
            self._checks[iocid] = self.reactor.callLater(grace, self._check, iocid)

    def _check(self, iocid: str) -> None:
        assert self.sweeper is not None
        self._checks.pop(iocid, None)
        if not self._stopping:
            self._in_pool(self.sweeper.mark_dead, iocid).addErrback(
                self._log_failure, f"sweep of IOC {iocid}")

    # -- stop ------------------------------------------------------------------------------

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
        while self._busy:
            await defer.DeferredList(list(self._busy), consumeErrors=True)
        if self._client is not None:
            if self.revoke_on_stop and self._lease is not None:
                await self._in_pool(self._revoke).addErrback(self._log_failure, "revoke")
            self._client.close()
        if self._pool is not None:
            self._pool.stop()

    def _revoke(self) -> None:
        """(thread)"""
        assert self.writer is not None
        self.writer.store.call(lambda: self._client.revoke_lease(self._lease.id))

    # -- helpers ---------------------------------------------------------------------------

    def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``fn(*args)`` on the pool; the Deferred is tracked until it fires."""
        assert self._pool is not None
        d: Deferred[Any] = deferToThreadPool(self.reactor, self._pool, fn, *args)
        self._busy.add(d)

        def done(result: object) -> object:
            self._busy.discard(d)
            return result

        return d.addBoth(done)

    def _log_failure(self, failure: Failure, what: str) -> None:
        if not self._stopping:
            self.log.failure("etcd processor: {what} failed", failure, what=what)


def build(config: Any, bridge_id: str, reactor: Any,
          endpoints_ready: EndpointsReady | None = None, **_: Any) -> EtcdProcessor:
    """Registry entry (bridge.processors.BUILTIN): `config` is the bridge config or its
    ``[etcd]`` section."""
    return EtcdProcessor(getattr(config, "etcd", config), bridge_id, reactor,
                         endpoints_ready=endpoints_ready)
