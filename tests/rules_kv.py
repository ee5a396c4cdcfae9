"""etcd as the rules see it, for the rules' simulation (tests/rules_sim.py).

Keys with values, mod_revisions and leases; one revision per write request; a
transaction of `bridge.etcd.ops` compares and operations answered with a `TxnResult`;
guarded writes and value compares as the store makes them; and `Facts` for the name
rules, read from a copy of the key space.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge import documents as docs
from bridge.documents import RecordDocument, parse_ioc, parse_record
from bridge.etcd.ops import Compare, Delete, Entry, Get, Guarded, Put, TxnResult, Write, key_bytes
from bridge.rules.names import Details
from bridge.rules.txn import Txn

KEYS = docs.Keys("/s")


@dataclass
class Cell:
    value: bytes
    mod: int
    lease: int = 0


class KV:
    """etcd's key space: one revision per write request, leases that take keys along."""

    def __init__(self) -> None:
        self.cells: dict[bytes, Cell] = {}
        self.revision = 0
        self.leases: set[int] = set()
        self._lease_ids = 100

    def grant(self) -> int:
        self._lease_ids += 1
        self.leases.add(self._lease_ids)
        return self._lease_ids

    def revoke(self, lease: int) -> list[Entry]:
        """Drop `lease` and its keys; returns them as they were (etcd's delete events)."""
        self.leases.discard(lease)
        gone = [self._entry(key, c) for key, c in self.cells.items() if c.lease == lease]
        if gone:
            self.revision += 1
            for e in gone:
                del self.cells[e.key.encode()]
        return gone

    def _entry(self, key: bytes, cell: Cell) -> Entry:
        return Entry(key.decode(), cell.value, cell.mod, cell.lease)

    def get(self, key: bytes) -> Entry | None:
        cell = self.cells.get(key)
        return None if cell is None else self._entry(key, cell)

    def value(self, key: str) -> bytes | None:
        cell = self.cells.get(key.encode())
        return None if cell is None else cell.value

    def get_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        found = {key: self.get(key.encode()) for key in keys}
        return {key: e for key, e in found.items() if e is not None}

    def scan(self, prefix: str) -> list[Entry]:
        p = prefix.encode()
        return [self._entry(key, c) for key, c in sorted(self.cells.items()) if key.startswith(p)]

    def holds(self, compare: Compare) -> bool:
        """The compares the rules and the store use (equality on version 0, mod, value)."""
        assert compare.result == "=="
        cell = self.cells.get(key_bytes(compare.key))
        if compare.target == "value":
            return cell is not None and cell.value == compare.value
        if compare.target == "version":
            assert compare.value == 0
            return cell is None
        assert compare.target == "mod"
        return (cell.mod if cell else 0) == compare.value

    def _apply(self, ops: Sequence[Any]) -> list[list[Entry]]:
        answers: list[list[Entry]] = []
        if any(not isinstance(op, Get) for op in ops):
            self.revision += 1
        for op in ops:
            key = key_bytes(op.key)
            if isinstance(op, Get):
                found = self.get(key)
                answers.append([] if found is None else [found])
                continue
            answers.append([])
            if isinstance(op, Delete):
                self.cells.pop(key, None)
            else:
                assert isinstance(op, Put)
                assert not op.lease or op.lease in self.leases, "a write on a dead lease"
                self.cells[key] = Cell(op.value, self.revision, op.lease)
        return answers

    def txn(self, txn: Txn) -> TxnResult:
        ok = all(self.holds(c) for c in txn.compares)
        return TxnResult(ok, self._apply(txn.success if ok else txn.failure), self.revision)

    def guarded(self, items: Sequence[Guarded]) -> list[Guarded]:
        """Each item in its own transaction (a batch fails whole; per item is finer)."""
        failed = []
        for item in items:
            if not self.holds(Compare.unmodified(item.key, item.mod_revision)):
                failed.append(item)
                continue
            ops: list[Any] = [
                Delete(item.key) if item.value is None else Put(item.key, item.value)
            ]
            ops += [Put(key, value) for key, value in item.also]
            self._apply(ops)
        return failed

    def write(self, writes: Sequence[Write]) -> None:
        if writes:
            self._apply([Delete(key) if v is None else Put(key, v) for key, v in writes])

    def unequal(self, items: Sequence[tuple[bytes, bytes, Any]]) -> list[Any]:
        return [tag for key, value, tag in items if not self.holds(Compare.holds(key, value))]


class Facts:
    """`names.Facts` read from the store (a copy taken with the entries)."""

    def __init__(self, kv: KV) -> None:
        self.cells = dict(kv.cells)

    def _value(self, key: str) -> bytes | None:
        cell = self.cells.get(key.encode())
        return None if cell is None else cell.value

    def is_live(self, iocid: str) -> bool:
        value = self._value(KEYS.ioc(iocid))
        doc = parse_ioc(value) if value is not None else None
        return doc is not None and doc.live

    def details(self, iocid: str, name: str, hint: str) -> Details | None:
        """As the name index's lookups: the record, the hinted record, then every record."""
        doc = self._record(iocid, name)
        if doc is not None:
            return name, doc.rtype, False
        if hint != name:
            doc = self._record(iocid, hint)
            if doc is not None and name in doc.aliases:
                return hint, doc.rtype, True
        aliases: dict[str, tuple[str, str]] = {}
        prefix = KEYS.records_prefix(iocid).encode()
        for key, cell in sorted(self.cells.items()):
            doc = parse_record(cell.value) if key.startswith(prefix) else None
            if doc is not None:
                aliases.update(dict.fromkeys(doc.aliases, (doc.name, doc.rtype)))
        found = aliases.get(name)
        return None if found is None else (found[0], found[1], True)

    def _record(self, iocid: str, name: str) -> RecordDocument | None:
        value = self._value(KEYS.record(iocid, name))
        return None if value is None else parse_record(value)
