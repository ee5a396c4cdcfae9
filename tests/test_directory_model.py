"""The directory view: channels shaped as the reference ``cf`` processor shaped them,
their exact JSON, updates one document at a time, duplicates, and hostile names."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from bridge import documents
from bridge.directory import search
from bridge.directory.channels import ChannelShape, cf_time
from bridge.directory.model import Directory
from bridge.directory.query import parse_query
from bridge.model import Record
from tests.directory_data import IOC_A, IOC_B, PREFIX, SHAPE, K, directory


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


def test_duplicate_shows_the_owner_record_and_how_many_claim_it() -> None:
    values = dict(props(channel(directory(), "SR:C01:BPM2")))
    assert (values["iocid"], values["recordType"]) == (IOC_B, "longin")
    assert (values["recordDesc"], values["duplicateCount"]) == ("Beam y on B", "2")


def test_ownership_moving_back_swaps_the_record_in() -> None:
    cf = directory()
    index = documents.pv_document(IOC_A, "SR:C01:BPM2", "ao", False, [IOC_B, IOC_A])
    cf.apply(K.pv("SR:C01:BPM2"), documents.dumps(index))
    values = dict(props(channel(cf, "SR:C01:BPM2")))
    assert (values["iocid"], values["recordDesc"]) == (IOC_A, "Beam y")
    cf.apply(K.record(IOC_A, "SR:C01:BPM2"), None)
    values = dict(props(channel(cf, "SR:C01:BPM2")))
    assert "recordDesc" not in values and values["iocid"] == IOC_A


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
    cf.apply(K.pv("BR:Q1"), None)
    assert cf.state.count() == 5
    assert search.count(cf.state, parse_query([("~name", "BR:Q1")])) == 0
    record = Record(0, "AA:NEW", "ai", [], {}, "new one")
    cf.apply(K.record(IOC_A, "AA:NEW"), documents.record_value(record, IOC_A))
    assert search.count(cf.state, parse_query([("~name", "AA:*")])) == 0  # no index yet
    index = documents.pv_document(IOC_A, "AA:NEW", "ai", False, [IOC_A])
    cf.apply(K.pv("AA:NEW"), documents.dumps(index))
    selection = search.select(cf.state, parse_query([("~size", "1")]), exact_count=False)
    assert [cf.state.names[s] for s in selection.slots] == ["AA:NEW"]
    doc = json.loads(documents.dumps(_ioc_doc(IOC_A, "inactive")))
    cf.apply(K.ioc(IOC_A), orjson.dumps(doc))
    assert dict(props(channel(cf, "AA:NEW")))["pvStatus"] == "Inactive"


def _ioc_doc(iocid: str, status: str) -> dict[str, Any]:
    return documents.ioc_document(
        iocid=iocid,
        status=status,
        hostname="hostA",
        iocname="IOCA",
        ip="10.0.0.1",
        port=1,
        env={},
        bridge_id="bridge-b",
        connected="2026-11-23T21:00:00.000Z",
        uploaded=None,
        disconnected="2026-11-23T23:00:00.000Z",
        records=0,
        aliases=0,
    )


def test_many_inserts_keep_name_order() -> None:
    cf = Directory(SHAPE, PREFIX)
    names = [f"N{(i * 7919) % 10007:05d}" for i in range(10007)]
    for name in names:
        index = documents.pv_document(IOC_A, name, "ai", False, [IOC_A])
        cf.apply(K.pv(name), documents.dumps(index))
    found = search.select(cf.state, parse_query([("~size", "10000")]), exact_count=True)
    assert found.count == 10007
    assert [cf.state.names[s] for s in found.slots] == sorted(names)[:10000]
    assert search.count(cf.state, parse_query([("~name", "n0001*")])) == 10
    assert cf.state.slot("N05000") is not None and cf.state.slot("n05000") is None


def test_garbage_values_and_foreign_keys_are_ignored() -> None:
    cf = directory()
    cf.apply(K.pv("BR:Q1"), b"not json")
    cf.apply(K.pv("BR:Q1"), b"[1, 2]")
    cf.apply("/elsewhere/pvs/X", b"{}")
    cf.apply(K.alive(IOC_A), documents.dumps({"bridge": "bridge-a", "since": "t"}))
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
    cf.apply(K.record(IOC_A, name), documents.record_value(record, IOC_A))
    for each, alias in documents.pv_names(record):
        index = documents.pv_document(IOC_A, name, "ai", alias, [IOC_A])
        cf.apply(K.pv(each), documents.dumps(index))
    found = channel(cf, name)
    assert found["name"] == name
    assert dict(props(found))["recordDesc"] == name
    assert dict(props(channel(cf, name + ":A")))["alias"] == name
    escaped = "".join("\\" + c if c in "\\*?" else c for c in name)
    selection = search.select(cf.state, parse_query([("~name", escaped)]), exact_count=False)
    assert [cf.state.names[s] for s in selection.slots] == [name]
    body = b"[" + b",".join(cf.state.encode(s) for s in selection.slots) + b"]"
    assert json.loads(body)[0]["name"] == name
