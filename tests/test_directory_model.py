"""The directory view: channels shaped as the reference ``cf`` processor shaped them,
their exact JSON, updates one document at a time, duplicates, and hostile names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge import documents
from bridge.directory import owners, search
from bridge.directory.channels import ChannelShape, cf_time
from bridge.directory.model import Directory
from bridge.directory.query import parse_query
from bridge.model import Record
from tests.directory_data import (
    ALL,
    IOC_A,
    IOC_B,
    PREFIX,
    SHAPE,
    K,
    directory,
    ioc_value,
    v2_record,
)


def channel(cf: Directory, name: str) -> dict[str, Any]:
    slot = cf.state.slot(name)
    assert slot is not None
    out: dict[str, Any] = json.loads(cf.state.encode(slot))
    return out


def props(found: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["name"], p["value"]) for p in found["properties"]]


def test_record_channel_exactly_as_a_channelfinder_sends_it() -> None:
    found = channel(directory(), "SR:C01:BPM1")
    assert list(found) == ["name", "owner", "properties", "tags"]
    assert (found["name"], found["owner"], found["tags"]) == ("SR:C01:BPM1", "alice", [])
    for prop in found["properties"]:
        assert list(prop) == ["name", "owner", "value", "channels"]
        assert (prop["owner"], prop["channels"]) == ("cfstore", [])
    assert props(found) == [
        ("hostName", "hostA"),
        ("iocName", "IOCA"),
        ("iocid", IOC_A),
        ("iocIP", "10.0.0.1"),
        ("pvStatus", "Active"),
        ("time", cf_time("2026-11-23T21:00:01.456Z", False)),
        ("recceiverID", "bridge-a"),
        ("recordType", "ai"),
        ("recordDesc", "Beam x"),
        ("archive", "Monitor"),
        ("caPort", "5064"),
        ("pvaPort", "5075"),
    ]


def test_alias_channel_carries_its_record_properties_and_alias_first() -> None:
    found = channel(directory(), "SR:C01:BPM1:X")
    assert props(found)[0] == ("alias", "SR:C01:BPM1")
    assert props(found)[1:] == props(channel(directory(), "SR:C01:BPM1"))


def test_inactive_ioc_and_owner_fallback() -> None:
    found = channel(directory(), "BR:Q1")
    values = dict(props(found))
    assert values["pvStatus"] == "Inactive"
    assert values["time"] == cf_time("2026-11-23T22:00:00.000Z", False)
    assert found["owner"] == "cfstore"  # no ENGINEER, no CF_USERNAME
    assert "pvaPort" not in values  # the IOC sent no PVAS_SERVER_PORT


def test_duplicate_is_owned_by_the_live_claimant_and_counts_its_claimants() -> None:
    # B uploaded SR:C01:BPM2 after A, but B is inactive: the live A owns it.
    values = dict(props(channel(directory(), "SR:C01:BPM2")))
    assert (values["iocid"], values["recordType"]) == (IOC_A, "ao")
    assert (values["recordDesc"], values["duplicateCount"]) == ("Beam y", "2")


def test_owner_follows_statuses_without_any_write_to_the_records() -> None:
    cf = directory()
    cf.apply(K.ioc(IOC_B), ioc_value(IOC_B, "active", "hostB"), 100)
    values = dict(props(channel(cf, "SR:C01:BPM2")))  # both live: the newer upload
    assert (values["iocid"], values["recordType"], values["recordDesc"]) == (
        IOC_B,
        "longin",
        "Beam y on B",
    )
    cf.apply(K.ioc(IOC_A), ioc_value(IOC_A, "inactive"), 101)
    assert dict(props(channel(cf, "SR:C01:BPM2")))["iocid"] == IOC_B
    cf.apply(K.ioc(IOC_B), ioc_value(IOC_B, "inactive", "hostB"), 102)
    values = dict(props(channel(cf, "SR:C01:BPM2")))  # nobody live: the newer upload
    assert (values["iocid"], values["pvStatus"]) == (IOC_B, "Inactive")
    cf.apply(K.ioc(IOC_A), ioc_value(IOC_A, "active"), 103)
    assert dict(props(channel(cf, "SR:C01:BPM2")))["iocid"] == IOC_A
    cf.apply(K.ioc(IOC_A), None, 104)  # the IOC document gone: not live
    assert dict(props(channel(cf, "SR:C01:BPM2")))["iocid"] == IOC_B


def test_a_changed_record_takes_the_name_and_its_removal_hands_it_back() -> None:
    cf = directory()
    cf.apply(K.ioc(IOC_B), ioc_value(IOC_B, "active", "hostB"), 100)
    changed = Record(0, "SR:C01:BPM2", "ao", [], {}, "Beam y, changed")
    cf.apply(K.record(IOC_A, "SR:C01:BPM2"), v2_record(changed), 101)
    values = dict(props(channel(cf, "SR:C01:BPM2")))
    assert (values["iocid"], values["recordDesc"]) == (IOC_A, "Beam y, changed")
    cf.apply(K.record(IOC_A, "SR:C01:BPM2"), None, 102)
    values = dict(props(channel(cf, "SR:C01:BPM2")))
    assert (values["iocid"], values["recordDesc"]) == (IOC_B, "Beam y on B")
    assert "duplicateCount" not in values
    cf.apply(K.record(IOC_B, "SR:C01:BPM2"), None, 103)
    assert cf.state.slot("SR:C01:BPM2") is not None
    assert search.count(cf.state, parse_query([("~name", "SR:C01:BPM2")])) == 0


def test_an_alias_claims_its_name_and_follows_the_record_changes() -> None:
    cf = directory()
    # B's record lists A's record name as an alias: a duplicate of a record and an alias.
    record = Record(0, "BR:Q1", "ai", ["SR:C01:BPM1"], {}, "Quad, one")
    cf.apply(K.ioc(IOC_B), ioc_value(IOC_B, "active", "hostB"), 100)
    cf.apply(K.record(IOC_B, "BR:Q1"), v2_record(record), 101)
    values = dict(props(channel(cf, "SR:C01:BPM1")))
    assert (values["alias"], values["iocid"], values["duplicateCount"]) == ("BR:Q1", IOC_B, "2")
    assert values["recordDesc"] == "Quad, one"
    # The alias removed from the record: the name is A's alone again.
    cf.apply(K.record(IOC_B, "BR:Q1"), v2_record(Record(0, "BR:Q1", "ai", ["NEW"])), 102)
    values = dict(props(channel(cf, "SR:C01:BPM1")))
    assert (values["iocid"], "alias" in values, "duplicateCount" in values) == (
        IOC_A,
        False,
        False,
    )
    assert dict(props(channel(cf, "NEW")))["alias"] == "BR:Q1"
    cf.apply(K.record(IOC_B, "BR:Q1"), None, 103)
    assert search.count(cf.state, parse_query([("~name", "NEW")])) == 0


def test_v1_and_v2_documents_give_the_same_channels() -> None:
    v1, v2 = directory(form="v1"), directory(form="v2")
    for name in ALL:
        assert channel(v1, name) == channel(v2, name), name
    assert v1.state.count() == v2.state.count() == len(ALL)


def test_the_v1_name_index_is_ignored() -> None:
    cf = directory(form="v1")  # its index says the inactive B owns SR:C01:BPM2
    assert dict(props(channel(cf, "SR:C01:BPM2")))["iocid"] == IOC_A
    assert cf.state.slot("GHOST") is None  # an index entry without a record


def test_a_status_change_decides_again_only_the_iocs_shared_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cf = directory()
    for i in range(200):
        record = Record(0, f"A:MANY{i:03d}", "ai", [f"A:MANY{i:03d}:AL"])
        cf.apply(K.record(IOC_A, record.name), v2_record(record), 200 + i)
    decided: list[str] = []
    settle = owners.settle

    def counting(state: Any, slot: int) -> None:
        decided.append(state.names[slot])
        settle(state, slot)

    monkeypatch.setattr(owners, "settle", counting)
    cf.apply(K.ioc(IOC_A), ioc_value(IOC_A, "inactive"), 500)
    assert decided == ["SR:C01:BPM2"]
    decided.clear()
    cf.apply(K.ioc(IOC_A), ioc_value(IOC_A, "inactive"), 501)  # no change of liveness
    assert decided == []


def test_revisions_past_32_bits() -> None:
    cf = directory()
    cf.apply(K.ioc(IOC_B), ioc_value(IOC_B, "active", "hostB"), 2**40)
    record = Record(0, "SR:C01:BPM2", "ao", [], {}, "late")
    cf.apply(K.record(IOC_A, "SR:C01:BPM2"), v2_record(record), 2**40 + 1)
    assert dict(props(channel(cf, "SR:C01:BPM2")))["iocid"] == IOC_A
    cf.apply(K.record(IOC_B, "SR:C01:BPM2"), v2_record(record), 2**40 + 2)
    assert dict(props(channel(cf, "SR:C01:BPM2")))["iocid"] == IOC_B


def test_reference_defaults_leave_out_aliases_and_record_properties() -> None:
    cf = directory(ChannelShape())
    assert cf.state.count() == 5
    assert [n for n, _ in props(channel(cf, "SR:C01:BPM1"))] == [
        "hostName",
        "iocName",
        "iocid",
        "iocIP",
        "pvStatus",
        "time",
        "recceiverID",
        "caPort",
        "pvaPort",
    ]


def test_env_vars_mapped_and_timezone() -> None:
    shape = ChannelShape(env_vars=(("ENGINEER", "Engineer"),), timezone=True)
    values = dict(props(channel(directory(shape), "SR:C01:BPM1")))
    assert values["Engineer"] == "alice"
    assert values["time"][-6] in "+-"  # ...+00:00
    assert list(values).index("Engineer") < list(values).index("caPort")


def test_updates_one_document_at_a_time() -> None:
    cf = directory()
    assert cf.state.count() == 6
    cf.apply(K.record(IOC_B, "BR:Q1"), None, 50)
    assert cf.state.count() == 5
    assert search.count(cf.state, parse_query([("~name", "BR:Q1")])) == 0
    record = Record(0, "AA:NEW", "ai", [], {}, "new one")
    cf.apply(K.record(IOC_A, "AA:NEW"), v2_record(record), 51)
    selection = search.select(cf.state, parse_query([("~size", "1")]), exact_count=False)
    assert [cf.state.names[s] for s in selection.slots] == ["AA:NEW"]
    cf.apply(K.ioc(IOC_A), ioc_value(IOC_A, "inactive"), 52)
    assert dict(props(channel(cf, "AA:NEW")))["pvStatus"] == "Inactive"
    assert cf.state.revision == 52


@pytest.mark.parametrize("bulk", [False, True])
def test_many_inserts_keep_name_order(bulk: bool) -> None:
    cf = Directory(SHAPE, PREFIX)
    names = [f"N{(i * 7919) % 10007:05d}" for i in range(10007)]
    # Every name twice: B's records have A's names (the load finds the name's slot).
    items = [
        (K.record(ioc, name), b'{"type":"ai"}', i + 1)
        for ioc in (IOC_A, IOC_B)
        for i, name in enumerate(names)
    ]
    if bulk:
        cf.load(items, revision=len(items))
    else:
        for item in items:
            cf.apply(*item)
    assert len(cf.state.names) == 10007
    found = search.select(cf.state, parse_query([("~size", "10000")]), exact_count=True)
    assert found.count == 10007
    assert [cf.state.names[s] for s in found.slots] == sorted(names)[:10000]
    assert search.count(cf.state, parse_query([("~name", "n0001*")])) == 10
    assert cf.state.slot("N05000") is not None and cf.state.slot("n05000") is None


def test_garbage_values_and_foreign_keys_are_ignored() -> None:
    cf = directory()
    cf.apply(K.record(IOC_B, "BR:Q1"), b"not json", 50)
    cf.apply(K.record(IOC_B, "BR:Q1"), b"[1, 2]", 51)
    cf.apply("/elsewhere/records/h:X/X", b"{}", 52)
    cf.apply(K.record(IOC_A, "X") + "/deeper", b"{}", 53)
    cf.apply(K.alive(IOC_A), documents.dumps({"bridge": "bridge-a", "since": "t"}), 54)
    cf.apply(PREFIX + "/version", b'{"data_model": 2}', 55)
    assert cf.state.count() == 6
    # Fields of the wrong type count as absent.
    odd = b'{"type": 7, "desc": ["x"], "aliases": "NOT-A-LIST", "infos": {"archive": 1}}'
    cf.apply(K.record(IOC_B, "BR:Q1"), odd, 56)
    values = dict(props(channel(cf, "BR:Q1")))
    assert ("recordType" in values, "recordDesc" in values, values["archive"]) == (
        False,
        False,
        "1",
    )
    assert cf.state.count() == 6


HOSTILE = [
    '<script>alert("x")</script>',
    'quote" and \\ backslash',
    "control\x00\x01\x1f\x7f chars",
    "new\nline and\ttab",
    "latin-1 \xe9\xff\xfe decoded",
    "wide \u2603 \U0001f600",
    "../../bridges/x",
    "100%",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_round_trip_through_json(name: str) -> None:
    cf = directory()
    record = Record(0, name, "ai", [name + ":A"], {"archive": name}, name)
    cf.apply(K.record(IOC_A, name), v2_record(record), 100)
    found = channel(cf, name)
    assert found["name"] == name
    assert dict(props(found))["recordDesc"] == name
    assert dict(props(channel(cf, name + ":A")))["alias"] == name
    escaped = "".join("\\" + c if c in "\\*?" else c for c in name)
    selection = search.select(cf.state, parse_query([("~name", escaped)]), exact_count=False)
    assert [cf.state.names[s] for s in selection.slots] == [name]
    body = b"[" + b",".join(cf.state.encode(s) for s in selection.slots) + b"]"
    assert json.loads(body)[0]["name"] == name
