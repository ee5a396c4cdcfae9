"""The per-connection RecSync session: a state machine free of I/O.

The server feeds it decoded messages and clock ticks; it answers with effects
(`Send`, `Commit`, `Close`, `Notice`) that the server carries out. Time comes in
as ``now`` arguments (seconds), randomness through an injected nonce source.

States (docs/protocol.md, A session)::

    GREETING --ClientGreet--> UPLOADING --UploadDone--> LIVE
        \\                         |                      |
         +-------------------------+----------------------+--> CLOSED
           (greeting/upload deadline, missed Pong, bad Pong, protocol error, EOF)

What each message does in each state is one table, `DISPATCH` (the grid ``_GRID``
below the class); no handler looks at the state again:

* GREETING: the ServerGreet is sent at once (pyreccaster waits for it); a
  record or info before ClientGreet is a protocol error, a Pong is checked.
* UPLOADING: records are collected and cut into `Transaction` values at record
  boundaries, so a record with its aliases and infos is never split. When the
  decoder cuts runs (`runs.RunDecoder.start_runs`), a run found unchanged arrives as
  one `runs.UnchangedRun` and is committed as a `KeptRun` at once, and every run's
  digest goes with the next transaction.
* LIVE: after UploadDone only Pongs matter; further uploads are not part of the
  protocol and are skipped with one notice.
* Minimum upload progress: while UPLOADING, every ``upload_rate_window`` seconds of
  upload time the peer must have sent ``min_upload_rate`` bytes a second of whole
  frames (`received`), or the session closes. An honest client sends its whole upload at
  once (docs/protocol.md, A session), so only a peer that trickles to keep an upload
  slot is closed; time the bridge paused reading (waiting for a slot, backpressure)
  is not upload time, as for ``upload_timeout``.
* Keepalive (docs/protocol.md, Keepalive and timeouts): after ``tcptimeout``
  seconds without any message a Ping is sent; if the next ``tcptimeout`` passes
  with that Ping unanswered, the session closes. A Ping also goes out right after
  UploadDone. While the server has paused reading (backpressure) the silence timer
  does not run.

What the server does with the effects is the session/server contract,
`bridge.protocol.effects`: a `Close` carries the limit it enforces, or None when the
peer broke the protocol, so the server counts and logs each effect on its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.model import DESC_INFO_KEY, KeptRun, Peer, Record, Transaction
from bridge.protocol import names, runs, wire
from bridge.protocol.effects import Close, Commit, Effect, Notice, Send
from bridge.protocol.names import NameLimits


class State(enum.Enum):
    """Where a session is (the diagram above); a column of `DISPATCH` each."""

    GREETING = "greeting"
    UPLOADING = "uploading"
    LIVE = "live"
    CLOSED = "closed"


# Looking a member up on an Enum class costs about 0.1 us; the per-message path
# compares against this instead.
_CLOSED = State.CLOSED


#: Records per transaction when ``commitSizeLimit`` is 0.
DEFAULT_BATCH_RECORDS = 1000

# What a session holds, estimated from above (`Session.bytes_held`): bytes per record
# beyond its text (the Record, its list and dict, its str headers, the session's own
# indexes of it), per alias or info (two str headers, a list or dict slot), and per
# name of a kept run (str header, list slots, the record id). Measured with
# tracemalloc on fakeioc uploads at about 410, 60-100 and 120 bytes; text counts one
# byte a character, as for the ASCII and Latin-1 text IOCs send.
RECORD_COST = 450
ITEM_COST = 110
KEPT_NAME_COST = 150


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Timers and bounds of one session (from ``[recceiver]`` configuration)."""

    tcptimeout: float = 15.0
    greeting_timeout: float = 20.0
    upload_timeout: float = 600.0
    #: Minimum upload progress (`Session.received`): bytes per second the peer must
    #: send while uploading, judged over every `upload_rate_window` seconds of upload
    #: time (time paused by the bridge not counted); 0 turns it off.
    min_upload_rate: float = 1000.0
    upload_rate_window: float = 5.0
    #: Records per transaction; bounds what one session holds before committing.
    batch_records: int = DEFAULT_BATCH_RECORDS
    #: Approximate text bytes per transaction (huge info tags cut batches early).
    batch_bytes: int = 1 << 20
    #: Age after which a non-empty batch is cut at the next record boundary.
    commit_interval: float = 5.0
    max_records: int = 200_000
    max_infos: int = 1000
    #: Aliases of one record; more are skipped (a real record has a handful).
    max_aliases: int = 1000
    #: Text held for one record (name, type, aliases, infos), and for the client-wide
    #: infos together, counted in characters (at most the bytes received); more is
    #: skipped. etcd could not store more anyway (etcdwriter.MAX_RECORD_BYTES), and it
    #: bounds what a peer can make a session hold between two record boundaries.
    max_record_bytes: int = 1 << 20
    #: What the client-wide infos (the IOC's environment) may hold together: their keys
    #: and values, counted in characters, plus `ITEM_COST` for each. They are held for
    #: the whole connection, also after the upload, so this bounds what idle connections
    #: hold: `maxConnections` of them at most this much each.
    max_client_info_bytes: int = 16 << 10
    #: UTF-8 bytes of the names a peer sends (`NameLimits`).
    names: NameLimits = field(default_factory=NameLimits)


class Session:
    """One IOC connection's protocol state. Not thread safe; owned by its protocol."""

    def __init__(
        self,
        session_id: int,
        peer: Peer,
        limits: SessionLimits,
        nonce: Callable[[], int],
    ) -> None:
        self.session_id = session_id
        self.peer = peer
        self.limits = limits
        self._nonce = nonce
        self.state = State.GREETING
        #: What each message type does in the current state (`DISPATCH`, `_enter`).
        self._handlers = DISPATCH[State.GREETING]
        self.client_infos: dict[str, str] = {}
        self.records_total = 0
        self.started_at = 0.0
        self.upload_started_at: float | None = None
        self.upload_finished_at: float | None = None
        self._seq = 0
        self._pending: list[Record] = []
        self._pending_bytes = 0
        #: Aliases and infos of the pending records, and an estimate of what the kept
        #: runs since the last cut hold (`bytes_held`).
        self._pending_items = 0
        self._kept_bytes = 0
        self._pending_since: float | None = None
        self._by_rid: dict[int, Record] = {}
        #: Text bytes held per record id in `_by_rid`, and for `client_infos`.
        self._record_bytes: dict[int, int] = {}
        self._client_bytes = 0
        #: Id of the last record skipped (`NameLimits`): its aliases and infos follow it.
        self._skipped_rid: int | None = None
        # Names of at most this many characters fit their limit whatever they hold (UTF-8
        # takes at most 4 bytes a character): the per-message path checks no further.
        lengths = limits.names
        self._name_sure = lengths.record_name // 4
        self._type_sure = lengths.record_type // 4
        self._key_sure = lengths.info_key // 4
        self._committed_names = names.NameLog()
        self._removed: list[str] = []
        #: Runs (`runs.RunDecoder.start_runs`) ended since the last cut.
        self._kept: list[KeptRun] = []
        self._digests: list[str] = []
        self._last_heard = 0.0
        self._ping_nonce: int | None = None
        self._paused_at: float | None = None
        self._paused_total = 0.0
        #: Minimum upload progress: bytes received in the current window, and the
        #: upload time (`_upload_time`) at which the window started.
        self._window_bytes = 0
        self._window_start = 0.0
        self._noticed: set[str] = set()

    # -- inputs ---------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        """The connection is accepted and this session may upload: greet at once."""
        self.started_at = now
        self._last_heard = now
        return [Send(wire.ServerGreet(0).encode())]

    def receive(self, messages: Iterable[runs.RunDecoded], now: float) -> list[Effect]:
        """Handle messages decoded from the peer, in order (`DISPATCH`); nothing after
        a `Close`."""
        effects: list[Effect] = []
        for message in messages:
            if self.state is _CLOSED:
                break
            self._last_heard = now
            effects += self._handlers[type(message)](self, message, now)
        return effects

    def tick(self, now: float) -> list[Effect]:
        """Run the timers; call at or after `deadline`."""
        if self.state is State.CLOSED:
            return []
        if self.state is State.GREETING and now >= self.started_at + self.limits.greeting_timeout:
            return self._close(
                f"no ClientGreet within {self.limits.greeting_timeout:g} s",
                limit="greetingTimeout",
            )
        if self.state is State.UPLOADING and now >= self._upload_deadline():
            return self._close(
                f"upload not finished within {self.limits.upload_timeout:g} s",
                limit="uploadTimeout",
            )
        if self.state is State.UPLOADING and now >= self._window_deadline():
            too_slow = self._judge_window(now)
            if too_slow:
                return too_slow
        if self._paused_at is not None or now < self._last_heard + self.limits.tcptimeout:
            return []
        if self._ping_nonce is not None:
            return self._close(f"no Pong within {self.limits.tcptimeout:g} s", limit="tcptimeout")
        self._last_heard = now
        return [self._ping()]

    def begin_records(self, now: float) -> list[Effect]:
        """Commit what the upload has so far, if nothing was committed yet.

        The server calls this before the first run is compared (`runs.RunDecoder`), so
        that the processors have seen the IOC's identity (its client-wide infos) and
        can say which run digests they hold (`bridge.interfaces.IUnchangedRuns`).
        """
        if self.state is not State.UPLOADING or self._seq:
            return []
        return self._cut(now)

    def flush(self, now: float) -> list[Effect]:
        """Commit the records that are complete (all but the one in progress, which may
        still get aliases and infos), so that what they hold goes to the processors.

        The server calls this when it stops reading for the memory budget: the records
        would otherwise stay here until reading goes on.
        """
        if self.state is not State.UPLOADING or len(self._pending) < 2:
            return []
        last = self._pending.pop()
        # What the record in progress holds stays with it; the rest goes in the cut.
        last_bytes = self._record_bytes.get(last.rid, 0)
        last_items = 1 + len(last.aliases) + len(last.infos) + (last.desc is not None)
        self._pending_bytes -= last_bytes
        self._pending_items -= last_items
        effects = self._cut(now)
        self._pending = [last]
        self._pending_bytes, self._pending_items = last_bytes, last_items
        self._pending_since = now
        self._by_rid = {last.rid: last}
        self._record_bytes = {last.rid: last_bytes}
        return effects

    @property
    def digest_seed(self) -> bytes:
        """Goes into every run digest: the limits that decide what a run's records hold.

        Change the version whenever the records built from the same frames, or what a
        processor stores of them, would differ (so no old digest matches).
        """
        limits, lengths = self.limits, self.limits.names
        return (
            f"recsync-bridge runs 2 infos={limits.max_infos} "
            f"aliases={limits.max_aliases} bytes={limits.max_record_bytes} "
            f"name={lengths.record_name} type={lengths.record_type} key={lengths.info_key}"
        ).encode()

    def received(self, size: int) -> None:
        """The server decoded `size` bytes of the peer's frames (minimum upload progress:
        a frame counts once it is whole, so a partial frame held back is no progress)."""
        self._window_bytes += size

    def pause(self, now: float) -> None:
        """The server stopped reading from the peer (backpressure): stop the silence timer."""
        if self._paused_at is None:
            self._paused_at = now

    def resume(self, now: float) -> None:
        """The server reads from the peer again: the silence timer starts afresh."""
        if self._paused_at is not None:
            self._paused_total += now - self._paused_at
            self._paused_at = None
            self._last_heard = now

    def connection_lost(self, reason: str) -> list[Effect]:
        """The transport is gone. Returns the final `Commit` if anything was committed."""
        self._enter(State.CLOSED)
        self._pending = []
        self._pending_bytes = self._pending_items = self._kept_bytes = 0
        self._by_rid = {}
        self._record_bytes = {}
        self._committed_names.clear()
        return self._final(reason)

    # -- queries ----------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """The next time `tick` has something to do, or None."""
        if self.state is State.CLOSED:
            return None
        silence = None
        if self._paused_at is None:
            silence = self._last_heard + self.limits.tcptimeout
        if self.state is State.GREETING:
            bound = self.started_at + self.limits.greeting_timeout
        elif self.state is State.UPLOADING:
            bound = min(self._upload_deadline(), self._window_deadline())
        else:
            return silence
        return bound if silence is None else min(bound, silence)

    @property
    def bytes_held(self) -> int:
        """An upper-bound estimate of the bytes this session holds: the records not yet
        committed, the kept runs since the last commit, the names of the records
        committed in this upload (for DelRecord) and the client-wide infos.

        A transaction, once cut, is no longer counted here; `Commit.size` carries it.
        """
        return (
            self._pending_cost()
            + self._committed_names.nbytes
            + self._client_bytes
            + ITEM_COST * len(self.client_infos)
        )

    def _pending_cost(self) -> int:
        """The estimate for what the next transaction will hold (`bytes_held`)."""
        return (
            self._pending_bytes
            + RECORD_COST * len(self._pending)
            + ITEM_COST * self._pending_items
            + self._kept_bytes
        )

    @property
    def uploading(self) -> bool:
        """True while the session holds an upload slot (greeting or uploading)."""
        return self.state in (State.GREETING, State.UPLOADING)

    # -- handlers: the cells of `DISPATCH`; none looks at the state ---------------

    def _greet(self, message: wire.ClientGreet, now: float) -> list[Effect]:
        self._enter(State.UPLOADING)
        self.upload_started_at = now
        self._window_bytes = 0
        self._window_start = 0.0
        return []

    def _greet_again(self, message: wire.ClientGreet, now: float) -> list[Effect]:
        return self._notice_once("greet", "second ClientGreet ignored")

    def _pong(self, message: wire.Pong, now: float) -> list[Effect]:
        if self._ping_nonce is None:
            return []
        if message.nonce != self._ping_nonce:
            return self._close(
                f"Pong nonce 0x{message.nonce:08x} does not match Ping 0x{self._ping_nonce:08x}"
            )
        self._ping_nonce = None
        return []

    def _add_record(self, message: wire.AddRecord, now: float) -> list[Effect]:
        if message.atype == wire.ATYPE_ALIAS:
            return self._add_alias(message)
        effects = self._cut(now) if self._batch_full(now) else []
        if self.records_total >= self.limits.max_records:
            return effects + self._close(
                f"upload exceeds maxRecords={self.limits.max_records}", limit="maxRecords"
            )
        rid, name, rtype = message.rid, message.name, message.rtype
        if len(name) > self._name_sure or len(rtype) > self._type_sure:
            problem = names.record_problem(self.limits.names, name, rtype)
            if problem is not None:
                self._skipped_rid = rid
                return effects + self._skip(problem)
        record = Record(rid, name, rtype)
        self.records_total += 1
        self._pending.append(record)
        self._pending_items += 1
        self._by_rid[rid] = record
        size = len(name) + len(rtype)
        self._record_bytes[rid] = size
        self._pending_bytes += size
        if self._pending_since is None:
            self._pending_since = now
        return effects

    def _add_alias(self, message: wire.AddRecord) -> list[Effect]:
        record = self._by_rid.get(message.rid)
        if record is None:
            if message.rid == self._skipped_rid:
                return []
            return self._notice_once("alias-rid", f"alias for unknown record id {message.rid}")
        if len(message.name) > self._name_sure:
            problem = names.alias_problem(self.limits.names, message.name)
            if problem is not None:
                return self._skip(problem)
        if len(record.aliases) >= self.limits.max_aliases:
            return self._notice_once(
                "maxAliases",
                f"record {names.short(record.name)} exceeds maxAliases={self.limits.max_aliases}; "
                "further aliases skipped",
                limit="maxAliases",
            )
        if not self._record_fits(record, len(message.name)):
            return self._record_too_big(record)
        record.add_alias(message.name)
        self._pending_bytes += len(message.name)
        self._pending_items += 1
        return []

    def _add_info(self, message: wire.AddInfo, now: float) -> list[Effect]:
        rid, key, value = message.rid, message.key, message.value
        if len(key) > self._key_sure:
            problem = names.info_key_problem(self.limits.names, key)
            if problem is not None:
                return self._skip(problem)
        if rid == 0:
            return self._client_info(message)
        record = self._by_rid.get(rid)
        if record is None:
            if rid == self._skipped_rid:
                return []
            return self._notice_once("info-rid", f"info for unknown record id {rid}")
        infos = record.infos
        limits = self.limits
        if len(infos) >= limits.max_infos and key not in infos:
            return self._notice_once(
                "maxInfos-record",
                f"record {names.short(record.name)} exceeds maxInfos={limits.max_infos}; "
                "further infos skipped",
                limit="maxInfos",
            )
        # A key sent again replaces its value: only growth counts.
        desc = key == DESC_INFO_KEY
        old = record.desc if desc else infos.get(key)
        size = len(key) + len(value) if old is None else len(value) - len(old)
        held = self._record_bytes[rid] + size
        if held > limits.max_record_bytes:
            return self._record_too_big(record)
        self._record_bytes[rid] = held
        if desc:
            record.desc = value
        else:
            infos[key] = value
        self._pending_bytes += size
        self._pending_items += 1
        return []

    def _client_info(self, message: wire.AddInfo) -> list[Effect]:
        infos = self.client_infos
        if message.key in names.IDENTITY_KEYS:
            problem = names.identity_problem(
                self.limits.names, infos, self.peer, message.key, message.value
            )
            if problem is not None:
                setting, reason = problem
                return self._close(reason, limit=setting)
        if message.key not in infos and len(infos) >= self.limits.max_infos:
            return self._notice_once(
                "maxInfos-client",
                f"client-wide infos exceed maxInfos={self.limits.max_infos}; further ones skipped",
                limit="maxInfos",
            )
        # Only growth counts: pyreccaster sends every client-wide info again after each
        # record (docs/protocol.md, pyreccaster), and a value sent again replaces the
        # one held.
        old = infos.get(message.key)
        if old is not None and old == message.value:
            return []
        size = len(message.value) - (len(old) if old is not None else -len(message.key))
        held = self._client_bytes + size + ITEM_COST * (len(infos) + (old is None))
        if held > self.limits.max_client_info_bytes:
            return self._notice_once(
                "maxClientInfoBytes",
                f"client-wide infos exceed maxClientInfoBytes={self.limits.max_client_info_bytes}"
                "; further ones skipped",
                limit="maxClientInfoBytes",
            )
        self._client_bytes += size
        infos[message.key] = message.value
        return []

    def _skip(self, problem: names.Problem) -> list[Effect]:
        """Something named too long is skipped: one notice per limit."""
        setting, text = problem
        return self._notice_once(setting, text, limit=setting)

    def _record_fits(self, record: Record, size: int) -> bool:
        held = self._record_bytes.get(record.rid, 0) + size
        if held > self.limits.max_record_bytes:
            return False
        self._record_bytes[record.rid] = held
        return True

    def _record_too_big(self, record: Record) -> list[Effect]:
        return self._notice_once(
            "maxRecordBytes",
            f"record {names.short(record.name)} exceeds {self.limits.max_record_bytes} bytes; "
            "further aliases and infos skipped",
            limit="maxRecordBytes",
        )

    def _del_record(self, message: wire.DelRecord, now: float) -> list[Effect]:
        record = self._by_rid.pop(message.rid, None)
        self._record_bytes.pop(message.rid, None)
        if record is not None:
            self._pending.remove(record)
            return []
        name = self._committed_names.pop(message.rid)
        if name is None:
            return self._notice_once("del-rid", f"DelRecord for unknown record id {message.rid}")
        self._removed.append(name)
        return []

    def _upload_done(self, message: wire.UploadDone, now: float) -> list[Effect]:
        effects = self._cut(now, upload_done=True)
        self._enter(State.LIVE)
        self.upload_finished_at = now
        self._committed_names.clear()
        if self._ping_nonce is None:
            # Pinging at once keeps clients with a short reccastTimeout alive
            # (docs/protocol.md, Keepalive and timeouts).
            effects.append(self._ping())
        return effects

    def _unchanged_run(self, message: runs.UnchangedRun, now: float) -> list[Effect]:
        if self.records_total + len(message.names) > self.limits.max_records:
            return self._close(
                f"upload exceeds maxRecords={self.limits.max_records}", limit="maxRecords"
            )
        self.records_total += len(message.names)
        for rid, name in zip(message.rids, message.names, strict=True):
            self._committed_names.add(rid, name)
        self._kept_bytes += (
            KEPT_NAME_COST * (len(message.names) + len(message.aliases))
            + sum(map(len, message.names))
            + sum(map(len, message.aliases))
        )
        self._kept.append(
            KeptRun(
                message.index,
                message.digest,
                message.names,
                message.rtypes,
                message.aliases,
                message.alias_of,
            )
        )
        self._digests.append(message.digest)
        return self._cut(now)

    def _run_end(self, message: runs.RunEnd, now: float) -> list[Effect]:
        self._digests.append(message.digest)
        return []

    def _skipped(self, message: wire.Skipped, now: float) -> list[Effect]:
        return self._notice_once(
            f"skip-{message.msgid}-{message.limit}",
            f"skipped message: {message.reason}",
            limit=message.limit,
        )

    def _server_message(self, message: wire.ServerGreet | wire.Ping, now: float) -> list[Effect]:
        return self._close(f"peer sent a server-to-client message 0x{message.msgid:04x}")

    def _before_greet(self, message: runs.RunDecoded, now: float) -> list[Effect]:
        return self._close(f"{_upload_message(message)} before ClientGreet")

    def _after_upload(self, message: runs.RunDecoded, now: float) -> list[Effect]:
        what = _upload_message(message)
        return self._notice_once(f"late-{what}", f"{what} after UploadDone ignored")

    def _ignore(self, message: runs.RunDecoded, now: float) -> list[Effect]:
        return []

    # -- helpers ----------------------------------------------------------------

    def _enter(self, state: State) -> None:
        """Every change of state goes through here, so the handlers follow it."""
        self.state = state
        self._handlers = DISPATCH[state]

    def _batch_full(self, now: float) -> bool:
        if not self._pending:
            return False
        limits = self.limits
        if len(self._pending) >= limits.batch_records or self._pending_bytes >= limits.batch_bytes:
            return True
        assert self._pending_since is not None
        return now - self._pending_since >= limits.commit_interval

    def _cut(self, now: float, upload_done: bool = False) -> list[Effect]:
        size = self._pending_cost() + ITEM_COST * len(self.client_infos)
        records = self._pending
        for record in records:
            self._committed_names.add(record.rid, record.name)
        txn = Transaction(
            session_id=self.session_id,
            peer=self.peer,
            seq=self._seq,
            client_infos=dict(self.client_infos),
            records=tuple(records),
            removed=tuple(self._removed),
            kept=tuple(self._kept),
            digests=tuple(self._digests),
            upload_done=upload_done,
        )
        self._seq += 1
        self._pending = []
        self._pending_bytes = 0
        self._pending_items = 0
        self._kept_bytes = 0
        self._pending_since = None
        self._by_rid = {}
        self._record_bytes = {}
        self._removed = []
        self._kept = []
        self._digests = []
        return [Commit(txn, size)]

    def _final(self, reason: str) -> list[Effect]:
        if self._seq <= 0:
            # Nothing was ever committed (or the final went out already): nothing to end.
            self._seq = -1
            return []
        txn = Transaction(
            session_id=self.session_id,
            peer=self.peer,
            seq=self._seq,
            client_infos=dict(self.client_infos),
            connected=False,
            reason=reason,
        )
        self._seq = -1
        return [Commit(txn)]

    def _close(self, reason: str, limit: str | None = None) -> list[Effect]:
        self._enter(State.CLOSED)
        return [Close(reason, limit), *self._final(reason)]

    def _notice_once(self, kind: str, text: str, limit: str | None = None) -> list[Effect]:
        if kind in self._noticed:
            return []
        self._noticed.add(kind)
        return [Notice(text, limit)]

    def _ping(self) -> Send:
        self._ping_nonce = self._nonce() & 0xFFFFFFFF
        return Send(wire.Ping(self._ping_nonce).encode())

    def _upload_time(self, now: float) -> float:
        """Seconds since ClientGreet that the bridge was reading (not paused)."""
        assert self.upload_started_at is not None
        return now - self.upload_started_at - self._paused_total

    def _window_deadline(self) -> float:
        """When the current minimum-progress window ends (inf while paused, or off)."""
        limits = self.limits
        if self._paused_at is not None or limits.min_upload_rate <= 0:
            return float("inf")
        assert self.upload_started_at is not None
        end = self._window_start + limits.upload_rate_window
        return self.upload_started_at + self._paused_total + end

    def _judge_window(self, now: float) -> list[Effect]:
        """A window ended: close if the peer sent too little in it, else start the next."""
        limits = self.limits
        needed = limits.min_upload_rate * limits.upload_rate_window
        if self._window_bytes < needed:
            return self._close(
                f"upload too slow: {self._window_bytes} bytes in "
                f"{limits.upload_rate_window:g} s, minUploadRate={limits.min_upload_rate:g} "
                "bytes/s",
                limit="minUploadRate",
            )
        self._window_bytes = 0
        self._window_start = self._upload_time(now)
        return []

    def _upload_deadline(self) -> float:
        assert self.upload_started_at is not None
        paused = self._paused_total
        if self._paused_at is not None:
            return float("inf")
        return self.upload_started_at + self.limits.upload_timeout + paused


def _upload_message(message: runs.RunDecoded) -> str:
    """The wire message's name, for a log line (an unchanged run stands for records)."""
    return "AddRecord" if type(message) is runs.UnchangedRun else type(message).__name__


#: A cell of `DISPATCH`: a `Session` method taking the message of its row.
Handler = Callable[["Session", Any, float], list[Effect]]

_S = Session  # short, so that the grid reads as one
# fmt: off
#: What each message does in each state: the protocol in one grid. A row per type the
#: decoders give (`runs.RunDecoded`), a column per state a message can arrive in.
_GRID: Final[dict[type, tuple[Handler, Handler, Handler]]] = {
    #                   GREETING            UPLOADING            LIVE
    wire.ClientGreet:  (_S._greet,          _S._greet_again,     _S._greet_again),
    wire.Pong:         (_S._pong,           _S._pong,            _S._pong),
    wire.AddRecord:    (_S._before_greet,   _S._add_record,      _S._after_upload),
    wire.AddInfo:      (_S._before_greet,   _S._add_info,        _S._after_upload),
    wire.DelRecord:    (_S._before_greet,   _S._del_record,      _S._after_upload),
    wire.UploadDone:   (_S._before_greet,   _S._upload_done,     _S._after_upload),
    runs.UnchangedRun: (_S._before_greet,   _S._unchanged_run,   _S._after_upload),
    runs.RunEnd:       (_S._ignore,         _S._run_end,         _S._ignore),
    wire.Skipped:      (_S._skipped,        _S._skipped,         _S._skipped),
    wire.ServerGreet:  (_S._server_message, _S._server_message,  _S._server_message),
    wire.Ping:         (_S._server_message, _S._server_message,  _S._server_message),
}
# fmt: on
del _S

#: `_GRID` by state, as `Session.receive` looks it up: state -> message type ->
#: handler. A closed session ignores everything (it takes no more messages anyway).
DISPATCH: Final[dict[State, dict[type, Handler]]] = {
    **{
        state: {kind: row[column] for kind, row in _GRID.items()}
        for column, state in enumerate((State.GREETING, State.UPLOADING, State.LIVE))
    },
    State.CLOSED: dict.fromkeys(_GRID, Session._ignore),
}
