"""The data model's parsers (`bridge.documents`): what writers build parses back exactly,
and no stored value, however malformed, makes a parser raise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import documents as docs
from bridge.model import Record

PARSERS: list[Callable[[bytes], Any]] = [
    docs.parse_ioc,
    docs.parse_record,
    docs.parse_pv,
    docs.parse_alive,
    docs.parse_bridge,
    docs.parse_shared,
    docs.record_names,
    docs.load_object,
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
#: Objects with the documents' field names bound to anything.
FIELDS = [
    "iocid",
    "status",
    "records",
    "aliases",
    "record_digests",
    "env",
    "name",
    "type",
    "infos",
    "claims",
    "record",
    "alias",
    "bridge",
    "port",
]
near_documents = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)


@pytest.mark.parametrize("parse", PARSERS, ids=lambda p: p.__name__)
@given(raw=st.binary(max_size=64))
def test_parsers_never_raise_on_arbitrary_bytes(parse: Callable[[bytes], Any], raw: bytes) -> None:
    parse(raw)


@pytest.mark.parametrize("parse", PARSERS, ids=lambda p: p.__name__)
@given(value=json_values | near_documents)
def test_parsers_never_raise_on_any_json(parse: Callable[[bytes], Any], value: Any) -> None:
    parse(orjson.dumps(value))


def test_ioc_document_round_trips() -> None:
    built = docs.ioc_document(
        iocid="h:IOC",
        status=docs.STATUS_ACTIVE,
        hostname="h",
        iocname="IOC",
        ip="10.0.0.1",
        port=4000,
        env={"ENGINEER": "Ada", "RSRV_SERVER_PORT": "5064"},
        bridge_id="b1",
        connected="2027-01-15T08:00:00.000Z",
        uploaded="2027-01-15T08:00:01.000Z",
        disconnected=None,
        records=3,
        aliases=1,
        record_digests=["d1", "d2"],
    )
    doc = docs.parse_ioc(docs.dumps(built))
    assert doc is not None
    assert (doc.iocid, doc.status, doc.hostname, doc.iocname, doc.bridge) == (
        "h:IOC",
        "active",
        "h",
        "IOC",
        "b1",
    )
    assert (doc.records, doc.aliases, doc.record_digests) == (3, 1, ["d1", "d2"])
    assert doc.env == {"ENGINEER": "Ada", "RSRV_SERVER_PORT": "5064"}
    assert doc.live and doc.since == "2027-01-15T08:00:01.000Z"
    assert doc.fields == built
    inactive = doc.inactive("2027-01-15T09:00:00.000Z")
    assert list(inactive) == list(built)  # every key kept, in order
    assert inactive["status"] == "inactive"
    assert inactive["disconnected"] == "2027-01-15T09:00:00.000Z"


def test_ioc_document_fields_of_the_wrong_type_are_none() -> None:
    doc = docs.parse_ioc(
        orjson.dumps(
            {"status": 1, "records": True, "record_digests": ["a", 2], "env": [1], "extra": 1}
        )
    )
    assert doc is not None
    assert (doc.status, doc.records, doc.record_digests, doc.env) == (None, None, None, {})
    assert not doc.live and doc.since is None
    assert doc.fields["extra"] == 1
    assert docs.parse_ioc(b"[]") is None
    assert docs.parse_ioc(b"\xff") is None


def test_record_document_round_trips() -> None:
    record = Record(0, "R:1", "ai", ["R:1:A", "R:1:B"], {"archive": "yes"}, "Current")
    doc = docs.parse_record(docs.record_value(record, "h:IOC"))
    assert doc == docs.RecordDocument(
        "R:1", "ai", "h:IOC", "Current", ["R:1:A", "R:1:B"], {"archive": "yes"}, True
    )
    assert doc.names == ["R:1", "R:1:A", "R:1:B"]


def test_record_document_defaults() -> None:
    doc = docs.parse_record(orjson.dumps({"name": "X", "aliases": "not a list", "infos": 3}))
    assert doc is not None
    assert (doc.rtype, doc.aliases, doc.infos, doc.complete) == ("", [], {}, False)
    assert docs.parse_record(orjson.dumps({"type": "ai"})) is None  # no name
    assert docs.record_names(orjson.dumps({"name": 5, "aliases": ["A"]})) == []


def test_name_index_entry_round_trips() -> None:
    value = docs.dumps(docs.pv_document("h:A", "REC", "ai", True, ["h:B", "h:A"]))
    entry = docs.parse_pv(value)
    assert entry == docs.PvEntry("h:A", "REC", "ai", True, ["h:B", "h:A"])
    assert entry.value() == value
    assert docs.parse_pv(orjson.dumps({"iocid": "x"})) is None


def test_alive_bridge_and_shared_documents_round_trip() -> None:
    alive = docs.parse_alive(docs.dumps(docs.alive_document("b1", "2027-01-15T08:00:00.000Z")))
    assert alive == docs.AliveDocument("b1", "2027-01-15T08:00:00.000Z")
    bridge = docs.parse_bridge(docs.dumps(docs.bridge_document("host", 5049, "1.0", "t0")))
    assert bridge == docs.BridgeDocument("host", 5049, "1.0", "t0")
    assert docs.parse_bridge(docs.dumps(docs.bridge_document("host", None, "1.0", "t0"))) == (
        docs.BridgeDocument("host", None, "1.0", "t0")
    )
    assert docs.parse_shared(docs.dumps(docs.shared_document("PV"))) == docs.SharedMark("PV")
    assert docs.parse_shared(b'{"name": 1}') == docs.SharedMark(None)
    assert docs.parse_alive(b'"text"') is None
