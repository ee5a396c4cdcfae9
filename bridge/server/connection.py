"""One IOC connection: bytes between the transport, the decoder and the session.

`RecSyncProtocol` only moves bytes: it feeds the decoder (`bridge.protocol.runs`),
hands the messages to its `bridge.protocol.session.Session` and carries out the
effects the session returns (`bridge.protocol.effects`: writes, commits to the
processors in order, closes, counted and logged notices). Policy that spans
connections (slots, limits, the allow-list, counters) is its factory's,
`bridge.server.admission.BridgeFactory`.

Upload slot: a connection is greeted at once, and asks its factory for a slot with
its ClientGreet; until it gets one it decodes no further and reads nothing more.
Without a slot (before it, and after the upload) a connection reads `IDLE_READ`
bytes at a time and passes over bodies longer than `IDLE_BODY` unread: an honest
peer sends nothing bigger then (a ClientGreet, Pongs), and every such connection
holds at most a few KiB, however many there are.

Backpressure: a session may have at most `MAX_INFLIGHT` transactions waiting
for the processors. Beyond that the protocol stops reading from the IOC, so a
slow or unreachable etcd holds the data in the IOC's socket, not in our memory.
What a connection holds in all (`RecSyncProtocol.bytes_held`) counts against the
factory's memory budget (`bridge.server.budget`), which may pause its reading too.
Reading resumes only once nothing pauses it (`Pause`).

Unchanged re-uploads: when the processors can take unchanged runs of records
without the records (`bridge.interfaces.IUnchangedRuns`, the etcd processor), the
decoder cuts each upload into runs (`runs.RunDecoder.start_runs`). It stops in front
of the first record, or, if the client infos so far do not name the IOC yet, at the
end of the first run. The protocol then commits the upload's start (the client infos
so far), pauses reading until every commit so far is done, asks the processors which
run digests they hold for the IOC, and hands them to the decoder. Runs that match
are never decoded.

Every connection a limit or a protocol error ends gives one log line naming the
peer and increments one of the factory's counters (shown in the status line).
"""

from __future__ import annotations

import enum
import math
import typing
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.errors import EtcdOutage, StoreError
from bridge.logs import printable
from bridge.model import Peer, Transaction, derive_identity
from bridge.protocol import wire
from bridge.protocol.effects import Close, Commit, Effect, Notice, Send
from bridge.protocol.runs import RunDecoded, RunDecoder
from bridge.protocol.session import Session, State

if typing.TYPE_CHECKING:
    from bridge.server.admission import BridgeFactory

#: Transactions of one session queued for the processors before reading pauses.
MAX_INFLIGHT = 2
#: Counter for connections closed because the peer broke the protocol.
PROTOCOL_ERROR = "protocolError"
#: Bytes read at a time by a connection without an upload slot, and the longest body
#: it decodes (longer ones are passed over unread, counted as `IDLE_BODY_LIMIT`).
IDLE_READ = 4096
IDLE_BODY = 1024
IDLE_BODY_LIMIT = "idleBodyLength"
#: Bytes read at a time with an upload slot: Twisted's default read size.
UPLOAD_READ = 65536


class Pause(enum.Enum):
    """Why a connection does not read; it reads again once no reason is left."""

    SLOT = "waiting for an upload slot"
    INFLIGHT = "transactions waiting for the processors"
    RUNS = "asking the processors for the stored runs"
    BUDGET = "the memory budget"


class RecSyncProtocol(Protocol):
    """One IOC connection (module docstring). Its factory builds it only once it has
    a processor, to which the connection then commits directly."""

    log = Logger()

    def __init__(self, factory: BridgeFactory, session: Session) -> None:
        assert factory.processor is not None, "connections are refused until it is set"
        self.factory = factory
        self.session = session
        self.processor = factory.processor
        #: The same processor if it takes unchanged runs (module docstring), else None.
        self.runs_processor = factory.unchanged_runs()
        # The plain decoder until `start_runs`, which only processors that take
        # unchanged runs ask for (`_cut_runs`).
        self.decoder = RunDecoder(factory.max_body_length)
        self.holds_slot = False
        self.bytes_received = 0
        self._timer: IDelayedCall | None = None
        self._chain: Deferred[None] = succeed(None)
        self._inflight = 0
        #: `Commit.size` of the transactions handed to the processors, not completed.
        self._inflight_bytes = 0
        self._failed = False
        self._pauses: set[Pause] = set()
        self._closing = False
        #: Messages decoded after the ClientGreet while waiting for an upload slot.
        self._held: list[RunDecoded] | None = None
        #: Runs (module docstring): cut once the upload has its slot; waiting for the
        #: commits before asking for digests.
        self._cut_runs = self.runs_processor is not None
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
    def bytes_held(self) -> int:
        """An upper-bound estimate of the bytes this connection holds: undecoded (a
        partial frame, or what came while waiting), the run in progress, the session's
        (`Session.bytes_held`) and the transactions waiting for the processors."""
        return (
            self.decoder.buffered
            + self.decoder.held_cost
            + self.session.bytes_held
            + self._inflight_bytes
        )

    @property
    def reading_upload(self) -> bool:
        """True while this connection holds a slot and its upload is under way: the
        memory budget may pause it."""
        return self.holds_slot and self.session.state is State.UPLOADING and not self._closing

    @property
    def paused_for(self) -> frozenset[Pause]:
        """Why this connection does not read now (empty: it reads)."""
        return frozenset(self._pauses)

    @property
    def reading_paused(self) -> bool:
        """Reading is paused by the bridge (commits behind, runs asked for, the memory
        budget), not because the connection waits for an upload slot."""
        return bool(self._pauses - {Pause.SLOT})

    # -- Twisted hooks ------------------------------------------------------------

    def connectionMade(self) -> None:
        self._idle(True)
        # Greet at once (pyreccaster waits for it); the upload slot comes with ClientGreet.
        self._apply(self.session.start(self.factory.now()))

    def wait_for_slot(self, held: list[RunDecoded]) -> None:
        """Queued by the factory: read nothing more until `activate`; keep `held`."""
        self._held = held
        self._pause(Pause.SLOT)

    def activate(self) -> None:
        """Called by the factory when this connection gets an upload slot."""
        self.holds_slot = True
        self._idle(False)
        held, self._held = self._held, None
        if held is None or self._closing:
            return
        self._unpause(Pause.SLOT)
        self._deliver(held)
        self._decode(b"")  # what arrived while waiting was held undecoded
        self._account()

    def budget_pause(self) -> None:
        """The memory budget stops this connection's reading (`bridge.server.budget`);
        the records it has complete go to the processors meanwhile (`Session.flush`)."""
        self._pause(Pause.BUDGET)
        self._apply(self.session.flush(self.factory.now()))

    def budget_resume(self) -> None:
        self._unpause(Pause.BUDGET)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.bytes_received += len(data)
        if self._held is not None:
            # Waiting for a slot: only bytes read before the pause arrive here. Keep them
            # raw; decoded they would cost several times more memory (bench/scale.py).
            self.decoder.hold(data)
        else:
            self._decode(data)
        self._account()

    def _decode(self, data: bytes) -> None:
        if self._cut_runs and self.holds_slot:
            self._cut_runs = False
            limits = self.session.limits
            self.decoder.start_runs(
                self.session.digest_seed,
                limits.max_aliases,
                limits.names.record_name,
                limits.names.record_type,
            )
        # Until this connection holds a slot, decode no further than its ClientGreet.
        waiting = not self.holds_slot and self.session.state is State.GREETING
        undecoded = self.decoder.buffered
        try:
            messages = self.decoder.feed(data, wire.ClientGreet if waiting else None)
        except wire.FramingError as error:
            self._deliver(error.decoded)
            self._drop(str(error), PROTOCOL_ERROR)
            return
        # Upload progress is what the decoder took out of its buffer: whole frames (and
        # oversize bodies passed over), never a partial frame held back.
        self.session.received(len(data) + undecoded - self.decoder.buffered)
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
        self._pause(Pause.RUNS)
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
        assert self.runs_processor is not None
        self.decoder.expect(self.runs_processor.known_runs(self.session.session_id))
        self._unpause(Pause.RUNS)
        self._decode(b"")
        self._account()

    def _deliver(self, messages: list[RunDecoded]) -> None:
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
                self._commit(effect.transaction, effect.size)
            elif isinstance(effect, Notice):
                self.factory.notice(self.peer, effect)
            elif isinstance(effect, Close):
                self._drop(effect.reason, effect.limit or PROTOCOL_ERROR)
        if not self.session.uploading and self.session.upload_finished_at is None:
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
            self.factory.count(counter)
        self.log.warn("{peer} closing connection: {reason}", peer=self.peer, reason=reason)
        self._io.loseConnection()

    def _commit(self, txn: Transaction, size: int) -> None:
        self._inflight += 1
        self._inflight_bytes += size
        self.factory.pending_commits += 1
        if self._inflight >= MAX_INFLIGHT and txn.connected:
            if Pause.INFLIGHT not in self._pauses:
                self.factory.backpressure_pauses += 1
            self._pause(Pause.INFLIGHT)
        self._chain.addCallback(lambda _: self._run_commit(txn, size))

    def _run_commit(self, txn: Transaction, size: int) -> Deferred[None]:
        if self._failed and txn.connected:
            # After a failed commit only the final (disconnect) transaction runs: a later
            # batch must never let the IOC turn active with records missing.
            self._committed(txn, size)
            return succeed(None)
        d: Deferred[None] = maybeDeferred(self.processor.commit, txn)
        d.addCallbacks(
            lambda _: self._committed(txn, size), lambda f: self._commit_failed(txn, size, f)
        )
        return d

    def _committed(self, txn: Transaction, size: int) -> None:
        self._inflight -= 1
        self._inflight_bytes -= size
        self.factory.pending_commits -= 1
        if self._inflight < MAX_INFLIGHT:
            self._unpause(Pause.INFLIGHT)
        if txn.upload_done:
            self._log_upload()
            self._release_slot()
        self._account()

    def _commit_failed(self, txn: Transaction, size: int, failure: Failure) -> None:
        """One warning naming the peer when etcd refused or stayed away (whatever the peer
        sent, it is data, so a refusal it causes is no bug); a traceback only for a bug."""
        self._failed = True
        self._committed(txn, size)
        error = failure.value
        if isinstance(error, EtcdOutage):
            why = f"etcd did not answer for longer than [etcd] max_outage ({error.reason})"
        elif isinstance(error, StoreError):
            why = f"etcd refused it: {printable(str(error))}"
        else:
            self.log.failure(
                "{peer} could not store transaction {seq}", failure, peer=self.peer, seq=txn.seq
            )
            why = "an internal error (logged above)"
        self._drop(
            f"could not store transaction {txn.seq}: {why}; the IOC uploads again when it "
            "reconnects"
        )

    def _pause(self, reason: Pause) -> None:
        """Stop reading for `reason` (the session's timers that count reading time stop
        too); reading resumes once `_unpause` took every reason away."""
        if not self._pauses:
            self._io.pauseProducing()
            self.session.pause(self.factory.now())
        self._pauses.add(reason)
        self._arm_timer()

    def _unpause(self, reason: Pause) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self._closing:
            self._io.resumeProducing()
            self.session.resume(self.factory.now())
            self._arm_timer()

    def _idle(self, idle: bool) -> None:
        """Read and decode as a connection without an upload slot does, or not."""
        if idle:
            self.decoder.set_body_limit(IDLE_BODY, IDLE_BODY_LIMIT)
        else:
            self.decoder.set_body_limit(self.factory.max_body_length)
        # Twisted's TCP transport reads at most this many bytes a time (a public
        # attribute of its connections); other transports just ignore it.
        self._io.bufferSize = IDLE_READ if idle else UPLOAD_READ

    def _account(self) -> None:
        """Tell the memory budget what this connection holds now."""
        self.factory.account(self)

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
            self._idle(True)
            self.factory.release_slot(self)

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
        # Judge one reactor turn later: a reactor runs its due timers before the reads
        # of the same turn, so after a busy spell the bytes a peer sent meanwhile are
        # read first (the minimum upload progress must not blame the peer for that).
        self._timer = self.factory.reactor.callLater(0, self._tick_now)

    def _tick_now(self) -> None:
        self._timer = None
        self._apply(self.session.tick(self.factory.now()))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
