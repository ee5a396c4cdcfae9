"""The directory feed against real etcd: load at one revision, watch, reload after
compaction, and keep going when the etcd member it talks to is killed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge import keys
from bridge.directory import search
from bridge.directory.feed import DirectoryFeed
from bridge.directory.model import Directory
from bridge.directory.query import parse_query
from bridge.etcdclient import call_with_retry, make_client
from bridge.etcdproc import EtcdCluster
from tests.directory_data import SHAPE
from tests.helpers import poll

pytestmark = pytest.mark.etcd


def index_entry(prefix: str, name: str) -> tuple[str, bytes]:
    k = keys.Keys(prefix)
    return k.pv(name), keys.dumps(keys.pv_document("h:IOC", name, "ai", False, ["h:IOC"]))


def names(directory: Directory) -> list[str]:
    state = directory.state
    selection = search.select(state, parse_query([]), exact_count=False)
    return [state.names[s] for s in selection.slots]


def synchronous(fn: Callable[..., Any], *args: Any) -> None:
    """Stands in for ``reactor.callFromThread``: apply on the feed's own thread."""
    fn(*args)


def test_loads_in_pages_then_watches(etcd_client: Any, prefix: str) -> None:
    for i in range(25):
        etcd_client.put(*index_entry(prefix, f"PV{i:02d}"))
    etcd_client.put("/other/pvs/X", b"{}")
    directory = Directory(SHAPE, prefix)
    feed = DirectoryFeed(directory, etcd_client, synchronous, page=7)
    feed.start()
    try:
        poll(lambda: feed.loads == 1, what="the first load")
        assert names(directory) == [f"PV{i:02d}" for i in range(25)]
        etcd_client.put(*index_entry(prefix, "NEW"))
        etcd_client.delete(keys.Keys(prefix).pv("PV00"))
        poll(lambda: names(directory)[:2] == ["NEW", "PV01"], what="the watched changes")
        assert len(names(directory)) == 25
    finally:
        feed.stop()


def test_reloads_after_compaction(etcd_client: Any, prefix: str) -> None:
    etcd_client.put(*index_entry(prefix, "A"))
    old = int(etcd_client.get_response(prefix + "/").header.revision)
    etcd_client.put(*index_entry(prefix, "B"))
    etcd_client.delete(keys.Keys(prefix).pv("A"))
    latest = int(etcd_client.get_response(prefix + "/").header.revision)
    etcd_client.compact(latest)
    directory = Directory(SHAPE, prefix)
    feed = DirectoryFeed(directory, etcd_client, synchronous)
    real_load = feed._load
    loads: list[str] = []

    def load() -> int:
        # The first time, pretend a load happened long ago, at a revision since compacted,
        # as for a feed that lost etcd for a while.
        if not loads:
            loads.append("stale")
            return old
        loads.append("fresh")
        return real_load()

    feed._load = load  # type: ignore[method-assign]
    feed.start()
    try:
        poll(lambda: loads == ["stale", "fresh"] and feed.loads == 1, what="a reload")
        assert names(directory) == ["B"]
        assert directory.state.revision >= latest
    finally:
        feed.stop()


@pytest.mark.failover
@pytest.mark.slow
@pytest.mark.xfail(
    reason="intermittent: after the third kill the watch sometimes sees nothing for 30 s "
    "(passed alone, failed once in the full suite); not yet understood",
    strict=False,
)
def test_follows_the_client_when_members_die(tmp_path: Path, etcd_cluster: EtcdCluster) -> None:
    client = make_client(etcd_cluster.endpoints, timeout=2.0)
    writer = make_client(etcd_cluster.endpoints, timeout=2.0)
    directory = Directory(SHAPE, "/f")
    feed = DirectoryFeed(directory, client, synchronous)
    feed.start()
    try:
        poll(lambda: feed.loads == 1, what="the first load")
        for round_, member in enumerate(etcd_cluster.members):
            member.kill()
            name = f"AFTER-{round_}"
            call_with_retry(lambda n=name: writer.put(*index_entry("/f", n)), deadline_s=20)
            poll(lambda n=name: n in names(directory), 30, f"{name} after a member died")
            member.restart()
        assert feed.loads == 1
    finally:
        feed.stop()
        client.close()
        writer.close()
