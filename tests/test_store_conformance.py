"""One set of etcd behaviours the bridge relies on, run against a real etcd and against
the in-memory one (`bridge.testing.memstore`): a writer that passes against memory
respects etcd's revisions, compares, limits and errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.errors import (
    Compacted,
    DuplicateKey,
    LeaseNotFound,
    MessageTooLarge,
    RequestTooLarge,
    TooManyOperations,
)
from bridge.etcd.backend import Backend, GrpcBackend
from bridge.etcd.ops import Compare, Delete, Event, Get, Put, key_bytes, prefix_end
from bridge.etcd.rpc import pb
from bridge.etcd.store import Store
from bridge.testing.memstore import MemoryEtcd


@dataclass
class Rig:
    """A store on one backend, a prefix of its own, and the backend's compaction."""

    store: Store
    backend: Backend
    prefix: str
    compact: Callable[[int], None]

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"


@pytest.fixture(params=[pytest.param("etcd", marks=pytest.mark.etcd), "memory"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    if request.param == "memory":
        memory = MemoryEtcd()
        yield Rig(memory.store(), memory, "/conformance", memory.compact)
        return
    client = request.getfixturevalue("etcd_client")
    prefix = request.getfixturevalue("prefix")
    backend = GrpcBackend(client)
    yield Rig(Store(backend, 10.0), backend, prefix, client.compact)


def raw_txn(rig: Rig, request: Any) -> Any:
    """Send a hand-built request past the store's own checks: what etcd itself says."""
    return rig.store.call(lambda: rig.backend.txn(request))


def test_put_and_get_track_revisions_versions_and_leases(rig: Rig) -> None:
    store, key = rig.store, rig.key("a")
    first = store.put(key, b"1")
    entry = store.get(key)
    assert entry is not None
    assert (entry.key, entry.value, entry.mod_revision, entry.create_revision) == (
        key,
        b"1",
        first,
        first,
    )
    assert (entry.version, entry.lease) == (1, 0)
    second = store.put(key, b"2")
    entry = store.get(key)
    assert entry is not None and second > first
    assert (entry.mod_revision, entry.create_revision, entry.version) == (second, first, 2)
    assert store.get(rig.key("missing")) is None
    store.txn([], [Delete(key)])
    assert store.get(key) is None
    third = store.put(key, b"3")
    entry = store.get(key)
    assert entry is not None and (entry.create_revision, entry.version) == (third, 1)


def test_a_transaction_is_one_revision_and_reads_its_own_writes(rig: Rig) -> None:
    store = rig.store
    before = store.revision()
    result = store.txn([], [Put(rig.key("x"), b"1"), Put(rig.key("y"), b"2"), Get(rig.key("x"))])
    assert result.succeeded and result.revision == before + 1 == store.revision()
    assert [e.value for e in result.results[2]] == [b"1"]
    assert store.txn([], [Get(rig.key("x"))]).revision == before + 1  # reads write nothing


def test_get_many_reads_more_than_one_batch(rig: Rig) -> None:
    keys = [rig.key(f"k{i:03d}") for i in range(300)]
    assert rig.store.write((key.encode(), key.encode()) for key in keys) == 3
    found = rig.store.get_many([*keys, rig.key("none1"), rig.key("none2")])
    assert sorted(found) == keys
    assert all(entry.value == key.encode() for key, entry in found.items())


def test_compares(rig: Rig) -> None:
    store, key, other = rig.store, rig.key("c"), rig.key("other")
    assert store.txn([Compare.absent(key)], [Put(key, b"x")]).succeeded
    failed = store.txn([Compare.absent(key)], [Put(key, b"y")], [Get(key)])
    assert not failed.succeeded and [e.value for e in failed.results[0]] == [b"x"]
    entry = store.get(key)
    assert entry is not None
    assert store.txn([Compare.unmodified(key, entry.mod_revision)], [Put(key, b"y")]).succeeded
    assert not store.txn([Compare.unmodified(key, entry.mod_revision)], [Put(key, b"z")]).succeeded
    assert store.txn([Compare.unmodified(other, 0)], []).succeeded  # absent: mod 0
    assert store.txn([Compare.holds(key, b"y")], []).succeeded
    assert not store.txn([Compare.holds(key, b"x")], []).succeeded
    assert not store.txn([Compare.holds(other, b"")], []).succeeded  # absent: never equal
    assert store.txn([Compare(key, "version", 1, ">")], []).succeeded
    assert store.txn([Compare(key, "version", 3, "<")], []).succeeded
    assert store.txn([Compare(key, "create", entry.create_revision)], []).succeeded
    assert store.txn([Compare(key, "value", b"x", "!=")], []).succeeded
    lease = store.grant(60)
    try:
        store.put(other, b"v", lease.id)
        assert store.txn([Compare(other, "lease", lease.id)], []).succeeded
        assert store.txn([Compare(key, "lease", 0)], []).succeeded
    finally:
        store.revoke(lease.id)


def test_etcds_limits_and_errors(rig: Rig) -> None:
    store = rig.store
    before = store.revision()

    def puts(n: int, size: int = 1) -> Any:
        request = pb.TxnRequest()
        for i in range(n):
            put = request.success.add().request_put
            put.key = rig.key(f"l{i}").encode()
            put.value = b"v" * size
        return request

    with pytest.raises(TooManyOperations):
        raw_txn(rig, puts(129))
    compares = pb.TxnRequest()
    for i in range(129):
        compares.compare.add(key=rig.key(f"l{i}").encode(), target=pb.Compare.VERSION)
    with pytest.raises(TooManyOperations):
        raw_txn(rig, compares)
    with pytest.raises(RequestTooLarge):
        raw_txn(rig, puts(1, 1_600_000))
    with pytest.raises(MessageTooLarge):
        raw_txn(rig, puts(1, 2_500_000))
    twice = puts(1)
    twice.success.append(twice.success[0])
    with pytest.raises(DuplicateKey):
        raw_txn(rig, twice)
    deleted = puts(1)
    deleted.success.add().request_delete_range.key = rig.key("l0").encode()
    with pytest.raises(DuplicateKey):
        raw_txn(rig, deleted)
    with pytest.raises(LeaseNotFound):
        store.put(rig.key("leased"), b"v", lease=0x1234_5678)
    assert store.revision() == before  # nothing of it was written
    assert raw_txn(rig, puts(128)).succeeded  # the limit itself is allowed
    with pytest.raises(TooManyOperations):  # the store checks before sending
        store.txn([], [Put(rig.key(f"s{i}"), b"") for i in range(129)])


def test_leases(rig: Rig) -> None:
    store, key = rig.store, rig.key("leased")
    lease = store.grant(30)
    assert lease.ttl == 30
    store.put(key, b"v", lease.id)
    entry = store.get(key)
    assert entry is not None and entry.lease == lease.id
    assert 0 < store.refresh(lease.id) <= 30
    store.revoke(lease.id)
    assert store.get(key) is None
    assert store.refresh(lease.id) <= 0
    with pytest.raises(LeaseNotFound):
        store.revoke(lease.id)


def test_scan_pages_are_one_snapshot(rig: Rig) -> None:
    store = rig.store
    store.write((rig.key(f"p{i:04d}").encode(), b"old") for i in range(2500))
    pages = store.scan(rig.prefix + "/", page=1000)
    first = next(pages)
    store.put(rig.key("p2000"), b"new")  # in a later page
    store.put(rig.key("p9999"), b"late")  # after every page
    rest = list(pages)
    entries = [e for page in (first, *rest) for e in page.entries]
    assert [len(page.entries) for page in (first, *rest)] == [1000, 1000, 500]
    assert {page.revision for page in rest} == {first.revision}
    assert [e.key for e in entries] == [rig.key(f"p{i:04d}") for i in range(2500)]
    assert {e.value for e in entries} == {b"old"}
    assert sum(len(p.entries) for p in store.scan(rig.prefix + "/")) == 2501
    assert store.count(rig.prefix + "/") == 2501
    assert store.count(rig.prefix + "/none/") == 0


def test_scan_shrinks_pages_over_grpc_4_mib(rig: Rig) -> None:
    big = b"x" * 1_000_000
    for i in range(6):
        rig.store.put(rig.key(f"big{i}"), big)
    pages = list(rig.store.scan(rig.prefix + "/"))
    assert len(pages) > 1
    assert sum(len(page.entries) for page in pages) == 6
    assert all(entry.value == big for page in pages for entry in page.entries)


def test_reads_at_a_compacted_revision_raise_compacted(rig: Rig) -> None:
    store = rig.store
    old = store.put(rig.key("v"), b"1")
    store.put(rig.key("w"), b"2")
    assert [e.value for p in store.scan(rig.prefix + "/", revision=old) for e in p.entries] == [
        b"1"
    ]
    pages = store.scan(rig.prefix + "/", page=1)
    next(pages)
    rig.compact(store.put(rig.key("v"), b"3"))
    with pytest.raises(Compacted):
        list(store.scan(rig.prefix + "/", revision=old))
    with pytest.raises(Compacted):
        next(pages)  # its revision is gone too: read again
    assert len([e for p in store.scan(rig.prefix + "/") for e in p.entries]) == 2


def watch_events(rig: Rig, start: int, count: int) -> list[Event]:
    key = key_bytes(rig.prefix + "/")
    stream = rig.backend.watch(key, prefix_end(key), start, True)
    events: list[Event] = []
    try:
        for _ in range(50):
            events += stream.next(0.2) or []
            if len(events) >= count:
                break
    finally:
        stream.cancel()
    return events


def test_watches_deliver_in_revision_order_from_any_revision(rig: Rig) -> None:
    store, key = rig.store, rig.key("w")
    start = store.put(key, b"1")
    store.put(key, b"2")
    lease = store.grant(60)
    store.txn([], [Delete(key), Put(rig.key("x"), b"x", lease.id)])
    store.revoke(lease.id)
    events = watch_events(rig, start, 5)
    assert [(e.kind, e.key, e.value) for e in events] == [
        ("put", key, b"1"),
        ("put", key, b"2"),
        ("delete", key, b""),
        ("put", rig.key("x"), b"x"),
        ("delete", rig.key("x"), b""),
    ]
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions) and revisions[2] == revisions[3]
    assert events[3].lease == lease.id
    assert events[1].prev is not None and events[1].prev.value == b"1"
    assert events[4].prev is not None and events[4].prev.lease == lease.id
    assert watch_events(rig, revisions[2], 3)[0].kind == "delete"  # resumed mid-history


def test_a_watch_from_a_compacted_revision_raises_compacted(rig: Rig) -> None:
    store = rig.store
    old = store.put(rig.key("c"), b"1")
    rig.compact(store.put(rig.key("c"), b"2"))
    with pytest.raises(Compacted):
        watch_events(rig, old, 1)


def test_status_names_the_member(rig: Rig) -> None:
    status = rig.store.status()
    assert status.endpoint == rig.store.endpoint is not None
    assert status.revision >= rig.store.revision() - 1
    assert status.errors == ()
