"""What only the in-memory etcd has: its test hooks (`bridge.testing.memstore`).

Its etcd behaviour is checked against a real etcd in tests/test_store_conformance.py.
"""

from __future__ import annotations

import pytest

from bridge import documents as docs
from bridge.documents import Keys
from bridge.errors import EtcdUnavailable, StoreError
from bridge.etcd.ops import Put
from bridge.model import Peer, Transaction
from bridge.processors.etcdwriter import EtcdWriter
from bridge.testing.checks import content_problems, spec_iocid, spec_records
from bridge.testing.fakeioc import make_ioc
from bridge.testing.memstore import MemoryEtcd


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_leases_expire_by_the_clock_unless_refreshed() -> None:
    clock = Clock()
    memory = MemoryEtcd(clock=clock)
    store = memory.store()
    kept, lapsed = store.grant(10), store.grant(10)
    before = store.txn([], [Put("/k/kept", b"1", kept.id), Put("/k/lapsed", b"2", lapsed.id)])
    clock.t += 8
    assert store.refresh(kept.id) == 10
    clock.t += 8
    assert store.get("/k/lapsed") is None  # expired, its key deleted in one revision
    assert store.get("/k/kept") is not None
    assert store.revision() == before.revision + 1
    assert store.refresh(lapsed.id) == 0


def test_expire_ends_a_lease_at_once() -> None:
    memory = MemoryEtcd()
    store = memory.store()
    lease = store.grant(60)
    store.put("/k/a", b"1", lease.id)
    store.put("/k/b", b"2", lease.id)
    memory.expire(lease.id)
    assert memory.dump(b"/k/") == {}
    assert store.refresh(lease.id) <= 0


def test_unavailable_fails_every_request_until_the_outage_bound() -> None:
    memory = MemoryEtcd()
    store = memory.store(deadline_s=0.2)
    memory.unavailable = True
    with pytest.raises(EtcdUnavailable):
        memory.range(None)
    with pytest.raises(StoreError, match="attempts"):
        store.get("/k")
    memory.unavailable = False
    assert store.get("/k") is None


def test_the_writer_runs_on_the_memory_backend() -> None:
    """The whole writer, unchanged, against memory: an upload lands exactly as the data
    model says; a second IOC with a duplicate PV takes it over, and hands it back when
    its session ends."""
    store = MemoryEtcd().store()
    keys = Keys("/mem")
    lease = store.grant(60)
    store.put(keys.bridge("b1"), docs.dumps(docs.bridge_document("h", 1, "0", "t")), lease.id)
    writer = EtcdWriter(store, keys, "b1", lambda: lease, lambda: 1.8e9)
    spec = make_ioc("ONE", 300)
    infos = dict(spec.env)
    writer.apply(Transaction(1, Peer("127.0.0.1", 1001), 0, infos, tuple(spec_records(spec))))
    writer.apply(Transaction(1, Peer("127.0.0.1", 1001), 1, infos, upload_done=True))
    assert content_problems(store, "/mem", {spec_iocid(spec): spec}, ["b1"]) == []

    duplicate = spec_records(spec)[0]
    other = {"HOSTNAME": "h2", "IOCNAME": "TWO"}
    writer.apply(Transaction(2, Peer("127.0.0.1", 1002), 0, other, (duplicate,), upload_done=True))

    def entry() -> docs.PvEntry | None:
        raw = store.get(keys.pv(duplicate.name))
        return docs.parse_pv(raw.value) if raw is not None else None

    assert entry() == docs.PvEntry(
        "h2:TWO", duplicate.name, "ai", False, ["fakehost:ONE", "h2:TWO"]
    )
    writer.apply(Transaction(2, Peer("127.0.0.1", 1002), 1, other, connected=False))
    taken_back = entry()
    assert taken_back is not None and taken_back.owner == "fakehost:ONE"
