"""End to end: a real `twistd recsync-bridge` process, a real etcd, real sockets.

Clients are the project's fake IOC (the C RecCaster's exact byte sequence) and
pyreccaster (a third-party Rust RecCaster), both finding the bridge through a
real UDP announcement on loopback.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.etcd.process import free_port
from bridge.etcd.store import Store
from bridge.testing.checks import content_problems, spec_iocid
from bridge.testing.cluster import EtcdCluster
from bridge.testing.fakeioc import FakeIOC, IOCSpec, RecordSpec, find_bridge, make_ioc
from bridge.testing.harness import READY_TEXT, BridgeProcess
from tests.helpers import poll

pytestmark = pytest.mark.etcd

ENV = (
    ("EPICS_VERSION", "EPICS 7.0.8"),
    ("HOSTNAME", "vm"),
    ("IOCNAME", "IOC-TEST-01"),
    ("ENGINEER", "jdoe"),
    ("RSRV_SERVER_PORT", "5064"),
)
SPEC = IOCSpec(
    ENV,
    (
        RecordSpec(
            "IOC1:PV1", "ai", ("IOC1:PV1:ALIAS",), (("archive", "Monitor 1"),), "Beam current"
        ),
        RecordSpec("IOC1:PV2", "bo", (), (), "Temp \xb0C"),
        RecordSpec("IOC1:a/b%c", "calc", (), (("autosaveFields", "VAL"),), None),
    ),
)
IOCID = "vm:IOC-TEST-01"


def dump(client: Any, prefix: str) -> dict[str, Any]:
    """Everything under the prefix as {key relative to prefix: decoded JSON}."""
    out = {}
    for value, meta in client.get_prefix(prefix + "/"):
        out[meta.key.decode()[len(prefix) :]] = json.loads(value)
    return out


def mod_revisions(client: Any, prefix: str) -> dict[str, int]:
    return {meta.key.decode(): meta.mod_revision for _, meta in client.get_prefix(prefix + "/")}


def ioc_status(client: Any, prefix: str, iocid: str) -> str | None:
    value, _ = client.get(f"{prefix}/iocs/{iocid}")
    return None if value is None else json.loads(value)["status"]


@pytest.fixture
def bridge(
    tmp_path: Path, etcd_server: EtcdCluster, prefix: str
) -> Iterator[tuple[BridgeProcess, int]]:
    udp_port = free_port()
    process = BridgeProcess(
        tmp_path,
        endpoints=etcd_server.endpoints,
        prefix=prefix,
        announce_to=[f"127.0.0.1:{udp_port}"],
        recceiver={"announceInterval": 0.5, "tcptimeout": 2.0},
    )
    process.start()
    try:
        process.wait_ready()
        yield process, udp_port
    finally:
        process.stop()


def test_fake_ioc_upload_lands_exactly(
    bridge: tuple[BridgeProcess, int], etcd_client: Any, prefix: str
) -> None:
    process, udp_port = bridge
    host, port, key = find_bridge(udp_port, timeout=10)
    assert (host, port) == ("127.0.0.1", process.port)
    ioc = FakeIOC(SPEC)
    ioc.connect(host, port, key)
    try:
        poll(lambda: ioc_status(etcd_client, prefix, IOCID) == "active", what="active")
        data = dump(etcd_client, prefix)
        ioc_doc = data.pop(f"/iocs/{IOCID}")
        assert ioc_doc["status"] == "active"
        assert ioc_doc["env"] == dict(ENV)
        assert (ioc_doc["hostname"], ioc_doc["iocname"], ioc_doc["ip"]) == (
            "vm",
            "IOC-TEST-01",
            "127.0.0.1",
        )
        assert (ioc_doc["ca_port"], ioc_doc["pva_port"]) == (5064, None)
        assert (ioc_doc["epics_version"], ioc_doc["engineer"]) == ("EPICS 7.0.8", "jdoe")
        assert (ioc_doc["records"], ioc_doc["aliases"], ioc_doc["bridge"]) == (3, 1, "bridge")
        assert ioc_doc["disconnected"] is None and ioc_doc["uploaded"] >= ioc_doc["connected"]
        assert data.pop(f"/alive/{IOCID}")["bridge"] == "bridge"
        assert data.pop("/bridges/bridge")["port"] == process.port
        claims = [IOCID]
        assert data == {
            f"/records/{IOCID}/IOC1:PV1": {
                "name": "IOC1:PV1",
                "type": "ai",
                "iocid": IOCID,
                "desc": "Beam current",
                "aliases": ["IOC1:PV1:ALIAS"],
                "infos": {"archive": "Monitor 1"},
            },
            f"/records/{IOCID}/IOC1:PV2": {
                "name": "IOC1:PV2",
                "type": "bo",
                "iocid": IOCID,
                "desc": "Temp \xb0C",
                "aliases": [],
                "infos": {},
            },
            f"/records/{IOCID}/IOC1:a%2Fb%25c": {
                "name": "IOC1:a/b%c",
                "type": "calc",
                "iocid": IOCID,
                "desc": None,
                "aliases": [],
                "infos": {"autosaveFields": "VAL"},
            },
            "/pvs/IOC1:PV1": {
                "iocid": IOCID,
                "record": "IOC1:PV1",
                "type": "ai",
                "alias": False,
                "claims": claims,
            },
            "/pvs/IOC1:PV1:ALIAS": {
                "iocid": IOCID,
                "record": "IOC1:PV1",
                "type": "ai",
                "alias": True,
                "claims": claims,
            },
            "/pvs/IOC1:PV2": {
                "iocid": IOCID,
                "record": "IOC1:PV2",
                "type": "bo",
                "alias": False,
                "claims": claims,
            },
            "/pvs/IOC1:a%2Fb%25c": {
                "iocid": IOCID,
                "record": "IOC1:a/b%c",
                "type": "calc",
                "alias": False,
                "claims": claims,
            },
        }
        assert ioc.server_greeted.is_set()
    finally:
        ioc.close()
    poll(lambda: ioc_status(etcd_client, prefix, IOCID) == "inactive", what="inactive")
    value, _ = etcd_client.get(f"{prefix}/alive/{IOCID}")
    assert value is None
    doc = dump(etcd_client, prefix)[f"/iocs/{IOCID}"]
    assert doc["disconnected"] is not None


def test_reupload_writes_only_what_changed(
    bridge: tuple[BridgeProcess, int], etcd_client: Any, prefix: str
) -> None:
    _, udp_port = bridge
    host, port, key = find_bridge(udp_port, timeout=10)
    first = FakeIOC(SPEC)
    first.connect(host, port, key)
    poll(lambda: ioc_status(etcd_client, prefix, IOCID) == "active", what="first upload")
    first.close()
    poll(lambda: ioc_status(etcd_client, prefix, IOCID) == "inactive", what="inactive")
    before = mod_revisions(etcd_client, prefix)

    pv1, pv2, pv3 = SPEC.records
    changed = IOCSpec(ENV, (pv1, RecordSpec("IOC1:PV2", "bo", (), (), "New DESC")))
    second = FakeIOC(changed, first_rid=100)
    second.connect(host, port, key)
    try:
        poll(lambda: ioc_status(etcd_client, prefix, IOCID) == "active", what="re-upload")
        after = mod_revisions(etcd_client, prefix)
        data = dump(etcd_client, prefix)
    finally:
        second.close()
    p = prefix
    # Unchanged record and its index entries: untouched.
    for key_ in (f"{p}/records/{IOCID}/IOC1:PV1", f"{p}/pvs/IOC1:PV1", f"{p}/pvs/IOC1:PV1:ALIAS"):
        assert after[key_] == before[key_], key_
    # Changed record rewritten; its index entry needed no change.
    assert after[f"{p}/records/{IOCID}/IOC1:PV2"] > before[f"{p}/records/{IOCID}/IOC1:PV2"]
    assert data[f"/records/{IOCID}/IOC1:PV2"]["desc"] == "New DESC"
    # Removed record and its index entry: gone.
    assert f"/records/{IOCID}/IOC1:a%2Fb%25c" not in data
    assert "/pvs/IOC1:a%2Fb%25c" not in data
    assert data[f"/iocs/{IOCID}"]["records"] == 2


def test_unchanged_reconnect_is_found_from_the_frames_and_writes_nothing(
    bridge: tuple[BridgeProcess, int], etcd_client: Any, etcd_store: Store, prefix: str
) -> None:
    process, udp_port = bridge
    host, port, key = find_bridge(udp_port, timeout=10)
    spec = make_ioc("RUNS", 2500, hostname="vm")
    iocid = spec_iocid(spec)
    first = FakeIOC(spec)
    first.connect(host, port, key)
    poll(lambda: ioc_status(etcd_client, prefix, iocid) == "active", what="first upload")
    first.close()
    poll(lambda: ioc_status(etcd_client, prefix, iocid) == "inactive", what="inactive")
    before = mod_revisions(etcd_client, prefix)
    digests = dump(etcd_client, prefix)[f"/iocs/{iocid}"]["record_digests"]
    assert len(digests) == 3 and all(digests)  # runs of 1000, 1000 and 500 records

    # As the C RecCaster does after a reconnect: the same records with new ids.
    again = FakeIOC(spec, first_rid=2501)
    again.connect(host, port, key)
    try:
        poll(lambda: ioc_status(etcd_client, prefix, iocid) == "active", what="re-upload")
        after = mod_revisions(etcd_client, prefix)
        doc = dump(etcd_client, prefix)[f"/iocs/{iocid}"]
        assert content_problems(etcd_store, prefix, {iocid: spec}, ["bridge"]) == []
    finally:
        again.close()
    stored = {k: v for k, v in before.items() if "/records/" in k or "/pvs/" in k}
    assert len(stored) == 2500 + 2500 + 250
    assert {k: after[k] for k in stored} == stored  # not one record or index key written
    assert (doc["records"], doc["aliases"], doc["record_digests"]) == (2500, 250, digests)
    assert (
        f"IOC {iocid} active: 2500 records, 250 aliases; 0 written, 0 deleted "
        "(unchanged: nothing read)" in process.log_text()
    )


def test_pyreccaster_end_to_end_through_udp_announcement(
    tmp_path: Path, etcd_server: EtcdCluster, etcd_client: Any, prefix: str
) -> None:
    pyreccaster = pytest.importorskip("pyreccaster")
    # pyreccaster listens on 0.0.0.0:5049, fixed; announce to it on loopback only.
    process = BridgeProcess(
        tmp_path,
        endpoints=etcd_server.endpoints,
        prefix=prefix,
        announce_to=["127.0.0.1:5049"],
        recceiver={"announceInterval": 0.5},
    )
    process.start()
    stop = threading.Event()
    errors: list[BaseException] = []

    async def run_caster() -> None:
        records = [
            pyreccaster.PyRecord("PYIOC:AI", "ai", "PYIOC:AI:ALIAS", {"archive": "Monitor 1"}),
            pyreccaster.PyRecord("PYIOC:BO", "bo", None, {"recordDesc": "A bo"}),
        ]
        caster = await pyreccaster.PyReccaster.setup(
            records, {"IOCNAME": "PYIOC", "HOSTNAME": "pyhost", "ENGINEER": "rust"}
        )
        task = asyncio.ensure_future(caster.run())
        while not stop.is_set():
            await asyncio.sleep(0.05)
        task.cancel()

    def thread_main() -> None:
        try:
            asyncio.run(run_caster())
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # noqa: BLE001 - reported to the test thread
            errors.append(error)

    thread = threading.Thread(target=thread_main, daemon=True)
    try:
        process.wait_ready()
        thread.start()
        iocid = "pyhost:PYIOC"
        poll(lambda: ioc_status(etcd_client, prefix, iocid) == "active", what="pyreccaster")
        data = dump(etcd_client, prefix)
        assert data[f"/records/{iocid}/PYIOC:AI"] == {
            "name": "PYIOC:AI",
            "type": "ai",
            "iocid": iocid,
            "desc": None,
            "aliases": ["PYIOC:AI:ALIAS"],
            "infos": {"archive": "Monitor 1"},
        }
        assert data[f"/records/{iocid}/PYIOC:BO"]["desc"] == "A bo"
        assert data["/pvs/PYIOC:AI:ALIAS"]["alias"] is True
        assert data["/pvs/PYIOC:AI:ALIAS"]["record"] == "PYIOC:AI"
        assert data[f"/iocs/{iocid}"]["env"] == {
            "IOCNAME": "PYIOC",
            "HOSTNAME": "pyhost",
            "ENGINEER": "rust",
        }
        assert data[f"/iocs/{iocid}"]["records"] == 2
        assert data[f"/iocs/{iocid}"]["record_digests"]
        before = mod_revisions(etcd_client, prefix)

        # The bridge restarts; pyreccaster hears the next announcement and uploads the
        # same records again. Its client infos come after each record, so the bridge
        # compares only at the end of the first run; it finds it unchanged.
        process.stop()
        poll(lambda: ioc_status(etcd_client, prefix, iocid) == "inactive", what="inactive")
        process.start()
        poll(lambda: process.log_text().count(READY_TEXT) == 2, what="restarted bridge")
        poll(lambda: ioc_status(etcd_client, prefix, iocid) == "active", what="re-upload")
        after = mod_revisions(etcd_client, prefix)
        kept = [k for k in before if "/records/" in k or "/pvs/" in k]
        assert len(kept) == 5 and {k: after[k] for k in kept} == {k: before[k] for k in kept}
        assert (
            f"IOC {iocid} active: 2 records, 1 aliases; 0 written, 0 deleted "
            "(unchanged: nothing read)" in process.log_text()
        )
        assert not errors
    finally:
        stop.set()
        thread.join(10)
        process.stop()
