"""The bridge's appliers over the rules, as the etcd processor writes them today.

The session writer (bridge/processors/etcdwriter.py), the name index (nameindex.py)
and the sweeper (sweep.py), with every decision a call of a rule. Each piece of work is
a generator that yields one etcd call at a time (a tuple: its kind, then its
arguments) and receives the answer, so that tests/rules_sim.py decides how work
interleaves, where it is cut off, and which answers are lost.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge import documents as docs
from bridge.documents import parse_ioc
from bridge.etcd.ops import Entry, Guarded
from bridge.model import IOCIdentity, KeptRun, Peer, Record
from bridge.rules import liveness, names, uploads
from bridge.rules.names import Claim
from bridge.rules.txn import found
from tests.rules_kv import KEYS, Facts

#: Records per run (the bridge cuts 1,000; small here so uploads have several runs).
RUN = 2
#: Read-plan-write rounds of the name index before it gives up (as today).
MAX_ATTEMPTS = 20

#: How often each interesting thing happened, over every run (to see what tests exercise).
STATS: Counter[str] = Counter()

Call = tuple[Any, ...]
Work = Generator[Call, Any, Any]


class Stuck(Exception):
    """Name-index entries kept changing for MAX_ATTEMPTS rounds."""


class Refused(Exception):
    """etcd failed a session's work (the store's StoreError): the server closes the session."""


# -- the name index, applied ---------------------------------------------------------------


def converge(
    names_: list[str], plan: Callable[[list[str], dict[str, Entry], Facts], list[Guarded]]
) -> Work:
    todo = names_
    for _ in range(MAX_ATTEMPTS):
        if not todo:
            return
        raws, facts = yield ("read", [KEYS.pv(n) for n in todo])
        planned = plan(todo, raws, facts)
        STATS["entries shared"] += sum(1 for g in planned if g.also)
        failed = yield ("guarded", planned, facts)
        STATS["entry conflicts"] += len(failed)
        todo = [item.tag for item in failed]
    if todo:
        raise Stuck(todo)


def claim(iocid: str, claims: Iterable[Claim]) -> Work:
    wanted = {c.name: c for c in claims}
    fresh, rest = names.split_fresh(wanted.values())
    todo = [c.name for c in rest]
    if fresh:
        failed = yield ("guarded", names.creations(KEYS, iocid, fresh))
        todo += [item.tag for item in failed]
    shared: list[str] = []

    def plan(todo: list[str], raws: dict[str, Entry], facts: Facts) -> list[Guarded]:
        p = names.plan_claim(KEYS, iocid, [wanted[n] for n in todo], raws, facts)
        shared.extend(p.shared)
        return p.writes

    yield from converge(todo, plan)
    if shared:
        yield ("write", [names.shared_mark(KEYS, iocid, shared[0])])


def confirm(iocid: str, claims: Sequence[Claim]) -> Work:
    todo = yield ("unequal", names.confirmations(KEYS, iocid, claims))
    if todo:
        yield from claim(iocid, todo)


def unclaim(iocid: str, released: Iterable[str]) -> Work:
    yield from converge(
        list(dict.fromkeys(released)),
        lambda todo, raws, facts: names.plan_unclaim(KEYS, iocid, todo, raws, facts),
    )


def hand_over(iocid: str) -> Work:
    mark = yield ("get", [KEYS.shared(iocid)])
    if not mark:
        return
    STATS["hand-over of a marked IOC"] += 1
    records = yield ("scan", KEYS.records_prefix(iocid))
    expected, todo = names.hand_over_confirmations(KEYS, iocid, [r.value for r in records])
    todo += yield ("unequal", expected)
    yield from converge(
        list(dict.fromkeys(todo)),
        lambda todo, raws, facts: names.plan_hand_over(KEYS, iocid, todo, raws, facts),
    )


# -- sessions, applied ---------------------------------------------------------------------


def digest(records: Sequence[Record]) -> str:
    """A run's digest: over what the IOC sent (never over the iocid)."""
    text = repr([(r.name, r.rtype, r.aliases, r.desc) for r in records])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(eq=False)
class Session:
    """The writer's per-session state (etcdwriter._Session), plus the IOC's script."""

    bridge: Bridge
    ioc: int
    identity: IOCIdentity
    peer: Peer
    db: list[Record]
    #: etcd fails the upload's beginning (after the writer registered the session).
    begin_fails: bool = False
    #: The writer knows the session (its first transaction is being applied).
    registered: bool = False
    #: Its first transaction (the upload's beginning) is being applied.
    beginning: bool = False
    alive: bytes = b""
    connected: str = ""
    doc: dict[str, Any] = field(default_factory=dict)
    existing: dict[str, uploads.Stored] = field(default_factory=dict)
    claimed: set[int] = field(default_factory=set)
    tracks_claims: bool = False
    begun: bool = False
    ended: bool = False
    #: The connection is gone (its end is queued behind the work already received).
    disconnected: bool = False
    #: Only the end remains: every earlier transaction is applied (`EtcdWriter.closing`).
    closing: bool = False
    records: int = 0
    aliases: int = 0
    skipping: bool = False
    stored: uploads.StoredUpload | None = None
    index_trusted: bool = False
    digests: list[str] = field(default_factory=list)
    kept_names: list[int] = field(default_factory=list)
    kept_aliases: list[int] = field(default_factory=list)
    withdrew: bool = False
    #: Runs arrive as kept runs against these (the server asked `known_runs`).
    known: tuple[str, ...] | None = None
    finished: bool = False

    @property
    def iocid(self) -> str:
        return self.identity.iocid


@dataclass(eq=False)
class Bridge:
    name: str
    lease: int = 0
    running: bool = False
    stopping: bool = False
    handing_over: bool = False
    last: bool = False
    #: Sessions the writer knows (``_sessions``).
    sessions: list[Session] = field(default_factory=list)
    #: Every connection, known to the writer yet or not.
    connections: list[Session] = field(default_factory=list)
    #: iocid -> the latest session that took it (the writer's ``_by_iocid``).
    by_iocid: dict[str, Session] = field(default_factory=dict)

    def serves(self, iocid: str) -> bool:
        return iocid in self.by_iocid

    def forget(self, session: Session) -> None:
        self.sessions.remove(session)
        self.connections.remove(session)
        if self.by_iocid.get(session.iocid) is session:
            del self.by_iocid[session.iocid]


class Appliers:
    """The writer's and the sweeper's work; `World` supplies time and bookkeeping."""

    #: Digests of complete uploads -> the records they describe.
    uploaded: dict[tuple[str, ...], list[Record]]
    #: iocids a worker death left half written, until their next complete upload.
    dirty: set[str]
    #: iocid -> its document when the session's end was refused because the alive key
    #: had gone with the bridge's lease (issue 11, finding 6: nothing else ends it).
    lost_ends: dict[str, bytes]
    #: iocid -> the document its session put back with its alive key (`liveness.retake`).
    retaken: dict[str, bytes]

    def now(self) -> str:
        raise NotImplementedError

    # -- the writer, applied -----------------------------------------------------------------

    def _document(self, s: Session, status: str, uploaded: str | None = None) -> dict[str, Any]:
        ident = s.identity
        return docs.ioc_document(
            iocid=ident.iocid, status=status, hostname=ident.hostname, iocname=ident.iocname,
            ip=s.peer.host, port=s.peer.port, env={}, bridge_id=s.bridge.name,
            connected=s.connected, uploaded=uploaded, disconnected=None, records=s.records,
            aliases=s.aliases,
        )  # fmt: skip

    def _register_session(self, s: Session) -> None:
        """The first transaction: the writer's `_session` (identity, collisions)."""
        bridge = s.bridge
        holder = bridge.by_iocid.get(s.identity.iocid)
        state = liveness.Holder.NONE
        if holder is not None:
            state = liveness.Holder.CLOSING if holder.closing else liveness.Holder.LIVE
        s.identity, _ = liveness.session_identity(s.identity, s.peer, state)
        s.registered = True
        bridge.sessions.append(s)
        bridge.by_iocid[s.identity.iocid] = s

    def begin(self, s: Session) -> Work:
        self._register_session(s)
        s.beginning = True
        if s.begin_fails:
            yield ("get", [])
            raise Refused(s.iocid)
        found = yield ("get", [KEYS.ioc(s.iocid), KEYS.shared(s.iocid)])
        raw = found.get(KEYS.ioc(s.iocid))
        stored = uploads.stored_upload(raw.value if raw else None, KEYS.shared(s.iocid) in found)
        if stored is not None:
            s.skipping, s.stored, s.index_trusted = True, stored, stored.index_trusted
        else:
            yield from self._load_existing(s)
        s.connected = self.now()
        s.alive = docs.dumps(docs.alive_document(s.bridge.name, s.connected))
        s.doc = self._document(s, docs.STATUS_UPLOADING)
        yield ("acquire", s)
        doc = docs.dumps(s.doc)
        yield ("leased", lambda lease: liveness.begin(KEYS, s.iocid, doc, s.alive, lease))
        s.begun, s.beginning = True, False
        yield ("release", s)
        s.known = s.stored.digests if s.skipping and s.stored else None  # known_runs

    def _load_existing(self, s: Session) -> Work:
        entries = yield ("scan", KEYS.records_prefix(s.iocid))
        s.existing = {KEYS.split(e.key)[2]: uploads.stored(e.value) for e in entries}
        s.tracks_claims = bool(s.existing)

    def run(self, s: Session, index: int, records: list[Record]) -> Work:
        """One run arrives: kept when its digest is the known one at its index."""
        d = digest(records)
        if s.withdrew:  # DelRecord switched runs off: records only, no digests
            yield from self._store(s, records)
            return
        if s.known is not None and index < len(s.known) and s.known[index] == d:
            run = KeptRun(index, d, [r.name for r in records], [r.rtype for r in records],
                          [a for r in records for a in r.aliases],
                          [i for i, r in enumerate(records) for _ in r.aliases])  # fmt: skip
            STATS["run kept"] += 1
            yield from self._keep(s, run)
        else:
            yield from self._store(s, records)
        s.digests.append(d)

    def _store(self, s: Session, records: list[Record]) -> Work:
        if s.skipping:
            yield from self._leave_fast_path(s)
        items = [(r, docs.record_value(r, s.iocid)) for r in records]
        s.records += len(records)
        s.aliases += sum(len(r.aliases) for r in records)
        plan = uploads.plan_records(KEYS, s.iocid, items, s.existing)
        for name in plan.seen:
            s.existing.pop(name, None)
        if s.tracks_claims:
            s.claimed.update(map(uploads.name_hash, plan.claimed))
        yield ("write", plan.puts)
        yield from claim(s.iocid, plan.claims)
        if not s.index_trusted:
            yield from confirm(s.iocid, plan.unchanged)
        gone = uploads.unclaimable(plan.dropped, s.claimed)
        if gone:
            yield from unclaim(s.iocid, gone)

    def _keep(self, s: Session, run: KeptRun) -> Work:
        assert s.stored is not None and uploads.run_matches(s.stored, run)
        s.records += len(run.names)
        s.aliases += len(run.aliases)
        if not s.index_trusted:
            yield from confirm(s.iocid, uploads.kept_claims(run))
        if s.skipping:
            s.kept_names.extend(map(uploads.name_hash, run.names))
            s.kept_aliases.extend(map(uploads.name_hash, run.aliases))
            return
        for name in run.names:
            s.existing.pop(name, None)
        if s.tracks_claims:
            s.claimed.update(map(uploads.name_hash, [*run.names, *run.aliases]))

    def _leave_fast_path(self, s: Session) -> Work:
        STATS["fast path left"] += 1
        s.skipping = False
        yield from self._load_existing(s)
        kept = set(s.kept_names)
        for name in [n for n in s.existing if uploads.name_hash(n) in kept]:
            del s.existing[name]
        if s.tracks_claims:
            s.claimed.update(kept)
            s.claimed.update(s.kept_aliases)
        s.kept_names, s.kept_aliases = [], []

    def withdraw(self, s: Session, removed: list[str]) -> Work:
        if s.skipping:
            yield from self._leave_fast_path(s)
        s.withdrew = True
        found = yield ("get", [KEYS.record(s.iocid, n) for n in removed])
        w = uploads.plan_withdrawal(KEYS, s.iocid, removed, found)
        for name in removed:
            s.existing.pop(name, None)
        s.records = max(0, s.records - w.records)
        s.aliases = max(0, s.aliases - w.aliases)
        s.claimed.difference_update(map(uploads.name_hash, w.names))
        yield ("write", w.deletes)
        yield from unclaim(s.iocid, w.names)

    def finish(self, s: Session) -> Work:
        if (
            s.skipping
            and s.stored
            and not uploads.unchanged_at_end(s.stored, len(s.digests), s.records)
        ):
            yield from self._leave_fast_path(s)
        stale, s.existing = s.existing, {}
        if stale:
            yield ("write", [(KEYS.record(s.iocid, n).encode(), None) for n in stale])
            gone = uploads.unclaimable(uploads.stale_names(stale), s.claimed)
            if gone:
                yield from unclaim(s.iocid, gone)
        s.claimed, s.tracks_claims = set(), False
        s.kept_names, s.kept_aliases = [], []
        s.doc = self._document(s, docs.STATUS_ACTIVE, uploaded=self.now())
        kept = uploads.digests_to_store(s.withdrew, s.digests, s.records)
        s.doc["record_digests"] = kept
        if kept is not None:
            self.uploaded[tuple(kept)] = list(s.db)
        yield from self.put_ioc(s, alive_too=False)
        s.digests, s.skipping, s.withdrew = [], False, False
        s.finished = True
        STATS["upload finished"] += 1
        if s.iocid in self.dirty:
            STATS["dirty IOC uploaded again"] += 1
        self.dirty.discard(s.iocid)

    def put_ioc(self, s: Session, alive_too: bool) -> Generator[Call, Any, bool]:
        yield ("acquire", s)
        if s.ended:
            yield ("release", s)
            return False
        doc = docs.dumps(s.doc)
        result = yield (
            "leased",
            lambda lease: liveness.put_ioc(
                KEYS, s.iocid, doc, s.alive, lease, alive_too=alive_too
            ),
        )
        ok = result.succeeded
        if not ok:
            STATS["put_ioc refused"] += 1
            held, stopping = found(result, 0), s.bridge.stopping
            again = yield (
                "leased",
                lambda lease: liveness.retake(
                    KEYS, s.iocid, doc, s.alive, lease, found=held, stopping=stopping
                ),
            )
            if again is not None:
                STATS["alive key retaken"] += 1
                ok = again.succeeded
                if ok:
                    self.retaken[s.iocid] = doc
        yield ("release", s)
        return bool(ok)

    def end(self, s: Session) -> Work:
        s.closing = True  # the processor is handed the final transaction
        yield ("acquire", s)
        s.ended = True
        txn = liveness.session_end(
            KEYS, s.iocid, s.doc, s.alive, self.now(), handing_over=s.bridge.handing_over
        )
        ok = False
        if txn is not None:
            result = yield ("txn", txn)
            ok = result.succeeded
            STATS["end written" if ok else "end refused"] += 1
            alive, ioc = (None, None) if ok else (found(result, 0), found(result, 1))
            done = ok or liveness.ended(s.bridge.name, s.connected, alive, ioc)
            doc = parse_ioc(ioc) if ioc is not None else None
            if not done and alive is None and doc and doc.connected == s.connected:
                STATS["end lost with the lease"] += 1
                assert ioc is not None
                self.lost_ends[s.iocid] = ioc
            ok = done
        yield ("release", s)
        s.bridge.forget(s)
        if ok:
            yield from hand_over(s.iocid)

    def reassert(self, bridge: Bridge) -> Work:
        for s in [s for s in bridge.sessions if not s.closing and s.begun]:
            yield from self.put_ioc(s, alive_too=True)

    # -- the sweeper, applied ------------------------------------------------------------------

    def mark_dead(self, bridge: Bridge, iocid: str) -> Work:
        if bridge.serves(iocid):
            return
        yield ("mark", iocid)
        found = yield ("get", [KEYS.alive(iocid), KEYS.ioc(iocid)])
        txn = liveness.sweep_dead(
            KEYS, iocid, found.get(KEYS.alive(iocid)), found.get(KEYS.ioc(iocid)), self.now()
        )
        if txn is None:
            return
        ok = (yield ("txn", txn)).succeeded
        STATS["swept" if ok else "sweep refused"] += 1
        if ok:
            yield from hand_over(iocid)

    def resync(self, bridge: Bridge) -> Work:
        alive = yield ("scan", KEYS.alive_prefix())
        iocs = yield ("scan", KEYS.iocs_prefix())
        listed = {KEYS.split(e.key)[-1] for e in alive}
        for iocid in liveness.resync_suspects(KEYS, listed, iocs):
            yield from self.mark_dead(bridge, iocid)

    def sweep_orphans(self, bridge: Bridge) -> Work:
        registered = yield ("scan", KEYS.bridges_prefix())
        alive = yield ("scan", KEYS.alive_prefix())
        leases = {e.lease for e in registered} | {bridge.lease}
        for orphan in liveness.orphans(alive, leases):
            iocid = KEYS.split(orphan.key)[-1]
            yield ("mark", iocid)
            found = yield ("get", [KEYS.ioc(iocid)])
            txn = liveness.sweep_orphan(KEYS, orphan, found.get(KEYS.ioc(iocid)), self.now())
            if txn is not None and (yield ("txn", txn)).succeeded:
                yield from hand_over(iocid)
