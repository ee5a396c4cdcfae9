"""Pure values of the etcd layer: what a read returns and what a write asks for.

No I/O and no etcd client import: the rules (`bridge.rules`) build these values, and the
store (`bridge.etcd.store`) executes them. etcd's per-request limits are here too, so
everything that cuts work into transactions agrees on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: etcd's ``--max-txn-ops`` default; applies to compares and to operations separately.
MAX_TXN_OPS = 128
#: Budget for keys and values of one request: etcd rejects requests over 1.5 MiB
#: (1572864 bytes); the rest is headroom for protobuf framing and compares.
MAX_TXN_BYTES = 1_400_000
#: Generous per-operation framing estimate (tags, lengths, lease id).
OP_OVERHEAD = 32


@dataclass(slots=True)  # not frozen: one per key read, and frozen init is slow
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


@dataclass(slots=True)  # not frozen: one per index write, and frozen init is slow
class Guarded:
    """One key written only if it is as read: absent (`mod_revision` 0) or unmodified since.

    `value` None deletes the key. `also` are further (key, value) puts committed in
    the same transaction, unguarded. `tag` names the item for the caller (e.g. the PV
    name) when it comes back failed.
    """

    key: bytes
    mod_revision: int
    value: bytes | None
    tag: str = ""
    also: tuple[tuple[bytes, bytes], ...] = ()


#: A plain write of `Store.write`: (key, value), value None deleting the key.
Write = tuple[bytes, "bytes | None"]


def op_size(key: bytes, value: bytes | None = None) -> int:
    """Estimated request bytes of one operation or compare on `key`."""
    return len(key) + OP_OVERHEAD + (len(value) if value is not None else 0)


def chunk_ops(ops: Iterable[Write]) -> Iterator[list[Write]]:
    """Cut writes into lists that each fit one transaction, keeping their order."""
    chunk: list[Write] = []
    size = 0
    for op in ops:
        cost = op_size(*op)
        if chunk and (len(chunk) == MAX_TXN_OPS or size + cost > MAX_TXN_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(op)
        size += cost
    if chunk:
        yield chunk


def chunk_guarded(
    items: Iterable[Guarded], max_items: int = MAX_TXN_OPS
) -> Iterator[list[Guarded]]:
    """Cut guarded writes (one compare, one or more operations each) into transactions."""
    limit = min(max_items, MAX_TXN_OPS)
    batch: list[Guarded] = []
    ops = size = 0
    for item in items:
        # The key travels twice: in the compare and in the operation.
        cost = op_size(item.key, item.value) + op_size(item.key)
        cost += sum(op_size(key, value) for key, value in item.also)
        n_ops = 1 + len(item.also)
        if batch and (
            len(batch) >= limit or ops + n_ops > MAX_TXN_OPS or size + cost > MAX_TXN_BYTES
        ):
            yield batch
            batch, ops, size = [], 0, 0
        batch.append(item)
        ops += n_ops
        size += cost
    if batch:
        yield batch
