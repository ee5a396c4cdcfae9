"""What only the in-memory etcd has: its test hooks (`bridge.testing.memstore`).

Its etcd behaviour is checked against a real etcd in tests/test_store_conformance.py.
"""

from __future__ import annotations

import pytest

from bridge.errors import EtcdUnavailable, StoreError
from bridge.etcd.ops import Put
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
