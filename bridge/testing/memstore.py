"""An in-memory etcd behind the store's backend seam, for fast tests of the pure rules.

`MemoryEtcd` implements `bridge.etcd.backend.Backend`: it answers etcd's own protobuf
requests (`bridge.etcd.rpc`) the way etcd does, with what the bridge relies on:

* one revision per transaction that writes; per key its create and mod revisions,
  version and lease; reads at the latest or at any revision not compacted;
* compares on version, create and mod revision, value (false for an absent key) and
  lease; the branch that runs sees its own earlier writes;
* etcd's limits with etcd's errors: 128 compares or operations per branch
  (`TooManyOperations`), 1.5 MiB per request (`RequestTooLarge`), a key written twice
  in one branch (`DuplicateKey`), a put on an unknown lease (`LeaseNotFound`), and a
  response over the client's 4 MiB (`MessageTooLarge`);
* leases: grant, keep-alive (TTL 0 once gone), revoke deleting their keys in one
  revision, expiry by a clock if one is given, and `expire` to end one at once;
* `compact`: reads and watches at older revisions fail with `Compacted`;
* watches that pull from the history in revision order (a slow watcher falls behind
  and, past a compaction, is told so, as in etcd);
* test hooks: `unavailable` (every request fails as if etcd were down), a settable
  `endpoint_name` (as if the client failed over), `open_watches`.

`tests/test_store_conformance.py` runs one set of tests against this and a real etcd.
Pure Python dicts and sorted lists: thousands of transactions per second.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bridge.errors import (
    Compacted,
    DuplicateKey,
    EtcdRefused,
    EtcdUnavailable,
    LeaseNotFound,
    MessageTooLarge,
    RequestTooLarge,
    TooManyOperations,
)
from bridge.etcd.ops import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    MAX_TXN_OPS,
    Entry,
    Event,
    Lease,
    MemberStatus,
    key_text,
)
from bridge.etcd.rpc import pb
from bridge.etcd.store import Store

#: gRPC refuses a request this much over etcd's own limit before etcd sees it.
GRPC_OVERHEAD_BYTES = 512 * 1024
#: What etcd adds around a request before it checks the size (raft request header).
RAFT_HEADER_BYTES = 16
#: Events one watch response carries at most.
WATCH_BATCH = 1000

#: Reads "at" this revision see every version written so far.
_LATEST = 1 << 62
_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
_FUTURE = "etcdserver: mvcc: required revision is a future revision"


class _KV:
    """One version of a key: what a read at a revision returns."""

    __slots__ = ("create", "lease", "mod", "value", "version")

    def __init__(self, value: bytes, create: int, mod: int, version: int, lease: int) -> None:
        self.value = value
        self.create = create
        self.mod = mod
        self.version = version
        self.lease = lease


class _History:
    """Every version of one key, oldest first; None marks a deletion."""

    __slots__ = ("revs", "states")

    def __init__(self) -> None:
        self.revs: list[int] = []
        self.states: list[_KV | None] = []

    def at(self, revision: int) -> _KV | None:
        i = bisect.bisect_right(self.revs, revision) - 1
        return self.states[i] if i >= 0 else None

    @property
    def current(self) -> _KV | None:
        return self.states[-1] if self.states else None


#: One change of a revision: (key, the version written or None for a delete, before).
_Change = tuple[bytes, "_KV | None", "_KV | None"]


class _MemLease:
    __slots__ = ("deadline", "keys", "ttl")

    def __init__(self, ttl: int, deadline: float) -> None:
        self.ttl = ttl
        self.deadline = deadline
        self.keys: set[bytes] = set()


class MemoryEtcd:
    """An etcd in a dict; see the module docstring. Thread-safe (one lock)."""

    def __init__(
        self, *, clock: Callable[[], float] | None = None, endpoint: str = "memory:2379"
    ) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._clock = clock
        self.revision = 1
        self.compact_revision = 0
        self._history: dict[bytes, _History] = {}
        self._keys: list[bytes] = []  # every key with a history, sorted
        self._live: list[bytes] = []  # every key that exists now, sorted
        self._log: list[tuple[int, list[_Change]]] = []
        self._log_revs: list[int] = []
        self._leases: dict[int, _MemLease] = {}
        self._lease_ids = itertools.count(0x7E57_0000_0001)
        self._watches: set[MemoryWatch] = set()
        #: While True every request fails with `EtcdUnavailable`, open watches too.
        self.unavailable = False
        #: What `endpoint` says: change it to act as a client that failed over.
        self.endpoint_name = endpoint
        self.closed = False

    def store(self, deadline_s: float = 1.0) -> Store:
        """A `Store` on this etcd."""
        return Store(self, deadline_s)

    # -- Backend: requests ---------------------------------------------------------------

    def txn(self, request: Any) -> Any:
        with self._cond:
            self._begin()
            _check_txn(request)
            ok = all(self._compare(c) for c in request.compare)
            ops = request.success if ok else request.failure
            self._check_leases(ops)
            response = pb.TxnResponse(succeeded=ok)
            revision = self.revision + 1
            changes: list[_Change] = []
            for op in ops:
                self._apply(op, response.responses.add(), revision, changes)
            self._commit(revision, changes)
            response.header.revision = self.revision
            _check_response(response)
            return response

    def range(self, request: Any) -> Any:
        with self._cond:
            self._begin()
            response = pb.RangeResponse()
            self._range(request, response)
            response.header.revision = self.revision
            _check_response(response)
            return response

    def grant(self, ttl: int) -> Lease:
        with self._cond:
            self._begin()
            lease_id = next(self._lease_ids)
            self._leases[lease_id] = _MemLease(ttl, self._now() + ttl)
            return Lease(lease_id, ttl)

    def keepalive(self, lease_id: int) -> int:
        with self._cond:
            self._begin()
            lease = self._leases.get(lease_id)
            if lease is None:
                return 0
            lease.deadline = self._now() + lease.ttl
            return lease.ttl

    def revoke(self, lease_id: int) -> None:
        with self._cond:
            self._begin()
            if lease_id not in self._leases:
                raise LeaseNotFound("etcd: etcdserver: requested lease not found")
            self._end_lease(lease_id)

    def status(self) -> MemberStatus:
        with self._cond:
            self._begin()
            size = sum(len(k) + len(h.current.value) for k, h in self._current_items())
            return MemberStatus(self.endpoint_name, "memory", size, 1, 1, 1, self.revision)

    def watch(
        self, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool
    ) -> MemoryWatch:
        with self._cond:
            self._begin()
            start = start_revision or self.revision + 1
            if start < self.compact_revision:
                raise Compacted(_COMPACTED, self.compact_revision)
            watch = MemoryWatch(self, key, range_end, start, prev_kv)
            self._watches.add(watch)
            return watch

    def endpoint(self) -> str | None:
        return self.endpoint_name

    def close(self) -> None:
        with self._cond:
            self.closed = True
            for watch in list(self._watches):
                watch.cancel()

    # -- test hooks ------------------------------------------------------------------------

    def expire(self, lease_id: int) -> None:
        """End a lease now, as if its TTL ran out: its keys are deleted in one revision."""
        with self._cond:
            if lease_id in self._leases:
                self._end_lease(lease_id)

    def compact(self, revision: int) -> None:
        """Forget every revision before `revision`, as etcd's compaction does."""
        with self._cond:
            if revision <= self.compact_revision:
                raise Compacted(_COMPACTED, self.compact_revision)
            if revision > self.revision:
                raise EtcdRefused(f"etcd: {_FUTURE}")
            for key in list(self._history):
                history = self._history[key]
                first = max(0, bisect.bisect_right(history.revs, revision) - 1)
                del history.revs[:first], history.states[:first]
                if history.states and history.states[0] is None:
                    del history.revs[0], history.states[0]
                if not history.revs:
                    del self._history[key]
                    self._keys.pop(bisect.bisect_left(self._keys, key))
            cut = bisect.bisect_left(self._log_revs, revision)
            del self._log[:cut], self._log_revs[:cut]
            self.compact_revision = revision
            self._cond.notify_all()

    @property
    def open_watches(self) -> int:
        """Watches opened and not cancelled yet (leak checks)."""
        with self._cond:
            return len(self._watches)

    def dump(self, prefix: bytes = b"") -> dict[str, bytes]:
        """key -> value of every key under `prefix` now."""
        with self._cond:
            return {key_text(k): h.current.value for k, h in self._current_items(prefix)}

    # -- internals -------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() if self._clock is not None else -math.inf

    def _begin(self) -> None:
        """Every request: fail if etcd is "down", expire the leases that are due."""
        if self.unavailable:
            raise EtcdUnavailable("etcd unavailable (the memory backend is set unavailable)")
        if self.closed:
            raise EtcdUnavailable("etcd unavailable (the memory backend is closed)")
        if self._clock is not None:
            now = self._clock()
            for lease_id in [i for i, lease in self._leases.items() if lease.deadline <= now]:
                self._end_lease(lease_id)

    def _current_items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        start = bisect.bisect_left(self._live, prefix)
        for key in itertools.islice(self._live, start, None):
            if not key.startswith(prefix):
                return
            yield key, self._history[key]

    def _current(self, key: bytes) -> _KV | None:
        history = self._history.get(key)
        return history.current if history is not None else None

    def _compare(self, compare: Any) -> bool:
        if compare.range_end:
            keys = [k for k in self._keys_in(compare.key, compare.range_end) if self._current(k)]
            return all(self._compare_one(compare, self._current(k)) for k in keys)
        return self._compare_one(compare, self._current(compare.key))

    @staticmethod
    def _compare_one(compare: Any, kv: _KV | None) -> bool:
        target = compare.target
        actual: int | bytes
        if target == pb.Compare.VALUE:
            if kv is None:
                return False  # as etcd: a value compare on an absent key always fails
            actual, expected = kv.value, compare.value
        elif target == pb.Compare.VERSION:
            actual, expected = (kv.version if kv else 0), compare.version
        elif target == pb.Compare.CREATE:
            actual, expected = (kv.create if kv else 0), compare.create_revision
        elif target == pb.Compare.MOD:
            actual, expected = (kv.mod if kv else 0), compare.mod_revision
        else:
            actual, expected = (kv.lease if kv else 0), compare.lease
        result = compare.result
        if result == pb.Compare.EQUAL:
            return bool(actual == expected)
        if result == pb.Compare.NOT_EQUAL:
            return bool(actual != expected)
        if result == pb.Compare.LESS:
            return bool(actual < expected)
        return bool(actual > expected)

    def _check_leases(self, ops: Any) -> None:
        for op in ops:
            if op.WhichOneof("request") == "request_put":
                lease = op.request_put.lease
                if lease and lease not in self._leases:
                    raise LeaseNotFound("etcd: etcdserver: requested lease not found")

    def _apply(self, op: Any, out: Any, revision: int, changes: list[_Change]) -> None:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            self._range(op.request_range, out.response_range)
        elif kind == "request_put":
            out.response_put.SetInParent()
            self._put(op.request_put, revision, changes)
        elif kind == "request_delete_range":
            request = op.request_delete_range
            deleted = [
                k for k in self._keys_in(request.key, request.range_end) if self._current(k)
            ]
            for key in deleted:
                self._write(key, None, revision, changes)
            out.response_delete_range.deleted = len(deleted)
        else:  # a nested transaction: refused by `_check_txn`
            raise AssertionError(kind)

    def _put(self, request: Any, revision: int, changes: list[_Change]) -> None:
        old = self._current(request.key)
        value = old.value if request.ignore_value and old is not None else request.value
        lease = old.lease if request.ignore_lease and old is not None else request.lease
        kv = _KV(
            value,
            old.create if old is not None else revision,
            revision,
            old.version + 1 if old is not None else 1,
            lease,
        )
        self._write(request.key, kv, revision, changes)

    def _write(self, key: bytes, kv: _KV | None, revision: int, changes: list[_Change]) -> None:
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = _History()
            bisect.insort(self._keys, key)
        old = history.current
        history.revs.append(revision)
        history.states.append(kv)
        if old is None and kv is not None:
            bisect.insort(self._live, key)
        elif old is not None and kv is None:
            self._live.pop(bisect.bisect_left(self._live, key))
        if old is not None and old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        if kv is not None and kv.lease:
            self._leases[kv.lease].keys.add(key)
        changes.append((key, kv, old))

    def _commit(self, revision: int, changes: list[_Change]) -> None:
        if changes:
            self.revision = revision
            self._log.append((revision, changes))
            self._log_revs.append(revision)
            self._cond.notify_all()

    def _end_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id)
        revision = self.revision + 1
        changes: list[_Change] = []
        for key in sorted(lease.keys):
            self._write(key, None, revision, changes)
        self._commit(revision, changes)

    def _keys_in(self, key: bytes, range_end: bytes) -> list[bytes]:
        """Keys with a history in [key, range_end) as etcd reads a range."""
        if not range_end:
            return [key] if key in self._history else []
        start = bisect.bisect_left(self._keys, key)
        if range_end == b"\0":
            return self._keys[start:]
        return self._keys[start : bisect.bisect_left(self._keys, range_end)]

    def _changed(self, key: bytes, range_end: bytes, revision: int) -> bool:
        """True if a change after `revision` touched [key, range_end)."""
        probe = MemoryWatch(self, key, range_end, 0, False)
        start = bisect.bisect_right(self._log_revs, revision)
        return any(
            probe.covers(changed)
            for _, changes in itertools.islice(self._log, start, None)
            for changed, _, _ in changes
        )

    def _live_span(self, key: bytes, range_end: bytes) -> tuple[int, int]:
        """Indices in the sorted live keys of [key, range_end) (range_end b"\\0": to the end)."""
        start = bisect.bisect_left(self._live, key)
        if range_end == b"\0":
            return start, len(self._live)
        return start, max(start, bisect.bisect_left(self._live, range_end))

    def _range(self, request: Any, out: Any) -> None:
        # The latest state includes what the running transaction wrote before.
        revision = request.revision or _LATEST
        if request.revision:
            if revision > self.revision:
                raise EtcdRefused(f"etcd: {_FUTURE}")
            if revision < self.compact_revision:
                raise Compacted(f"etcd: {_COMPACTED}", self.compact_revision)
        if request.range_end and (
            revision == _LATEST or not self._changed(request.key, request.range_end, revision)
        ):
            # The common case, kept cheap for paged scans: live keys only, no history.
            start, end = self._live_span(request.key, request.range_end)
            stop = min(end, start + request.limit) if request.limit else end
            taken: Sequence[tuple[bytes, _KV | None]] = [
                (key, self._history[key].states[-1]) for key in self._live[start:stop]
            ]
            out.count, out.more = end - start, stop < end
        else:
            found = [
                (key, kv)
                for key in self._keys_in(request.key, request.range_end)
                if (kv := self._history[key].at(revision)) is not None
            ]
            taken = found[: request.limit] if request.limit else found
            out.count, out.more = len(found), len(taken) < len(found)
        if request.count_only:
            return
        for key, kv in taken:
            assert kv is not None
            item = out.kvs.add(
                key=key,
                create_revision=kv.create,
                mod_revision=kv.mod,
                version=kv.version,
                lease=kv.lease,
            )
            if not request.keys_only:
                item.value = kv.value

    def _events(self, watch: MemoryWatch) -> list[Event]:
        """The watch's events from its next revision on (at most `WATCH_BATCH`)."""
        events: list[Event] = []
        start = bisect.bisect_left(self._log_revs, watch.next_revision)
        for revision, changes in itertools.islice(self._log, start, None):
            for key, kv, old in changes:
                if watch.covers(key):
                    events.append(_event(key, kv, old, revision, watch.prev_kv))
            watch.next_revision = revision + 1
            if len(events) >= WATCH_BATCH:
                break
        else:
            watch.next_revision = self.revision + 1
        return events


class MemoryWatch:
    """A watch on a `MemoryEtcd`; see `bridge.etcd.backend.WatchStream`."""

    def __init__(
        self, etcd: MemoryEtcd, key: bytes, range_end: bytes, start: int, prev_kv: bool
    ) -> None:
        self._etcd = etcd
        self.endpoint: str | None = etcd.endpoint_name
        self.key = key
        self.range_end = range_end
        self.next_revision = start
        self.prev_kv = prev_kv
        self.cancelled = False

    def covers(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        return key >= self.key and (self.range_end == b"\0" or key < self.range_end)

    def next(self, timeout: float) -> list[Event] | None:
        etcd = self._etcd
        deadline = time.monotonic() + timeout
        with etcd._cond:
            while True:
                if self.cancelled:
                    return None
                if etcd.unavailable or etcd.closed:
                    raise EtcdUnavailable("etcd unavailable (memory backend): watch broken")
                if self.next_revision < etcd.compact_revision:
                    raise Compacted(_COMPACTED, etcd.compact_revision)
                events = etcd._events(self)
                if events:
                    return events
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                etcd._cond.wait(remaining)

    def cancel(self) -> None:
        etcd = self._etcd
        with etcd._cond:
            self.cancelled = True
            etcd._watches.discard(self)
            etcd._cond.notify_all()


def _entry(key: bytes, kv: _KV) -> Entry:
    return Entry(key_text(key), kv.value, kv.mod, kv.lease, kv.create, kv.version)


def _event(key: bytes, kv: _KV | None, old: _KV | None, revision: int, prev: bool) -> Event:
    before = _entry(key, old) if prev and old is not None else None
    if kv is None:
        return Event("delete", key_text(key), b"", revision, 0, before)
    return Event("put", key_text(key), kv.value, revision, kv.lease, before)


def _check_txn(request: Any) -> None:
    """etcd's checks of a transaction before it is applied (same errors as etcd)."""
    if max(len(request.compare), len(request.success), len(request.failure)) > MAX_TXN_OPS:
        raise TooManyOperations("etcd: etcdserver: too many operations in txn request")
    size = request.ByteSize() + RAFT_HEADER_BYTES
    if size > MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES:
        raise MessageTooLarge(f"message over gRPC's size limit ({size} bytes)")
    if size > MAX_REQUEST_BYTES:
        raise RequestTooLarge("etcd: etcdserver: request is too large")
    for branch in (request.success, request.failure):
        for op in branch:
            kind = op.WhichOneof("request")
            if kind == "request_txn" or (kind == "request_range" and op.request_range.revision):
                raise EtcdRefused("etcd refused the request (not supported by the memory backend)")
        _check_intervals(branch)


def _check_intervals(ops: Any) -> None:
    """A key put twice, or put and deleted, in one branch is refused (deletes may overlap)."""
    deletes = [
        (op.request_delete_range.key, op.request_delete_range.range_end)
        for op in ops
        if op.WhichOneof("request") == "request_delete_range"
    ]
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        deleted = any(
            key == start if not end else start <= key and (end == b"\0" or key < end)
            for start, end in deletes
        )
        if key in puts or deleted:
            raise DuplicateKey("etcd: etcdserver: duplicate key given in txn request")
        puts.add(key)


def _check_response(response: Any) -> None:
    size = response.ByteSize()
    if size > MAX_RESPONSE_BYTES:
        raise MessageTooLarge(
            f"message over gRPC's size limit (Received message larger than max "
            f"({size} vs. {MAX_RESPONSE_BYTES}))"
        )
