"""Pure values of the etcd layer: what a read returns and what a write asks for.

No I/O and no etcd client import: the rules (`bridge.rules`) build these values, and the
store (`bridge.etcd.store`) executes them. etcd's per-request limits are here too, so
everything that cuts work into transactions agrees on them.

Keys are given as ``str`` (encoded as UTF-8) or ``bytes``; keys read back are ``str``
(bytes that are not UTF-8 decoded with ``surrogateescape``, so they encode back
exactly with `key_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

#: etcd's ``--max-txn-ops`` default; applies to compares and to operations separately.
MAX_TXN_OPS = 128
#: Budget for keys and values of one request: etcd rejects requests over 1.5 MiB
#: (1572864 bytes); the rest is headroom for protobuf framing and compares.
MAX_TXN_BYTES = 1_400_000
#: Generous per-operation framing estimate (tags, lengths, lease id).
OP_OVERHEAD = 32


#: etcd's ``--max-request-bytes`` default: a request over it is refused.
MAX_REQUEST_BYTES = 1_572_864
#: gRPC's default receive limit, which the client keeps: a bigger response fails.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

Key = str | bytes


def key_bytes(key: Key) -> bytes:
    """`key` as etcd stores it (the inverse of how `Entry.key` is decoded)."""
    return key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")


def key_text(raw: bytes) -> str:
    """A key read from etcd as ``str``; `key_bytes` gives the same bytes back."""
    return raw.decode("utf-8", "surrogateescape")


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's range end)."""
    data = bytearray(prefix)
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return b"\0"
    data[-1] += 1
    return bytes(data)


@dataclass(slots=True)  # not frozen: one per key read, and frozen init is slow
class Entry:
    """One key as read: its value and the revision that last modified it."""

    key: str
    value: bytes
    mod_revision: int
    #: The lease the key is attached to; 0 for none.
    lease: int = 0
    #: The revision that created the key (since it last did not exist).
    create_revision: int = 0
    #: How often the key was written since it was created (1 after the first put).
    version: int = 0


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

CompareTarget = Literal["version", "create", "mod", "value", "lease"]
CompareResult = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: `target` of `key` compared with `value`.

    Targets as etcd has them: ``version`` (0 when the key is absent), ``create`` and
    ``mod`` (revisions; 0 when absent), ``value`` (bytes; false for an absent key
    whatever the value), ``lease`` (the attached lease id; 0 for none or absent).
    """

    key: Key
    target: CompareTarget
    value: int | bytes
    result: CompareResult = "=="

    @classmethod
    def absent(cls, key: Key) -> Compare:
        """True while `key` does not exist."""
        return cls(key, "version", 0)

    @classmethod
    def unmodified(cls, key: Key, mod_revision: int) -> Compare:
        """True while `key` was last modified at `mod_revision` (0: it is absent)."""
        return cls(key, "mod", mod_revision)

    @classmethod
    def holds(cls, key: Key, value: bytes) -> Compare:
        """True while `key` exists and holds exactly `value`."""
        return cls(key, "value", value)


@dataclass(frozen=True, slots=True)
class Put:
    """Write `value` at `key`, attached to lease `lease` (0: none)."""

    key: Key
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete `key`, or with `prefix` every key that starts with it."""

    key: Key
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    """Read `key`, or with `prefix` every key that starts with it (one response:
    for small ranges only; page big ones with `Store.scan`)."""

    key: Key
    prefix: bool = False


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did: whether its compares held, and per operation of the
    branch that ran the entries a `Get` read ([] for `Put` and `Delete`)."""

    succeeded: bool
    results: list[list[Entry]]
    #: The store revision once the transaction was applied.
    revision: int


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: its id and the TTL etcd granted, in seconds."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch, at `revision` (the revision that made it)."""

    kind: Literal["put", "delete"]
    key: str
    #: The new value; b"" for a delete.
    value: bytes
    revision: int
    #: The lease the key is attached to after a put; 0 for a delete.
    lease: int = 0
    #: The key as it was before (when the watch asked for it and etcd still had it).
    prev: Entry | None = None


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """What the etcd member the client uses says about itself."""

    endpoint: str | None
    version: str
    db_size: int
    member_id: int
    #: The member id of the leader; 0 while there is none.
    leader: int
    raft_term: int
    revision: int
    #: Alarms and other errors the member reports (e.g. "NOSPACE").
    errors: tuple[str, ...] = ()


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
