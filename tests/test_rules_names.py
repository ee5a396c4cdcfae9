"""Name-index rules (bridge/rules/names.py), one table per rule, plus fidelity checks.

Every row reads: the situation, what the rule decides, and why. Entries are written
``E(owner, *claims)`` with the owner's record details; IOCs are single letters.

The fidelity properties check that the pure rules decide exactly as today's name
index (bridge/processors/nameindex.py) for any entry, claim and facts; they go once
the name index calls the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import documents as docs
from bridge.documents import PvEntry
from bridge.etcd.ops import Entry, Guarded
from bridge.processors import nameindex as today
from bridge.rules import names
from bridge.rules.names import Claim, Details

KEYS = docs.Keys("/p")
FAST = settings(max_examples=200, deadline=None, database=None)


def E(owner: str, *claims: str, rec: str = "X", t: str = "ai", alias: bool = False) -> PvEntry:
    """An entry owned by `owner` (record `rec`), listing `claims` (default: the owner)."""
    return PvEntry(owner, rec, t, alias, list(claims or (owner,)))


def C(name: str = "X", rec: str = "X", t: str = "ai", alias: bool = False, force: bool = False,
      fresh: bool = False) -> Claim:  # fmt: skip
    return Claim(name, rec, t, alias, force, fresh)


@dataclass
class Facts:
    """`names.Facts` from plain data, remembering what it was asked."""

    live: set[str] = field(default_factory=set)
    #: (iocid, name) -> details; an IOC not listed for a name does not provide it.
    provides: dict[tuple[str, str], Details] = field(default_factory=dict)
    asked_live: list[str] = field(default_factory=list)
    asked_records: list[tuple[str, str]] = field(default_factory=list)

    def is_live(self, iocid: str) -> bool:
        self.asked_live.append(iocid)
        return iocid in self.live

    def details(self, iocid: str, name: str, hint: str) -> Details | None:
        self.asked_records.append((iocid, name))
        return self.provides.get((iocid, name))

    # today's _Lookups also prefetches; nothing to fetch here
    def fetch_live(self, iocids: Iterable[str]) -> None:
        list(iocids)

    def fetch_records(self, pairs: Iterable[tuple[str, str]]) -> None:
        list(pairs)


def facts(live: str = "", **provides: Details) -> Facts:
    """`facts("AB", B=("X", "ai", False))`: A and B live; B provides X as record X."""
    return Facts(set(live), {(ioc, "X"): d for ioc, d in provides.items()})


X: Details = ("X", "ai", False)
XB: Details = ("X", "bo", False)  # the same record name, another type
AL: Details = ("R", "ai", True)  # X as an alias of record R

# -- claimed -----------------------------------------------------------------------------

CLAIMED = [
    # (why, entry, claim by B, facts, expected entry or None for "unchanged")
    ("a new name: the claimant owns it alone",
     None, C(), facts(), E("B")),
    ("a new or changed record takes the name from a live owner and goes last",
     E("A"), C(force=True), facts("A"), E("B", "A", "B")),
    ("an unchanged record does not take a name from a live owner, only joins the claims",
     E("A"), C(), facts("A"), E("A", "A", "B")),
    ("an unchanged record takes a name whose owner is not live",
     E("A"), C(), facts(), E("B", "A", "B")),
    ("the owner's unchanged claim: nothing to write",
     E("B"), C(), facts("B"), None),
    ("the owner's changed record with the same details: nothing to write",
     E("B"), C(force=True), facts("B"), None),
    ("the owner's changed record with other details: the details follow",
     E("B"), C(t="bo", force=True), facts("B"), E("B", t="bo")),
    ("the owner's unchanged claim never rewrites the details",
     E("B"), C(t="bo"), facts("B"), None),
    ("a changed record moves its IOC to the end of the claims",
     E("A", "B", "A"), C(force=True), facts("A"), E("B", "A", "B")),
    ("an unchanged claim already listed leaves a live owner alone",
     E("A", "B", "A"), C(), facts("A"), None),
    ("an unchanged claim already listed takes the name from an owner not live",
     E("A", "B", "A"), C(), facts("B"), E("B", "A", "B")),
    ("an alias claim carries its record and the alias flag",
     None, C(rec="R", alias=True, force=True), facts(), E("B", rec="R", alias=True)),
]  # fmt: skip


@pytest.mark.parametrize(("why", "entry", "claim", "known", "expected"), CLAIMED)
def test_claimed(
    why: str, entry: PvEntry | None, claim: Claim, known: Facts, expected: PvEntry | None
) -> None:
    assert names.claimed("B", claim, entry, known) == expected, why


# -- released ----------------------------------------------------------------------------

RELEASED = [
    # (why, entry, facts, expected entry or None for "delete"); A releases X
    ("the last claimant goes: the entry goes",
     E("A"), facts(), None),
    ("a claimant that does not own the name just leaves the claims",
     E("B", "A", "B"), facts("B", B=X), E("B")),
    ("the owner goes: a live claimant that provides the name takes it",
     E("A", "A", "B"), facts("B", B=XB), E("B", t="bo")),
    ("live claimants come first",
     E("A", "A", "B", "C"), facts("B", B=X, C=X), E("B", "B", "C")),
    ("among claimants not live, the latest in the claims",
     E("A", "A", "B", "C"), facts("", B=X, C=X), E("C", "B", "C")),
    ("a stale claim met on the way is dropped",
     E("A", "A", "B", "C"), facts("C", B=X), E("B", "B")),
    ("no remaining claimant provides the name: the entry goes",
     E("A", "A", "B"), facts("B"), None),
    ("the successor may provide the name as an alias",
     E("A", "A", "B"), facts("B", B=AL), E("B", rec="R", alias=True)),
]  # fmt: skip


@pytest.mark.parametrize(("why", "entry", "known", "expected"), RELEASED)
def test_released(why: str, entry: PvEntry, known: Facts, expected: PvEntry | None) -> None:
    assert names.released("A", "X", entry, known) == expected, why


# -- handed_over -------------------------------------------------------------------------

HANDED_OVER = [
    # (why, entry, facts, expected entry or None for "unchanged"); A went inactive
    ("A does not own the name: nothing to hand over",
     E("B", "A", "B"), facts("B", B=X), None),
    ("A owns it alone: nothing to hand over",
     E("A"), facts(), None),
    ("a live claimant that provides it takes it; A stays a claimant",
     E("A", "A", "B"), facts("B", B=X), E("B", "A", "B")),
    ("no claimant is live: A keeps it",
     E("A", "A", "B"), facts("", B=X), None),
    ("the latest live claimant first",
     E("A", "A", "B", "C"), facts("BC", B=X, C=X), E("C", "A", "B", "C")),
    ("a stale live claimant is dropped on the way to the next",
     E("A", "A", "B", "C"), facts("BC", B=X), E("B", "A", "B")),
    ("only stale live claimants: A keeps it, without them",
     E("A", "A", "B"), facts("B"), E("A", "A")),
    ("a claimant that is not live is never asked",
     E("A", "A", "B", "C"), facts("B", B=X, C=X), E("B", "A", "B", "C")),
]  # fmt: skip


@pytest.mark.parametrize(("why", "entry", "known", "expected"), HANDED_OVER)
def test_handed_over(why: str, entry: PvEntry, known: Facts, expected: PvEntry | None) -> None:
    assert names.handed_over("A", "X", entry, known) == expected, why


# -- writes: guards, marks, creations, confirmations ----------------------------------------


def raws(**entries: tuple[PvEntry | bytes, int]) -> dict[str, Entry]:
    """Entries as read: name -> (entry or raw bytes, mod_revision)."""
    out = {}
    for name, (entry, rev) in entries.items():
        value = entry if isinstance(entry, bytes) else entry.value()
        out[KEYS.pv(name)] = Entry(KEYS.pv(name), value, rev)
    return out


def marks(name: str, *iocids: str) -> tuple[tuple[bytes, bytes], ...]:
    value = docs.dumps(docs.shared_document(name))
    return tuple((KEYS.shared(i).encode(), value) for i in iocids)


def put(name: str, rev: int, entry: PvEntry, *marked: str) -> Guarded:
    return Guarded(KEYS.pv(name).encode(), rev, entry.value(), name, marks(name, *marked))


def delete(name: str, rev: int) -> Guarded:
    return Guarded(KEYS.pv(name).encode(), rev, None, name)


PLAN_CLAIM = [
    # (why, as read, claims by B, facts, expected writes, shared entries left alone)
    ("an absent entry is created, guarded by absent (revision 0)",
     {}, [C(force=True)], facts(), [put("X", 0, E("B"))], []),
    ("a write is guarded by the revision read, and marks every claimant of a shared entry",
     {"X": (E("A"), 7)}, [C(force=True)], facts("A"),
     [put("X", 7, E("B", "A", "B"), "A", "B")], []),
    ("a shared entry left as it is: B's mark is asked for (written before marks existed?)",
     {"X": (E("A", "A", "B"), 7)}, [C()], facts("A"), [], ["X"]),
    ("an entry B owns alone and left as it is asks for nothing",
     {"X": (E("B"), 7)}, [C()], facts(), [], []),
    ("an unreadable entry is overwritten, guarded by its revision",
     {"X": (b"{not json", 3)}, [C()], facts(), [put("X", 3, E("B"))], []),
    ("one claim per name: the last one given wins",
     {}, [C(t="ai", force=True), C(t="bo", force=True)], facts(), [put("X", 0, E("B", t="bo"))],
     []),
]  # fmt: skip


@pytest.mark.parametrize(("why", "read", "claims", "known", "writes", "shared"), PLAN_CLAIM)
def test_plan_claim(
    why: str,
    read: Mapping[str, Any],
    claims: list[Claim],
    known: Facts,
    writes: list[Guarded],
    shared: list[str],
) -> None:
    plan = names.plan_claim(KEYS, "B", claims, raws(**read), known)
    assert (plan.writes, plan.shared) == (writes, shared), why


PLAN_UNCLAIM = [
    # (why, as read, names A releases, facts, expected writes)
    ("an entry A alone claims is deleted, guarded by its revision",
     {"X": (E("A"), 5)}, ["X"], facts(), [delete("X", 5)]),
    ("an entry that does not list A is left alone",
     {"X": (E("B"), 5)}, ["X"], facts(), []),
    ("an absent entry: nothing to do",
     {}, ["X"], facts(), []),
    ("the new owner's entry is written with the marks its remaining claims need",
     {"X": (E("A", "A", "B", "C"), 5)}, ["X"], facts("B", B=X, C=X),
     [put("X", 5, E("B", "B", "C"), "B", "C")]),
    ("an entry left with one claimant needs no marks",
     {"X": (E("B", "A", "B"), 5)}, ["X"], facts("B", B=X), [put("X", 5, E("B"))]),
    ("a name given twice is planned once",
     {"X": (E("A"), 5)}, ["X", "X"], facts(), [delete("X", 5)]),
]  # fmt: skip


@pytest.mark.parametrize(("why", "read", "released", "known", "writes"), PLAN_UNCLAIM)
def test_plan_unclaim(
    why: str, read: Mapping[str, Any], released: list[str], known: Facts, writes: list[Guarded]
) -> None:
    assert names.plan_unclaim(KEYS, "A", released, raws(**read), known) == writes, why


PLAN_HAND_OVER = [
    # (why, as read, names of A, facts, expected writes)
    ("an entry handed over keeps A's claim and everyone's marks",
     {"X": (E("A", "A", "B"), 9)}, ["X"], facts("B", B=X),
     [put("X", 9, E("B", "A", "B"), "A", "B")]),
    ("nobody live: nothing written",
     {"X": (E("A", "A", "B"), 9)}, ["X"], facts("", B=X), []),
    ("A owns it alone: nothing written",
     {"X": (E("A"), 9)}, ["X"], facts(), []),
    ("only a stale claim dropped: A keeps the entry, alone, without marks",
     {"X": (E("A", "A", "B"), 9)}, ["X"], facts("B"), [put("X", 9, E("A"))]),
]  # fmt: skip


@pytest.mark.parametrize(("why", "read", "held", "known", "writes"), PLAN_HAND_OVER)
def test_plan_hand_over(
    why: str, read: Mapping[str, Any], held: list[str], known: Facts, writes: list[Guarded]
) -> None:
    assert names.plan_hand_over(KEYS, "A", held, raws(**read), known) == writes, why


def test_fresh_claims_are_created_blind_guarded_by_absent() -> None:
    claims = [
        C("N", "N", force=True, fresh=True),
        C("M", "M", force=True),
        C("N:A", "N", alias=True, force=True, fresh=True),
    ]
    fresh, rest = names.split_fresh(claims)
    assert [c.name for c in fresh] == ["N", "N:A"] and [c.name for c in rest] == ["M"]
    assert names.creations(KEYS, "B", fresh) == [
        Guarded(KEYS.pv("N").encode(), 0, E("B", rec="N").value(), "N"),
        Guarded(KEYS.pv("N:A").encode(), 0, E("B", rec="N", alias=True).value(), "N:A"),
    ]


def test_confirmations_compare_with_the_entry_an_unshared_ioc_leaves() -> None:
    claim = C("X:A", "X", alias=True)
    assert names.confirmations(KEYS, "B", [claim]) == [
        (KEYS.pv("X:A").encode(), E("B", rec="X", alias=True).value(), claim)
    ]


SHARED_MARKS = [
    # (why, claims, marked IOCs)
    ("an entry with one claimant needs no mark", ["A"], []),
    ("an entry with two claimants marks both", ["A", "B"], ["A", "B"]),
    ("and so on for every claimant", ["A", "B", "C"], ["A", "B", "C"]),
]


@pytest.mark.parametrize(("why", "claims", "marked"), SHARED_MARKS)
def test_shared_marks(why: str, claims: list[str], marked: list[str]) -> None:
    assert names.shared_marks(KEYS, "X", claims) == marks("X", *marked), why


def test_a_marked_iocs_hand_over_confirms_its_records_names_then_reads_the_rest() -> None:
    good = docs.dumps({"name": "R", "type": "ai", "aliases": ["R:A"]})
    odd = docs.dumps({"name": "Q", "type": 7, "aliases": ["Q:A"]})  # type is not text
    expected, todo = names.hand_over_confirmations(KEYS, "A", [good, odd, b"junk"])
    assert expected == [
        (KEYS.pv("R").encode(), E("A", rec="R").value(), "R"),
        (KEYS.pv("R:A").encode(), E("A", rec="R", alias=True).value(), "R:A"),
    ]
    assert todo == ["Q", "Q:A"]


# -- prefetch: a plan asks only for facts its prefetch named --------------------------------

iocids = st.sampled_from("ABCD")
entries = st.lists(iocids, min_size=1, max_size=4, unique=True).flatmap(
    lambda listed: st.builds(
        PvEntry,
        st.sampled_from(listed) | iocids,  # an owner not listed: a hand-written entry
        st.just("X"),
        st.sampled_from(["ai", "bo"]),
        st.booleans(),
        st.just(listed),
    )
)
claims = st.builds(
    Claim,
    st.just("X"),
    st.just("X"),
    st.sampled_from(["ai", "bo"]),
    st.booleans(),
    st.booleans(),
)
known = st.builds(
    Facts,
    st.sets(iocids),
    st.dictionaries(
        st.tuples(iocids, st.just("X")),
        st.tuples(st.sampled_from(["X", "R"]), st.sampled_from(["ai", "bo"]), st.booleans()),
    ),
)


@FAST
@given(iocids, st.one_of(st.none(), entries), claims, known)
def test_plan_claim_asks_only_for_what_it_prefetched(
    iocid: str, entry: PvEntry | None, claim: Claim, facts: Facts
) -> None:
    read = raws(X=(entry, 4)) if entry else {}
    wanted = names.claim_prefetch(KEYS, iocid, [claim], read)
    names.plan_claim(KEYS, iocid, [claim], read, facts)
    assert set(facts.asked_live) <= wanted.live and not facts.asked_records


@FAST
@given(iocids, entries, known)
def test_plan_unclaim_asks_only_for_what_it_prefetched(
    iocid: str, entry: PvEntry, facts: Facts
) -> None:
    read = raws(X=(entry, 4))
    wanted = names.unclaim_prefetch(KEYS, iocid, ["X"], read)
    names.plan_unclaim(KEYS, iocid, ["X"], read, facts)
    assert set(facts.asked_live) <= wanted.live
    assert set(facts.asked_records) <= wanted.records


@FAST
@given(iocids, entries, known)
def test_plan_hand_over_asks_only_for_what_it_prefetched(
    iocid: str, entry: PvEntry, facts: Facts
) -> None:
    read = raws(X=(entry, 4))
    first = names.hand_over_prefetch(KEYS, iocid, ["X"], read, {})
    live = {i: i in facts.live for i in first.live}
    second = names.hand_over_prefetch(KEYS, iocid, ["X"], read, live)
    names.plan_hand_over(KEYS, iocid, ["X"], read, facts)
    assert set(facts.asked_live) <= first.live
    assert set(facts.asked_records) <= second.records


# -- fidelity: the rules decide as today's name index does -----------------------------------


@FAST
@given(iocids, st.one_of(st.none(), entries), claims, known)
def test_claimed_decides_as_the_name_index_does(
    iocid: str, entry: PvEntry | None, claim: Claim, facts: Facts
) -> None:
    then = today._claimed(
        iocid,
        today.Claim(claim.name, claim.record, claim.rtype, claim.alias, claim.force),
        entry,
        facts,  # type: ignore[arg-type]  # the two lookups it calls
    )
    assert names.claimed(iocid, claim, entry, facts) == then


@FAST
@given(iocids, entries, known)
def test_released_decides_as_the_name_index_does(iocid: str, entry: PvEntry, facts: Facts) -> None:
    listed = list(dict.fromkeys([*entry.claims, iocid]))  # released only by a claimant
    entry = PvEntry(entry.owner, entry.record, entry.rtype, entry.alias, listed)
    rest = [c for c in entry.claims if c != iocid]
    then = today._without(iocid, "X", entry, rest, facts)  # type: ignore[arg-type]
    assert names.released(iocid, "X", entry, facts) == then


@FAST
@given(iocids, entries, known)
def test_hand_over_plans_as_the_name_index_does(iocid: str, entry: PvEntry, facts: Facts) -> None:
    read = raws(X=(entry, 4))
    index = today.NameIndex(None, KEYS)  # type: ignore[arg-type]  # planning reads nothing
    then = index._hand_over_plan(iocid)(["X"], read, facts)  # type: ignore[arg-type]
    assert names.plan_hand_over(KEYS, iocid, ["X"], read, facts) == then
