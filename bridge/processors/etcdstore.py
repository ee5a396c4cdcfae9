"""Blocking etcd access for the etcd processor: retries, batched reads, bounded write batches.

`Store` wraps one pyetcd client. Every call goes through `call_with_retry` within one
outage bound (``[etcd] max_outage``), so a leader election, a member restart or a
short outage of the whole cluster is ridden out and anything longer becomes
`StoreError`. Reads are batched (a transaction of up to 128 range requests is one round
trip) and writes are cut into transactions that respect etcd's limits (shared etcd
reference section 5: at most 128 operations, at most 1.5 MiB per request).

All methods block: call them from worker threads only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped,unused-ignore]  # no stubs shipped
from pyetcd import transactions as tx

from bridge.errors import StoreError
from bridge.etcdclient import call_with_retry, is_retryable

T = TypeVar("T")

#: etcd's ``--max-txn-ops`` default; applies to compares and to operations separately.
MAX_TXN_OPS = 128
#: Budget for keys and values of one request: etcd rejects requests over 1.5 MiB
#: (1572864 bytes); the rest is headroom for protobuf framing and compares.
MAX_TXN_BYTES = 1_400_000
#: Generous per-operation framing estimate (tags, lengths, lease id).
OP_OVERHEAD = 32
#: Keys per page when scanning a prefix. Pages shrink on their own when a response
#: would exceed gRPC's 4 MiB receive limit (records with big info tags).
SCAN_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as read: its value and the revision that last modified it."""

    key: str
    value: bytes
    mod_revision: int
    #: The lease the key is attached to; 0 for none.
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a prefix scan and the store revision it was read at."""

    entries: list[Entry]
    revision: int


@dataclass(frozen=True, slots=True)
class Guarded:
    """Writes that apply only if their compares hold; committed together with others.

    `tag` names the item for the caller (e.g. the PV name) when it comes back failed.
    """

    compares: Sequence[Any]
    ops: Sequence[Any]
    tag: str = ""


def op_size(op: Any) -> int:
    """Estimated request bytes of a pyetcd compare or operation."""
    key = op.key if isinstance(op.key, bytes) else str(op.key).encode("utf-8")
    value = getattr(op, "value", None)
    size = len(key) + OP_OVERHEAD
    if isinstance(value, bytes):
        size += len(value)
    elif isinstance(value, str):
        size += len(value.encode("utf-8"))
    return size


def _too_big(exc: BaseException) -> bool:
    """A response over the client's receive limit (gRPC RESOURCE_EXHAUSTED)."""
    code = getattr(exc, "code", None)
    return isinstance(exc, grpc.RpcError) and callable(code) and code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


class Store:
    """A pyetcd client plus an outage bound; see the module docstring.

    `deadline_s` bounds an outage, not each call: once etcd has failed every attempt
    for that long (counted from the first failure that no success followed, across
    all threads), every call gets one attempt only and fails with `StoreError` at
    once, until some call succeeds again. So sessions queued behind a long outage
    are closed when it passes the bound, not one bound later each.
    """

    def __init__(self, client: Any, deadline_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.deadline_s = deadline_s
        self._clock = clock
        #: When the current run of failed attempts began; None while etcd answers.
        self.failing_since: float | None = None
        self._aborted = threading.Event()

    def abort(self) -> None:
        """Stop retrying (shutdown): calls in their back-off fail with `StoreError`."""
        self._aborted.set()

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

        return call_with_retry(attempt, deadline_s=deadline, sleep=self._sleep,
                               clock=self._clock)

    def _sleep(self, seconds: float) -> None:
        if self._aborted.wait(seconds):
            raise StoreError("etcd store closed while retrying")

    def txn(
        self, compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> tuple[bool, list[Any]]:
        """One transaction; returns (succeeded, responses). Checks the limits first.

        Raises `StoreError` when the request cannot fit in one etcd transaction.
        """
        _check_limits(compares, success, failure)
        ok, responses = self.call(
            lambda: self.client.transaction(
                compare=list(compares), success=list(success), failure=list(failure)
            )
        )
        return bool(ok), list(responses)

    # -- reads ------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """Read many keys, up to 128 per round trip; absent keys are left out."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Entry] = {}
        for start in range(0, len(wanted), MAX_TXN_OPS):
            self._read_batch(wanted[start : start + MAX_TXN_OPS], found)
        return found

    def _read_batch(self, keys: list[str], found: dict[str, Entry]) -> None:
        gets = [tx.Get(key) for key in keys]
        try:
            _, responses = self.call(lambda: self.client.transaction([], gets, []))
        except grpc.RpcError as exc:
            if not _too_big(exc) or len(keys) == 1:
                raise StoreError(f"etcd read of {keys[0]!r} failed: {exc!r}") from exc
            half = len(keys) // 2
            self._read_batch(keys[:half], found)
            self._read_batch(keys[half:], found)
            return
        for key, kvs in zip(keys, responses, strict=True):
            for value, meta in kvs:
                found[key] = Entry(key, value, meta.mod_revision, meta.lease_id)

    def get(self, key: str) -> Entry | None:
        return self.get_many([key]).get(key)

    def scan(self, prefix: str, *, keys_only: bool = False) -> Iterator[Page]:
        """Every key under `prefix` in key order, one page per round trip.

        Pages are not one snapshot: a key written during the scan may or may not appear.
        """
        start = prefix.encode("utf-8")
        end = _prefix_end(start)
        limit = SCAN_PAGE
        while True:
            response = self._range(start, end, limit, keys_only)
            if response is None:
                if limit == 1:
                    raise StoreError(f"etcd scan of {prefix!r}: one value exceeds the limit")
                limit = max(1, limit // 4)
                continue
            entries = [
                Entry(kv.key.decode("utf-8"), kv.value, kv.mod_revision, kv.lease)
                for kv in response.kvs
            ]
            yield Page(entries, response.header.revision)
            if not response.more or not response.kvs:
                return
            start = response.kvs[-1].key + b"\0"

    def _range(self, start: bytes, end: bytes, limit: int, keys_only: bool) -> Any:
        """One page, or None when the response would be too big for the client."""

        def page() -> Any:
            return self.client.get_range_response(start, end, limit=limit, keys_only=keys_only)

        try:
            return self.call(page)
        except grpc.RpcError as exc:
            if _too_big(exc):
                return None
            raise

    # -- writes -----------------------------------------------------------------------

    def write(self, ops: Iterable[Any]) -> int:
        """Commit idempotent puts and deletes in order, in bounded transactions.

        Returns the number of transactions used.
        """
        count = 0
        for chunk in chunk_ops(ops):
            self.txn([], chunk)
            count += 1
        return count

    def write_guarded(self, items: Iterable[Guarded], max_items: int = MAX_TXN_OPS
                      ) -> list[Guarded]:
        """Commit guarded writes, up to `max_items` per transaction; returns those not applied.

        A transaction whose compares fail applies none of its items, so every item of
        it is returned: the caller re-reads those keys and tries again.
        """
        failed: list[Guarded] = []
        for batch in chunk_guarded(items, max_items):
            compares = [c for item in batch for c in item.compares]
            ops = [o for item in batch for o in item.ops]
            ok, _ = self.txn(compares, ops)
            if not ok:
                failed.extend(batch)
        return failed


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`."""
    data = bytearray(prefix)
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return b"\0"
    data[-1] += 1
    return bytes(data)


def _check_limits(compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any]) -> None:
    if max(len(compares), len(success), len(failure)) > MAX_TXN_OPS:
        raise StoreError(f"transaction has more than {MAX_TXN_OPS} operations")
    size = sum(op_size(op) for group in (compares, success, failure) for op in group)
    if size > MAX_TXN_BYTES:
        raise StoreError(f"transaction of about {size} bytes exceeds {MAX_TXN_BYTES}")


def chunk_ops(ops: Iterable[Any]) -> Iterator[list[Any]]:
    """Cut operations into lists that each fit one transaction, keeping their order."""
    chunk: list[Any] = []
    size = 0
    for op in ops:
        cost = op_size(op)
        if chunk and (len(chunk) == MAX_TXN_OPS or size + cost > MAX_TXN_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(op)
        size += cost
    if chunk:
        yield chunk


def chunk_guarded(items: Iterable[Guarded], max_items: int = MAX_TXN_OPS
                  ) -> Iterator[list[Guarded]]:
    """Cut guarded items into batches whose compares and ops each fit one transaction."""
    batch: list[Guarded] = []
    n_cmp = n_ops = size = 0
    for item in items:
        cost = sum(op_size(x) for x in (*item.compares, *item.ops))
        full = (
            len(batch) >= max_items
            or n_cmp + len(item.compares) > MAX_TXN_OPS
            or n_ops + len(item.ops) > MAX_TXN_OPS
            or size + cost > MAX_TXN_BYTES
        )
        if batch and full:
            yield batch
            batch, n_cmp, n_ops, size = [], 0, 0, 0
        batch.append(item)
        n_cmp += len(item.compares)
        n_ops += len(item.ops)
        size += cost
    if batch:
        yield batch
