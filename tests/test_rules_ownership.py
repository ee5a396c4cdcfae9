"""Ownership of a name, derived (bridge/rules/ownership.py): one table per question,
then properties against a brute-force reading of the data model's definition.

Rows read: the situation, what the rule decides, why. ``P("A", "X", 7)`` is IOC A's
record X at revision 7; ``live`` lists the live IOCs (single letters); the name asked
about is always ``N``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.rules import ownership
from bridge.rules.ownership import Claim, Provider

P = Provider
FAST = settings(max_examples=300, deadline=None, database=None)


def resolve(providers: Sequence[Provider], live: str) -> ownership.Ownership | None:
    return ownership.resolve("N", providers, lambda iocid: iocid in live)


# -- the owner ------------------------------------------------------------------------------

OWNERS = [
    # (why, providers of N, live IOCs, owner, its channel record)
    ("one claimant owns its name", [P("A", "N", 5)], "A", "A", "N"),
    ("one claimant owns it even when not live", [P("A", "N", 5)], "", "A", "N"),
    ("the newer upload wins among live", [P("A", "N", 5), P("B", "N", 9)], "AB", "B", "N"),
    ("order of the providers does not matter", [P("B", "N", 9), P("A", "N", 5)], "AB", "B", "N"),
    ("a live claimant beats a newer one not live", [P("A", "N", 5), P("B", "N", 9)], "A", "A",
     "N"),
    ("an unchanged re-upload (nothing written) takes nothing from a live owner",
     [P("A", "N", 9), P("B", "N", 5)], "AB", "A", "N"),
    ("nobody live: the newest owns", [P("A", "N", 5), P("B", "N", 9)], "", "B", "N"),
    ("several live: newest of the live", [P("A", "N", 3), P("B", "N", 7), P("C", "N", 9)],
     "AB", "B", "N"),
    ("an alias claims like a record", [P("A", "N", 5), P("B", "R", 9)], "AB", "B", "R"),
    ("a tie goes to the IOC id sorting first", [P("B", "N", 5), P("A", "N", 5)], "AB", "A", "N"),
    ("a tie among those not live, likewise", [P("B", "N", 5), P("A", "N", 5)], "", "A", "N"),
    ("an IOC's claim is its newest provider", [P("A", "N", 5), P("A", "R", 12), P("B", "N", 9)],
     "AB", "A", "N"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "providers", "live", "owner", "record"), OWNERS)
def test_owner(why: str, providers: list[Provider], live: str, owner: str, record: str) -> None:
    found = resolve(providers, live)
    assert found is not None, why
    assert (found.owner.iocid, found.record.record) == (owner, record), why


def test_no_provider_no_owner() -> None:
    assert resolve([], "A") is None


# -- the claimants, ranked ------------------------------------------------------------------

RANKED = [
    # (why, providers, live, claimants best first as (iocid, revision, live))
    ("live first, then newest first",
     [P("A", "N", 5), P("B", "N", 9), P("C", "N", 7)], "AC",
     [("C", 7, True), ("A", 5, True), ("B", 9, False)]),
    ("one claim per IOC, with its newest revision",
     [P("A", "N", 5), P("A", "R", 8), P("B", "N", 6)], "AB",
     [("A", 8, True), ("B", 6, True)]),
]  # fmt: skip


@pytest.mark.parametrize(("why", "providers", "live", "expected"), RANKED)
def test_claimants_ranked(
    why: str, providers: list[Provider], live: str, expected: list[tuple[str, int, bool]]
) -> None:
    found = resolve(providers, live)
    assert found is not None
    assert [(c.iocid, c.revision, c.live) for c in found.claimants] == expected, why
    assert found.duplicate == (len(expected) > 1)


# -- which record of the owner is the channel -----------------------------------------------

CHANNEL_RECORDS = [
    # (why, one IOC's providers of N, the channel record)
    ("its record named N, even when an alias is newer", [P("A", "R", 9), P("A", "N", 2)], "N"),
    ("else the newest record listing N as an alias", [P("A", "R", 2), P("A", "S", 9)], "S"),
    ("a tie between aliases: the record name sorting first", [P("A", "S", 4), P("A", "R", 4)],
     "R"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "providers", "record"), CHANNEL_RECORDS)
def test_channel_record(why: str, providers: list[Provider], record: str) -> None:
    found = ownership.channel_record("N", providers)
    assert found is not None and found.record == record, why


# -- names of a record and statuses ---------------------------------------------------------

NAMES = [
    # (why, record, aliases, the names it provides)
    ("its own name first, then the aliases", "R", ["A1", "A2"], ["R", "A1", "A2"]),
    ("an alias repeated counts once", "R", ["A1", "A1"], ["R", "A1"]),
    ("an alias equal to the record's name adds nothing", "R", ["R", "A1"], ["R", "A1"]),
]


@pytest.mark.parametrize(("why", "record", "aliases", "names"), NAMES)
def test_record_names(why: str, record: str, aliases: list[str], names: list[str]) -> None:
    assert ownership.record_names(record, aliases) == names, why


@pytest.mark.parametrize(
    ("status", "live"),
    [("active", True), ("uploading", True), ("inactive", False), (None, False), (1, False),
     ("Active", False)],
)  # fmt: skip
def test_live_statuses(status: object, live: bool) -> None:
    assert ownership.is_live(status) is live


# -- properties: the rule is the definition -------------------------------------------------

IOCS = st.sampled_from("ABCDE")
PROVIDERS = st.lists(
    st.builds(Provider, IOCS, st.sampled_from(["N", "R", "S"]), st.integers(1, 6)), max_size=8
)
LIVE = st.sets(IOCS).map(lambda s: "".join(sorted(s)))


def brute_force(providers: list[Provider], live: str) -> tuple[str, str] | None:
    """The data model's words, read literally: (owner, channel record)."""
    iocs = {p.iocid for p in providers}
    if not iocs:
        return None
    revision = {i: max(p.revision for p in providers if p.iocid == i) for i in iocs}
    pool = [i for i in iocs if i in live] or list(iocs)
    newest = max(revision[i] for i in pool)
    owner = min(i for i in pool if revision[i] == newest)
    mine = [p for p in providers if p.iocid == owner]
    if any(p.record == "N" for p in mine):
        return owner, "N"
    latest = max(p.revision for p in mine)
    return owner, min(p.record for p in mine if p.revision == latest)


@FAST
@given(PROVIDERS, LIVE)
def test_rule_is_the_definition(providers: list[Provider], live: str) -> None:
    found = resolve(providers, live)
    expected = brute_force(providers, live)
    assert (None if found is None else (found.owner.iocid, found.record.record)) == expected


@FAST
@given(PROVIDERS, LIVE, st.randoms(use_true_random=False))
def test_order_of_providers_never_matters(
    providers: list[Provider], live: str, rnd: random.Random
) -> None:
    shuffled = list(providers)
    rnd.shuffle(shuffled)
    assert resolve(shuffled, live) == resolve(providers, live)


@FAST
@given(PROVIDERS, LIVE, IOCS)
def test_removing_another_claimant_keeps_the_owner(
    providers: list[Provider], live: str, gone: str
) -> None:
    found = resolve(providers, live)
    if found is None or found.owner.iocid == gone:
        return
    rest = [p for p in providers if p.iocid != gone]
    after = resolve(rest, live)
    assert after is not None and after.owner == found.owner and after.record == found.record


@FAST
@given(PROVIDERS, LIVE)
def test_ranked_claimants_are_every_claimant_once_owner_first(
    providers: list[Provider], live: str
) -> None:
    found = resolve(providers, live)
    if found is None:
        return
    assert sorted(c.iocid for c in found.claimants) == sorted({p.iocid for p in providers})
    assert found.claimants[0] == found.owner
    assert found.owner == ownership.owner(found.claimants)
    keys = [ownership.preference(c) for c in found.claimants]
    assert keys == sorted(keys)


def test_claim_values() -> None:
    claims = ownership.claims([P("A", "N", 3), P("A", "R", 1)], lambda i: False)
    assert claims == [Claim("A", 3, False)]
