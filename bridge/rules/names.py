"""Name-index rules (``P/pvs/<name>``): claims, ownership, successors, shared marks.

An entry lists every IOC whose stored records hold the name (its *claims*) and one of
them, the *owner*, whose record it describes. Several bridges update entries at
once, so every write of an entry is a `Guarded` on the mod_revision the entry was
read at (0: read as absent), and an applier re-reads and re-plans what conflicted.
A plan only writes what differs from the wanted state, so re-planning after a
write whose answer was lost never applies anything twice.

Ownership:

* a claim by an IOC whose record is new or changed (`Claim.force`) makes that IOC
  the owner and moves it to the end of ``claims``;
* a claim for an unchanged record only repairs: it adds a missing claim, and takes
  ownership only when the owner is not live (``uploading`` or ``active``);
* when the owner releases the name or goes inactive, ownership moves to another
  claimant, live ones first, latest in ``claims`` order. A claimant whose records
  no longer hold the name is a stale claim and is dropped on the way.

Shared marks (``P/shared/<iocid>``): every write of an entry that lists more than one
claimant also puts the mark of each of them, in the same transaction. An IOC without
the mark is therefore the only claimant of every entry that lists it, so its entries
can only have changed through its own sessions: an unchanged re-upload need not
confirm them, and going inactive has nothing to hand over. Marks are never removed.
A claim that finds a shared entry it need not change asks for its own mark (entries
written before marks existed).

The facts a decision needs besides the entries (is an IOC live, which record of an
IOC provides a name) come through `Facts`, which the applier fills in batches (see
the ``*_prefetch`` functions) and tests fill from a dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bridge import documents as docs
from bridge.documents import PvEntry, parse_pv, parse_record, record_names
from bridge.etcd.ops import Entry, Guarded, Write

#: (record, record type, is an alias) under which an IOC provides a name.
Details = tuple[str, str, bool]


class Facts(Protocol):
    """What the name rules need to know besides the entries themselves."""

    def is_live(self, iocid: str) -> bool:
        """True if the IOC's document says ``uploading`` or ``active``."""

    def details(self, iocid: str, name: str, hint: str) -> Details | None:
        """How `iocid`'s stored records provide `name`, or None if they don't.

        `hint` is a record likely to carry `name` as an alias (the current owner's
        record): duplicate IOCs usually load the same database.
        """


@dataclass(slots=True)  # not frozen: one per name uploaded, and frozen init is slow
class Claim:
    """One name an IOC's record provides; `force` when the record is new or changed.

    `fresh`: the IOC did not provide the name before this upload, so its entry is most
    likely absent and is created without reading it first (`creations`).
    """

    name: str
    record: str
    rtype: str
    alias: bool
    force: bool
    fresh: bool = False


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Facts a plan will ask for: IOCs whose liveness, and (iocid, record) documents.

    Only a name that is an alias on a record other than the hinted one is looked up
    beyond these (`Facts.details` scans the IOC's records then: the rare slow path).
    """

    live: frozenset[str] = frozenset()
    records: frozenset[tuple[str, str]] = frozenset()


@dataclass(slots=True)
class ClaimPlan:
    """The writes of one claim round, and the shared entries it found and left alone.

    `shared` non-empty: the claiming IOC must have its shared mark (`shared_mark`).
    """

    writes: list[Guarded] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)


# -- one entry ---------------------------------------------------------------------------


def claimed(iocid: str, claim: Claim, entry: PvEntry | None, facts: Facts) -> PvEntry | None:
    """The entry after `iocid` claims `claim.name`, or None when nothing must change."""
    mine = PvEntry(iocid, claim.record, claim.rtype, claim.alias, [iocid])
    if entry is None:
        return mine
    same = (entry.record, entry.rtype, entry.alias) == (claim.record, claim.rtype, claim.alias)
    keeps_owner = entry.owner != iocid and not claim.force and facts.is_live(entry.owner)
    if iocid in entry.claims:
        if entry.owner == iocid and (same or not claim.force):
            return None
        if keeps_owner:
            return None
    elif keeps_owner:
        return replace(entry, claims=[*entry.claims, iocid])
    return replace(mine, claims=[*(c for c in entry.claims if c != iocid), iocid])


def released(iocid: str, name: str, entry: PvEntry, facts: Facts) -> PvEntry | None:
    """The entry once `iocid`, one of its claimants, no longer claims `name`.

    None: nobody (who still provides the name) claims it; delete the entry.
    """
    rest = [c for c in entry.claims if c != iocid]
    if not rest:
        return None
    if entry.owner != iocid:
        return replace(entry, claims=rest)
    live = [c for c in reversed(rest) if facts.is_live(c)]
    others = [c for c in reversed(rest) if c not in live]
    new, _ = successor(name, entry, rest, live + others, facts)
    return new


def handed_over(iocid: str, name: str, entry: PvEntry, facts: Facts) -> PvEntry | None:
    """The entry once `iocid` went inactive: a live claimant that provides it owns it.

    None: nothing changes (`iocid` does not own it, owns it alone, or no live
    claimant provides the name and no stale claim was met). `iocid` stays a claimant:
    its stored records still hold the name.
    """
    if entry.owner != iocid or len(entry.claims) <= 1:
        return None
    candidates = [c for c in reversed(entry.claims) if c != iocid and facts.is_live(c)]
    new, kept = successor(name, entry, entry.claims, candidates, facts)
    if new is None and kept != entry.claims:
        new = replace(entry, claims=kept)
    return new


def successor(
    name: str, entry: PvEntry, claims: Sequence[str], candidates: Sequence[str], facts: Facts
) -> tuple[PvEntry | None, list[str]]:
    """The first of `candidates` (all in `claims`) that really provides `name`, as owner.

    Returns (the new entry or None, `claims` without the stale candidates met on the way).
    """
    kept = list(claims)
    for candidate in candidates:
        found = facts.details(candidate, name, entry.record)
        if found is None:
            kept.remove(candidate)
            continue
        record, rtype, alias = found
        return PvEntry(candidate, record, rtype, alias, kept), kept
    return None, kept


# -- writes ------------------------------------------------------------------------------


def shared_marks(
    keys: docs.Keys, name: str, claims: Sequence[str]
) -> tuple[tuple[bytes, bytes], ...]:
    """The shared marks that must go with an entry listing `claims` (module docstring)."""
    if len(claims) < 2:
        return ()
    value = docs.dumps(docs.shared_document(name))
    return tuple((keys.shared(c).encode(), value) for c in claims)


def shared_mark(keys: docs.Keys, iocid: str, name: str) -> Write:
    """`iocid`'s mark, naming one entry it shares (`ClaimPlan.shared`)."""
    return keys.shared(iocid).encode(), docs.dumps(docs.shared_document(name))


def entry_put(keys: docs.Keys, name: str, raws: Mapping[str, Entry], entry: PvEntry) -> Guarded:
    """Write `entry` at `name` if it is still as read, with the marks it needs."""
    key = keys.pv(name)
    raw = raws.get(key)
    return Guarded(
        key.encode(),
        raw.mod_revision if raw else 0,
        entry.value(),
        name,
        shared_marks(keys, name, entry.claims),
    )


def entry_delete(keys: docs.Keys, name: str, raws: Mapping[str, Entry]) -> Guarded:
    """Delete the entry at `name` if it is still as read."""
    key = keys.pv(name)
    raw = raws.get(key)
    return Guarded(key.encode(), raw.mod_revision if raw else 0, None, name)


def parsed(keys: docs.Keys, raws: Mapping[str, Entry], name: str) -> PvEntry | None:
    """The entry at `name` in `raws` (keyed by key, as `Store.get_many` returns them).

    An unreadable entry reads as None and is overwritten, guarded by its revision.
    """
    raw = raws.get(keys.pv(name))
    return None if raw is None else parse_pv(raw.value)


def sole_entry(iocid: str, record: str, rtype: str, alias: bool) -> bytes:
    """The value of an entry that `iocid` owns alone: what an unshared IOC leaves."""
    return docs.dumps(docs.pv_document(iocid, record, rtype, alias, [iocid]))


# -- claim: names of new, changed or unchanged records -----------------------------------


def split_fresh(claims: Iterable[Claim]) -> tuple[list[Claim], list[Claim]]:
    """(fresh claims, the others), one claim per name (the last one given wins)."""
    wanted = {c.name: c for c in claims}
    fresh = [c for c in wanted.values() if c.fresh]
    return fresh, [c for c in wanted.values() if not c.fresh]


def creations(keys: docs.Keys, iocid: str, fresh: Iterable[Claim]) -> list[Guarded]:
    """Fresh claims written blind, as new entries guarded by "absent" (tag: the name).

    What `plan_claim` would write for an absent entry, without reading it first; the
    names whose entry turned out present go through `plan_claim`.
    """
    return [
        Guarded(keys.pv(c.name).encode(), 0, sole_entry(iocid, c.record, c.rtype, c.alias), c.name)
        for c in fresh
    ]


def claim_prefetch(
    keys: docs.Keys, iocid: str, claims: Iterable[Claim], raws: Mapping[str, Entry]
) -> Prefetch:
    """The liveness `plan_claim` asks for: owners that an unchanged record may keep."""
    live = set()
    for claim in claims:
        entry = parsed(keys, raws, claim.name)
        if entry is not None and entry.owner != iocid and not claim.force:
            live.add(entry.owner)
    return Prefetch(live=frozenset(live))


def plan_claim(
    keys: docs.Keys, iocid: str, claims: Iterable[Claim], raws: Mapping[str, Entry], facts: Facts
) -> ClaimPlan:
    """One round of claims by `iocid`: the entries to write, as read in `raws`."""
    plan = ClaimPlan()
    for name, claim in {c.name: c for c in claims}.items():
        entry = parsed(keys, raws, name)
        new = claimed(iocid, claim, entry, facts)
        if new is not None:
            plan.writes.append(entry_put(keys, name, raws, new))
        elif entry is not None and len(entry.claims) > 1:
            plan.shared.append(name)  # shared, unchanged: written before marks existed?
    return plan


def confirmations(
    keys: docs.Keys, iocid: str, claims: Iterable[Claim]
) -> list[tuple[bytes, bytes, Claim]]:
    """Value compares that confirm unchanged records' entries without reading them.

    The usual state of such a name is an entry `iocid` owns alone with the claimed
    details, which `plan_claim` would leave alone; the claims of every compare batch
    that fails go through `plan_claim`.
    """
    return [
        (keys.pv(c.name).encode(), sole_entry(iocid, c.record, c.rtype, c.alias), c)
        for c in claims
    ]


# -- unclaim: names an IOC's records no longer hold --------------------------------------


def _released_entries(
    keys: docs.Keys, iocid: str, names: Iterable[str], raws: Mapping[str, Entry]
) -> dict[str, PvEntry]:
    return {
        n: e
        for n in dict.fromkeys(names)
        if (e := parsed(keys, raws, n)) is not None and iocid in e.claims
    }


def _candidate_records(
    entries: Mapping[str, PvEntry], candidates: Mapping[str, list[str]]
) -> Prefetch:
    return Prefetch(
        live=frozenset(c for names in candidates.values() for c in names),
        records=frozenset(
            pair
            for name, cands in candidates.items()
            for c in cands
            for pair in ((c, name), (c, entries[name].record))
        ),
    )


def unclaim_prefetch(
    keys: docs.Keys, iocid: str, names: Iterable[str], raws: Mapping[str, Entry]
) -> Prefetch:
    """The facts `plan_unclaim` asks for: the other claimants of entries `iocid` owns."""
    mine = _released_entries(keys, iocid, names, raws)
    rest = {n: [c for c in e.claims if c != iocid] for n, e in mine.items() if e.owner == iocid}
    return _candidate_records(mine, rest)


def plan_unclaim(
    keys: docs.Keys, iocid: str, names: Iterable[str], raws: Mapping[str, Entry], facts: Facts
) -> list[Guarded]:
    """Take `iocid` off the names' claims; delete entries nobody claims any more."""
    out = []
    for name, entry in _released_entries(keys, iocid, names, raws).items():
        new = released(iocid, name, entry, facts)
        out.append(
            entry_put(keys, name, raws, new) if new is not None else entry_delete(keys, name, raws)
        )
    return out


# -- hand-over: an IOC went inactive -----------------------------------------------------


def hand_over_confirmations(
    keys: docs.Keys, iocid: str, records: Iterable[bytes]
) -> tuple[list[tuple[bytes, bytes, str]], list[str]]:
    """Hand-over of a marked IOC, first step: (value compares, names to read at once).

    Most names of a marked IOC are still claimed by it alone: one compare per name
    and alias of its stored `records` confirms such an entry; the names of every
    failed compare batch, and those of unreadable records, go to `plan_hand_over`.
    An IOC without its shared mark has nothing to hand over (module docstring).
    """
    expected: list[tuple[bytes, bytes, str]] = []
    todo: list[str] = []
    for raw in records:
        doc = parse_record(raw)
        if doc is None or not doc.complete:
            todo.extend(record_names(raw))
            continue
        for pv, alias in ((doc.name, False), *((a, True) for a in doc.aliases)):
            value = sole_entry(iocid, doc.name, doc.rtype, alias)
            expected.append((keys.pv(pv).encode(), value, pv))
    return expected, todo


def hand_over_prefetch(
    keys: docs.Keys,
    iocid: str,
    names: Iterable[str],
    raws: Mapping[str, Entry],
    is_live: Mapping[str, bool],
) -> Prefetch:
    """The facts `plan_hand_over` asks for, in two steps.

    Call it first with an empty `is_live`: it asks for the liveness of the other
    claimants. Call it again with their liveness: it asks for the records of the
    live ones.
    """
    owned = _owned(keys, iocid, names, raws)
    others = {c for e in owned.values() for c in e.claims if c != iocid}
    if not others <= is_live.keys():
        return Prefetch(live=frozenset(others))
    candidates = {
        n: [c for c in reversed(e.claims) if c != iocid and is_live[c]] for n, e in owned.items()
    }
    return _candidate_records(owned, candidates)


def _owned(
    keys: docs.Keys, iocid: str, names: Iterable[str], raws: Mapping[str, Entry]
) -> dict[str, PvEntry]:
    return {
        n: e
        for n in dict.fromkeys(names)
        if (e := parsed(keys, raws, n)) is not None and e.owner == iocid and len(e.claims) > 1
    }


def plan_hand_over(
    keys: docs.Keys, iocid: str, names: Iterable[str], raws: Mapping[str, Entry], facts: Facts
) -> list[Guarded]:
    """Move the names `iocid` owns with other claimants to a live claimant that provides it."""
    out = []
    for name, entry in _owned(keys, iocid, names, raws).items():
        new = handed_over(iocid, name, entry, facts)
        if new is not None:
            out.append(entry_put(keys, name, raws, new))
    return out
