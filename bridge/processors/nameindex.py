"""The name index (``P/pvs/<name>``, data model § Name index): claims and ownership.

Several bridges update the same entries concurrently (a PV duplicated on IOCs served
by different bridges), so every write compares the entry's mod_revision, or version 0
when it is absent, and a conflict is re-planned from a fresh read. Each plan only
writes what differs from the wanted state, so a write that timed out (and may or may
not have been applied) is simply re-evaluated and never applied twice.

Ownership rules:

* a claim by an IOC whose record is new or changed makes that IOC the owner
  (it uploaded most recently) and moves it to the end of ``claims``;
* a claim for an unchanged record only repairs: it adds a missing claim, and takes
  ownership only when the owner is not live (``uploading`` or ``active``);
* when the owner withdraws or goes inactive, ownership moves to another claimant,
  live ones first, latest in ``claims`` order. A claimant whose records no longer
  hold the name is a stale claim and is dropped on the way.

Shared marks: every write of an entry that lists more than one claimant also puts
``P/shared/<iocid>`` for each of them, in the same transaction. An IOC without the
mark is therefore the only claimant of every entry that lists it, and its entries can
only have changed through its own sessions: an unchanged re-upload need not confirm
them, and going inactive has nothing to hand over. Marks are never removed (an IOC
that once had a duplicate PV keeps being checked). Entries shared before marks
existed get the mark the first time a claim finds them.

All methods block (worker threads only).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from bridge import documents as docs
from bridge.documents import (
    PvEntry,
    RecordDocument,
    parse_ioc,
    parse_pv,
    parse_record,
    record_names,
)
from bridge.errors import StoreError
from bridge.etcd.ops import MAX_TXN_OPS, Entry, Guarded
from bridge.etcd.store import Store

#: Read-plan-write rounds before giving up on entries that keep changing under us.
MAX_ATTEMPTS = 20
#: Upper bound of the random pause before re-planning, times the round number.
CONFLICT_PAUSE_S = 0.005


@dataclass(slots=True)  # not frozen: one per name uploaded, and frozen init is slow
class Claim:
    """One name an IOC's record provides; `force` when the record is new or changed.

    `fresh`: the IOC did not provide the name before this upload, so its entry is most
    likely absent and is created without reading it first (see `NameIndex.claim`).
    """

    name: str
    record: str
    rtype: str
    alias: bool
    force: bool
    fresh: bool = False


class _Lookups:
    """Per-operation caches: which IOCs are live, and claimants' record documents."""

    def __init__(self, store: Store, keys: docs.Keys) -> None:
        self.store = store
        self.keys = keys
        self.live: dict[str, bool] = {}
        self.records: dict[str, RecordDocument | None] = {}
        self.alias_maps: dict[str, dict[str, tuple[str, str]]] = {}

    def fetch_live(self, iocids: Iterable[str]) -> None:
        missing = {i for i in iocids if i not in self.live}
        found = self.store.get_many(self.keys.ioc(i) for i in missing)
        for iocid in missing:
            raw = found.get(self.keys.ioc(iocid))
            doc = parse_ioc(raw.value) if raw is not None else None
            self.live[iocid] = doc is not None and doc.live

    def is_live(self, iocid: str) -> bool:
        if iocid not in self.live:
            self.fetch_live([iocid])
        return self.live[iocid]

    def fetch_records(self, pairs: Iterable[tuple[str, str]]) -> None:
        wanted = {self.keys.record(i, n) for i, n in pairs} - self.records.keys()
        found = self.store.get_many(wanted)
        for key in wanted:
            raw = found.get(key)
            self.records[key] = parse_record(raw.value) if raw is not None else None

    def _record(self, iocid: str, name: str) -> RecordDocument | None:
        key = self.keys.record(iocid, name)
        if key not in self.records:
            self.fetch_records([(iocid, name)])
        return self.records[key]

    def details(self, iocid: str, name: str, hint: str) -> tuple[str, str, bool] | None:
        """(record, type, alias) under which `iocid` provides `name`, or None if it doesn't.

        `hint` is a record name likely to carry `name` as an alias (the previous
        owner's record): duplicate IOCs usually load the same database.
        """
        doc = self._record(iocid, name)
        if doc is not None:
            return name, doc.rtype, False
        if hint != name:
            doc = self._record(iocid, hint)
            if doc is not None and name in doc.aliases:
                return hint, doc.rtype, True
        found = self._alias_map(iocid).get(name)
        return None if found is None else (found[0], found[1], True)

    def _alias_map(self, iocid: str) -> dict[str, tuple[str, str]]:
        """alias -> (record, type) over all of the IOC's records: the rare slow path."""
        if iocid not in self.alias_maps:
            aliases: dict[str, tuple[str, str]] = {}
            for page in self.store.scan(self.keys.records_prefix(iocid)):
                for raw in page.entries:
                    doc = parse_record(raw.value)
                    if doc is not None:
                        aliases.update(dict.fromkeys(doc.aliases, (doc.name, doc.rtype)))
            self.alias_maps[iocid] = aliases
        return self.alias_maps[iocid]


Planner = Callable[[list[str], dict[str, Entry], _Lookups], list[Guarded]]


class NameIndex:
    """Reads and writes name-index entries for one key prefix; see the module docstring."""

    def __init__(self, store: Store, keys: docs.Keys) -> None:
        self.store = store
        self.keys = keys

    # -- public operations ---------------------------------------------------------------

    def claim(self, iocid: str, claims: Iterable[Claim]) -> None:
        """Make every claimed name list `iocid`, with ownership as the module says.

        Fresh claims are first written optimistically, as new entries guarded by
        "absent" (what the plan below would write for an absent entry), saving a read
        per name when an IOC uploads new records; the names of a batch that found an
        entry present (a duplicate PV, or a racing bridge) go through the read-plan-
        write path with the rest.
        """
        wanted = {c.name: c for c in claims}
        fresh = [c for c in wanted.values() if c.fresh]
        todo = [c.name for c in wanted.values() if not c.fresh]
        if fresh:
            created = (
                Guarded(
                    self.keys.pv(c.name).encode(),
                    0,
                    docs.dumps(docs.pv_document(iocid, c.record, c.rtype, c.alias, [iocid])),
                    c.name,
                )
                for c in fresh
            )
            todo.extend(item.tag for item in self.store.write_guarded(created))

        unmarked: list[str] = []

        def plan(names: list[str], raws: dict[str, Entry], look: _Lookups) -> list[Guarded]:
            entries = {n: self._parsed(raws, n) for n in names}
            look.fetch_live(
                e.owner
                for n, e in entries.items()
                if e is not None and e.owner != iocid and not wanted[n].force
            )
            out = []
            for name in names:
                entry = entries[name]
                new = _claimed(iocid, wanted[name], entry, look)
                if new is not None:
                    out.append(self._put(name, raws, new))
                elif entry is not None and len(entry.claims) > 1:
                    unmarked.append(name)  # shared, unchanged: written before marks existed?
            return out

        self._converge(todo, plan)
        if unmarked:
            self.store.write(
                [(self.keys.shared(iocid).encode(), docs.dumps(docs.shared_document(unmarked[0])))]
            )

    def confirm(self, iocid: str, claims: Iterable[Claim]) -> None:
        """Claims of unchanged records: check, then repair only what needs it.

        The usual state of such a name is an entry that `iocid` owns alone with the
        claimed details, which `claim` would leave as it is. Those entries are checked
        by value in etcd (`Store.unequal`, no reads); the names of a batch that differs
        anywhere go through `claim`.
        """
        expected = (
            (
                self.keys.pv(c.name).encode(),
                docs.dumps(docs.pv_document(iocid, c.record, c.rtype, c.alias, [iocid])),
                c,
            )
            for c in claims
        )
        todo = self.store.unequal(expected)
        if todo:
            self.claim(iocid, todo)

    def unclaim(self, iocid: str, names: Iterable[str]) -> None:
        """Remove `iocid` from the names' claims; delete entries nobody claims any more."""

        def plan(names: list[str], raws: dict[str, Entry], look: _Lookups) -> list[Guarded]:
            mine = {
                n: e
                for n in names
                if (e := self._parsed(raws, n)) is not None and iocid in e.claims
            }
            rest = {n: [c for c in e.claims if c != iocid] for n, e in mine.items()}
            self._prefetch(mine, {n: r for n, r in rest.items() if mine[n].owner == iocid}, look)
            out = []
            for name, entry in mine.items():
                new = _without(iocid, name, entry, rest[name], look)
                out.append(self._put(name, raws, new) if new else self._delete(name, raws))
            return out

        self._converge(list(dict.fromkeys(names)), plan)

    def hand_over(self, iocid: str) -> None:
        """`iocid` went inactive: move its names that other live IOCs claim to one of them.

        Without a shared mark there is nothing to hand over. With one, most names are
        still claimed by `iocid` alone: those entries are confirmed by value
        (`Store.unequal`, no reads), and only the batches that hold some other entry
        are read and re-planned.
        """
        if not self.shared(iocid):
            return  # no entry lists another claimant: nothing to hand over
        for page in self.store.scan(self.keys.records_prefix(iocid)):
            expected: list[tuple[bytes, bytes, str]] = []
            todo: list[str] = []
            for raw in page.entries:
                doc = parse_record(raw.value)
                if doc is None or not doc.complete:
                    todo.extend(record_names(raw.value))
                    continue
                for pv, alias in ((doc.name, False), *((a, True) for a in doc.aliases)):
                    value = docs.dumps(
                        docs.pv_document(iocid, doc.name, doc.rtype, alias, [iocid])
                    )
                    expected.append((self.keys.pv(pv).encode(), value, pv))
            todo.extend(self.store.unequal(expected))
            if todo:
                self._converge(list(dict.fromkeys(todo)), self._hand_over_plan(iocid))

    # -- planning ------------------------------------------------------------------------

    def _hand_over_plan(self, iocid: str) -> Planner:
        def plan(names: list[str], raws: dict[str, Entry], look: _Lookups) -> list[Guarded]:
            owned = {
                n: e
                for n in names
                if (e := self._parsed(raws, n)) is not None
                and e.owner == iocid
                and len(e.claims) > 1
            }
            look.fetch_live(c for e in owned.values() for c in e.claims if c != iocid)
            candidates = {
                n: [c for c in reversed(e.claims) if c != iocid and look.is_live(c)]
                for n, e in owned.items()
            }
            self._prefetch(owned, candidates, look)
            out = []
            for name, entry in owned.items():
                new, kept = _successor(name, entry, entry.claims, candidates[name], look)
                if new is None and kept != entry.claims:
                    new = replace(entry, claims=kept)
                if new is not None:
                    out.append(self._put(name, raws, new))
            return out

        return plan

    def _prefetch(
        self, entries: dict[str, PvEntry], candidates: dict[str, list[str]], look: _Lookups
    ) -> None:
        """Read, in batches, what choosing successors among `candidates` will need."""
        look.fetch_live(c for names in candidates.values() for c in names)
        look.fetch_records(
            pair
            for name, cands in candidates.items()
            for c in cands
            for pair in ((c, name), (c, entries[name].record))
        )

    def _converge(self, names: list[str], plan: Planner) -> None:
        """Read, plan, write guarded; re-plan what conflicted, in ever smaller batches.

        One conflicting entry fails its whole transaction, so halving the batch after
        each conflicting round makes sure every entry eventually commits on its own;
        the jittered pause keeps two bridges from colliding in lockstep.
        """
        look = _Lookups(self.store, self.keys)
        todo = names
        for attempt in range(MAX_ATTEMPTS):
            if not todo:
                return
            if attempt:
                time.sleep(random.uniform(0, CONFLICT_PAUSE_S * attempt))
            raws = self.store.get_many(self.keys.pv(n) for n in todo)
            batch = max(1, MAX_TXN_OPS >> attempt)
            failed = self.store.write_guarded(plan(todo, raws, look), batch)
            todo = [item.tag for item in failed]
        if todo:
            raise StoreError(f"name index: {len(todo)} entries kept changing, e.g. {todo[0]!r}")

    # -- helpers -------------------------------------------------------------------------

    def _parsed(self, raws: dict[str, Entry], name: str) -> PvEntry | None:
        raw = raws.get(self.keys.pv(name))
        return None if raw is None else parse_pv(raw.value)

    def _put(self, name: str, raws: dict[str, Entry], entry: PvEntry) -> Guarded:
        key = self.keys.pv(name)
        raw = raws.get(key)
        return Guarded(
            key.encode(),
            raw.mod_revision if raw else 0,
            entry.value(),
            name,
            self._marks(name, entry.claims),
        )

    def _marks(self, name: str, claims: Sequence[str]) -> tuple[tuple[bytes, bytes], ...]:
        """The shared marks that must go with an entry listing `claims` (module docstring)."""
        if len(claims) < 2:
            return ()
        value = docs.dumps(docs.shared_document(name))
        return tuple((self.keys.shared(c).encode(), value) for c in claims)

    def shared(self, iocid: str) -> bool:
        """True if some entry may list `iocid` with another claimant (its mark exists)."""
        return self.store.get(self.keys.shared(iocid)) is not None

    def _delete(self, name: str, raws: dict[str, Entry]) -> Guarded:
        key = self.keys.pv(name)
        raw = raws.get(key)
        return Guarded(key.encode(), raw.mod_revision if raw else 0, None, name)


def _claimed(iocid: str, claim: Claim, entry: PvEntry | None, look: _Lookups) -> PvEntry | None:
    """The entry after `iocid` claims `claim.name`, or None when nothing must change."""
    mine = PvEntry(iocid, claim.record, claim.rtype, claim.alias, [iocid])
    if entry is None:
        return mine
    details_same = (entry.record, entry.rtype, entry.alias) == (
        claim.record,
        claim.rtype,
        claim.alias,
    )
    keeps_owner = entry.owner != iocid and not claim.force and look.is_live(entry.owner)
    if iocid in entry.claims:
        if entry.owner == iocid and (details_same or not claim.force):
            return None
        if keeps_owner:
            return None
    elif keeps_owner:
        return replace(entry, claims=[*entry.claims, iocid])
    return replace(mine, claims=[*(c for c in entry.claims if c != iocid), iocid])


def _without(
    iocid: str, name: str, entry: PvEntry, rest: list[str], look: _Lookups
) -> PvEntry | None:
    """The entry once `iocid` no longer claims `name`, or None when it must be deleted."""
    if not rest:
        return None
    if entry.owner != iocid:
        return replace(entry, claims=rest)
    live = [c for c in reversed(rest) if look.is_live(c)]
    others = [c for c in reversed(rest) if c not in live]
    new, _ = _successor(name, entry, rest, live + others, look)
    return new


def _successor(
    name: str, entry: PvEntry, claims: Sequence[str], candidates: Sequence[str], look: _Lookups
) -> tuple[PvEntry | None, list[str]]:
    """The first candidate that really provides `name` as the new owner.

    Returns (new entry or None, claims without the stale candidates met on the way).
    """
    kept = list(claims)
    for candidate in candidates:
        found = look.details(candidate, name, entry.record)
        if found is None:
            kept.remove(candidate)
            continue
        record, rtype, alias = found
        return PvEntry(candidate, record, rtype, alias, kept), kept
    return None, kept
