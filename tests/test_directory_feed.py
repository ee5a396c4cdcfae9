"""The directory feed against real etcd: load at one revision, watch, reload after
compaction, and keep going when the etcd member it talks to is killed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge import documents
from bridge.directory import search
from bridge.directory.feed import DirectoryFeed
from bridge.directory.model import Directory
from bridge.directory.query import parse_query
from bridge.etcd.backend import open_store
from bridge.etcd.store import Store
from bridge.testing.cluster import EtcdCluster
from tests.directory_data import SHAPE
from tests.helpers import poll

pytestmark = pytest.mark.etcd


def index_entry(prefix: str, name: str) -> tuple[str, bytes]:
    k = documents.Keys(prefix)
    return k.pv(name), documents.dumps(
        documents.pv_document("h:IOC", name, "ai", False, ["h:IOC"])
    )


def names(directory: Directory) -> list[str]:
    state = directory.state
    selection = search.select(state, parse_query([]), exact_count=False)
    return [state.names[s] for s in selection.slots]


def synchronous(fn: Callable[..., Any], *args: Any) -> None:
    """Stands in for ``reactor.callFromThread``: apply on the feed's own thread."""
    fn(*args)


def test_loads_in_pages_then_watches(etcd_client: Any, etcd_store: Store, prefix: str) -> None:
    for i in range(25):
        etcd_client.put(*index_entry(prefix, f"PV{i:02d}"))
    etcd_client.put("/other/pvs/X", b"{}")
    directory = Directory(SHAPE, prefix)
    feed = DirectoryFeed(directory, etcd_store, synchronous, page=7)
    feed.start()
    try:
        poll(lambda: feed.loads == 1, what="the first load")
        assert names(directory) == [f"PV{i:02d}" for i in range(25)]
        etcd_client.put(*index_entry(prefix, "NEW"))
        etcd_client.delete(documents.Keys(prefix).pv("PV00"))
        poll(lambda: names(directory)[:2] == ["NEW", "PV01"], what="the watched changes")
        assert len(names(directory)) == 25
    finally:
        feed.stop()


def test_reloads_after_compaction(etcd_client: Any, etcd_store: Store, prefix: str) -> None:
    """A feed resuming from a revision since compacted (it lost etcd for a while) reads
    everything again, at a new revision."""
    etcd_client.put(*index_entry(prefix, "A"))
    old = int(etcd_client.get_response(prefix + "/").header.revision)
    etcd_client.put(*index_entry(prefix, "B"))
    etcd_client.delete(documents.Keys(prefix).pv("A"))
    latest = int(etcd_client.get_response(prefix + "/").header.revision)
    etcd_client.compact(latest)
    directory = Directory(SHAPE, prefix)
    feed = DirectoryFeed(directory, etcd_store, synchronous, start_revision=old + 1)
    feed.start()
    try:
        poll(lambda: feed.loads == 1, what="a reload")
        assert names(directory) == ["B"]
        assert directory.state.revision >= latest
    finally:
        feed.stop()


@pytest.mark.failover
@pytest.mark.slow
def test_follows_the_client_when_members_die(tmp_path: Path, etcd_cluster: EtcdCluster) -> None:
    store = open_store(etcd_cluster.endpoints, timeout=2.0, deadline_s=20.0)
    writer = open_store(etcd_cluster.endpoints, timeout=2.0, deadline_s=20.0)
    directory = Directory(SHAPE, "/f")
    feed = DirectoryFeed(directory, store, synchronous)
    feed.start()
    try:
        poll(lambda: feed.loads == 1, what="the first load")
        for round_, member in enumerate(etcd_cluster.members):
            member.kill()
            name = f"AFTER-{round_}"
            writer.put(*index_entry("/f", name))
            poll(lambda n=name: n in names(directory), 30, f"{name} after a member died")
            member.restart()
        assert feed.loads == 1
    finally:
        feed.stop()
        store.close()
        writer.close()
