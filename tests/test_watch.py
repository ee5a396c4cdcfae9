"""The resumable watch (`bridge.etcd.watch`): order, resume after errors, reload after
compaction, following the client to another member, and no stream left behind.

Most run on the in-memory etcd (fast, and its hooks make the faults exact); the
failover and leak claims are checked against real etcd members too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase as TrialTestCase

from bridge.etcd.backend import GrpcBackend, open_store
from bridge.etcd.client import make_client
from bridge.etcd.ops import Event
from bridge.etcd.store import Store
from bridge.etcd.watch import ReactorWatch, Watch
from bridge.testing.cluster import EtcdCluster
from bridge.testing.memstore import MemoryEtcd
from tests.helpers import poll, until

PREFIX = "/w/"


class Consumer:
    """Iterates a watch in a thread and keeps (kind, key, value, revision) of each event."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.seen: list[tuple[str, str, bytes, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for events in self.watch:
            self.seen += [(e.kind, e.key, e.value, e.revision) for e in events]

    def values(self) -> list[bytes]:
        return [value for _, _, value, _ in self.seen]

    def stop(self) -> None:
        self.watch.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def memory() -> MemoryEtcd:
    return MemoryEtcd()


@pytest.fixture
def consumer(memory: MemoryEtcd) -> Iterator[Consumer]:
    store = memory.store()
    watch = Watch(store, PREFIX, reload=store.revision, probe_interval=0.05)
    running = Consumer(watch)
    yield running
    running.stop()


def test_events_arrive_in_order_with_their_revisions(
    memory: MemoryEtcd, consumer: Consumer
) -> None:
    store = memory.store()
    poll(lambda: consumer.watch.established, what="the watch")
    revisions = [store.put(PREFIX + "a", str(i).encode()) for i in range(5)]
    store.put("/elsewhere", b"x")
    poll(lambda: len(consumer.seen) == 5, what="five events")
    assert consumer.seen == [
        ("put", PREFIX + "a", str(i).encode(), r) for i, r in enumerate(revisions)
    ]


def test_after_an_error_it_resumes_from_the_last_revision_delivered(
    memory: MemoryEtcd, consumer: Consumer
) -> None:
    store = memory.store()
    poll(lambda: consumer.watch.established, what="the watch")
    store.put(PREFIX + "a", b"1")
    store.put(PREFIX + "a", b"2")
    poll(lambda: len(consumer.seen) == 2, what="two events")
    memory.unavailable = True  # the stream breaks; watching again fails for a while
    poll(lambda: not consumer.watch.established, what="the watch to notice")
    memory.unavailable = False
    store.put(PREFIX + "a", b"3")  # while the watch waits to try again
    store.put(PREFIX + "a", b"4")
    poll(lambda: len(consumer.seen) >= 4, what="the later events")
    assert consumer.values() == [b"1", b"2", b"3", b"4"]
    assert consumer.watch.rewatches == 1


def test_a_compacted_revision_reloads_and_goes_on_from_the_snapshot(memory: MemoryEtcd) -> None:
    store = memory.store()
    old = store.put(PREFIX + "a", b"1")
    store.put(PREFIX + "a", b"2")
    memory.compact(store.put(PREFIX + "b", b"3"))
    snapshots: list[dict[str, bytes]] = []

    def reload() -> int:
        pages = list(store.scan(PREFIX))
        snapshots.append({e.key: e.value for page in pages for e in page.entries})
        return pages[0].revision

    running = Consumer(Watch(store, PREFIX, reload=reload, start_revision=old))
    try:
        poll(lambda: snapshots and running.watch.established, what="the reload")
        store.put(PREFIX + "c", b"4")
        poll(lambda: running.seen, what="the next event")
    finally:
        running.stop()
    assert snapshots == [{PREFIX + "a": b"2", PREFIX + "b": b"3"}]
    assert running.values() == [b"4"]


def test_without_a_start_revision_it_reloads_first(memory: MemoryEtcd) -> None:
    store = memory.store()
    store.put(PREFIX + "a", b"1")
    reloads: list[int] = []

    def reload() -> int:
        reloads.append(store.revision())
        return reloads[-1]

    running = Consumer(Watch(store, PREFIX, reload=reload))
    try:
        poll(lambda: running.watch.established, what="the watch")
        store.put(PREFIX + "a", b"2")
        poll(lambda: running.seen, what="the event")
    finally:
        running.stop()
    assert len(reloads) == 1 and running.values() == [b"2"]
    assert running.watch.revision == reloads[0] + 1


def test_it_follows_the_client_to_another_member_and_leaves_no_stream(
    memory: MemoryEtcd, consumer: Consumer
) -> None:
    store = memory.store()
    poll(lambda: consumer.watch.established, what="the watch")
    store.put(PREFIX + "a", b"1")
    poll(lambda: consumer.seen, what="the first event")
    memory.endpoint_name = "memory:2479"  # the client failed over
    poll(lambda: consumer.watch.endpoint == "memory:2479", what="the watch to move")
    store.put(PREFIX + "a", b"2")
    poll(lambda: len(consumer.seen) == 2, what="the next event")
    assert consumer.values() == [b"1", b"2"]
    assert consumer.watch.rewatches == 1
    assert memory.open_watches == 1  # the old stream was cancelled
    consumer.stop()
    assert memory.open_watches == 0


class ReactorWatchTests(TrialTestCase):
    def test_delivers_on_the_reactor_thread_and_stops_its_thread(self) -> Deferred[None]:
        async def body() -> None:
            memory = MemoryEtcd()
            store = memory.store()
            delivered: list[tuple[list[Event], bool]] = []

            def on_events(events: list[Event]) -> None:
                delivered.append((events, threading.current_thread() is threading.main_thread()))

            service = ReactorWatch(reactor, Watch(store, PREFIX, reload=store.revision), on_events)
            service.startService()
            await until(lambda: service.established)
            store.put(PREFIX + "k", b"v")
            await until(lambda: delivered)
            await service.stopService()
            assert [(e.key, e.value) for e in delivered[0][0]] == [(PREFIX + "k", b"v")]
            assert delivered[0][1], "delivered on another thread"
            assert memory.open_watches == 0
            store.put(PREFIX + "k", b"after")
            assert len(delivered) == 1

        return ensureDeferred(body())


# -- real etcd -----------------------------------------------------------------------------


@pytest.mark.etcd
def test_stop_leaves_no_stream_on_real_etcd(etcd_client: Any, prefix: str) -> None:
    backend = GrpcBackend(etcd_client)
    store = Store(backend, 10.0)
    running = Consumer(Watch(store, prefix + "/", reload=store.revision, probe_interval=0.2))
    poll(lambda: running.watch.established, what="the watch")
    store.put(prefix + "/a", b"1")
    poll(lambda: running.seen, what="the event")
    assert backend.open_watches == 1
    running.stop()
    poll(lambda: backend.open_watches == 0, what="the stream to end")


@pytest.mark.etcd
@pytest.mark.failover
def test_a_watch_on_a_hung_member_moves_and_leaves_no_stream_behind(tmp_path: Path) -> None:
    """SIGSTOP the member the watch streams from: the stream goes silent without an
    error; the probe times out, the client fails over, the watch moves and the old
    stream is cancelled (the library's own watcher kept it, and its thread, forever)."""
    with EtcdCluster(3, tmp_path / "cluster") as cluster:
        client = make_client(cluster.endpoints, timeout=1.0)
        backend = GrpcBackend(client)
        store = Store(backend, 20.0)
        writer = open_store(cluster.endpoints, timeout=1.0, deadline_s=20.0)
        running = Consumer(Watch(store, PREFIX, reload=store.revision, probe_interval=0.5))
        try:
            poll(lambda: running.watch.established, what="the watch")
            first = running.watch.endpoint
            assert first is not None
            hung = cluster.member(first)
            writer.put(PREFIX + "a", b"1")
            poll(lambda: running.seen, what="the first event")
            hung.freeze()
            try:
                poll(lambda: running.watch.endpoint not in (None, first), what="the move")
                if writer.endpoint == first:  # the writer may use the hung member too
                    writer.probe(PREFIX)
                writer.put(PREFIX + "a", b"2")
                poll(lambda: len(running.seen) == 2, timeout=30, what="the next event")
                poll(lambda: backend.open_watches == 1, what="the old stream to end")
            finally:
                hung.thaw()
            assert running.values() == [b"1", b"2"]
        finally:
            running.stop()
            writer.close()
            store.close()
        poll(lambda: backend.open_watches == 0, what="the stream to end")
