"""Names are data, never paths.

Record names, aliases, IOC names and info keys come from the peer. Whatever they
contain (``/``, ``%``, ``..``, NUL, control characters, 60 kB, bytes that are not
UTF-8) they must land under the sending IOC's own keys and can never address
another IOC's keys or the bridge's own.

The property tests check the key builders (`bridge.documents`); the etcd test drives the
real `EtcdWriter` with hostile names and compares etcd before and after.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from bridge import documents as k
from bridge.documents import Keys, decode_component, encode_component
from bridge.etcd.client import call_with_retry
from bridge.etcd.store import Store
from bridge.model import Peer, Record, Transaction, derive_identity
from bridge.protocol import wire

# Tests must not write into the repository tree: no example database, and
# Hypothesis's caches go to the temporary directory, not ./.hypothesis.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "recsync-bridge-hypothesis"))
SETTINGS = settings(
    max_examples=400, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

HOSTILE = [
    "",
    ".",
    "..",
    "...",
    "/",
    "//",
    "../../bridges/x",
    "a/../../alive/y",
    "%",
    "%2F",
    "%2E%2E",
    "%zz",
    "%%2F",
    "a\x00b",
    "\x00",
    "\x7f",
    "\n",
    "\r\n",
    "\t",
    "\x1b[31mred",
    "x/",
    "/x",
    "é/ü",
    "\u2028",
    "\ufeff",
    "名前/..",
    "\U0001f600",
    "a" * 60_000,
    "/" * 3000,
    "%" * 3000,
]

#: Text with the characters that matter over-represented.
names = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(alphabet=st.sampled_from(list("/%.\x00\x01\x1f\x7f:aZ09 -é\u2028")), max_size=40),
    st.text(max_size=80),  # any Unicode scalar value (no surrogates: wire text has none)
    st.binary(max_size=80).map(wire.decode_text),  # what the decoder makes of any bytes
)
prefixes = st.sampled_from(["/recsync", "/", "/a/b", "/t-%2F", "/x.."])


def under(prefix: str, key: str, *parts: str) -> bool:
    """`key` starts with the exact prefix plus the given encoded levels."""
    head = "/".join((Keys(prefix).prefix, *parts)) + "/"
    return key.startswith(head)


@SETTINGS
@given(names)
@example("a" * 60_000)
def test_components_round_trip_and_never_span_a_level(name: str) -> None:
    encoded = encode_component(name)
    assert decode_component(encoded) == name
    assert "/" not in encoded
    assert encoded not in (".", "..")
    assert not any(ord(ch) < 0x20 or ch == "\x7f" for ch in encoded)
    encoded.encode("utf-8")  # etcd keys are bytes: always encodable


@SETTINGS
@given(names, names)
def test_encoding_is_injective(a: str, b: str) -> None:
    assume(a != b)
    assert encode_component(a) != encode_component(b)


@SETTINGS
@given(prefixes, names, names)
def test_key_builders_split_back_and_stay_under_their_own_prefix(
    prefix: str, iocid: str, name: str
) -> None:
    keys = Keys(prefix)
    own = encode_component(iocid)
    built = {
        keys.ioc(iocid): ("iocs", iocid),
        keys.alive(iocid): ("alive", iocid),
        keys.record(iocid, name): ("records", iocid, name),
        keys.pv(name): ("pvs", name),
        keys.bridge(name): ("bridges", name),
    }
    for key, parts in built.items():
        assert keys.split(key) == parts
        assert key.startswith(keys.everything())
    assert under(prefix, keys.record(iocid, name), "records", own)
    assert keys.record(iocid, name).startswith(keys.records_prefix(iocid))
    assert keys.ioc(iocid) == keys.iocs_prefix() + own
    assert keys.alive(iocid) == keys.alive_prefix() + own
    assert keys.pv(name).startswith(keys.pvs_prefix())
    # One level each: the name cannot add levels or climb out.
    assert keys.record(iocid, name).count("/") == keys.records_prefix(iocid).count("/")
    assert keys.pv(name).count("/") == keys.pvs_prefix().count("/")


@SETTINGS
@given(names, names, names, names)
def test_record_keys_of_different_iocs_never_meet(a: str, b: str, x: str, y: str) -> None:
    assume(a != b)
    keys = Keys()
    assert keys.record(a, x) != keys.record(b, y)
    assert not keys.record(a, x).startswith(keys.records_prefix(b))
    assert keys.ioc(a) != keys.ioc(b) and keys.alive(a) != keys.alive(b)


@SETTINGS
@given(st.binary(min_size=1, max_size=200), st.binary(min_size=1, max_size=200))
def test_any_bytes_on_the_wire_give_a_name_that_stays_inside(host: bytes, ioc: bytes) -> None:
    infos = {"HOSTNAME": wire.decode_text(host), "IOCNAME": wire.decode_text(ioc)}
    identity = derive_identity(infos, Peer("10.0.0.1", 5000))
    keys = Keys()
    key = keys.record(identity.iocid, wire.decode_text(host + ioc))
    key.encode("utf-8")
    assert keys.split(key) == ("records", identity.iocid, wire.decode_text(host + ioc))


def test_hostile_names_decoded_from_the_wire_keep_their_text() -> None:
    raw = b"\xff\xfe/../\x00"  # not UTF-8
    body = struct.pack(">IBBH", 1, 0, 2, len(raw)) + b"ai" + raw
    (message,) = wire.Decoder().feed(wire.HEADER.pack(wire.PROTO_ID, 3, len(body)) + body)
    assert isinstance(message, wire.AddRecord)
    assert message.name == "\xff\xfe/../\x00"  # Latin-1, not an error
    key = Keys().record("h:i", message.name)
    assert key == "/recsync/records/h:i/\xff\xfe%2F..%2F%00"


# -- against a real etcd ---------------------------------------------------------------------

VICTIM_INFOS = {"HOSTNAME": "vm", "IOCNAME": "VICTIM"}
HOSTILE_INFOS = {
    "HOSTNAME": "../bridges/bridge-a",
    "IOCNAME": "a/../../alive/y",
    "EPICS_VERSION": "\x00\x7f/..",
    "../../iocs/vm:VICTIM": "overwrite?",
    "%2F": "/",
}
HOSTILE_RECORDS = [
    "../../bridges/x",
    "../../iocs/vm:VICTIM",
    "../../../../recsync",
    "..",
    ".",
    "/",
    "//",
    "%2F..%2F..%2Fbridges%2Fx",
    "a\x00b",
    "\x7f",
    "\x1b[2J",
    "line\nbreak",
    "\xff\xfe",
    "名前",
    "n" * 60_000,
    "/" * 2000,
]


@pytest.fixture
def lease(etcd_client: Any) -> Iterator[Any]:
    granted = etcd_client.lease(60)
    yield granted
    call_with_retry(lambda: etcd_client.revoke_lease(granted.id), deadline_s=10.0)


def snapshot(client: Any, prefix: str) -> dict[str, tuple[bytes, int]]:
    """Everything under the prefix (and around it): key -> (value, mod_revision)."""
    found: dict[str, tuple[bytes, int]] = {}
    for value, meta in client.get_prefix(prefix):  # no "/": catches siblings like P-x too
        found[meta.key.decode("utf-8")] = (value, meta.mod_revision)
    return found


@pytest.mark.etcd
def test_hostile_names_write_only_their_own_iocs_keys(
    etcd_client: Any, etcd_store: Store, prefix: str, lease: Any
) -> None:
    from bridge.processors.etcdwriter import EtcdWriter

    keys = Keys(prefix)
    writer = EtcdWriter(etcd_store, keys, "bridge-a", lambda: lease, lambda: 1.8e9)
    etcd_client.put(keys.bridge("bridge-a"), k.dumps({"host": "h"}), lease=lease)
    etcd_client.put(prefix + "-sibling/x", b"{}")  # a neighbour of the prefix itself
    victim = Peer("10.0.0.1", 1000)
    records = (
        Record(1, "VICTIM:PV1", "ai", ["VICTIM:PV1:A"], {"archive": "x"}, "d"),
        Record(2, "VICTIM:PV2", "bo"),
    )
    writer.apply(Transaction(1, victim, 0, VICTIM_INFOS, records, upload_done=True))
    before = snapshot(etcd_client, prefix)
    assert f"{prefix}/iocs/vm:VICTIM" in before

    hostile = Peer("10.6.6.6", 6666)
    iocid = derive_identity(HOSTILE_INFOS, hostile).iocid
    assert iocid == "../bridges/bridge-a:a/../../alive/y"
    recs = [
        Record(
            i,
            name,
            "ai" if i % 2 else "../x",
            [f"{name}:alias/..", "../../iocs/vm:VICTIM2"],
            {"../../bridges/bridge-a": "v", "%00\x00": "\x00"},
            "\x00desc",
        )
        for i, name in enumerate(HOSTILE_RECORDS, 1)
    ]
    writer.apply(Transaction(2, hostile, 0, HOSTILE_INFOS, recs[:5]))
    writer.apply(
        Transaction(
            2, hostile, 1, HOSTILE_INFOS, recs[5:], ("../../iocs/vm:VICTIM",), upload_done=True
        )
    )
    during = snapshot(etcd_client, prefix)
    writer.apply(Transaction(2, hostile, 2, HOSTILE_INFOS, connected=False, reason="bye"))
    after = snapshot(etcd_client, prefix)
    etcd_client.delete(prefix + "-sibling/x")

    for state in (during, after):
        changed = {key for key in state if before.get(key) != state[key]}
        changed |= {key for key in before if key not in state}
        assert changed, "the hostile upload wrote nothing at all"
        for key in changed:
            parts = keys.split(key)
            assert (
                parts in {("iocs", iocid), ("alive", iocid)}
                or (parts[0] == "records" and parts[1] == iocid and len(parts) == 3)
                or (parts[0] == "pvs" and len(parts) == 2)
            ), parts
    # Every hostile record is stored under the hostile IOC, with its exact name.
    inside = {
        keys.split(key): value
        for key, (value, _) in during.items()
        if key.startswith(keys.everything())
    }
    stored = {
        parts[2]: json.loads(value)
        for parts, value in inside.items()
        if parts[:2] == ("records", iocid)
    }
    withdrawn = "../../iocs/vm:VICTIM"  # DelRecord'ed: deleted from the IOC's own keys
    assert set(stored) == set(HOSTILE_RECORDS) - {withdrawn}
    for name, doc in stored.items():
        assert doc["name"] == name and doc["iocid"] == iocid
    pvs = {parts[1] for parts in inside if parts[0] == "pvs"}
    assert set(HOSTILE_RECORDS) - {withdrawn} <= pvs and "../../iocs/vm:VICTIM2" in pvs
    doc = json.loads(during[keys.ioc(iocid)][0])
    assert doc["env"] == HOSTILE_INFOS and doc["status"] == "active"
    assert json.loads(after[keys.ioc(iocid)][0])["status"] == "inactive"
    assert keys.alive(iocid) not in after
    # The victim and the bridge document are untouched, byte for byte.
    for key in (
        keys.ioc("vm:VICTIM"),
        keys.record("vm:VICTIM", "VICTIM:PV1"),
        keys.pv("VICTIM:PV1"),
        keys.bridge("bridge-a"),
        keys.alive("vm:VICTIM"),
    ):
        assert after[key] == before[key], key
