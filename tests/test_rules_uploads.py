"""Upload rules (bridge/rules/uploads.py), one table per rule.

Records are written ``R(name, *aliases, desc=...)``; the IOC is ``h:I``. Each row reads:
the situation, what the rule decides, and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import documents as docs
from bridge.etcd.ops import Entry, Lease
from bridge.model import KeptRun, Record
from bridge.processors import etcdwriter as today
from bridge.rules import uploads
from bridge.rules.names import Claim
from bridge.rules.uploads import StoredUpload

KEYS = docs.Keys("/p")
IOC = "h:I"


def R(name: str, *aliases: str, desc: str = "d", t: str = "ai") -> Record:
    return Record(0, name, t, list(aliases), {}, desc)


def stored_as(*records: Record) -> dict[str, uploads.Stored]:
    return {r.name: uploads.stored(docs.record_value(r, IOC)) for r in records}


def plan(stored: Sequence[Record], arriving: Sequence[Record]) -> uploads.RecordsPlan:
    items = [(r, docs.record_value(r, IOC)) for r in arriving]
    return uploads.plan_records(KEYS, IOC, items, stored_as(*stored))


def written(p: uploads.RecordsPlan) -> list[str]:
    return [KEYS.split(key.decode())[-1] for key, _ in p.puts]


def claims(p: uploads.RecordsPlan) -> list[tuple[str, str, bool, bool]]:
    """(name, record, force, fresh) of the claims to make."""
    return [(c.name, c.record, c.force, c.fresh) for c in p.claims]


PLAN_RECORDS = [
    # (why, stored, arriving, written, claims (name, record, force, fresh), confirmed, dropped)
    ("a new record is written and its names claimed fresh (created blind)",
     [], [R("N", "N:A")], ["N"], [("N", "N", True, True), ("N:A", "N", True, True)], [], []),
    ("an unchanged record is not written; its names are only confirmed",
     [R("U", "U:A")], [R("U", "U:A")], [], [], ["U", "U:A"], []),
    ("a changed record is written; its names claimed with force (they exist: not fresh)",
     [R("C")], [R("C", desc="new")], ["C"], [("C", "C", True, False)], [], []),
    ("a changed record's new alias is fresh",
     [R("C")], [R("C", "C:A")], ["C"], [("C", "C", True, False), ("C:A", "C", True, True)], [],
     []),
    ("an alias a re-sent record no longer carries is dropped",
     [R("C", "C:A")], [R("C")], ["C"], [("C", "C", True, False)], [], ["C:A"]),
    ("a name sent twice in one upload: the second is compared with nothing, so new",
     [R("T")], [R("T"), R("T", desc="again")], ["T"], [("T", "T", True, True)], ["T"], []),
    ("an alias moving to another record: dropped by one, claimed fresh by the other",
     [R("A1", "M"), R("A2")], [R("A1"), R("A2", "M")], ["A1", "A2"],
     [("A1", "A1", True, False), ("A2", "A2", True, False), ("M", "A2", True, True)], [], ["M"]),
    ("a record name becoming an alias of another record: a new claim, fresh",
     [R("P"), R("Q")], [R("Q", "P")], ["Q"], [("Q", "Q", True, False), ("P", "Q", True, True)],
     [], []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("why", "stored", "arriving", "puts", "claimed", "confirmed", "dropped"), PLAN_RECORDS
)
def test_plan_records(
    why: str,
    stored: list[Record],
    arriving: list[Record],
    puts: list[str],
    claimed: list[tuple[str, str, bool, bool]],
    confirmed: list[str],
    dropped: list[str],
) -> None:
    p = plan(stored, arriving)
    assert written(p) == puts, why
    assert claims(p) == claimed, why
    assert [c.name for c in p.unchanged] == confirmed, why
    assert p.dropped == dropped, why
    assert p.claimed == [n for r in arriving for n in (r.name, *r.aliases)], why
    assert p.seen == [r.name for r in stored if r.name in {a.name for a in arriving}], why


def test_puts_are_the_encoded_documents_under_the_iocs_records() -> None:
    record = R("a/b")
    p = plan([], [record])
    assert p.puts == [(KEYS.record(IOC, "a/b").encode(), docs.record_value(record, IOC))]


UNCLAIMABLE = [
    # (why, names to unclaim, names claimed in this upload, unclaimed)
    ("a name nobody in this upload claims is unclaimed", ["A"], [], ["A"]),
    ("a name another record of this upload claims stays", ["A"], ["A"], []),
    ("each name on its own", ["A", "B"], ["B"], ["A"]),
]


@pytest.mark.parametrize(("why", "names", "claimed", "unclaimed"), UNCLAIMABLE)
def test_unclaimable(why: str, names: list[str], claimed: list[str], unclaimed: list[str]) -> None:
    hashes = {uploads.name_hash(n) for n in claimed}
    assert uploads.unclaimable(names, hashes) == unclaimed, why


def test_stale_records_give_their_names_and_aliases() -> None:
    assert uploads.stale_names(stored_as(R("S", "S:A", "S:B"), R("T"))) == [
        "S",
        "S:A",
        "S:B",
        "T",
    ]


def test_withdrawal_deletes_and_unclaims_the_stored_records_names() -> None:
    stored = R("W", "W:A")
    found = {
        KEYS.record(IOC, "W"): Entry(KEYS.record(IOC, "W"), docs.record_value(stored, IOC), 3)
    }
    w = uploads.plan_withdrawal(KEYS, IOC, ["W", "GONE"], found)
    assert w.deletes == [
        (KEYS.record(IOC, "W").encode(), None),
        (KEYS.record(IOC, "GONE").encode(), None),
    ]
    assert w.names == ["W", "W:A", "GONE"]  # a record not found still has its name unclaimed
    assert (w.records, w.aliases) == (1, 1)  # counts drop only for what was stored


# -- the fast path -----------------------------------------------------------------------


def doc(**fields: object) -> bytes:
    return docs.dumps({"iocid": IOC, "status": "active", **fields})


STORED_UPLOAD = [
    # (why, IOC document, shared mark, stored upload or None)
    ("no IOC document: load the stored records", None, False, None),
    ("an unreadable IOC document: load", b"{", False, None),
    ("digests null (upload began, never completed, or withdrew): load",
     doc(record_digests=None, records=3), False, None),
    ("digests and a record count: runs may be kept; no mark, the index is trusted",
     doc(record_digests=["a", "b"], records=3), False, StoredUpload(("a", "b"), 3, True)),
    ("a shared mark: runs may be kept, their index entries are confirmed",
     doc(record_digests=["a"], records=1), True, StoredUpload(("a",), 1, False)),
    ("no records: an empty upload is complete too",
     doc(record_digests=[], records=0), False, StoredUpload((), 0, True)),
    ("a digest that is not text: load", doc(record_digests=["a", 1], records=2), False, None),
    ("a negative record count: load", doc(record_digests=["a"], records=-1), False, None),
    ("no record count: load", doc(record_digests=["a"]), False, None),
    ("a JSON value that is not an object: load", b"[1]", False, None),
]  # fmt: skip


@pytest.mark.parametrize(("why", "value", "shared", "expected"), STORED_UPLOAD)
def test_stored_upload(
    why: str, value: bytes | None, shared: bool, expected: StoredUpload | None
) -> None:
    assert uploads.stored_upload(value, shared) == expected, why


@pytest.mark.parametrize(("why", "value", "shared", "expected"), STORED_UPLOAD)
def test_the_writer_reads_the_stored_upload_as_the_rule_does(
    why: str, value: bytes | None, shared: bool, expected: StoredUpload | None
) -> None:
    """Fidelity (goes once the writer calls the rule)."""
    found = {KEYS.shared(IOC): Entry(KEYS.shared(IOC), b"{}", 1)} if shared else {}
    if value is not None:
        found[KEYS.ioc(IOC)] = Entry(KEYS.ioc(IOC), value, 2)
    store = SimpleNamespace(get_many=lambda keys: {x: found[x] for x in keys if x in found})
    lease = Lease(1, 10)
    writer = today.EtcdWriter(store, KEYS, "b1", lambda: lease, lambda: 0.0)  # type: ignore[arg-type]
    then = writer._stored_digests(IOC)
    now = None if expected is None else (list(expected.digests), expected.records, shared)
    assert then == now, why


def run(index: int, digest: str) -> KeptRun:
    return KeptRun(index, digest, ["R1", "R2"], ["ai", "bo"], ["R2:A"], [1])


RUN_MATCHES = [
    # (why, stored digests, run, matches)
    ("the stored digest at the run's index", ("a", "b"), run(1, "b"), True),
    ("another digest at that index", ("a", "b"), run(1, "a"), False),
    ("an index past the stored runs", ("a",), run(1, "a"), False),
]


@pytest.mark.parametrize(("why", "digests", "kept", "matches"), RUN_MATCHES)
def test_run_matches(why: str, digests: tuple[str, ...], kept: KeptRun, matches: bool) -> None:
    assert uploads.run_matches(StoredUpload(digests, 2, True), kept) is matches, why


def test_a_kept_runs_claims_are_its_records_and_aliases_unchanged() -> None:
    assert uploads.kept_claims(run(0, "a")) == [
        Claim("R1", "R1", "ai", False, False),
        Claim("R2", "R2", "bo", False, False),
        Claim("R2:A", "R2", "bo", True, False),
    ]


UNCHANGED_AT_END = [
    # (why, stored (runs, records), this upload (runs, records), unchanged)
    ("every stored run kept, same record count: nothing to load or delete",
     (2, 1500), (2, 1500), True),
    ("fewer runs: stored records were not sent again, load and delete them",
     (2, 1500), (1, 1000), False),
    ("more runs than stored (all kept, impossible by digests): load",
     (1, 1000), (2, 1000), False),
    ("same runs, another count: load", (2, 1500), (2, 1499), False),
]  # fmt: skip


@pytest.mark.parametrize(("why", "before", "now", "unchanged"), UNCHANGED_AT_END)
def test_unchanged_at_end(
    why: str, before: tuple[int, int], now: tuple[int, int], unchanged: bool
) -> None:
    stored = StoredUpload(tuple(str(i) for i in range(before[0])), before[1], True)
    assert uploads.unchanged_at_end(stored, *now) is unchanged, why


DIGESTS_TO_STORE = [
    # (why, withdrew, digests, records, stored digests)
    ("a complete upload's digests describe what is stored", False, ["a", "b"], 3, ["a", "b"]),
    ("a DelRecord: the frames hold records that are not stored", True, ["a"], 3, None),
    ("records without digests: the server did not cut runs", False, [], 3, None),
    ("no records at all: complete, with no runs", False, [], 0, []),
    ("an uncomparable run's empty digest is stored as it is", False, ["", "b"], 3, ["", "b"]),
]


@pytest.mark.parametrize(("why", "withdrew", "digests", "records", "expected"), DIGESTS_TO_STORE)
def test_digests_to_store(
    why: str, withdrew: bool, digests: list[str], records: int, expected: list[str] | None
) -> None:
    assert uploads.digests_to_store(withdrew, digests, records) == expected, why


# -- record fitting ----------------------------------------------------------------------

FIT = [
    # (why, record, limit, infos after or None)
    ("a record that fits is kept as it is", Record(0, "F", "ai", [], {"a": "x" * 10}), 2000,
     {"a": "x" * 10}),
    ("the longest info is cut, with the mark",
     Record(0, "F", "ai", [], {"a": "x" * 5000, "b": "y"}), 2000,
     {"a": "x" * 1250 + uploads.TRUNCATED_MARK, "b": "y"}),
    ("too big even without infos: refused", Record(0, "F", "ai", ["A" * 3000], {"a": "x"}), 2000,
     None),
]  # fmt: skip


@pytest.mark.parametrize(("why", "record", "limit", "infos"), FIT)
def test_fit_record(why: str, record: Record, limit: int, infos: dict[str, str] | None) -> None:
    fitted = uploads.fit_record(record, IOC, limit)
    assert (None if fitted is None else fitted.infos) == infos, why
    if fitted is not None:
        assert len(docs.record_value(fitted, IOC)) <= limit


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.dictionaries(st.text(max_size=5), st.text(max_size=3000), max_size=4),
    st.lists(st.text(max_size=500), max_size=3),
    st.integers(300, 4000),
)
def test_fit_record_and_fingerprint_decide_as_the_writer_does(
    infos: dict[str, str], aliases: list[str], limit: int
) -> None:
    record = Record(0, "F", "ai", aliases, infos, "d")
    assert uploads.fit_record(record, IOC, limit) == today.fit_record(record, IOC, limit)
    value = docs.record_value(record, IOC)
    assert uploads.fingerprint(value) == today.fingerprint(value)
