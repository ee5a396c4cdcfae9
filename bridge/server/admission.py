"""Admission: which IOC connections the bridge takes, and when they may upload.

`BridgeFactory` holds every policy that spans connections, each in a small method a
subclass can override:

* `refusal`: a new connection is refused at accept (closed at once, counted, logged
  at most once per host and reason per `REFUSAL_LOG_INTERVAL`) while the processors
  are not there yet or etcd refuses writes (`store_refusal`), when its address is not
  in ``[recceiver] allow``, or past ``maxConnections`` or ``maxConnectionsPerHost``.
  An IPv4 peer of a dual-stack (``[::]``) socket is handled as its IPv4 address.
* Upload slots (``maxActive``): every accepted connection is greeted at once; it
  takes a slot only when its ClientGreet arrives (`acquire`, `may_start`). A
  connection that greets while no slot is free for it waits, unread, until
  `release_slot` hands it one (`next_waiting`). So connections that never say
  anything cannot keep honest IOCs from uploading: they hold no slot and are closed
  by ``greetingTimeout``. (The reference RecCeiver took the slot at accept and left
  queued connections ungreeted; a few hundred idle connections then starved every
  IOC.) One source address holds at most ``maxActivePerHost`` slots, and waiting
  connections are served address by address in turn (`bridge.server.slots`), so
  connections from one address cannot keep those from others waiting; a slot-holder
  that does not upload is closed by the session's minimum upload progress.
* Counters (`counters`, shown by `status`): one per limit that refused or ended a
  connection, or skipped something (`count`, `notice`), and ``protocolError``.

* Memory (``maxHeldBytes``): what every connection holds counts against one
  budget (`bridge.server.budget`, `account`), which pauses the largest uploads past
  it and resumes them as room comes back.

It sees every connection (`connections`) with what each has read and holds
(`RecSyncProtocol.bytes_received`, `RecSyncProtocol.bytes_held`).
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import random
import typing
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from bridge.interfaces import IUnchangedRuns
from bridge.model import Peer, Transaction
from bridge.protocol import wire
from bridge.protocol.effects import Notice
from bridge.protocol.runs import RunDecoded
from bridge.protocol.session import Session, SessionLimits, State
from bridge.server.budget import MemoryBudget
from bridge.server.connection import RecSyncProtocol
from bridge.server.slots import Slots

#: Counter of connections refused because the processors are not running yet.
NOT_READY = "notReady"
#: Counter of connections refused because etcd refuses writes (an alarm such as NOSPACE).
ETCD_REFUSES = "etcdRefusesWrites"
#: Seconds during which further refusals of the same host for the same reason are
#: counted but not logged (a connect flood must not flood the log).
REFUSAL_LOG_INTERVAL = 60.0
#: Hosts remembered for that purpose; beyond this the memory is simply cleared.
REFUSAL_LOG_HOSTS = 10_000
#: ``maxHeldBytes`` (`bridge.config.Limits`): what every connection together may hold
#: before reading pauses.
DEFAULT_MAX_HELD_BYTES = 64 << 20

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Committer(typing.Protocol):
    """What the server needs of the processors (see `bridge.interfaces.IProcessor`)."""

    def commit(self, transaction: Transaction) -> Any: ...


class RunsCommitter(Committer, typing.Protocol):
    """Processors that take unchanged runs (`bridge.interfaces.IUnchangedRuns`)."""

    def known_runs(self, session_id: int) -> Sequence[str] | None: ...


def default_share(max_active: int) -> int:
    """Upload slots one source address may hold when ``maxActivePerHost`` is 0: half of
    ``maxActive``, rounded up. One busy address leaves the other half to everyone else,
    and a host that runs many IOCs still uploads after a restart about as fast as with
    every slot (bench/scale.py from one address: a quarter cost a fifth of the rate)."""
    return max(1, -(-max_active // 2))


def _peer_host(protocol: RecSyncProtocol) -> str:
    return protocol.peer.host


class BridgeFactory(ServerFactory):
    """Admission control and shared state for every IOC connection (module docstring).

    `processor` may be None until the processors exist (they need the bound port);
    until it is set every connection is refused.
    """

    log = Logger()
    noisy = False  # one "listening" line comes from the service instead

    def __init__(
        self,
        processor: Committer | None,
        reactor: IReactorTime,
        limits: SessionLimits,
        *,
        max_active: int = 20,
        max_active_per_host: int = 0,
        max_body_length: int = wire.MAX_BODY_LENGTH,
        max_connections: int = 5000,
        max_connections_per_host: int = 100,
        allow: Sequence[Network] = (),
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
        nonce: Callable[[], int] | None = None,
        store_refusal: Callable[[], str | None] | None = None,
    ) -> None:
        self.processor = processor
        self.reactor = reactor
        self.limits = limits
        self.max_active = max_active
        self.max_active_per_host = max_active_per_host or default_share(max_active)
        self.max_body_length = max_body_length
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.allow = tuple(allow)
        #: Why the store cannot take uploads now (etcd refuses writes), or None.
        self.store_refusal = store_refusal
        # Ping nonces only have to differ from one Ping to the next: a generator seeded
        # once from the OS. Reading the OS's source is a system call that lets go of the
        # interpreter lock, and the reactor thread then waits behind busy worker
        # threads to get it back (seen in the scale profile: one Ping per upload).
        rng = random.Random(random.SystemRandom().getrandbits(64))
        self.nonce: Callable[[], int] = nonce or (lambda: rng.getrandbits(32))
        self._ids = itertools.count(1)
        self.connections: set[RecSyncProtocol] = set()
        self.per_host: collections.Counter[str] = collections.Counter()
        #: Upload slots: who holds them, and the connections waiting for one.
        self.queue: Slots[RecSyncProtocol] = Slots(
            max_active, self.max_active_per_host, _peer_host
        )
        self.counters: collections.Counter[str] = collections.Counter()
        #: Transactions handed to the processors and not completed yet.
        self.pending_commits = 0
        #: Times a session stopped reading because its commits were behind (metrics).
        self.backpressure_pauses = 0
        self.budget: MemoryBudget[RecSyncProtocol] = MemoryBudget(
            max_held_bytes,
            RecSyncProtocol.budget_pause,
            RecSyncProtocol.budget_resume,
            self.grant_waiting,
        )
        self._granting = False
        #: (host, counter) -> [time of the last logged refusal, refusals not logged since].
        self._refusals: dict[tuple[str, str], list[float]] = {}
        #: Refusals that are the bridge's state, not the peer's: logged once until it ends.
        self._refused_once: set[str] = set()

    def now(self) -> float:
        return self.reactor.seconds()

    # -- accepting connections ---------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> RecSyncProtocol | None:
        peer = Peer(_host(getattr(addr, "host", str(addr))), getattr(addr, "port", 0))
        refusal = self.refusal(peer)
        if refusal is not None:
            self.refuse(peer, *refusal)
            return None
        session = Session(next(self._ids), peer, self.limits, self.nonce)
        protocol = RecSyncProtocol(self, session)
        self.connections.add(protocol)
        self.per_host[peer.host] += 1
        return protocol

    def refusal(self, peer: Peer) -> tuple[str, str] | None:
        """Why a new connection from `peer` is refused, as (counter, reason), or None."""
        if self.processor is None:
            return NOT_READY, "the bridge is starting (its processors are not running yet)"
        refused = self.store_refusal() if self.store_refusal is not None else None
        if refused is not None:
            return ETCD_REFUSES, refused
        self._refused_once.discard(ETCD_REFUSES)
        if self.allow and not _allowed(peer.host, self.allow):
            return "allow", "address not in [recceiver] allow"
        if len(self.connections) >= self.max_connections:
            return "maxConnections", f"maxConnections={self.max_connections} reached"
        if self.per_host[peer.host] >= self.max_connections_per_host:
            limit = self.max_connections_per_host
            return "maxConnectionsPerHost", f"maxConnectionsPerHost={limit} reached"
        return None

    def refuse(self, peer: Peer, counter: str, why: str) -> None:
        """Count a refusal; log it, but at most one line per host and reason per
        `REFUSAL_LOG_INTERVAL`; one in all while the bridge is starting, and one while
        etcd refuses writes."""
        self.counters[counter] += 1
        if counter in (NOT_READY, ETCD_REFUSES):
            if counter not in self._refused_once:
                self._refused_once.add(counter)
                self.log.warn(
                    "{peer} connection refused: {why} (further refusals for this reason "
                    "are counted, not logged)",
                    peer=peer,
                    why=why,
                )
            return
        now = self.now()
        entry = self._refusals.get((peer.host, counter))
        if entry is not None and now - entry[0] < REFUSAL_LOG_INTERVAL:
            entry[1] += 1
            return
        if len(self._refusals) >= REFUSAL_LOG_HOSTS:
            self._refusals.clear()
        more = int(entry[1]) if entry is not None else 0
        self._refusals[(peer.host, counter)] = [now, 0]
        if more:
            why += f" ({more} more from {peer.host} not logged)"
        self.log.warn("{peer} connection refused: {why}", peer=peer, why=why)

    def unchanged_runs(self) -> RunsCommitter | None:
        """The processor, if it takes unchanged runs (`IUnchangedRuns`), else None."""
        processor = self.processor
        if processor is not None and IUnchangedRuns.providedBy(processor):
            return typing.cast(RunsCommitter, processor)
        return None

    # -- upload slots ----------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Upload slots taken."""
        return self.queue.active

    def acquire(self, protocol: RecSyncProtocol, held: list[RunDecoded]) -> bool:
        """An upload slot for a connection that just greeted: True if it has one now.

        Otherwise it waits, unread, with `held` (the messages that came in the same
        read after its ClientGreet) until `release_slot` activates it.
        """
        if self.may_start(protocol):
            self.queue.take(protocol)
            protocol.activate()
            return True
        protocol.wait_for_slot(held)
        self.queue.wait(protocol)
        return False

    def may_start(self, protocol: RecSyncProtocol) -> bool:
        """Whether `protocol`, which just greeted, gets a slot at once (else it waits):
        a slot is free, its address holds less than its share, and the memory budget
        lets a new upload start."""
        return self.queue.free_for(protocol.peer.host) and self.budget.allows_upload()

    def release_slot(self, protocol: RecSyncProtocol) -> None:
        """`protocol`'s slot came free: hand slots on to the connections waiting."""
        self.queue.release(protocol)
        self.grant_waiting()

    def grant_waiting(self) -> None:
        """Hand every slot that is free now to the connections waiting (`next_waiting`)."""
        if self._granting:
            return  # the loop below, further up the stack, hands the slot on
        self._granting = True
        try:
            while (waiting := self.next_waiting()) is not None:
                self.queue.take(waiting)
                waiting.activate()
        finally:
            self._granting = False

    def next_waiting(self) -> RecSyncProtocol | None:
        """The waiting connection that gets a slot free now (removed from the queue):
        the next source address in turn that is under its share gives its oldest, if
        the memory budget lets a new upload start."""
        if not self.queue or not self.budget.allows_upload():
            return None
        while (protocol := self.queue.next()) is not None:
            if protocol in self.connections:
                return protocol
        return None

    @property
    def has_room(self) -> bool:
        """True if an IOC connecting now from an address holding no slot would get one
        at once."""
        return self.queue.active < self.max_active

    # -- connections ending, counters, status -------------------------------------------------

    def account(self, protocol: RecSyncProtocol) -> None:
        """`protocol` may hold another amount now (`MemoryBudget.update`)."""
        self.budget.update(protocol, protocol.bytes_held, protocol.reading_upload)

    def forget(self, protocol: RecSyncProtocol) -> None:
        """`protocol`'s connection is gone."""
        self.budget.forget(protocol)
        if protocol in self.connections:
            self.connections.discard(protocol)
            host = protocol.peer.host
            self.per_host[host] -= 1
            if self.per_host[host] <= 0:
                del self.per_host[host]
        self.queue.remove(protocol)

    def connections_or_commits(self) -> bool:
        """True while any connection is open or any transaction awaits the processors."""
        return bool(self.connections) or self.pending_commits > 0

    def count(self, counter: str) -> None:
        """A connection was ended by the limit `counter` (or ``protocolError``)."""
        self.counters[counter] += 1

    def notice(self, peer: Peer, notice: Notice) -> None:
        """Count a session's `Notice` under its limit, if any, and log it (once: the
        session gives each kind of notice once)."""
        if notice.limit is not None:
            self.counters[notice.limit] += 1
        self.log.warn("{peer} {text}", peer=peer, text=notice.text)

    def status(self) -> dict[str, Any]:
        """Figures for the periodic status line: connections, IOCs whose upload is
        stored and which stay connected (``active_iocs``, the IOC status "active"),
        uploads holding a slot and their limit (``maxActive``), uploads queued for a
        slot, and the limit counters."""
        live = sum(
            1 for p in self.connections if p.session.state is State.LIVE and not p.holds_slot
        )
        return {
            "connections": len(self.connections),
            "active_iocs": live,
            "uploading": self.active,
            "max_uploading": self.max_active,
            "queued": len(self.queue),
            "queued_hosts": self.queue.waiting_hosts,
            "max_uploading_per_host": self.max_active_per_host,
            "held_bytes": self.budget.total,
            "max_held_bytes": self.budget.limit,
            "paused_by_budget": self.budget.paused,
            "budget_pauses": self.budget.pauses,
            **{f"limit_{k}": v for k, v in sorted(self.counters.items())},
        }


def _host(host: str) -> str:
    """A peer's address as it is configured and shown: an IPv4 peer of a dual-stack
    socket (``::ffff:10.1.2.3``) as its IPv4 address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host


def _allowed(host: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)
