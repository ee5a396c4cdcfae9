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


def record(prefix: str, name: str, iocid: str = "h:IOC") -> tuple[str, bytes]:
    """A v2 record document of `iocid` named `name`."""
    return documents.Keys(prefix).record(iocid, name), b'{"type":"ai"}'


def names(directory: Directory) -> list[str]:
    state = directory.state
    selection = search.select(state, parse_query([]), exact_count=False)
    return [state.names[s] for s in selection.slots]


def synchronous(fn: Callable[..., Any], *args: Any) -> None:
    """Stands in for ``reactor.callFromThread``: apply on the feed's own thread."""
    fn(*args)


def test_loads_in_pages_then_watches(etcd_client: Any, etcd_store: Store, prefix: str) -> None:
    for i in range(25):
        etcd_client.put(*record(prefix, f"PV{i:02d}"))
    etcd_client.put("/other/records/h:IOC/X", b"{}")
    directory = Directory(SHAPE, prefix)
    feed = DirectoryFeed(directory, etcd_store, synchronous, page=7)
    feed.start()
    try:
        poll(lambda: feed.loads == 1, what="the first load")
        assert names(directory) == [f"PV{i:02d}" for i in range(25)]
        etcd_client.put(*record(prefix, "NEW"))
        etcd_client.delete(documents.Keys(prefix).record("h:IOC", "PV00"))
        poll(lambda: names(directory)[:2] == ["NEW", "PV01"], what="the watched changes")
        assert len(names(directory)) == 25
    finally:
        feed.stop()


def test_reloads_after_compaction(etcd_client: Any, etcd_store: Store, prefix: str) -> None:
    """A feed resuming from a revision since compacted (it lost etcd for a while) reads
    everything again, at a new revision."""
    etcd_client.put(*record(prefix, "A"))
    old = int(etcd_client.get_response(prefix + "/").header.revision)
    etcd_client.put(*record(prefix, "B"))
    etcd_client.delete(documents.Keys(prefix).record("h:IOC", "A"))
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


def owner(directory: Directory, name: str) -> str | None:
    state = directory.state
    slot = state.slot(name)
    if slot is None or state.owner[slot] < 0:
        return None
    return state.iocs[int(state.owner[slot])].iocid


def test_owners_come_from_etcds_revisions(
    etcd_client: Any, etcd_store: Store, prefix: str
) -> None:
    """The later of two live IOCs' records owns the name, whether the view learns the
    records from a load (their mod_revisions) or from the watch (the events')."""
    k = documents.Keys(prefix)
    for iocid in ("h:A", "h:B"):
        etcd_client.put(k.ioc(iocid), b'{"status":"active"}')
    etcd_client.put(*record(prefix, "DUP", "h:B"))
    etcd_client.put(*record(prefix, "DUP", "h:A"))  # later: A owns it
    directory = Directory(SHAPE, prefix)
    feed = DirectoryFeed(directory, etcd_store, synchronous)
    feed.start()
    try:
        poll(lambda: feed.loads == 1, what="the first load")
        assert owner(directory, "DUP") == "h:A"
        etcd_client.put(*record(prefix, "DUP", "h:B"))  # B's record changed: B owns it
        poll(lambda: owner(directory, "DUP") == "h:B", what="B owning DUP")
        etcd_client.put(k.ioc("h:B"), b'{"status":"inactive"}')
        poll(lambda: owner(directory, "DUP") == "h:A", what="A owning DUP again")
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
            writer.put(*record("/f", name))
            poll(lambda n=name: n in names(directory), 30, f"{name} after a member died")
            member.restart()
        assert feed.loads == 1
    finally:
        feed.stop()
        store.close()
        writer.close()
