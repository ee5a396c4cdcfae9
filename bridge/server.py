"""Twisted glue for the RecSync TCP port: framing, admission and commit pipelining.

`RecSyncProtocol` only moves bytes: it feeds the `wire.Decoder`, hands messages
to its `session.Session` and carries out the effects. Policy that spans
connections (upload slots, connection limits, the allow-list, counters) lives in
`BridgeFactory`.

Admission: every accepted connection is greeted at once; an upload slot
(``maxActive``) is taken only when the ClientGreet arrives. A connection that
greets while every slot is busy waits, unread, in a FIFO queue. So connections
that never say anything cannot keep honest IOCs from uploading: they hold no
slot and are closed by ``greetingTimeout``. (The reference RecCeiver took the
slot at accept and left queued connections ungreeted; a few hundred idle
connections then starved every IOC.)

Backpressure: a session may have at most `MAX_INFLIGHT` transactions waiting
for the processors. Beyond that the protocol stops reading from the IOC, so a
slow or unreachable etcd holds the data in the IOC's socket, not in our memory.

Unchanged re-uploads: when the processors can take unchanged runs of records
without the records (`bridge.interfaces.IUnchangedRuns`, the etcd processor), the
decoder cuts each upload into runs (`wire.Decoder.start_runs`). It stops in front
of the first record, or, if the client infos so far do not name the IOC yet, at the
end of the first run. The protocol then commits the upload's start (the client infos
so far), pauses reading until every commit so far is done, asks the processors which
run digests they hold for the IOC, and hands them to the decoder. Runs that match
are never decoded.

Every connection a limit or a protocol error ends gives one log line naming the
peer and increments one of `BridgeFactory.counters` (shown in the status line).
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import math
import random
import typing
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge import wire
from bridge.errors import StoreError
from bridge.interfaces import IUnchangedRuns
from bridge.model import Peer, Transaction, derive_identity
from bridge.session import Close, Commit, Effect, Notice, Send, Session, SessionLimits, State

#: Transactions of one session queued for the processors before reading pauses.
MAX_INFLIGHT = 2
#: Counter for connections closed because the peer broke the protocol.
PROTOCOL_ERROR = "protocolError"
#: Seconds during which further refusals of the same host for the same reason are
#: counted but not logged (a connect flood must not flood the log).
REFUSAL_LOG_INTERVAL = 60.0
#: Hosts remembered for that purpose; beyond this the memory is simply cleared.
REFUSAL_LOG_HOSTS = 10_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Committer(typing.Protocol):
    """What the server needs of the processors (see `bridge.interfaces.IProcessor`)."""

    def commit(self, transaction: Transaction) -> Any: ...


class RecSyncProtocol(Protocol):
    """One IOC connection."""

    log = Logger()

    def __init__(self, factory: BridgeFactory, session: Session) -> None:
        self.factory = factory
        self.session = session
        self.decoder = wire.Decoder(factory.max_body_length)
        self.holds_slot = False
        self.bytes_received = 0
        self._timer: IDelayedCall | None = None
        self._chain: Deferred[None] = succeed(None)
        self._inflight = 0
        self._failed = False
        self._paused = False
        self._closing = False
        #: Messages decoded after the ClientGreet while waiting for an upload slot.
        self._held: list[wire.Decoded] | None = None
        #: Runs (module docstring): cut once the upload has its slot; waiting for the
        #: commits before asking for digests.
        self._cut_runs = factory.cuts_runs
        self._awaiting_runs = False

    @property
    def _io(self) -> Any:
        """The TCP transport (an ITCPTransport and IPushProducer once connected)."""
        assert self.transport is not None
        return self.transport

    @property
    def peer(self) -> Peer:
        return self.session.peer

    @property
    def reading_paused(self) -> bool:
        """Reading is paused because commits are behind (not waiting for a slot)."""
        return self._paused and self._held is None

    # -- Twisted hooks ------------------------------------------------------------

    def connectionMade(self) -> None:
        # Greet at once (pyreccaster waits for it); the upload slot comes with ClientGreet.
        self._apply(self.session.start(self.factory.now()))

    def wait_for_slot(self, held: list[wire.Decoded]) -> None:
        """Queued by the factory: read nothing more until `activate`; keep `held`."""
        self._held = held
        self._paused = True
        self._io.pauseProducing()
        self.session.pause(self.factory.now())
        self._cancel_timer()  # no deadline runs while waiting; `activate` re-arms

    def activate(self) -> None:
        """Called by the factory when this connection gets an upload slot."""
        self.holds_slot = True
        held, self._held = self._held, None
        if held is None or self._closing:
            return
        self._paused = False
        self._io.resumeProducing()
        self.session.resume(self.factory.now())
        self._deliver(held)
        self._decode(b"")  # what arrived while waiting was held undecoded

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.bytes_received += len(data)
        if self._held is not None:
            # Waiting for a slot: only bytes read before the pause arrive here. Keep them
            # raw; decoded they would cost several times more memory (bench/scale.py).
            self.decoder.hold(data)
            return
        self._decode(data)

    def _decode(self, data: bytes) -> None:
        if self._cut_runs and self.holds_slot:
            self._cut_runs = False
            self.decoder.start_runs(self.session.digest_seed, self.session.limits.max_aliases)
        # Until this connection holds a slot, decode no further than its ClientGreet.
        waiting = not self.holds_slot and self.session.state is State.GREETING
        try:
            messages = self.decoder.feed(data, wire.ClientGreet if waiting else None)
        except wire.FramingError as error:
            self._deliver(error.decoded)
            limit = "maxBodyLength" if "the limit is" in str(error) else PROTOCOL_ERROR
            self._drop(str(error), limit)
            return
        self._deliver(messages)
        if self.decoder.awaiting and not self._awaiting_runs and not self._closing:
            self._ask_for_runs()
        elif waiting and self.holds_slot and self.decoder.buffered and not self._closing:
            self._decode(b"")  # got a slot at once: decode the rest of the read

    def _ask_for_runs(self) -> None:
        """Store the upload's start, then ask for the digests to expect.

        In front of the first record if the client infos so far name the IOC (the C
        RecCaster sends them all first), else at the end of the first run.
        """
        if (
            self.decoder.before_records
            and not derive_identity(self.session.client_infos, self.peer).stable
        ):
            self.decoder.wait_for_first_run()
            self._decode(b"")
            return
        self._awaiting_runs = True
        self._apply(self.session.begin_records(self.factory.now()))
        if not self._paused:
            self._pause()
        self._chain.addCallback(lambda _: self._runs_known()).addErrback(self._runs_failed)

    def _runs_failed(self, failure: Failure) -> None:
        # A bug, not the peer's fault; the commit chain must go on (the final commit).
        self.log.failure("{peer} could not look up the stored runs", failure, peer=self.peer)
        self._drop("internal error while looking up the stored runs")

    def _runs_known(self) -> None:
        """(After every commit so far) hand the stored digests to the decoder, read on."""
        self._awaiting_runs = False
        if self._closing or self._failed:
            return
        self.decoder.expect(self.factory.processor.known_runs(self.session.session_id))
        if self._paused and self._inflight < MAX_INFLIGHT and self._held is None:
            self._resume()
        self._decode(b"")

    def _deliver(self, messages: list[wire.Decoded]) -> None:
        """Hand messages to the session; the first ClientGreet needs an upload slot."""
        if self._held is not None:
            self._held.extend(messages)  # only bytes already read before the pause
            return
        if not self.holds_slot and self.session.state is State.GREETING:
            for i, message in enumerate(messages):
                if isinstance(message, wire.ClientGreet):
                    self._apply(self.session.receive(messages[: i + 1], self.factory.now()))
                    messages = messages[i + 1 :]
                    if self._greeted() and not self.factory.acquire(self, messages):
                        return
                    break
        self._apply(self.session.receive(messages, self.factory.now()))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self._apply(self.session.connection_lost(reason.getErrorMessage()))
        self._release_slot()
        self.factory.forget(self)

    # -- effects --------------------------------------------------------------------

    def _greeted(self) -> bool:
        """True when the session has just accepted a ClientGreet (and is not closing)."""
        return self.session.state is State.UPLOADING and not self._closing

    def _apply(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                if not self._closing:
                    self._io.write(effect.data)
            elif isinstance(effect, Commit):
                self._commit(effect.transaction)
            elif isinstance(effect, Notice):
                # A limit that closes the connection is logged once, by the Close.
                closing = any(isinstance(e, Close) and e.reason == effect.text for e in effects)
                self.factory.notice(self.peer, effect, log=not closing)
            elif isinstance(effect, Close):
                limited = any(
                    isinstance(e, Notice) and e.limit and e.text == effect.reason for e in effects
                )
                self._drop(effect.reason, None if limited else PROTOCOL_ERROR)
        if not self.session.uploading and not self.session.upload_finished_at:
            self._release_slot()
        self._arm_timer()

    def shutdown(self) -> None:
        """Close this session because the bridge stops (its final commit still runs)."""
        if self.holds_slot or self.session.upload_started_at is not None:
            self._drop("bridge shutting down")
        else:
            self._closing = True
            self._io.abortConnection()

    def _drop(self, reason: str, counter: str | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        if counter is not None:
            self.factory.counters[counter] += 1
        self.log.warn("{peer} closing connection: {reason}", peer=self.peer, reason=reason)
        self._io.loseConnection()

    def _commit(self, txn: Transaction) -> None:
        self._inflight += 1
        self.factory.pending_commits += 1
        if self._inflight >= MAX_INFLIGHT and not self._paused and txn.connected:
            self.factory.backpressure_pauses += 1
            self._pause()
        self._chain.addCallback(lambda _: self._run_commit(txn))

    def _run_commit(self, txn: Transaction) -> Deferred[None]:
        if self._failed and txn.connected:
            # After a failed commit only the final (disconnect) transaction runs: a later
            # batch must never let the IOC turn active with records missing.
            self._committed(txn)
            return succeed(None)
        d: Deferred[None] = maybeDeferred(self.factory.processor.commit, txn)
        d.addCallbacks(lambda _: self._committed(txn), lambda f: self._commit_failed(txn, f))
        return d

    def _committed(self, txn: Transaction) -> None:
        self._inflight -= 1
        self.factory.pending_commits -= 1
        if (
            self._paused
            and self._inflight < MAX_INFLIGHT
            and not self._closing
            and self._held is None
            and not self._awaiting_runs
        ):
            self._resume()
        if txn.upload_done:
            self._log_upload()
            self._release_slot()

    def _commit_failed(self, txn: Transaction, failure: Failure) -> None:
        self._failed = True
        if isinstance(failure.value, StoreError):  # etcd away longer than max_outage
            self.log.warn(
                "{peer} could not store transaction {seq}: {error}",
                peer=self.peer,
                seq=txn.seq,
                error=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "{peer} could not store transaction {seq}", failure, peer=self.peer, seq=txn.seq
            )
        self._committed(txn)
        self._drop("storing the upload failed; the IOC will re-upload when it reconnects")

    def _pause(self) -> None:
        self._paused = True
        self._io.pauseProducing()
        self.session.pause(self.factory.now())

    def _resume(self) -> None:
        self._paused = False
        self._io.resumeProducing()
        self.session.resume(self.factory.now())
        self._arm_timer()

    def _log_upload(self) -> None:
        s = self.session
        if s.upload_started_at is None or s.upload_finished_at is None:
            return
        took = max(self.factory.now() - s.upload_started_at, 1e-6)
        self.log.info(
            "{peer} uploaded {records} records, {kb:.1f} kB in {took:.3f} s",
            peer=self.peer,
            records=s.records_total,
            kb=self.bytes_received / 1e3,
            took=took,
        )

    # -- slots and timers -------------------------------------------------------------

    def _release_slot(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.factory.release_slot()

    def _arm_timer(self) -> None:
        deadline = self.session.deadline
        if deadline is None or math.isinf(deadline) or self._closing:
            # Paused (backpressure, or waiting for a slot): `_resume`/`activate` re-arm.
            self._cancel_timer()
            return
        delay = max(0.0, deadline - self.factory.now())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.factory.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._apply(self.session.tick(self.factory.now()))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class BridgeFactory(ServerFactory):
    """Admission control and shared state for every IOC connection."""

    log = Logger()
    noisy = False  # one "listening" line comes from the service instead

    def __init__(
        self,
        processor: Committer,
        reactor: IReactorTime,
        limits: SessionLimits,
        *,
        max_active: int = 20,
        max_body_length: int = wire.MAX_BODY_LENGTH,
        max_connections: int = 5000,
        max_connections_per_host: int = 100,
        allow: Sequence[Network] = (),
        nonce: Callable[[], int] | None = None,
    ) -> None:
        self.processor = processor
        self.reactor = reactor
        self.limits = limits
        self.max_active = max_active
        self.max_body_length = max_body_length
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.allow = tuple(allow)
        # Ping nonces only have to differ from one Ping to the next: a generator seeded
        # once from the OS. Reading the OS's source is a system call that lets go of the
        # interpreter lock, and the reactor thread then waits behind busy worker
        # threads to get it back (seen in the scale profile: one Ping per upload).
        rng = random.Random(random.SystemRandom().getrandbits(64))
        self.nonce: Callable[[], int] = nonce or (lambda: rng.getrandbits(32))
        self._ids = itertools.count(1)
        self.connections: set[RecSyncProtocol] = set()
        self.per_host: collections.Counter[str] = collections.Counter()
        self.active = 0
        self.queue: collections.deque[RecSyncProtocol] = collections.deque()
        self.counters: collections.Counter[str] = collections.Counter()
        self.pending_commits = 0
        #: Times a session stopped reading because its commits were behind (metrics).
        self.backpressure_pauses = 0
        self._granting = False
        #: (host, counter) -> [time of the last logged refusal, refusals not logged since].
        self._refusals: dict[tuple[str, str], list[float]] = {}

    def now(self) -> float:
        return self.reactor.seconds()

    @property
    def cuts_runs(self) -> bool:
        """The processors take unchanged runs without their records (module docstring).

        A stand-in for processors built later says what it stands for with `resolved`.
        """
        resolve = getattr(self.processor, "resolved", None)
        processor = resolve() if resolve is not None else self.processor
        return processor is not None and IUnchangedRuns.providedBy(processor)

    def buildProtocol(self, addr: IAddress | None) -> RecSyncProtocol | None:
        peer = Peer(getattr(addr, "host", str(addr)), getattr(addr, "port", 0))
        refusal = self._refusal(peer)
        if refusal is not None:
            self.counters[refusal[0]] += 1
            self._log_refusal(peer, *refusal)
            return None
        session = Session(next(self._ids), peer, self.limits, self.nonce)
        protocol = RecSyncProtocol(self, session)
        self.connections.add(protocol)
        self.per_host[peer.host] += 1
        return protocol

    def _refusal(self, peer: Peer) -> tuple[str, str] | None:
        if self.allow and not _allowed(peer.host, self.allow):
            return "allow", "address not in [recceiver] allow"
        if len(self.connections) >= self.max_connections:
            return "maxConnections", f"maxConnections={self.max_connections} reached"
        if self.per_host[peer.host] >= self.max_connections_per_host:
            limit = self.max_connections_per_host
            return "maxConnectionsPerHost", f"maxConnectionsPerHost={limit} reached"
        return None

    def _log_refusal(self, peer: Peer, counter: str, why: str) -> None:
        """One line per refusal, but at most one per host and reason per interval."""
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

    def acquire(self, protocol: RecSyncProtocol, held: list[wire.Decoded]) -> bool:
        """An upload slot for a connection that just greeted: True if it has one now.

        Otherwise it waits, unread, in the FIFO queue with `held` (the messages that
        came in the same read after its ClientGreet) until `release_slot` activates it.
        """
        if self.active < self.max_active and not self.queue:
            self.active += 1
            protocol.activate()
            return True
        protocol.wait_for_slot(held)
        self.queue.append(protocol)
        return False

    def release_slot(self) -> None:
        self.active -= 1
        assert self.active >= 0, "upload slot released twice"
        if self._granting:
            return  # the loop below, further up the stack, hands the slot on
        self._granting = True
        try:
            while self.queue and self.active < self.max_active:
                protocol = self.queue.popleft()
                if protocol in self.connections:
                    self.active += 1
                    protocol.activate()
        finally:
            self._granting = False

    def forget(self, protocol: RecSyncProtocol) -> None:
        if protocol in self.connections:
            self.connections.discard(protocol)
            host = protocol.peer.host
            self.per_host[host] -= 1
            if self.per_host[host] <= 0:
                del self.per_host[host]
        if protocol in self.queue:
            self.queue.remove(protocol)

    def connections_or_commits(self) -> bool:
        """True while any connection is open or any transaction awaits the processors."""
        return bool(self.connections) or self.pending_commits > 0

    def notice(self, peer: Peer, notice: Notice, log: bool = True) -> None:
        if notice.limit is not None:
            self.counters[notice.limit] += 1
        if log:
            self.log.warn("{peer} {text}", peer=peer, text=notice.text)

    def status(self) -> dict[str, Any]:
        """Figures for the periodic status line."""
        return {
            "connections": len(self.connections),
            "active": self.active,
            "queued": len(self.queue),
            "max_active": self.max_active,
            **{f"limit_{k}": v for k, v in sorted(self.counters.items())},
        }


def _allowed(host: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)
