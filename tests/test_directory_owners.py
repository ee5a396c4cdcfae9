"""The directory's owners against the ownership rule, under hypothesis.

Any sequence of record puts (names and aliases changing), record deletions and IOC
status changes, applied one document at a time as a watch delivers them, leaves every
name with exactly the owner, channel record, claimants and type that
`bridge.rules.ownership` gives for the documents then stored; and a load of those
documents at once gives the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.directory.model import Directory, State
from bridge.model import Record
from bridge.rules import ownership
from tests.directory_data import PREFIX, SHAPE, K, ioc_value, v1_record, v2_record

IOCS = ["h:A", "h:B", "h:C"]
RECORDS = ["N1", "N2", "N3"]
NAMES = [*RECORDS, "X1"]

PUT = st.tuples(
    st.just("put"),
    st.sampled_from(IOCS),
    st.sampled_from(RECORDS),
    st.lists(st.sampled_from(NAMES), max_size=3),
    st.sampled_from(["ai", "bo"]),
    st.booleans(),  # v1 form
)
DROP = st.tuples(st.just("drop"), st.sampled_from(IOCS), st.sampled_from(RECORDS))
STATUS = st.tuples(
    st.just("status"), st.sampled_from(IOCS), st.sampled_from(["active", "inactive", None])
)
OPS = st.lists(st.one_of(PUT, PUT, DROP, STATUS), max_size=30)


@dataclass
class Stored:
    """What etcd holds: records (iocid, record) -> (aliases, type, revision), statuses."""

    records: dict[tuple[str, str], tuple[list[str], str, int]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    items: dict[str, tuple[bytes, int]] = field(default_factory=dict)

    def expected(self, name: str) -> ownership.Ownership | None:
        providers = [
            ownership.Provider(iocid, record, revision)
            for (iocid, record), (aliases, _, revision) in self.records.items()
            if name in ownership.record_names(record, aliases)
        ]
        return ownership.resolve(
            name, providers, lambda i: ownership.is_live(self.statuses.get(i))
        )


def apply(directory: Directory, stored: Stored, op: tuple[Any, ...], revision: int) -> None:
    kind, iocid = op[0], str(op[1])
    if kind == "put":
        record, aliases, rtype, v1 = op[2], list(op[3]), op[4], op[5]
        value = Record(0, record, rtype, aliases)
        encoded = v1_record(value, iocid) if v1 else v2_record(value)
        stored.records[(iocid, record)] = (aliases, rtype, revision)
        key = K.record(iocid, record)
        stored.items[key] = (encoded, revision)
        directory.apply(key, encoded, revision)
    elif kind == "drop":
        key = K.record(iocid, str(op[2]))
        stored.records.pop((iocid, str(op[2])), None)
        stored.items.pop(key, None)
        directory.apply(key, None, revision)
    else:
        key = K.ioc(iocid)
        if op[2] is None:
            stored.statuses.pop(iocid, None)
            stored.items.pop(key, None)
            directory.apply(key, None, revision)
        else:
            encoded = ioc_value(iocid, str(op[2]))
            stored.statuses[iocid] = str(op[2])
            stored.items[key] = (encoded, revision)
            directory.apply(key, encoded, revision)


def check(state: State, stored: Stored) -> None:
    for name in NAMES:
        expected = stored.expected(name)
        slot = state.slot(name)
        if expected is None:
            assert slot is None or state.owner[slot] < 0, name
            continue
        assert slot is not None, name
        owner = state.iocs[int(state.owner[slot])].iocid
        record = state.names[int(state.target[slot])]
        assert (owner, record) == (expected.owner.iocid, expected.record.record), name
        assert state.claim_count(slot) == len(expected.claimants), name
        found = [(state.iocs[c.ioc].iocid, state.names[c.record]) for c in state.claimants(slot)]
        assert [c for c, _ in found] == [c.iocid for c in expected.claimants], name
        rtype = stored.records[(owner, record)][1]
        assert state.type_name(state.channel_type(slot)) == rtype, name
        alias = bool(state.flags[slot] & 1)
        assert alias == (record != name), name


@settings(max_examples=300, deadline=None, database=None)
@given(OPS)
def test_owners_follow_every_change_as_the_rule_says(ops: list[tuple[Any, ...]]) -> None:
    directory = Directory(SHAPE, PREFIX)
    stored = Stored()
    for revision, op in enumerate(ops, start=2):
        apply(directory, stored, op, revision)
        check(directory.state, stored)
    loaded = Directory(SHAPE, PREFIX)
    items = sorted((key, value, rev) for key, (value, rev) in stored.items.items())
    loaded.load(items, revision=len(ops) + 2)
    check(loaded.state, stored)
    assert loaded.state.count() == directory.state.count()
