"""Typed, blocking etcd access: retries, paged reads at one revision, bounded transactions.

`Store` is the one way the bridge, the `recsync` command and the tests read and write
etcd. It speaks to etcd through a `Backend` (`bridge.etcd.backend`): the real one is
`GrpcBackend` (built with the store by `open_store`); the tests have an in-memory etcd
(`bridge.testing.memstore`) that keeps etcd's revisions, limits and errors. Nothing in
this module's signatures is a client-library object: reads return `Entry`/`Page`,
writes take the values of `bridge.etcd.ops`, errors are `bridge.errors` classes.

Every call goes through `Store.call` within one outage bound (``[etcd] max_outage``),
so a leader election, a member restart or a short outage of the whole cluster is
ridden out, and anything longer becomes `StoreError`. Reads are batched (a
transaction of up to 128 range requests is one round trip); prefix scans read bounded
pages, all at one revision; writes are cut into transactions within etcd's limits (at
most 128 operations, at most 1.5 MiB per request; `bridge.etcd.ops`).

The hot paths (`write`, `write_guarded`, `unequal`, `get_many`) build protobuf
requests directly, one message per operation and nothing else.

All methods block: call them from worker threads only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.errors import MessageTooLarge, RequestTooLarge, StoreError, TooManyOperations
from bridge.etcd.client import call_with_retry, is_retryable
from bridge.etcd.ops import (
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    Compare,
    Entry,
    Get,
    Guarded,
    Key,
    Lease,
    MemberStatus,
    Op,
    Page,
    Put,
    TxnResult,
    Write,
    chunk_guarded,
    chunk_ops,
    key_bytes,
    key_text,
    op_size,
    prefix_end,
)
from bridge.etcd.rpc import pb

if TYPE_CHECKING:
    from bridge.etcd.backend import Backend

T = TypeVar("T")

#: Keys per page when scanning a prefix. Pages shrink on their own when a response
#: would exceed gRPC's 4 MiB receive limit (records with big info tags).
SCAN_PAGE = 1000

_EQUAL = pb.Compare.EQUAL
_MOD = pb.Compare.MOD
_VERSION = pb.Compare.VERSION
_VALUE = pb.Compare.VALUE
_TARGETS = {
    "version": (pb.Compare.VERSION, "version"),
    "create": (pb.Compare.CREATE, "create_revision"),
    "mod": (pb.Compare.MOD, "mod_revision"),
    "value": (pb.Compare.VALUE, "value"),
    "lease": (pb.Compare.LEASE, "lease"),
}
_RESULTS = {
    "==": pb.Compare.EQUAL,
    "!=": pb.Compare.NOT_EQUAL,
    "<": pb.Compare.LESS,
    ">": pb.Compare.GREATER,
}


class Store:
    """Typed etcd reads and writes through a `Backend`, within an outage bound.

    `deadline_s` bounds an outage, not each call: once etcd has failed every attempt
    for that long (counted from the first failure that no success followed, across
    all threads), every call gets one attempt only and fails with `StoreError` at
    once, until some call succeeds again. So sessions queued behind a long outage
    are closed when it passes the bound, not one bound later each.
    """

    def __init__(
        self, backend: Backend, deadline_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.backend = backend
        self.deadline_s = deadline_s
        self._clock = clock
        #: When the current run of failed attempts began; None while etcd answers.
        self.failing_since: float | None = None
        self._aborted = threading.Event()

    # -- retries -----------------------------------------------------------------------

    def abort(self) -> None:
        """Stop retrying (shutdown): calls in their back-off fail with `StoreError`."""
        self._aborted.set()

    def close(self) -> None:
        """Stop retrying and release the backend (its connection and watch streams)."""
        self.abort()
        self.backend.close()

    def call(self, fn: Callable[[], T], deadline_s: float | None = None) -> T:
        """Run ``fn()`` with retries of transient errors; `StoreError` after the bound.

        `deadline_s` shortens the bound for this call (e.g. during shutdown).
        """
        if self._aborted.is_set():
            raise StoreError("etcd store closed")
        since = self.failing_since
        deadline = self.deadline_s
        if since is not None:
            deadline = max(0.0, since + self.deadline_s - self._clock())
        if deadline_s is not None:
            deadline = min(deadline, deadline_s)

        def attempt() -> T:
            try:
                result = fn()
            except Exception as exc:
                if is_retryable(exc) and self.failing_since is None:
                    self.failing_since = self._clock()
                raise
            self.failing_since = None
            return result

        return call_with_retry(attempt, deadline_s=deadline, sleep=self._sleep, clock=self._clock)

    def _sleep(self, seconds: float) -> None:
        if self._aborted.wait(seconds):
            raise StoreError("etcd store closed while retrying")

    def _send(self, request: Any, deadline_s: float | None = None) -> Any:
        """Send a built ``TxnRequest`` (with retries); returns the ``TxnResponse``."""
        return self.call(lambda: self.backend.txn(request), deadline_s)

    # -- reads ------------------------------------------------------------------------

    def get(self, key: Key) -> Entry | None:
        """The entry at `key`, None when it is absent."""
        found = self.get_many([key_text(key_bytes(key))])
        return next(iter(found.values()), None)

    def get_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """Read many keys, up to 128 per round trip; absent keys are left out."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Entry] = {}
        for start in range(0, len(wanted), MAX_TXN_OPS):
            self._read_batch(wanted[start : start + MAX_TXN_OPS], found)
        return found

    def _read_batch(self, keys: list[str], found: dict[str, Entry]) -> None:
        request = pb.TxnRequest()
        out = request.success
        for key in keys:
            out.add().request_range.key = key.encode("utf-8", "surrogateescape")
        try:
            response = self._send(request)
        except MessageTooLarge as exc:
            if len(keys) == 1:
                raise StoreError(f"etcd read of {keys[0]!r} failed: {exc}") from exc
            half = len(keys) // 2
            self._read_batch(keys[:half], found)
            self._read_batch(keys[half:], found)
            return
        for key, item in zip(keys, response.responses, strict=True):
            for kv in item.response_range.kvs:
                found[key] = Entry(
                    key, kv.value, kv.mod_revision, kv.lease, kv.create_revision, kv.version
                )

    def scan(
        self,
        prefix: Key,
        *,
        revision: int | None = None,
        keys_only: bool = False,
        page: int = SCAN_PAGE,
    ) -> Iterator[Page]:
        """Every key under `prefix` in key order, one bounded page per round trip.

        Every page is read at one revision, a consistent snapshot: `revision` if
        given, else the one the first page was read at (each `Page` says which). A
        page whose response would pass gRPC's 4 MiB has fewer keys. Raises `Compacted`
        when that revision is compacted (maybe after some pages): read again, at a
        new revision.
        """
        start = key_bytes(prefix)
        end = prefix_end(start)
        limit = max(1, page)
        at = revision or 0
        while True:
            try:
                response = self._range(start, end, limit, keys_only, at)
            except MessageTooLarge:
                if limit == 1:
                    raise StoreError(
                        f"etcd scan of {key_text(start)!r}: one value exceeds the limit"
                    ) from None
                limit = max(1, limit // 4)
                continue
            at = at or int(response.header.revision)
            entries = [
                Entry(
                    kv.key.decode("utf-8", "surrogateescape"),
                    kv.value,
                    kv.mod_revision,
                    kv.lease,
                    kv.create_revision,
                    kv.version,
                )
                for kv in response.kvs
            ]
            yield Page(entries, at)
            if not response.more or not response.kvs:
                return
            start = response.kvs[-1].key + b"\0"

    def _range(self, start: bytes, end: bytes, limit: int, keys_only: bool, revision: int) -> Any:
        request = pb.RangeRequest(
            key=start, range_end=end, limit=limit, keys_only=keys_only, revision=revision
        )
        return self.call(lambda: self.backend.range(request))

    def count(self, prefix: Key) -> int:
        """How many keys are under `prefix` (etcd counts; nothing is transferred)."""
        start = key_bytes(prefix)
        request = pb.RangeRequest(key=start, range_end=prefix_end(start), count_only=True)
        return int(self.call(lambda: self.backend.range(request)).count)

    def revision(self) -> int:
        """The store's current revision."""
        request = pb.RangeRequest(key=b"\0", limit=1, keys_only=True)
        return int(self.call(lambda: self.backend.range(request)).header.revision)

    # -- transactions -----------------------------------------------------------------

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        deadline_s: float | None = None,
    ) -> TxnResult:
        """One transaction: `success` if every compare holds, else `failure`.

        Raises `TooManyOperations` or `RequestTooLarge` before sending when it cannot
        fit in one transaction, as etcd would. `deadline_s` shortens the outage bound.
        """
        _check_limits(compares, success, failure)
        request = pb.TxnRequest()
        for compare in compares:
            _compare(compare, request.compare.add())
        for op in success:
            _request(op, request.success.add())
        for op in failure:
            _request(op, request.failure.add())
        response = self._send(request, deadline_s)
        results = [
            [_entry(kv) for kv in item.response_range.kvs]
            if item.WhichOneof("response") == "response_range"
            else []
            for item in response.responses
        ]
        return TxnResult(bool(response.succeeded), results, int(response.header.revision))

    def put(self, key: Key, value: bytes, lease: int = 0) -> int:
        """Write one key (attached to `lease`, 0 for none); returns the new revision."""
        return self.txn([], [Put(key, value, lease)]).revision

    # -- the hot paths: protobuf built directly ----------------------------------------

    def write(self, ops: Iterable[Write]) -> int:
        """Commit idempotent puts and deletes in order, in bounded transactions.

        Returns the number of transactions used.
        """
        count = 0
        for chunk in chunk_ops(ops):
            request = pb.TxnRequest()
            out = request.success
            for key, value in chunk:
                if value is None:
                    out.add().request_delete_range.key = key
                else:
                    put = out.add().request_put
                    put.key = key
                    put.value = value
            self._send(request)
            count += 1
        return count

    def write_guarded(
        self, items: Iterable[Guarded], max_items: int = MAX_TXN_OPS
    ) -> list[Guarded]:
        """Commit guarded writes, up to `max_items` per transaction; returns those not applied.

        A transaction whose compares fail applies none of its items, so every item of
        it is returned: the caller re-reads those keys and tries again.
        """
        failed: list[Guarded] = []
        for batch in chunk_guarded(items, max_items):
            request = pb.TxnRequest()
            compares, out = request.compare, request.success
            also: set[bytes] = set()  # etcd refuses a key twice in one transaction
            for item in batch:
                compare = compares.add()
                compare.key = item.key
                compare.result = _EQUAL
                if item.mod_revision:
                    compare.target = _MOD
                    compare.mod_revision = item.mod_revision
                else:
                    compare.target = _VERSION  # version 0: the key is absent
                if item.value is None:
                    out.add().request_delete_range.key = item.key
                else:
                    put = out.add().request_put
                    put.key = item.key
                    put.value = item.value
                for key, value in item.also:
                    if key in also:
                        continue
                    also.add(key)
                    put = out.add().request_put
                    put.key = key
                    put.value = value
            if not self._send(request).succeeded:
                failed.extend(batch)
        return failed

    def unequal(self, items: Iterable[tuple[bytes, bytes, T]]) -> list[T]:
        """Check keys hold exactly the given values; returns the tags of batches that don't.

        Each (key, value, tag) becomes a value compare; a transaction of compares only
        writes nothing and answers with one bit, so confirming that many entries are as
        expected costs no reads. When a batch fails, all of its tags come back.
        """
        failed: list[T] = []
        batch: list[tuple[bytes, bytes, T]] = []
        size = 0

        def check() -> None:
            request = pb.TxnRequest()
            compares = request.compare
            for key, value, _ in batch:
                compare = compares.add()
                compare.key = key
                compare.result = _EQUAL
                compare.target = _VALUE
                compare.value = value
            if not self._send(request).succeeded:
                failed.extend(tag for _, _, tag in batch)

        for item in items:
            cost = op_size(item[0], item[1])
            if batch and (len(batch) == MAX_TXN_OPS or size + cost > MAX_TXN_BYTES):
                check()
                batch, size = [], 0
            batch.append(item)
            size += cost
        if batch:
            check()
        return failed

    # -- leases and status -------------------------------------------------------------

    def grant(self, ttl: int) -> Lease:
        """A new lease of `ttl` seconds."""
        return self.call(lambda: self.backend.grant(ttl))

    def refresh(self, lease_id: int) -> int:
        """Keep the lease alive; returns its TTL, <= 0 when etcd no longer has it."""
        return self.call(lambda: self.backend.keepalive(lease_id))

    def revoke(self, lease_id: int, *, deadline_s: float | None = None) -> None:
        """Revoke the lease: its keys are deleted at once."""
        self.call(lambda: self.backend.revoke(lease_id), deadline_s)

    def status(self) -> MemberStatus:
        """The status of the member the client uses (version, leader, size, alarms)."""
        return self.call(self.backend.status)

    @property
    def endpoint(self) -> str | None:
        """The member (``host:port``) requests go to now."""
        return self.backend.endpoint()

    def probe(self, key: Key) -> bool:
        """One cheap linearizable read of `key`, no retries: True if etcd answered.

        A member that hangs makes it time out, and the client then fails over to
        another member (`endpoint` changes); `bridge.etcd.watch` uses it to notice.
        """
        request = pb.RangeRequest(key=key_bytes(key), limit=1, keys_only=True)
        try:
            self.backend.range(request)
        except StoreError:
            return False
        return True


def _entry(kv: Any) -> Entry:
    return Entry(
        key_text(kv.key),
        kv.value,
        kv.mod_revision,
        kv.lease,
        kv.create_revision,
        kv.version,
    )


def _compare(compare: Compare, out: Any) -> None:
    target, field = _TARGETS[compare.target]
    out.key = key_bytes(compare.key)
    out.target = target
    out.result = _RESULTS[compare.result]
    setattr(out, field, compare.value)


def _request(op: Op, out: Any) -> None:
    """Fill the protobuf ``RequestOp`` `out` with `op`."""
    if isinstance(op, Put):
        put = out.request_put
        put.key = key_bytes(op.key)
        put.value = op.value
        put.lease = op.lease
    elif isinstance(op, Get):
        get = out.request_range
        get.key = key_bytes(op.key)
        if op.prefix:
            get.range_end = prefix_end(get.key)
    else:
        delete = out.request_delete_range
        delete.key = key_bytes(op.key)
        if op.prefix:
            delete.range_end = prefix_end(delete.key)


def _op_size(op: Compare | Op) -> int:
    value = op.value if isinstance(op, Put | Compare) else None
    return op_size(key_bytes(op.key), value if isinstance(value, bytes) else None)


def _check_limits(
    compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
) -> None:
    if max(len(compares), len(success), len(failure)) > MAX_TXN_OPS:
        raise TooManyOperations(f"transaction has more than {MAX_TXN_OPS} operations")
    size = sum(_op_size(op) for group in (compares, success, failure) for op in group)
    if size > MAX_TXN_BYTES:
        raise RequestTooLarge(f"transaction of about {size} bytes exceeds {MAX_TXN_BYTES}")
