"""`EtcdWriter`: stores each session's transactions in etcd as data model v1 lays out.

The synchronous core of the etcd processor. `EtcdWriter.apply` blocks on etcd and is
called from worker threads, one transaction of a session at a time, with different
sessions in parallel; state shared between sessions sits behind one lock.

Per session it keeps only what an incremental upload needs: for every record the IOC
had stored when the session began, an 8-byte fingerprint of the stored value and the
alias names (to find its name-index entries again), plus 8-byte hashes of the names
claimed so far in this upload (only if it had records stored: without, nothing is
ever unclaimed). They are loaded only when the upload leaves the fast path below,
and go away when the upload is done.

Unchanged re-uploads (every IOC after a restart of the bridges or of the network) take a
fast path. A complete upload leaves ``record_digests`` in the IOC document: one digest
per run of records, over the frames the IOC sent
(`bridge.protocol.runs.RunDecoder.start_runs` computes them; they arrive in
``Transaction.digests``). When a new upload of the IOC begins, `known_runs` hands the
stored digests to the server if the IOC's last upload completed. Runs whose frames match
arrive as `KeptRun` values instead of records: they are neither read nor written, and
their name-index entries are left alone if the IOC has no shared mark (see nameindex.py:
then the entries are exactly as it left them), or else confirmed (`NameIndex.confirm`:
value compares, no reads). Unchanged records found on the normal path are treated the
same way. The first run that arrives as records (changed), a DelRecord, or a different
run or record count at the end switches the session to the normal path: it loads the
stored fingerprints then, and takes the kept runs' records (remembered by name hash) off
the list of what may be stale. The digests are dropped from the document when an upload
begins, so a partial upload is never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from twisted.logger import Logger

from bridge import documents as docs
from bridge.documents import parse_ioc, record_names
from bridge.errors import LeaseNotFound, StoreError
from bridge.etcd.ops import Compare, Delete, Get, Lease, Put, Write
from bridge.etcd.store import Store
from bridge.logs import printable
from bridge.model import (
    IOCIdentity,
    KeptRun,
    Peer,
    Record,
    Transaction,
    derive_identity,
    fallback_iocid,
    iso_time,
)
from bridge.processors.nameindex import Claim, NameIndex

T = TypeVar("T")

#: Largest record document stored as sent. Bigger ones get their longest info values
#: cut (see `fit_record`), so one huge info tag cannot wedge an IOC's upload forever.
MAX_RECORD_BYTES = 1 << 20
#: Appended to an info value that was cut to fit `MAX_RECORD_BYTES`.
TRUNCATED_MARK = "...[truncated by recsync-bridge]"
#: Stale records deleted (and unclaimed) per step at the end of an upload.
DELETE_STEP = 1000

#: (fingerprint of the stored value, alias names) of one record stored before the upload.
Stored = tuple[bytes, tuple[str, ...]]


def fingerprint(value: bytes) -> bytes:
    """8 bytes that tell an unchanged stored record from a changed one."""
    return hashlib.blake2b(value, digest_size=8).digest()


def name_hash(name: str) -> int:
    """64 bits standing for a name in a session's set of claimed names.

    Python's own string hash: consistent within the process, which is all a
    session needs, and far cheaper than a cryptographic one.
    """
    return hash(name)


def fit_record(record: Record, iocid: str, limit: int = MAX_RECORD_BYTES) -> Record | None:
    """`record` with info values cut until its document fits `limit` bytes.

    Every info value longer than a cap is cut to the cap plus `TRUNCATED_MARK`; the cap
    halves until the document fits. Deterministic, so an unchanged re-upload stays
    unchanged. None if even tiny infos leave it too big (huge aliases or DESC).
    """
    longest = max((len(v) for v in record.infos.values()), default=0)
    cap = longest
    while True:
        infos = {
            key: v if len(v) <= cap else v[:cap] + TRUNCATED_MARK
            for key, v in record.infos.items()
        }
        trial = replace(record, infos=infos)
        if len(docs.record_value(trial, iocid)) <= limit:
            return trial
        if cap == 0:
            return None
        cap //= 2


@dataclass(eq=False, slots=True)
class _Session:
    session_id: int
    peer: Peer
    identity: IOCIdentity
    #: Serialises this session's IOC-document writes with `EtcdWriter.reassert`.
    lock: threading.Lock = field(default_factory=threading.Lock)
    alive: bytes = b""
    connected: str = ""
    env: dict[str, str] = field(default_factory=dict)
    doc: dict[str, Any] = field(default_factory=dict)
    existing: dict[str, Stored] = field(default_factory=dict)
    #: `name_hash` of the names claimed so far in this upload; kept only if the IOC had
    #: records stored when they were loaded (without, nothing is ever unclaimed).
    claimed: set[int] = field(default_factory=set)
    tracks_claims: bool = False
    begun: bool = False
    ended: bool = False
    #: The connection is gone; only the session's end is still to be written.
    closing: bool = False
    records: int = 0
    aliases: int = 0
    written: int = 0
    #: Fast path (module docstring): True while every run so far arrived as a `KeptRun`.
    skipping: bool = False
    stored_digests: list[str] = field(default_factory=list)
    stored_records: int = 0
    #: The IOC's last upload completed and it has no shared mark (nameindex.py): the
    #: index entries of its unchanged records are exactly as it left them.
    index_trusted: bool = False
    #: Digests of this upload's runs so far (``Transaction.digests``).
    digests: list[str] = field(default_factory=list)
    #: While skipping: `name_hash` of each record name and alias of the runs kept so far.
    kept_names: array[int] = field(default_factory=lambda: array("q"))
    kept_aliases: array[int] = field(default_factory=lambda: array("q"))
    #: A DelRecord withdrew records: the digests (over every record sent) would not
    #: describe what is stored, so none are kept for this upload.
    withdrew: bool = False

    @property
    def iocid(self) -> str:
        return self.identity.iocid


class EtcdWriter:
    """Applies `Transaction`s to etcd. See the module docstring for threading.

    Args:
        store: etcd (`bridge.etcd.store.Store`; its outage bound applies to every call).
        keys: the key layout for the configured prefix.
        bridge_id: this bridge's id, written into alive keys and IOC documents.
        lease: returns the bridge's current lease, for alive keys.
        now: seconds since the epoch.
        renew: called (blocking) with a lease etcd no longer knows; returns once the
            bridge holds a new one (then a write that needed the lease is tried again).
    """

    log = Logger()

    def __init__(
        self,
        store: Store,
        keys: docs.Keys,
        bridge_id: str,
        lease: Callable[[], Lease],
        now: Callable[[], float],
        renew: Callable[[Lease], None] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.index = NameIndex(self.store, keys)
        self.bridge_id = bridge_id
        self._lease = lease
        self._renew = renew
        self._now = now
        self._lock = threading.Lock()
        self._sessions: dict[int, _Session] = {}
        self._by_iocid: dict[str, int] = {}
        #: iocid -> session whose disconnect could not be written yet (etcd outage).
        self._unfinished: dict[str, _Session] = {}
        #: The bridge is stopping: no new uploads begin, and an alive key that is gone
        #: is never put back (nobody would remove it again).
        self.stopping = False
        #: The bridge stops and another bridge lives: a session's end writes nothing, so
        #: its alive key expires with the lease and a surviving bridge marks the IOC
        #: inactive after ``grace``, unless the IOC has reconnected elsewhere by then.
        self.handing_over = False

    # -- public ----------------------------------------------------------------------------

    def apply(self, txn: Transaction) -> None:
        """Store one transaction. Raises `StoreError` if etcd could not be updated."""
        if not txn.connected:
            session = self._sessions.get(txn.session_id)
            if session is not None:
                self._end(session)
            return
        session = self._session(txn)
        if not session.begun:
            self._begin(session, txn.client_infos)
        if txn.removed:
            self._withdraw(session, txn.removed)
        if txn.records:
            self._store(session, txn.records)
        for run in txn.kept:
            self._keep(session, run)
        session.digests.extend(txn.digests)
        if txn.upload_done:
            self._finish(session, txn.client_infos)

    def known_runs(self, session_id: int) -> list[str] | None:
        """The run digests of the session's IOC as stored, if its runs may be kept.

        Call it once the session's first transaction is applied (module docstring).
        """
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or not session.skipping:
            return None
        return list(session.stored_digests)

    def serves(self, iocid: str) -> bool:
        """True while one of this writer's sessions (or an unwritten disconnect) has `iocid`."""
        with self._lock:
            return iocid in self._by_iocid or iocid in self._unfinished

    def closing(self, session_id: int) -> None:
        """The session's connection is gone and nothing but its end remains to be written.

        Call it (from any thread, it does not block) as soon as the final transaction
        is handed over: if the IOC reconnects before that end is written (say during an
        etcd outage), the new session takes the IOC's identity instead of being kept
        apart as a duplicate. The old session's end then finds the alive key taken over
        and leaves the IOC alone.
        """
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                session.closing = True

    def reassert(self) -> None:
        """After a new lease: put back every live session's alive key and IOC document."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if not s.closing]
        for session in sessions:
            if session.begun:
                self._put_ioc(session, alive_too=True)

    def retry_unfinished(self) -> None:
        """Write the disconnects that failed during an etcd outage."""
        with self._lock:
            pending = list(self._unfinished.values())
        for session in pending:
            self._end(session)

    # -- session bookkeeping ---------------------------------------------------------------

    def _session(self, txn: Transaction) -> _Session:
        with self._lock:
            session = self._sessions.get(txn.session_id)
            if session is not None:
                return session
            identity = derive_identity(txn.client_infos, txn.peer)
            holder = self._sessions.get(self._by_iocid.get(identity.iocid, -1))
            if holder is not None and holder.closing:
                holder = None  # the IOC reconnected before its old session's end was written
            if holder is not None:
                identity = replace(identity, iocid=fallback_iocid(txn.peer), stable=False)
            session = _Session(txn.session_id, txn.peer, identity)
            self._sessions[txn.session_id] = session
            self._by_iocid[identity.iocid] = txn.session_id
        if holder is not None:
            self.log.warn(
                "{peer} and {other} both identify as IOC {wanted}; keeping them apart: "
                "{peer} is stored as {iocid}",
                peer=txn.peer,
                other=holder.peer,
                wanted=printable(holder.iocid),
                iocid=printable(identity.iocid),
            )
        elif not identity.stable:
            self.log.warn(
                "{peer} sent neither IOCNAME nor IOC: stored as {iocid}, which changes on "
                "every reconnect",
                peer=txn.peer,
                iocid=printable(identity.iocid),
            )
        return session

    def _forget(self, session: _Session, unfinished: bool = False) -> None:
        with self._lock:
            self._sessions.pop(session.session_id, None)
            if self._by_iocid.get(session.iocid) == session.session_id:
                del self._by_iocid[session.iocid]
            if unfinished:
                self._unfinished[session.iocid] = session
            elif self._unfinished.get(session.iocid) is session:
                del self._unfinished[session.iocid]

    def _document(
        self, session: _Session, status: str, uploaded: str | None = None
    ) -> dict[str, Any]:
        """The IOC document from what the session knows (``disconnected`` null)."""
        ident = session.identity
        return docs.ioc_document(
            iocid=ident.iocid,
            status=status,
            hostname=ident.hostname,
            iocname=ident.iocname,
            ip=session.peer.host,
            port=session.peer.port,
            env=session.env,
            bridge_id=self.bridge_id,
            connected=session.connected,
            uploaded=uploaded,
            disconnected=None,
            records=session.records,
            aliases=session.aliases,
        )

    # -- the upload ------------------------------------------------------------------------

    def _begin(self, session: _Session, env: Mapping[str, str]) -> None:
        """Remember what the IOC has stored, then mark it uploading with our alive key."""
        if self.stopping:
            raise StoreError("the bridge is stopping; the IOC will upload elsewhere")
        stored = self._stored_digests(session.iocid)
        if stored is not None:
            session.skipping = True
            session.stored_digests, session.stored_records, shared = stored
            session.index_trusted = not shared
        else:
            self._load_existing(session)
        session.connected = iso_time(self._now())
        session.env = dict(env)
        session.alive = docs.dumps(docs.alive_document(self.bridge_id, session.connected))
        session.doc = self._document(session, docs.STATUS_UPLOADING)
        with session.lock:
            self._leased(
                lambda lease: self.store.txn(
                    [],
                    [
                        Put(self.keys.ioc(session.iocid), docs.dumps(session.doc)),
                        Put(self.keys.alive(session.iocid), session.alive, lease.id),
                    ],
                )
            )
            session.begun = True
        self.log.info(
            "{peer} upload of IOC {iocid} started ({n} records stored before)",
            peer=session.peer,
            iocid=printable(session.iocid),
            n=session.stored_records if session.skipping else len(session.existing),
        )

    def _stored_digests(self, iocid: str) -> tuple[list[str], int, bool] | None:
        """(record digests, record count, shared mark) of the IOC's complete stored
        upload, if there is one."""
        ioc_key, shared_key = self.keys.ioc(iocid), self.keys.shared(iocid)
        found = self.store.get_many([ioc_key, shared_key])
        raw = found.get(ioc_key)
        doc = parse_ioc(raw.value) if raw is not None else None
        if doc is None or doc.record_digests is None or doc.records is None or doc.records < 0:
            return None
        return doc.record_digests, doc.records, shared_key in found

    def _load_existing(self, session: _Session) -> None:
        session.existing = self._load(session.iocid)
        session.tracks_claims = bool(session.existing)

    def _load(self, iocid: str) -> dict[str, Stored]:
        existing: dict[str, Stored] = {}
        for page in self.store.scan(self.keys.records_prefix(iocid)):
            for raw in page.entries:
                parts = self.keys.split(raw.key)
                if len(parts) == 3:
                    names = record_names(raw.value)
                    existing[parts[2]] = (fingerprint(raw.value), tuple(names[1:]))
        return existing

    def _store(self, session: _Session, records: Sequence[Record]) -> None:
        """Write the records that changed (a changed run ends the fast path)."""
        if session.skipping:
            self._leave_fast_path(session)
        items: list[tuple[Record, bytes]] = []
        for record in records:
            items.append((record, self._encode(session, record)))
            session.records += 1
            session.aliases += len(record.aliases)
        self._write_records(session, items)

    def _keep(self, session: _Session, run: KeptRun) -> None:
        """A run sent exactly as stored: count it, and keep its records off the stale list."""
        stored = session.stored_digests
        if run.index >= len(stored) or stored[run.index] != run.digest:
            raise StoreError(
                f"run {run.index} of IOC {session.iocid!r} came as unchanged, "
                "but its digest is not the stored one"
            )
        session.records += len(run.names)
        session.aliases += len(run.aliases)
        if not session.index_trusted:
            names, rtypes = run.names, run.rtypes
            self.index.confirm(
                session.iocid,
                [
                    *(Claim(n, n, t, False, False) for n, t in zip(names, rtypes, strict=True)),
                    *(
                        Claim(a, names[i], rtypes[i], True, False)
                        for a, i in zip(run.aliases, run.alias_of, strict=True)
                    ),
                ],
            )
        if session.skipping:
            # Only their hashes are kept, 8 bytes a name (`_leave_fast_path`).
            session.kept_names.extend(map(name_hash, run.names))
            session.kept_aliases.extend(map(name_hash, run.aliases))
            return
        # Stored exactly as sent: off the stale list, and their names claimed.
        for name in run.names:
            session.existing.pop(name, None)
        if session.tracks_claims:
            session.claimed.update(map(name_hash, run.names))
            session.claimed.update(map(name_hash, run.aliases))

    def _leave_fast_path(self, session: _Session) -> None:
        """Go on the normal path: load the stored fingerprints, account the kept runs."""
        session.skipping = False
        self._load_existing(session)
        kept = set(session.kept_names)
        for name in [n for n in session.existing if name_hash(n) in kept]:
            del session.existing[name]  # stored exactly as sent
        if session.tracks_claims:
            session.claimed.update(kept)
            session.claimed.update(session.kept_aliases)
        session.kept_names, session.kept_aliases = array("q"), array("q")

    def _write_records(self, session: _Session, items: Sequence[tuple[Record, bytes]]) -> None:
        """Write new and changed records, then their claims in the name index."""
        puts: list[Write] = []
        claims: list[Claim] = []
        dropped: list[str] = []
        prefix = self.keys.records_prefix(session.iocid)
        for record, value in items:
            old = session.existing.pop(record.name, None)
            changed = old is None or old[0] != fingerprint(value)
            if changed:
                puts.append(((prefix + docs.encode_component(record.name)).encode(), value))
            if old is not None:
                dropped.extend(a for a in old[1] if a not in record.aliases)
            for name, is_alias in docs.pv_names(record):
                if session.tracks_claims:
                    session.claimed.add(name_hash(name))
                # A name is new to the index unless the IOC stored it before (as this
                # record's name or alias): then it is created without reading first.
                fresh = old is None or (is_alias and name not in old[1])
                claims.append(Claim(name, record.name, record.rtype, is_alias, changed, fresh))
        # Records before claims: an index entry never points at a record not yet stored.
        self.store.write(puts)
        session.written += len(puts)
        self.index.claim(session.iocid, [c for c in claims if c.force or c.fresh])
        if not session.index_trusted:
            self.index.confirm(session.iocid, [c for c in claims if not (c.force or c.fresh)])
        self._unclaim(session, dropped)

    def _encode(self, session: _Session, record: Record) -> bytes:
        value = docs.record_value(record, session.iocid)
        if len(value) <= MAX_RECORD_BYTES:
            return value
        fitted = fit_record(record, session.iocid)
        if fitted is None:
            raise StoreError(
                f"record {record.name!r} of IOC {session.iocid!r} is "
                f"{len(value)} bytes, too big for etcd even without its infos"
            )
        self.log.warn(
            "{peer} IOC {iocid}: record {record} is {size} bytes; info values "
            "were cut to fit etcd's request limit",
            peer=session.peer,
            iocid=printable(session.iocid),
            record=printable(record.name),
            size=len(value),
        )
        return docs.record_value(fitted, session.iocid)

    def _unclaim(self, session: _Session, names: Iterable[str]) -> None:
        """Unclaim names, except those another record of this upload claims."""
        gone = [n for n in names if name_hash(n) not in session.claimed]
        if gone:
            self.index.unclaim(session.iocid, gone)

    def _withdraw(self, session: _Session, removed: Sequence[str]) -> None:
        """Delete records withdrawn by DelRecord (earlier in this upload) and their claims."""
        if session.skipping:
            self._leave_fast_path(session)
        session.withdrew = True
        keys = [self.keys.record(session.iocid, name) for name in removed]
        found = self.store.get_many(keys)
        names: list[str] = []
        for name, key in zip(removed, keys, strict=True):
            session.existing.pop(name, None)
            raw = found.get(key)
            held = [name, *record_names(raw.value)[1:]] if raw is not None else [name]
            if raw is not None:
                session.records = max(0, session.records - 1)
                session.aliases = max(0, session.aliases - (len(held) - 1))
            session.claimed.difference_update(name_hash(n) for n in held)
            names.extend(held)
        self.store.write((key.encode(), None) for key in keys)
        self.index.unclaim(session.iocid, names)

    def _finish(self, session: _Session, env: Mapping[str, str]) -> None:
        """Delete what the IOC no longer has, then mark it active."""
        if session.skipping and (
            len(session.digests) != len(session.stored_digests)
            or session.records != session.stored_records
        ):
            self._leave_fast_path(session)
        unchanged = session.skipping
        stale, session.existing = session.existing, {}
        names = list(stale)
        for start in range(0, len(names), DELETE_STEP):
            step = names[start : start + DELETE_STEP]
            self.store.write((self.keys.record(session.iocid, n).encode(), None) for n in step)
            self._unclaim(session, [x for n in step for x in (n, *stale[n][1])])
        session.claimed, session.tracks_claims = set(), False
        session.kept_names, session.kept_aliases = array("q"), array("q")
        session.env = dict(env)
        session.doc = self._document(session, docs.STATUS_ACTIVE, uploaded=iso_time(self._now()))
        # No digests: a DelRecord withdrew records (the frames no longer describe what
        # is stored), or the server did not cut runs (another processor cannot).
        complete = not session.withdrew and (session.digests or not session.records)
        session.doc["record_digests"] = session.digests if complete else None
        self._put_ioc(session, alive_too=False)
        self.log.info(
            "{peer} IOC {iocid} active: {records} records, {aliases} aliases; "
            "{written} written, {deleted} deleted{how}",
            peer=session.peer,
            iocid=printable(session.iocid),
            records=session.records,
            aliases=session.aliases,
            written=session.written,
            deleted=len(stale),
            how=" (unchanged: nothing read)" if unchanged else "",
        )
        session.written = 0
        session.skipping = False
        session.withdrew = False
        session.digests = []

    # -- the IOC document and the alive key ------------------------------------------------

    def _put_ioc(self, session: _Session, alive_too: bool) -> bool:
        """Write the session's IOC document while the alive key is ours (or absent).

        Absent: our lease expired during an outage, yet our session lives, so we put the
        alive key back. Held by someone else: another bridge (or a newer session) owns
        the IOC now; leave its documents alone.
        """
        ioc_key, alive_key = self.keys.ioc(session.iocid), self.keys.alive(session.iocid)

        def write(lease: Lease) -> bool:
            doc = Put(ioc_key, docs.dumps(session.doc))
            alive = Put(alive_key, session.alive, lease.id)
            ours = Compare.holds(alive_key, session.alive)
            result = self.store.txn([ours], [doc, alive] if alive_too else [doc], [Get(alive_key)])
            if result.succeeded:
                return True
            if result.results[0] or self.stopping:
                return False
            return self.store.txn([Compare.absent(alive_key)], [doc, alive]).succeeded

        with session.lock:
            if session.ended:
                return False
            ok = self._leased(write)
        if not ok:
            self.log.warn(
                "{peer} IOC {iocid} is now served elsewhere; its IOC document is left alone",
                peer=session.peer,
                iocid=printable(session.iocid),
            )
        return ok

    def _leased(self, write: Callable[[Lease], T]) -> T:
        """``write(lease)`` with the current lease; again with a new one if etcd lost it.

        An etcd outage longer than the lease TTL ends with the lease gone: writes that
        attach to it fail with `LeaseNotFound` until the bridge has a new one.
        """
        while True:
            lease = self._lease()
            try:
                return write(lease)
            except LeaseNotFound:
                if self._renew is None:
                    raise
                self._renew(lease)

    def _end(self, session: _Session) -> None:
        """The session ended: inactive + alive key gone in one transaction, if still ours."""
        with session.lock:
            session.ended = True
            if self.handing_over:
                self._forget(session)
                self.log.info(
                    "{peer} IOC {iocid}: session closed for the bridge's shutdown; "
                    "its alive key expires with the lease unless the IOC reconnects "
                    "elsewhere first",
                    peer=session.peer,
                    iocid=printable(session.iocid),
                )
                return
            try:
                ok = bool(session.alive) and self._write_end(session)
            except StoreError:
                # Our lease still holds the alive key: retry later (`retry_unfinished`),
                # or the IOC would look alive for as long as this bridge lives.
                self._forget(session, unfinished=True)
                raise
        self._forget(session)
        if ok:
            self.log.info(
                "{peer} IOC {iocid} inactive", peer=session.peer, iocid=printable(session.iocid)
            )
            self.index.hand_over(session.iocid)
        else:
            self.log.info(
                "{peer} IOC {iocid}: session ended; the IOC is served elsewhere now "
                "or was never stored",
                peer=session.peer,
                iocid=printable(session.iocid),
            )

    def _write_end(self, session: _Session) -> bool:
        """True if this call (or an earlier attempt whose answer was lost) ended it."""
        alive_key, ioc_key = self.keys.alive(session.iocid), self.keys.ioc(session.iocid)
        doc = {
            **session.doc,
            "status": docs.STATUS_INACTIVE,
            "disconnected": iso_time(self._now()),
        }
        result = self.store.txn(
            [Compare.holds(alive_key, session.alive)],
            [Delete(alive_key), Put(ioc_key, docs.dumps(doc))],
            [Get(alive_key), Get(ioc_key)],
        )
        if result.succeeded:
            return True
        # A retry after a timed-out attempt that etcd did apply finds its own work done.
        alive_now, ioc_now = result.results
        if alive_now or not ioc_now:
            return False
        found = parse_ioc(ioc_now[0].value)
        return (
            found is not None
            and found.status == docs.STATUS_INACTIVE
            and found.bridge == self.bridge_id
            and found.connected == session.connected
        )
