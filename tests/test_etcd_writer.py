"""EtcdWriter against a real etcd: what an upload leaves in etcd is data model v1, exactly.

The writer is driven with hand-built `Transaction`s, as the server's sessions produce
them; no Twisted needed. Everything is checked by reading etcd back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase as TrialTestCase
from zope.interface.verify import verifyObject

from bridge.documents import Keys, record_value
from bridge.errors import EtcdUnavailable, StoreError
from bridge.etcd.backend import GrpcBackend
from bridge.etcd.client import call_with_retry, make_client
from bridge.etcd.ops import (
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    Guarded,
    Write,
    chunk_guarded,
    chunk_ops,
)
from bridge.etcd.process import find_etcd_binary
from bridge.etcd.store import Store
from bridge.interfaces import IProcessor
from bridge.model import KeptRun, Peer, Record, Transaction
from bridge.processors.etcd import EtcdProcessor
from bridge.processors.etcdwriter import MAX_RECORD_BYTES, TRUNCATED_MARK, EtcdWriter, fit_record
from bridge.processors.nameindex import NameIndex
from bridge.processors.sweep import Sweeper
from bridge.protocol.runs import RUN_RECORDS
from bridge.testing.cluster import EtcdCluster
from tests.helpers import until

pytestmark = pytest.mark.etcd

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00.000Z
BRIDGE = "bridge-a"


class Clock:
    """A settable `now()`: every timestamp in etcd is predictable."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float = 1.0) -> None:
        self.t += seconds


def store_on(target: Any, deadline_s: float = 10.0) -> Store:
    """A store on a pyetcd client, or on one of the backends below."""
    return Store(target if isinstance(target, GrpcBackend) else GrpcBackend(target), deadline_s)


class RecordingClient(GrpcBackend):
    """Records the op counts and real encoded size of every transaction.

    Every transaction of `Store` (so of the writer) passes through `GrpcBackend.txn`.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.txns: list[tuple[int, int, int]] = []  # (compares, max ops, bytes)

    def txn(self, request: Any) -> Any:
        ops = max(len(request.success), len(request.failure))
        self.txns.append((len(request.compare), ops, request.ByteSize()))
        return super().txn(request)


class FakeSession:
    """One TCP session of a fake IOC: builds transactions in order, as the server does."""

    _ids = itertools.count(1)

    def __init__(
        self, writer: EtcdWriter, infos: dict[str, str], peer: Peer | None = None
    ) -> None:
        self.writer = writer
        self.infos = infos
        self.session_id = next(self._ids)
        self.peer = peer or Peer("127.0.0.1", 40000 + self.session_id)
        self.seq = 0

    def send(
        self,
        records: Iterable[Record] = (),
        removed: Sequence[str] = (),
        done: bool = False,
        kept: Sequence[KeptRun] = (),
        digests: Sequence[str] = (),
    ) -> None:
        txn = Transaction(
            self.session_id,
            self.peer,
            self.seq,
            dict(self.infos),
            tuple(records),
            tuple(removed),
            tuple(kept),
            tuple(digests),
            upload_done=done,
        )
        self.seq += 1
        self.writer.apply(txn)

    def upload(self, records: Sequence[Record], batch: int = 100) -> None:
        """A whole upload as the server sends it when the decoder cuts runs.

        The upload's start first (no records), then runs of `RUN_RECORDS` records: a run
        whose digest the writer holds (`known_runs`) goes as a `KeptRun`, any other as
        its records in batches, the last batch carrying the run's digest. The digest
        stands for the run's frames (tests/test_runs.py covers the real one).
        """
        if self.seq == 0:
            self.send()
        expected = self.writer.known_runs(self.session_id)
        runs = [records[i : i + RUN_RECORDS] for i in range(0, len(records), RUN_RECORDS)]
        for index, run in enumerate(runs):
            digest = run_digest(run)
            if expected is not None and index < len(expected) and expected[index] == digest:
                aliases = [(a, i) for i, r in enumerate(run) for a in r.aliases]
                kept = KeptRun(
                    index,
                    digest,
                    [r.name for r in run],
                    [r.rtype for r in run],
                    [a for a, _ in aliases],
                    [i for _, i in aliases],
                )
                self.send(kept=[kept], digests=[digest])
                continue
            chunks = [run[i : i + batch] for i in range(0, len(run), batch)]
            for i, chunk in enumerate(chunks):
                self.send(chunk, digests=[digest] if i == len(chunks) - 1 else [])
        self.send(done=True)

    def close(self) -> None:
        self.writer.apply(
            Transaction(
                self.session_id,
                self.peer,
                self.seq,
                dict(self.infos),
                connected=False,
                reason="closed",
            )
        )


def ioc_infos(name: str, host: str = "vm", **extra: str) -> dict[str, str]:
    return {"HOSTNAME": host, "IOCNAME": name, **extra}


def rec(
    name: str,
    rtype: str = "ai",
    aliases: Sequence[str] = (),
    desc: str | None = None,
    **infos: str,
) -> Record:
    return Record(0, name, rtype, list(aliases), dict(infos), desc)


def snapshot(client: Any, prefix: str) -> dict[str, tuple[Any, int]]:
    """key -> (decoded value, mod_revision) for everything under `prefix`."""
    return {
        meta.key.decode(): (json.loads(value), meta.mod_revision)
        for value, meta in client.get_prefix(prefix + "/")
    }


def values(snap: dict[str, tuple[Any, int]]) -> dict[str, Any]:
    return {key: value for key, (value, _) in snap.items()}


def revision(client: Any) -> int:
    return int(client.get_response("/").header.revision)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lease(etcd_client: Any) -> Iterator[Any]:
    granted = etcd_client.lease(60)
    yield granted
    call_with_retry(lambda: etcd_client.revoke_lease(granted.id), deadline_s=10.0)


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def writer(etcd_client: Any, keys: Keys, lease: Any, clock: Clock) -> EtcdWriter:
    return EtcdWriter(store_on(etcd_client), keys, BRIDGE, lambda: lease, clock)


def make_writer(client: Any, keys: Keys, bridge_id: str, lease: Any, clock: Clock) -> EtcdWriter:
    return EtcdWriter(store_on(client), keys, bridge_id, lambda: lease, clock)


def run_digest(records: Sequence[Record]) -> str:
    """A stand-in for the digest of a run's frames: equal runs, equal digests."""
    return hashlib.blake2b(repr(records).encode(), digest_size=16).hexdigest()


def pv(owner: str, record: str, rtype: str, alias: bool, claims: list[str]) -> dict[str, Any]:
    return {"iocid": owner, "record": record, "type": rtype, "alias": alias, "claims": claims}


# -- the layout --------------------------------------------------------------------------


def test_upload_lands_exactly_as_the_data_model_says(
    writer: EtcdWriter, etcd_client: Any, prefix: str, lease: Any, clock: Clock
) -> None:
    infos = ioc_infos(
        "IOC-TEST-01",
        EPICS_VERSION="EPICS 7.0.8",
        ENGINEER="jdoe",
        LOCATION="B1-rack4",
        RSRV_SERVER_PORT="5064",
    )
    session = FakeSession(writer, infos, Peer("127.0.0.1", 40411))
    session.send(
        [
            rec(
                "IOC1:PV1",
                "ai",
                ["IOC1:PV1:ALIAS"],
                "Beam current",
                archive="Monitor 1",
                autosaveFields="VAL",
            )
        ]
    )
    clock.advance(0.25)
    session.send([rec("IOC1:PV2", "bo")], done=True)

    ioc = "vm:IOC-TEST-01"
    snap = snapshot(etcd_client, prefix)
    assert values(snap) == {
        f"{prefix}/iocs/{ioc}": {
            "iocid": ioc,
            "status": "active",
            "hostname": "vm",
            "iocname": "IOC-TEST-01",
            "ip": "127.0.0.1",
            "port": 40411,
            "ca_port": 5064,
            "pva_port": None,
            "epics_version": "EPICS 7.0.8",
            "engineer": "jdoe",
            "location": "B1-rack4",
            "env": infos,
            "bridge": BRIDGE,
            "connected": "2027-01-15T08:00:00.000Z",
            "uploaded": "2027-01-15T08:00:00.250Z",
            "disconnected": None,
            "records": 2,
            "aliases": 1,
            # The transactions carried no run digests (the server's decoder computes
            # them: tests/test_runs.py), so none are kept.
            "record_digests": None,
        },
        f"{prefix}/records/{ioc}/IOC1:PV1": {
            "name": "IOC1:PV1",
            "type": "ai",
            "iocid": ioc,
            "desc": "Beam current",
            "aliases": ["IOC1:PV1:ALIAS"],
            "infos": {"archive": "Monitor 1", "autosaveFields": "VAL"},
        },
        f"{prefix}/records/{ioc}/IOC1:PV2": {
            "name": "IOC1:PV2",
            "type": "bo",
            "iocid": ioc,
            "desc": None,
            "aliases": [],
            "infos": {},
        },
        f"{prefix}/pvs/IOC1:PV1": pv(ioc, "IOC1:PV1", "ai", False, [ioc]),
        f"{prefix}/pvs/IOC1:PV1:ALIAS": pv(ioc, "IOC1:PV1", "ai", True, [ioc]),
        f"{prefix}/pvs/IOC1:PV2": pv(ioc, "IOC1:PV2", "bo", False, [ioc]),
        f"{prefix}/alive/{ioc}": {"bridge": BRIDGE, "since": "2027-01-15T08:00:00.000Z"},
    }
    _, meta = etcd_client.get(f"{prefix}/alive/{ioc}")
    assert meta.lease_id == lease.id
    for key in snap:
        if "/alive/" not in key:
            assert etcd_client.get(key)[1].lease_id == 0, key


def test_ioc_stays_uploading_until_upload_done(
    writer: EtcdWriter, etcd_client: Any, keys: Keys
) -> None:
    session = FakeSession(writer, ioc_infos("IOC2"))
    session.send([rec("A"), rec("B")])
    doc = json.loads(etcd_client.get(keys.ioc("vm:IOC2"))[0])
    assert (doc["status"], doc["uploaded"], doc["records"]) == ("uploading", None, 0)
    assert etcd_client.get(keys.record("vm:IOC2", "A"))[0] is not None
    session.send([rec("C")], done=True)
    doc = json.loads(etcd_client.get(keys.ioc("vm:IOC2"))[0])
    assert (doc["status"], doc["records"]) == ("active", 3)


def test_disconnect_sets_inactive_and_deletes_alive_key_in_one_transaction(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, clock: Clock
) -> None:
    session = FakeSession(writer, ioc_infos("IOC3"))
    session.upload([rec("A")])
    before = revision(etcd_client)
    clock.advance(5)
    session.close()
    assert revision(etcd_client) == before + 1  # one transaction, nothing else written
    value, meta = etcd_client.get(keys.ioc("vm:IOC3"))
    doc = json.loads(value)
    assert doc["status"] == "inactive"
    assert doc["disconnected"] == "2027-01-15T08:00:05.000Z"
    assert doc["uploaded"] == "2027-01-15T08:00:00.000Z"
    assert meta.mod_revision == before + 1
    assert etcd_client.get(keys.alive("vm:IOC3")) == (None, None)


def test_disconnect_before_upload_done_leaves_records_and_never_activates(
    writer: EtcdWriter, etcd_client: Any, keys: Keys
) -> None:
    session = FakeSession(writer, ioc_infos("IOC4"))
    session.send([rec("A")])
    session.close()
    doc = json.loads(etcd_client.get(keys.ioc("vm:IOC4"))[0])
    assert (doc["status"], doc["uploaded"]) == ("inactive", None)
    assert etcd_client.get(keys.record("vm:IOC4", "A"))[0] is not None


# -- re-uploads ----------------------------------------------------------------------------


def test_reupload_writes_only_changes_and_unchanged_keys_keep_their_revision(
    writer: EtcdWriter, etcd_client: Any, prefix: str
) -> None:
    ioc = "vm:IOC5"
    first = FakeSession(writer, ioc_infos("IOC5"))
    first.upload(
        [
            rec("KEEP", aliases=["KEEP:A"]),
            rec("INFO", archive="1"),
            rec("ALIASES", aliases=["OLD:A", "KEPT:A"]),
            rec("GONE", aliases=["GONE:A"]),
            rec("TYPE", "ai"),
        ]
    )
    first.close()
    before = snapshot(etcd_client, prefix)

    second = FakeSession(writer, ioc_infos("IOC5"))
    second.upload(
        [
            rec("KEEP", aliases=["KEEP:A"]),
            rec("INFO", archive="2"),
            rec("ALIASES", aliases=["KEPT:A", "NEW:A"]),
            rec("TYPE", "ao"),
            rec("ADDED"),
        ],
        batch=2,
    )
    after = snapshot(etcd_client, prefix)

    assert {k for k in after if "/records/" in k} == {
        f"{prefix}/records/{ioc}/{n}" for n in ("KEEP", "INFO", "ALIASES", "TYPE", "ADDED")
    }
    assert {k for k in after if "/pvs/" in k} == {
        f"{prefix}/pvs/{n}"
        for n in ("KEEP", "KEEP:A", "INFO", "ALIASES", "KEPT:A", "NEW:A", "TYPE", "ADDED")
    }
    assert after[f"{prefix}/records/{ioc}/INFO"][0]["infos"] == {"archive": "2"}
    assert after[f"{prefix}/records/{ioc}/ALIASES"][0]["aliases"] == ["KEPT:A", "NEW:A"]
    assert after[f"{prefix}/pvs/TYPE"][0] == pv(ioc, "TYPE", "ao", False, [ioc])
    assert after[f"{prefix}/pvs/NEW:A"][0] == pv(ioc, "ALIASES", "ai", True, [ioc])
    unchanged = [
        f"{prefix}/records/{ioc}/KEEP",
        f"{prefix}/pvs/KEEP",
        f"{prefix}/pvs/KEEP:A",
        # the record changed, but these entries did not:
        f"{prefix}/pvs/INFO",
        f"{prefix}/pvs/ALIASES",
        f"{prefix}/pvs/KEPT:A",
    ]
    for key in unchanged:
        assert after[key] == before[key], key
    doc = after[f"{prefix}/iocs/{ioc}"][0]
    assert (doc["status"], doc["records"], doc["aliases"]) == ("active", 5, 3)


def test_identical_reupload_writes_only_the_ioc_document_and_alive_key(
    writer: EtcdWriter, etcd_client: Any, prefix: str, keys: Keys
) -> None:
    records = [rec(f"R{i}", aliases=[f"R{i}:A"], desc=f"d{i}", x=str(i)) for i in range(300)]
    first = FakeSession(writer, ioc_infos("IOC6"))
    first.upload(records)
    first.close()
    before = snapshot(etcd_client, prefix)
    start = revision(etcd_client)

    second = FakeSession(writer, ioc_infos("IOC6"))
    second.upload(records, batch=64)
    after = snapshot(etcd_client, prefix)
    # begin (IOC document + alive key in one txn) and the active IOC document: 2 revisions
    assert revision(etcd_client) == start + 2
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed == {keys.ioc("vm:IOC6"), keys.alive("vm:IOC6")}


def test_withdrawn_records_are_deleted_with_their_names(
    writer: EtcdWriter, etcd_client: Any, prefix: str, keys: Keys
) -> None:
    session = FakeSession(writer, ioc_infos("IOC7"))
    session.send([rec("A", aliases=["A:1"]), rec("B", aliases=["B:1"])])
    session.send([rec("C")], removed=["B"], done=True)
    snap = values(snapshot(etcd_client, prefix))
    assert sorted(k for k in snap if "/pvs/" in k) == [keys.pv(n) for n in ("A", "A:1", "C")]
    assert keys.record("vm:IOC7", "B") not in snap
    assert (snap[keys.ioc("vm:IOC7")]["records"], snap[keys.ioc("vm:IOC7")]["aliases"]) == (2, 1)


def test_alias_moving_to_another_record_keeps_its_entry(
    writer: EtcdWriter, etcd_client: Any, keys: Keys
) -> None:
    first = FakeSession(writer, ioc_infos("IOC8"))
    first.upload([rec("R1", aliases=["MOVED"]), rec("R2")])
    first.close()
    second = FakeSession(writer, ioc_infos("IOC8"))
    second.send([rec("R2", "bo", aliases=["MOVED"])])
    second.send([rec("R1")], done=True)
    entry = json.loads(etcd_client.get(keys.pv("MOVED"))[0])
    assert entry == pv("vm:IOC8", "R2", "bo", True, ["vm:IOC8"])


# -- duplicates and ownership ----------------------------------------------------------


def test_duplicate_pv_claims_owner_and_hand_over(
    writer: EtcdWriter, etcd_client: Any, keys: Keys
) -> None:
    a, b = "vm:IOC-A", "vm:IOC-B"
    sa = FakeSession(writer, ioc_infos("IOC-A"))
    sa.upload([rec("DUP", "ai", ["DUP:AL"]), rec("ONLY-A")])
    sb = FakeSession(writer, ioc_infos("IOC-B"))
    sb.upload([rec("DUP", "longin", ["DUP:AL"]), rec("ONLY-B")])

    def entry(name: str) -> Any:
        value = etcd_client.get(keys.pv(name))[0]
        return None if value is None else json.loads(value)

    assert entry("DUP") == pv(b, "DUP", "longin", False, [a, b])
    assert entry("DUP:AL") == pv(b, "DUP", "longin", True, [a, b])
    # Both are marked as sharing a name (so neither skips its index checks).
    assert etcd_client.get(keys.shared(a))[0] is not None
    assert etcd_client.get(keys.shared(b))[0] is not None
    sb.close()  # the owner goes: the still active claimant takes over
    assert entry("DUP") == pv(a, "DUP", "ai", False, [a, b])
    assert entry("DUP:AL") == pv(a, "DUP", "ai", True, [a, b])
    sa.close()  # nobody live: entries stay while claimed
    assert entry("DUP") == pv(a, "DUP", "ai", False, [a, b])

    # B comes back unchanged: A is not live, so B takes ownership without new records
    sb2 = FakeSession(writer, ioc_infos("IOC-B"))
    sb2.upload([rec("DUP", "longin", ["DUP:AL"]), rec("ONLY-B")])
    assert entry("DUP") == pv(b, "DUP", "longin", False, [a, b])
    sa2 = FakeSession(writer, ioc_infos("IOC-A"))
    sa2.upload([rec("ONLY-A")])  # A drops the name: B keeps it alone
    assert entry("DUP") == pv(b, "DUP", "longin", False, [b])
    sb2.close()
    sb3 = FakeSession(writer, ioc_infos("IOC-B"))
    sb3.upload([rec("ONLY-B")])  # the last claimant drops it: the entries go
    assert entry("DUP") is None and entry("DUP:AL") is None
    assert entry("ONLY-A") == pv(a, "ONLY-A", "ai", False, [a])


def test_duplicates_across_bridges_stay_consistent_under_concurrency(
    etcd_client: Any, keys: Keys, clock: Clock, lease: Any, prefix: str
) -> None:
    """Eight IOCs on two bridges upload the same 200 names at once; no claim is lost."""
    other_lease = etcd_client.lease(60)
    writers = [
        make_writer(etcd_client, keys, BRIDGE, lease, clock),
        make_writer(etcd_client, keys, "bridge-b", other_lease, clock),
    ]
    names = [f"SHARED:{i}" for i in range(200)]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            records = [rec(name, aliases=[name + ":A"], v=str(n)) for name in names]
            FakeSession(writers[n % 2], ioc_infos(f"IOC-{n}")).upload(records, batch=50)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    everyone = {f"vm:IOC-{n}" for n in range(8)}
    for name in names + [n + ":A" for n in names]:
        entry = json.loads(etcd_client.get(keys.pv(name))[0])
        assert set(entry["claims"]) == everyone and len(entry["claims"]) == 8, name
        assert entry["iocid"] in everyone
    etcd_client.revoke_lease(other_lease.id)


# -- unchanged re-uploads (record digests) ----------------------------------------------


class CountingClient(GrpcBackend):
    """Counts the reads (range requests, in transactions or alone) sent to etcd."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.reads: list[bytes] = []
        self.compared: list[bytes] = []

    def txn(self, request: Any) -> Any:
        self.reads += [
            op.request_range.key
            for op in request.success
            if op.WhichOneof("request") == "request_range"
        ]
        self.compared += [c.key for c in request.compare]
        return super().txn(request)

    def range(self, request: Any) -> Any:
        self.reads.append(request.key)
        return super().range(request)


def fleet_records(n: int, changed: Sequence[int] = ()) -> list[Record]:
    return [
        rec(
            f"RUN:{i}",
            aliases=[f"RUN:{i}:A"] if i % 10 == 0 else [],
            desc=f"v2 {i}" if i in changed else f"r {i}",
            egu="mA",
        )
        for i in range(n)
    ]


def mod_revisions(client: Any, prefix: str) -> dict[str, int]:
    return {
        key: mod
        for key, (_, mod) in snapshot(client, prefix).items()
        if "/records/" in key or "/pvs/" in key
    }


def test_unchanged_reupload_reads_and_writes_no_record_or_index_key(
    etcd_client: Any, keys: Keys, lease: Any, clock: Clock, prefix: str
) -> None:
    records = fleet_records(2500)
    first = FakeSession(make_writer(etcd_client, keys, BRIDGE, lease, clock), ioc_infos("RUN"))
    first.upload(records, batch=300)
    first.close()
    before, rev = mod_revisions(etcd_client, prefix), revision(etcd_client)
    doc = json.loads(etcd_client.get(keys.ioc("vm:RUN"))[0])
    assert len(doc["record_digests"]) == 3  # 1000 + 1000 + 500

    counting = CountingClient(etcd_client)
    again = FakeSession(make_writer(counting, keys, BRIDGE, lease, clock), ioc_infos("RUN"))
    again.upload(records, batch=300)

    # The IOC document and its shared mark (absent), nothing else; no entry compared.
    assert counting.reads == [keys.ioc("vm:RUN").encode(), keys.shared("vm:RUN").encode()]
    assert not [key for key in counting.compared if b"/pvs/" in key]
    assert mod_revisions(etcd_client, prefix) == before
    assert revision(etcd_client) == rev + 2  # uploading, then active
    doc2 = json.loads(etcd_client.get(keys.ioc("vm:RUN"))[0])
    assert (doc2["status"], doc2["records"], doc2["aliases"]) == ("active", 2500, 250)
    assert doc2["record_digests"] == doc["record_digests"]


def test_unchanged_reupload_of_a_marked_ioc_confirms_its_entries_without_reading(
    etcd_client: Any, keys: Keys, lease: Any, clock: Clock, prefix: str
) -> None:
    records = fleet_records(1500)
    writer = make_writer(etcd_client, keys, BRIDGE, lease, clock)
    first = FakeSession(writer, ioc_infos("MARKED"))
    first.upload(records, batch=300)
    first.close()
    FakeSession(writer, ioc_infos("OTHER")).upload([rec("RUN:7")])  # shares RUN:7
    assert etcd_client.get(keys.shared("vm:MARKED"))[0] is not None
    before = mod_revisions(etcd_client, prefix)

    counting = CountingClient(etcd_client)
    again = FakeSession(make_writer(counting, keys, BRIDGE, lease, clock), ioc_infos("MARKED"))
    again.upload(records, batch=300)
    # Kept runs: no record read; every index entry compared, and only the batch of
    # compares holding the shared name read (OTHER owns that one, and is live).
    assert not [key for key in counting.reads if b"/records/" in key]
    pv_compares = [key for key in counting.compared if b"/pvs/" in key]
    assert sorted(set(pv_compares)) == sorted(
        {keys.pv(n).encode() for r in records for n in [r.name, *r.aliases]}
    )
    pv_reads = [key for key in counting.reads if b"/pvs/" in key]
    assert keys.pv("RUN:7").encode() in pv_reads and len(pv_reads) <= 128
    assert mod_revisions(etcd_client, prefix) == before


def test_an_alias_moving_to_a_later_record_of_the_same_batch_stays_claimed(
    writer: EtcdWriter, etcd_client: Any, keys: Keys
) -> None:
    first = FakeSession(writer, ioc_infos("MOVE"))
    first.upload([rec("R", aliases=["A"]), rec("S")])
    first.close()
    # R comes first and drops A; S, later in the same transaction, takes it.
    FakeSession(writer, ioc_infos("MOVE")).upload([rec("R"), rec("S", aliases=["A"])])
    assert json.loads(etcd_client.get(keys.pv("A"))[0]) == pv(
        "vm:MOVE", "S", "ai", True, ["vm:MOVE"]
    )


def test_disconnect_of_an_ioc_without_shared_names_reads_nothing_else(
    etcd_client: Any, keys: Keys, lease: Any, clock: Clock, prefix: str
) -> None:
    counting = CountingClient(etcd_client)
    session = FakeSession(make_writer(counting, keys, BRIDGE, lease, clock), ioc_infos("SOLO"))
    session.upload(fleet_records(300), batch=100)
    before = mod_revisions(etcd_client, prefix)
    counting.reads.clear()
    session.close()
    # No shared mark: nothing to hand over, so no record scanned, no entry read.
    assert counting.reads == [keys.shared("vm:SOLO").encode()]
    assert mod_revisions(etcd_client, prefix) == before


def test_only_iocs_listed_with_another_claimant_get_a_shared_mark(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, prefix: str
) -> None:
    FakeSession(writer, ioc_infos("LONE")).upload([rec("LONE:1"), rec("LONE:2")])
    assert etcd_client.get(keys.shared("vm:LONE"))[0] is None
    # State an older bridge (no marks, no digests) leaves: an entry NEW shares with a
    # live owner. NEW's next (unchanged) upload finds it and sets the mark, though the
    # entry itself needs no change.
    first = FakeSession(writer, ioc_infos("NEW"))
    first.upload([rec("OLD"), rec("NEW:1")])
    first.close()
    other = "vm:OLDER"
    shared = pv(other, "OLD", "ai", False, [other, "vm:NEW"])
    etcd_client.put(keys.pv("OLD"), json.dumps(shared))
    etcd_client.put(keys.ioc(other), json.dumps({"status": "active"}))
    doc = json.loads(etcd_client.get(keys.ioc("vm:NEW"))[0])
    etcd_client.put(keys.ioc("vm:NEW"), json.dumps({**doc, "record_digests": None}))
    etcd_client.delete(keys.shared("vm:NEW"))
    FakeSession(writer, ioc_infos("NEW")).upload([rec("OLD"), rec("NEW:1")])
    assert json.loads(etcd_client.get(keys.pv("OLD"))[0]) == shared
    assert json.loads(etcd_client.get(keys.shared("vm:NEW"))[0]) == {"name": "OLD"}


def test_reupload_leaves_the_fast_path_at_the_first_changed_run(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, prefix: str
) -> None:
    first = FakeSession(writer, ioc_infos("RUN2"))
    first.upload(fleet_records(2500), batch=300)
    first.close()
    before = mod_revisions(etcd_client, prefix)

    new = fleet_records(2500, changed=[1500])
    del new[2400]  # removed: an alias-bearing record
    new.append(rec("RUN:NEW", aliases=["RUN:NEW:A"]))
    again = FakeSession(writer, ioc_infos("RUN2"))
    again.upload(new, batch=300)

    after = mod_revisions(etcd_client, prefix)
    iocid = "vm:RUN2"
    touched = {key for key in after if after[key] != before.get(key)}
    assert touched == {
        keys.record(iocid, "RUN:1500"),
        keys.record(iocid, "RUN:NEW"),
        keys.pv("RUN:NEW"),
        keys.pv("RUN:NEW:A"),
    }
    assert set(before) - set(after) == {
        keys.record(iocid, "RUN:2400"),
        keys.pv("RUN:2400"),
        keys.pv("RUN:2400:A"),
    }
    stored = json.loads(etcd_client.get(keys.record(iocid, "RUN:1500"))[0])
    assert stored["desc"] == "v2 1500"
    doc = json.loads(etcd_client.get(keys.ioc(iocid))[0])
    assert (doc["status"], doc["records"], len(doc["record_digests"])) == ("active", 2500, 3)


def test_changed_reupload_of_an_unmarked_ioc_leaves_unchanged_entries_alone(
    etcd_client: Any, keys: Keys, lease: Any, clock: Clock, prefix: str
) -> None:
    first = FakeSession(make_writer(etcd_client, keys, BRIDGE, lease, clock), ioc_infos("CH"))
    first.upload(fleet_records(500), batch=100)
    first.close()
    counting = CountingClient(etcd_client)
    again = FakeSession(make_writer(counting, keys, BRIDGE, lease, clock), ioc_infos("CH"))
    again.upload(fleet_records(500, changed=[5]), batch=100)
    # The changed record's entry is read (it needs no change: same owner and type);
    # the 549 other entries are neither read nor compared.
    assert [key for key in counting.reads if b"/pvs/" in key] == [keys.pv("RUN:5").encode()]
    assert not [key for key in counting.compared if b"/pvs/" in key]
    stored = json.loads(etcd_client.get(keys.record("vm:CH", "RUN:5"))[0])
    assert stored["desc"] == "v2 5"


def test_an_upload_with_delrecord_keeps_no_digests(
    writer: EtcdWriter, etcd_client: Any, keys: Keys
) -> None:
    records = fleet_records(1100)
    first = FakeSession(writer, ioc_infos("DEL"))
    first.send(records[:1000])
    first.send(records[1000:], removed=["RUN:7"], done=True)  # RUN:7 was in run 1
    first.close()
    doc = json.loads(etcd_client.get(keys.ioc("vm:DEL"))[0])
    assert (doc["records"], doc["record_digests"]) == (1099, None)
    assert etcd_client.get(keys.record("vm:DEL", "RUN:7"))[0] is None
    # Sending every record again (no DelRecord) stores RUN:7 again.
    again = FakeSession(writer, ioc_infos("DEL"))
    again.upload(records, batch=300)
    assert etcd_client.get(keys.record("vm:DEL", "RUN:7"))[0] == record_value(records[7], "vm:DEL")


def test_partial_upload_clears_the_digests_so_the_next_upload_repairs(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, prefix: str
) -> None:
    original = fleet_records(1200)
    first = FakeSession(writer, ioc_infos("RUN3"))
    first.upload(original, batch=300)
    first.close()
    partial = FakeSession(writer, ioc_infos("RUN3"))
    partial.send(fleet_records(1200, changed=range(300))[:300])  # changed, never finished
    partial.close()
    doc = json.loads(etcd_client.get(keys.ioc("vm:RUN3"))[0])
    assert (doc["status"], doc["record_digests"]) == ("inactive", None)

    again = FakeSession(writer, ioc_infos("RUN3"))
    again.upload(original, batch=300)
    for record in (original[0], original[299], original[1199]):
        assert etcd_client.get(keys.record("vm:RUN3", record.name))[0] == record_value(
            record, "vm:RUN3"
        )


# -- size limits -----------------------------------------------------------------------


def test_big_upload_splits_into_valid_transactions(
    etcd_client: Any, keys: Keys, lease: Any, clock: Clock, prefix: str
) -> None:
    client = RecordingClient(etcd_client)
    writer = make_writer(client, keys, BRIDGE, lease, clock)
    records = [rec(f"BIG:{i}", aliases=[f"BIG:{i}:A", f"BIG:{i}:B"]) for i in range(1000)]
    records += [rec(f"FAT:{i}", huge="x" * 60_000) for i in range(30)]  # 1.8 MB of infos
    session = FakeSession(writer, ioc_infos("IOC-BIG"))
    session.upload(records, batch=400)
    assert client.txns, "nothing written"
    for compares, ops, size in client.txns:
        assert compares <= MAX_TXN_OPS and ops <= MAX_TXN_OPS and size <= MAX_TXN_BYTES
    snap = values(snapshot(etcd_client, prefix))
    assert sum("/records/" in k for k in snap) == 1030
    assert sum("/pvs/" in k for k in snap) == 3030
    assert snap[keys.record("vm:IOC-BIG", "FAT:7")]["infos"]["huge"] == "x" * 60_000
    doc = snap[keys.ioc("vm:IOC-BIG")]
    assert (doc["status"], doc["records"], doc["aliases"]) == ("active", 1030, 2000)


def test_oversize_record_is_stored_with_its_infos_cut(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, prefix: str
) -> None:
    records = [rec("HUGE", big="y" * (3 << 20), small="kept")]
    first = FakeSession(writer, ioc_infos("IOC-HUGE"))
    first.upload(records)
    first.close()
    value, meta = etcd_client.get(keys.record("vm:IOC-HUGE", "HUGE"))
    doc = json.loads(value)
    assert len(value) <= MAX_RECORD_BYTES
    assert doc["infos"]["small"] == "kept"
    assert doc["infos"]["big"].startswith("yyy") and doc["infos"]["big"].endswith(TRUNCATED_MARK)
    # the cut is deterministic: an identical re-upload does not rewrite it
    FakeSession(writer, ioc_infos("IOC-HUGE")).upload(records)
    assert etcd_client.get(keys.record("vm:IOC-HUGE", "HUGE"))[1].mod_revision == meta.mod_revision


def test_stored_records_over_the_grpc_receive_limit_are_read_in_smaller_pages(
    writer: EtcdWriter, etcd_client: Any, keys: Keys
) -> None:
    """5 records of 0.9 MB: one page would exceed gRPC's 4 MiB; re-uploads still work."""
    records = [rec(f"WIDE:{i}", blob=str(i) * 900_000) for i in range(5)]
    first = FakeSession(writer, ioc_infos("IOC-WIDE"))
    first.upload(records)
    first.close()
    before = etcd_client.get(keys.record("vm:IOC-WIDE", "WIDE:0"))[1].mod_revision
    FakeSession(writer, ioc_infos("IOC-WIDE")).upload(records[:4])
    assert etcd_client.get(keys.record("vm:IOC-WIDE", "WIDE:0"))[1].mod_revision == before
    assert etcd_client.get(keys.record("vm:IOC-WIDE", "WIDE:4")) == (None, None)


def test_batches_respect_op_and_size_limits() -> None:
    small: list[Write] = [(f"/k/{i}".encode(), b"v") for i in range(300)]
    assert [len(c) for c in chunk_ops(small)] == [128, 128, 44]
    fat: list[Write] = [(f"/f/{i}".encode(), b"x" * 500_000) for i in range(5)]
    assert [len(c) for c in chunk_ops(fat)] == [2, 2, 1]
    guarded = [Guarded(f"/g/{i}".encode(), 0, b"v") for i in range(200)]
    assert [len(b) for b in chunk_guarded(guarded)] == [128, 72]
    assert [len(b) for b in chunk_guarded(guarded, 50)] == [50, 50, 50, 50]
    fat_guarded = [Guarded(f"/h/{i}".encode(), 7, b"x" * 500_000) for i in range(5)]
    assert [len(b) for b in chunk_guarded(fat_guarded)] == [2, 2, 1]


def test_fit_record_cuts_the_longest_infos_deterministically() -> None:
    record = rec("R", big="b" * 5000, mid="m" * 900, small="s")
    fitted = fit_record(record, "ioc", limit=2000)
    assert fitted is not None and fitted == fit_record(record, "ioc", limit=2000)
    assert len(dumps_record(fitted)) <= 2000
    assert fitted.infos["small"] == "s"
    assert fitted.infos["big"].endswith(TRUNCATED_MARK)
    assert fit_record(rec("R", aliases=["A" * 3000]), "ioc", limit=2000) is None


def dumps_record(record: Record) -> bytes:
    return record_value(record, "ioc")


# -- names and identities ----------------------------------------------------------------


def test_odd_record_names_stay_under_their_ioc_and_round_trip(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, prefix: str
) -> None:
    odd = ["a/b", "../../bridges/x", "100%", "..", ".", "nul\0byte", "%2F"]
    FakeSession(writer, ioc_infos("IOC/ODD")).upload([rec(n, aliases=[n + "/al"]) for n in odd])
    ioc = "vm:IOC/ODD"
    snap = values(snapshot(etcd_client, prefix))
    record_keys = [k for k in snap if "/records/" in k]
    assert all(k.startswith(keys.records_prefix(ioc)) for k in record_keys)
    assert sorted(keys.split(k) for k in record_keys) == sorted(("records", ioc, n) for n in odd)
    pv_names = sorted(keys.split(k)[1] for k in snap if "/pvs/" in k)
    assert pv_names == sorted(odd + [n + "/al" for n in odd])
    assert keys.split(keys.ioc(ioc)) == ("iocs", ioc)
    assert not any("/bridges/" in k for k in snap)


def test_two_live_sessions_with_one_identity_are_kept_apart(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, prefix: str
) -> None:
    first = FakeSession(writer, ioc_infos("TWIN"), Peer("10.0.0.1", 5001))
    second = FakeSession(writer, ioc_infos("TWIN"), Peer("10.0.0.2", 5002))
    first.send([rec("TWIN:1")])
    second.send([rec("TWIN:2")])
    first.send(done=True)
    second.send(done=True)
    snap = values(snapshot(etcd_client, prefix))
    assert snap[keys.ioc("vm:TWIN")]["ip"] == "10.0.0.1"
    assert snap[keys.ioc("10.0.0.2:5002")]["ip"] == "10.0.0.2"
    assert keys.record("vm:TWIN", "TWIN:1") in snap
    assert keys.record("10.0.0.2:5002", "TWIN:2") in snap
    assert keys.record("vm:TWIN", "TWIN:2") not in snap
    second.close()
    assert json.loads(etcd_client.get(keys.ioc("vm:TWIN"))[0])["status"] == "active"
    # once the first is gone, the identity is free again
    first.close()
    third = FakeSession(writer, ioc_infos("TWIN"), Peer("10.0.0.2", 5003))
    third.upload([rec("TWIN:2")])
    assert json.loads(etcd_client.get(keys.ioc("vm:TWIN"))[0])["ip"] == "10.0.0.2"


def test_a_stale_session_does_not_end_a_newer_one(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, lease: Any, clock: Clock
) -> None:
    """An IOC that moved to another bridge is not marked inactive by the old session."""
    old = FakeSession(writer, ioc_infos("MOVER"))
    old.upload([rec("M")])
    other = make_writer(etcd_client, keys, "bridge-b", lease, clock)
    clock.advance(1)
    FakeSession(other, ioc_infos("MOVER")).upload([rec("M")])
    old.close()
    doc = json.loads(etcd_client.get(keys.ioc("vm:MOVER"))[0])
    assert (doc["status"], doc["bridge"]) == ("active", "bridge-b")
    assert json.loads(etcd_client.get(keys.alive("vm:MOVER"))[0])["bridge"] == "bridge-b"


class FlakyClient(GrpcBackend):
    """Forwards to a real client, except that every transaction fails while `down`."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.down = False

    def txn(self, request: Any) -> Any:
        if self.down:
            raise EtcdUnavailable("etcd down (test)")
        return super().txn(request)


def test_a_disconnect_lost_to_an_outage_is_written_later(
    etcd_client: Any, keys: Keys, lease: Any, clock: Clock
) -> None:
    flaky = FlakyClient(etcd_client)
    writer = EtcdWriter(store_on(flaky, deadline_s=0.2), keys, BRIDGE, lambda: lease, clock)
    session = FakeSession(writer, ioc_infos("FLAKY"))
    session.upload([rec("F")])
    flaky.down = True
    with pytest.raises(StoreError):
        session.close()
    assert writer.serves("vm:FLAKY")  # so no sweep touches it meanwhile
    with pytest.raises(StoreError):
        writer.retry_unfinished()
    flaky.down = False
    writer.retry_unfinished()
    assert json.loads(etcd_client.get(keys.ioc("vm:FLAKY"))[0])["status"] == "inactive"
    assert etcd_client.get(keys.alive("vm:FLAKY")) == (None, None)
    assert not writer.serves("vm:FLAKY")


# -- liveness ---------------------------------------------------------------------------


def test_sweep_marks_a_dead_bridges_iocs_inactive_unless_retaken(
    writer: EtcdWriter, etcd_client: Any, keys: Keys, clock: Clock
) -> None:
    dead_lease = etcd_client.lease(60)
    dead = make_writer(etcd_client, keys, "bridge-dead", dead_lease, clock)
    FakeSession(dead, ioc_infos("D1")).upload([rec("D1:X", aliases=["DUP"])])
    FakeSession(dead, ioc_infos("D2")).upload([rec("D2:X")])
    FakeSession(dead, ioc_infos("D3")).upload([rec("D3:X")])
    FakeSession(writer, ioc_infos("LIVE")).upload([rec("LIVE:X", aliases=["DUP"])])
    FakeSession(dead, ioc_infos("D4")).upload([rec("D4:X", aliases=["DUP"])])
    assert json.loads(etcd_client.get(keys.pv("DUP"))[0])["iocid"] == "vm:D4"

    etcd_client.revoke_lease(dead_lease.id)
    clock.advance(10)
    FakeSession(writer, ioc_infos("D3")).send([rec("D3:X")])  # retaken by a live bridge
    # is_local says no: only the alive-key compare protects D3
    sweeper = Sweeper(writer.store, keys, NameIndex(writer.store, keys), clock, lambda _: False)

    assert sweeper.mark_dead("vm:D1") is True
    assert sweeper.mark_dead("vm:D1") is False  # idempotent
    assert sweeper.mark_dead("vm:D3") is False
    sweeper.resync()  # finds D2 and D4 on its own

    def status(name: str) -> str:
        return str(json.loads(etcd_client.get(keys.ioc(f"vm:{name}"))[0])["status"])

    assert [status(n) for n in ("D1", "D2", "D3", "D4", "LIVE")] == [
        "inactive",
        "inactive",
        "uploading",
        "inactive",
        "active",
    ]
    doc = json.loads(etcd_client.get(keys.ioc("vm:D2"))[0])
    assert doc["disconnected"] == "2027-01-15T08:00:10.000Z"
    assert doc["bridge"] == "bridge-dead"
    # D4 owned DUP; the live claimant took it over
    assert json.loads(etcd_client.get(keys.pv("DUP"))[0])["iocid"] == "vm:LIVE"


def test_lost_alive_key_is_put_back_for_a_live_session(
    etcd_client: Any, keys: Keys, clock: Clock
) -> None:
    """After the lease lapsed (outage), `reassert` restores alive key and document."""
    leases = [etcd_client.lease(60)]
    writer = EtcdWriter(store_on(etcd_client), keys, BRIDGE, lambda: leases[-1], clock)
    session = FakeSession(writer, ioc_infos("OUTAGE"))
    session.upload([rec("O")])
    etcd_client.revoke_lease(leases[0].id)
    Sweeper(writer.store, keys, writer.index, clock, lambda _: False).mark_dead("vm:OUTAGE")
    assert json.loads(etcd_client.get(keys.ioc("vm:OUTAGE"))[0])["status"] == "inactive"

    leases.append(etcd_client.lease(60))
    writer.reassert()
    value, meta = etcd_client.get(keys.alive("vm:OUTAGE"))
    assert meta.lease_id == leases[-1].id
    assert json.loads(etcd_client.get(keys.ioc("vm:OUTAGE"))[0])["status"] == "active"
    session.close()
    assert json.loads(etcd_client.get(keys.ioc("vm:OUTAGE"))[0])["status"] == "inactive"
    etcd_client.revoke_lease(leases[-1].id)


# -- EtcdProcessor under the real reactor ------------------------------------------------


class EtcdProcessorTests(TrialTestCase):
    """The Twisted service: lease, commits through its pool, watch-driven sweep."""

    @pytest.fixture(autouse=True)
    def _etcd(self, etcd_server: Any, etcd_client: Any, prefix: str) -> None:
        self.client = etcd_client
        self.keys = Keys(prefix)
        self.config = SimpleNamespace(
            endpoints=tuple(etcd_server.endpoints),
            prefix=prefix,
            lease_ttl=3,
            timeout=2.0,
            username=None,
            password=None,
            ca=None,
            cert=None,
            key=None,
            max_outage=10.0,
            grace=0.3,
        )

    def start(self, bridge_id: str = BRIDGE) -> EtcdProcessor:
        processor = EtcdProcessor(self.config, bridge_id, reactor)
        processor.tcp_port = 5049
        processor.startService()
        self.addCleanup(processor.stopService)
        return processor

    def status(self, iocid: str) -> str | None:
        value = self.client.get(self.keys.ioc(iocid))[0]
        return None if value is None else str(json.loads(value)["status"])

    def dead_bridge_upload(self, name: str, bridge_id: str = "bridge-dead") -> Any:
        """An IOC stored by another bridge (process); returns that bridge's lease."""
        lease = self.client.lease(60)
        writer = EtcdWriter(store_on(self.client), self.keys, bridge_id, lambda: lease, time.time)
        FakeSession(writer, ioc_infos(name)).upload([rec(name + ":X")])
        return lease

    def test_commits_and_publishes_the_bridge(self) -> Deferred[None]:
        async def body() -> None:
            processor = self.start()
            await processor.whenReady()
            verifyObject(IProcessor, processor)
            doc, meta = self.client.get(self.keys.bridge(BRIDGE))
            assert json.loads(doc)["port"] == 5049
            assert meta.lease_id == processor.lease.id
            peer = Peer("127.0.0.1", 41000)
            infos = ioc_infos("PROC")
            await processor.commit(Transaction(1, peer, 0, infos, (rec("P:1"),)))
            await processor.commit(Transaction(1, peer, 1, infos, (rec("P:2"),), upload_done=True))
            assert self.status("vm:PROC") == "active"
            await processor.commit(Transaction(1, peer, 2, infos, connected=False))
            assert self.status("vm:PROC") == "inactive"

        return ensureDeferred(body())

    def test_watch_sweeps_the_iocs_of_a_bridge_that_dies(self) -> Deferred[None]:
        async def body() -> None:
            processor = self.start()
            await processor.whenReady()
            lease = self.dead_bridge_upload("VICTIM")
            assert self.status("vm:VICTIM") == "active"
            self.client.revoke_lease(lease.id)
            await until(lambda: self.status("vm:VICTIM") == "inactive")

        return ensureDeferred(body())

    def test_previous_incarnation_with_the_same_id_is_swept(self) -> Deferred[None]:
        """A restarted bridge keeps its id; its old lease expiring later still counts."""

        async def body() -> None:
            lease = self.dead_bridge_upload("OLDSELF", bridge_id=BRIDGE)
            processor = self.start()
            await processor.whenReady()
            assert self.status("vm:OLDSELF") == "active"  # the old lease still lives
            self.client.revoke_lease(lease.id)
            await until(lambda: self.status("vm:OLDSELF") == "inactive")

        return ensureDeferred(body())

    def test_startup_resync_sweeps_bridges_that_died_unwatched(self) -> Deferred[None]:
        async def body() -> None:
            lease = self.dead_bridge_upload("EARLIER")
            self.client.revoke_lease(lease.id)
            processor = self.start()
            await processor.whenReady()
            await until(lambda: self.status("vm:EARLIER") == "inactive")

        return ensureDeferred(body())

    def test_expired_lease_is_replaced_and_alive_keys_put_back(self) -> Deferred[None]:
        async def body() -> None:
            processor = self.start()
            await processor.whenReady()
            peer, infos = Peer("127.0.0.1", 41001), ioc_infos("KEEPER")
            await processor.commit(Transaction(7, peer, 0, infos, (rec("K"),), upload_done=True))
            old = processor.lease.id
            self.client.revoke_lease(old)  # as if it expired during an outage

            def restored() -> bool:
                meta = self.client.get(self.keys.alive("vm:KEEPER"))[1]
                bridge = self.client.get(self.keys.bridge(BRIDGE))[1]
                return (
                    meta is not None
                    and bridge is not None
                    and meta.lease_id != old
                    and meta.lease_id == bridge.lease_id == processor.lease.id
                )

            await until(restored)
            assert self.status("vm:KEEPER") == "active"
            await processor.commit(Transaction(7, peer, 1, infos, connected=False))
            assert self.status("vm:KEEPER") == "inactive"

        return ensureDeferred(body())


@pytest.mark.failover
class EtcdRestartTests(TrialTestCase):
    """The processor on its own etcd, which is killed and restarted under it."""

    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path: Path) -> None:
        # pytest's tmp_path, not trial's mktemp (which writes under the working directory)
        self.tmp_path = tmp_path

    def test_watch_is_re_added_after_etcd_restarts(self) -> Deferred[None]:
        async def body() -> None:
            cluster = EtcdCluster(1, self.tmp_path / "etcd", binary=find_etcd_binary())
            cluster.start()
            self.addCleanup(cluster.stop)
            client = make_client(cluster.endpoints, timeout=2.0)
            self.addCleanup(client.close)
            config = SimpleNamespace(
                endpoints=tuple(cluster.endpoints),
                prefix="/restart",
                lease_ttl=5,
                timeout=2.0,
                username=None,
                password=None,
                ca=None,
                cert=None,
                key=None,
                max_outage=20.0,
                grace=0.3,
            )
            processor = EtcdProcessor(config, BRIDGE, reactor)
            processor.startService()
            self.addCleanup(processor.stopService)
            await processor.whenReady()
            await until(lambda: processor.watching)
            await deferToThread(cluster.member(cluster.endpoints[0]).restart)
            await until(lambda: processor.rewatches > 0 and processor.watching, timeout=30.0)

            keys = Keys("/restart")
            lease = call_with_retry(lambda: client.lease(60), deadline_s=20.0)
            store = store_on(client, deadline_s=20.0)
            writer = EtcdWriter(store, keys, "bridge-dead", lambda: lease, time.time)
            FakeSession(writer, ioc_infos("AFTER")).upload([rec("AFTER:X")])
            client.revoke_lease(lease.id)

            def swept() -> bool:
                value = client.get(keys.ioc("vm:AFTER"))[0]
                return value is not None and json.loads(value)["status"] == "inactive"

            await until(swept, timeout=30.0)

        return ensureDeferred(body())


def test_peer_supplied_names_cannot_forge_log_lines(
    writer: EtcdWriter, etcd_client: Any, keys: Keys
) -> None:
    name = "EVIL\n2026-12-01T00:00:00+0000 [bridge] IOC vm:GOOD inactive"
    with capturedLogs() as events:
        session = FakeSession(writer, ioc_infos(name))
        session.upload([rec("R")])
        session.close()
    lines = [formatEvent(e) for e in events]
    assert lines and all("\n" not in line for line in lines)
    assert any(repr(f"vm:{name}") in line for line in lines)
