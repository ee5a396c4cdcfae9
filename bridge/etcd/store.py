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
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped,unused-ignore]  # no stubs shipped
from pyetcd import etcdrpc
from pyetcd import transactions as tx
from pyetcd.client import KVMetadata
from pyetcd.utils import lease_to_id

from bridge.errors import StoreError
from bridge.etcd.client import call_with_retry, is_retryable, send_txn
from bridge.etcd.ops import (
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    Entry,
    Guarded,
    Page,
    Write,
    chunk_guarded,
    chunk_ops,
    op_size,
)

T = TypeVar("T")

_EQUAL = etcdrpc.Compare.EQUAL
_MOD = etcdrpc.Compare.MOD
_VERSION = etcdrpc.Compare.VERSION
_VALUE = etcdrpc.Compare.VALUE
#: Keys per page when scanning a prefix. Pages shrink on their own when a response
#: would exceed gRPC's 4 MiB receive limit (records with big info tags).
SCAN_PAGE = 1000


def _too_big(exc: BaseException) -> bool:
    """A response over the client's receive limit (gRPC RESOURCE_EXHAUSTED)."""
    code = getattr(exc, "code", None)
    return (
        isinstance(exc, grpc.RpcError)
        and callable(code)
        and code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,)
    )


def _to_bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def _request_op(op: Any, out: Any) -> None:
    """Append the protobuf form of a pyetcd ``Put``/``Get``/``Delete`` to ``out``."""
    if isinstance(op, tx.Put):
        put = out.add().request_put
        put.key = _to_bytes(op.key)
        put.value = _to_bytes(op.value)
        put.lease = lease_to_id(op.lease)
    elif isinstance(op, tx.Get):
        get = out.add().request_range
        get.key = _to_bytes(op.key)
        if op.range_end is not None:
            get.range_end = _to_bytes(op.range_end)
    elif isinstance(op, tx.Delete):
        delete = out.add().request_delete_range
        delete.key = _to_bytes(op.key)
        if op.range_end is not None:
            delete.range_end = _to_bytes(op.range_end)
    else:
        raise TypeError(f"unsupported etcd operation {op!r}")


def _generic_size(op: Any) -> int:
    value = getattr(op, "value", None)
    return op_size(_to_bytes(op.key), _to_bytes(value) if isinstance(value, str | bytes) else None)


class Store:
    """A pyetcd client plus an outage bound; see the module docstring.

    `deadline_s` bounds an outage, not each call: once etcd has failed every attempt
    for that long (counted from the first failure that no success followed, across
    all threads), every call gets one attempt only and fails with `StoreError` at
    once, until some call succeeds again. So sessions queued behind a long outage
    are closed when it passes the bound, not one bound later each.
    """

    def __init__(
        self, client: Any, deadline_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
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

        return call_with_retry(attempt, deadline_s=deadline, sleep=self._sleep, clock=self._clock)

    def _sleep(self, seconds: float) -> None:
        if self._aborted.wait(seconds):
            raise StoreError("etcd store closed while retrying")

    def txn(
        self, compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> tuple[bool, list[Any]]:
        """One transaction of pyetcd compares and ``Put``/``Get``/``Delete`` operations.

        Returns (succeeded, responses) as pyetcd's ``transaction`` does: a range
        response is a list of (value, metadata). Checks etcd's limits first and raises
        `StoreError` when the request cannot fit in one transaction.
        """
        _check_limits(compares, success, failure)
        request = etcdrpc.TxnRequest()
        request.compare.extend(c.build_message() for c in compares)
        for op in success:
            _request_op(op, request.success)
        for op in failure:
            _request_op(op, request.failure)
        response = self.send(request)
        responses: list[Any] = []
        for item in response.responses:
            kind = item.WhichOneof("response")
            if kind == "response_range":
                responses.append(
                    [(kv.value, KVMetadata(kv, response.header)) for kv in item.response_range.kvs]
                )
            else:
                responses.append(item)
        return bool(response.succeeded), responses

    def send(self, request: Any) -> Any:
        """Send a built ``TxnRequest`` (with retries); returns the ``TxnResponse``.

        Every transaction of the etcd processor passes here.
        """
        return self.call(lambda: send_txn(self.client, request))

    # -- reads ------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        """Read many keys, up to 128 per round trip; absent keys are left out."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Entry] = {}
        for start in range(0, len(wanted), MAX_TXN_OPS):
            self._read_batch(wanted[start : start + MAX_TXN_OPS], found)
        return found

    def _read_batch(self, keys: list[str], found: dict[str, Entry]) -> None:
        request = etcdrpc.TxnRequest()
        for key in keys:
            request.success.add().request_range.key = key.encode("utf-8")
        try:
            response = self.send(request)
        except grpc.RpcError as exc:
            if not _too_big(exc) or len(keys) == 1:
                raise StoreError(f"etcd read of {keys[0]!r} failed: {exc!r}") from exc
            half = len(keys) // 2
            self._read_batch(keys[:half], found)
            self._read_batch(keys[half:], found)
            return
        for key, item in zip(keys, response.responses, strict=True):
            for kv in item.response_range.kvs:
                found[key] = Entry(key, kv.value, kv.mod_revision, kv.lease)

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

    def write(self, ops: Iterable[Write]) -> int:
        """Commit idempotent puts and deletes in order, in bounded transactions.

        Returns the number of transactions used.
        """
        count = 0
        for chunk in chunk_ops(ops):
            request = etcdrpc.TxnRequest()
            out = request.success
            for key, value in chunk:
                if value is None:
                    out.add().request_delete_range.key = key
                else:
                    put = out.add().request_put
                    put.key = key
                    put.value = value
            self.send(request)
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
            request = etcdrpc.TxnRequest()
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
            if not self.send(request).succeeded:
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
            request = etcdrpc.TxnRequest()
            compares = request.compare
            for key, value, _ in batch:
                compare = compares.add()
                compare.key = key
                compare.result = _EQUAL
                compare.target = _VALUE
                compare.value = value
            if not self.send(request).succeeded:
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
    size = sum(_generic_size(op) for group in (compares, success, failure) for op in group)
    if size > MAX_TXN_BYTES:
        raise StoreError(f"transaction of about {size} bytes exceeds {MAX_TXN_BYTES}")
