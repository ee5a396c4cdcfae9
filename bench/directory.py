"""The directory read model at facility scale: load time, memory, query latency.

Builds the documents a bridge writes for IOCS IOCs x RECORDS records in data model v2
(lean record documents, no name index; an alias on every 10th record, three info tags
and a DESC each, as `bridge.testing.fakeioc.make_ioc`), loads them into a `Directory` the
way the feed does after its range read (names, claims and owners derived from the
records), then times the queries of issue 13 (JSON encoding included) and prints each
figure beside its target:

    .venv/bin/python bench/directory.py               # 1,000 x 1,000
    .venv/bin/python bench/directory.py --iocs 100    # quicker
    .venv/bin/python bench/directory.py --shared-every 100   # and about 2 % duplicate names

It also times an IOC's status change, which decides again the owners of its names that
other IOCs claim too (none without ``--shared-every``).

With ``--etcd`` the documents are first written to a real etcd (started here, on
loopback) and loaded through `bridge.directory.feed`, as a directory process would.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Callable, Iterator

from bridge import documents as docs
from bridge.directory import search
from bridge.directory.channels import ChannelShape
from bridge.directory.model import Directory, State
from bridge.directory.query import parse_query
from bridge.model import Record

SHAPE = ChannelShape(alias=True, record_type=True, record_desc=True, infotags=("archive",))


def rss() -> int:
    """Resident set size of this process, bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        import os

        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def iocid(i: int) -> str:
    return f"fakehost:IOC{i:04d}"


def record(i: int, j: int) -> Record:
    name = f"IOC{i:04d}:PV{j:06d}"
    infos = {"archive": "Monitor 1", "autosaveFields": "VAL", "group": f"IOC{i:04d}"}
    aliases = [f"{name}:ALIAS"] if j % 10 == 0 else []
    return Record(0, name, ("ai", "ao", "bi", "longin")[j % 4], aliases, infos, f"Fake PV {j}")


def record_value(rec: Record) -> bytes:
    """The record document of data model v2: name and IOC are in the key; DESC,
    aliases and info tags left out when empty."""
    doc: dict[str, object] = {"type": rec.rtype}
    if rec.desc is not None:
        doc["desc"] = rec.desc
    if rec.aliases:
        doc["aliases"] = rec.aliases
    if rec.infos:
        doc["infos"] = rec.infos
    return docs.dumps(doc)


def ioc_value(iocs: int, records: int, i: int, status: str | None = None) -> bytes:
    """IOC `i`'s document: active, but every tenth IOC inactive."""
    doc = docs.ioc_document(
        iocid=iocid(i),
        status=status or ("active" if i % 10 else "inactive"),
        hostname="fakehost",
        iocname=f"IOC{i:04d}",
        ip="127.0.0.1",
        port=40000 + i,
        env={"ENGINEER": "fake", "RSRV_SERVER_PORT": "5064", "IOCNAME": f"IOC{i:04d}"},
        bridge_id="bridge-a",
        connected="2026-11-23T21:00:00.123Z",
        uploaded="2026-11-23T21:00:01.456Z",
        disconnected=None,
        records=records,
        aliases=records // 10,
    )
    return docs.dumps(doc)


def documents(
    iocs: int, records: int, prefix: str = "/recsync", shared_every: int = 0
) -> Iterator[tuple[str, bytes, int]]:
    """Every key, value and mod_revision a bridge stores for the fleet, in etcd's key
    order (revisions as if each IOC's records were written in one transaction). With
    `shared_every` N, IOC i also has every Nth record of IOC i - 1 (duplicates)."""
    k = docs.Keys(prefix)
    for i in range(iocs):
        yield k.ioc(iocid(i)), ioc_value(iocs, records, i), 2 + iocs + i
    for i in range(iocs):
        own = [(record(i, j), 2 + i) for j in range(records)]
        if shared_every:
            other = (i + iocs - 1) % iocs
            own += [(record(other, j), 2 + i) for j in range(0, records, shared_every)]
        for rec, revision in sorted(own, key=lambda r: r[0].name):
            yield k.record(iocid(i), rec.name), record_value(rec), revision


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] if len(samples) > 1 else samples[0]


def timed(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    samples = []
    result: object = None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - start)
    return p95(samples), result


def listing(state: State, params: list[tuple[str, str]]) -> bytes:
    """What ``GET channels?params`` sends: the page, encoded."""
    selection = search.select(state, parse_query(params), exact_count=False)
    return b"[" + b",".join(state.encode(s) for s in selection.slots) + b"]"


def line(what: str, figure: str, target: str) -> None:
    print(f"{what:<58} {figure:>14}   target {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iocs", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--etcd", action="store_true", help="load through etcd and the feed")
    parser.add_argument(
        "--shared-every",
        type=int,
        default=0,
        metavar="N",
        help="IOC i also has every Nth record of IOC i-1 (duplicate names); 0: none",
    )
    args = parser.parse_args()
    rng = random.Random(13)
    if args.etcd:
        state = through_etcd(args)
    else:
        gc.collect()
        before = rss()
        directory = Directory(SHAPE)
        start = time.perf_counter()
        directory.load(documents(args.iocs, args.records, shared_every=args.shared_every), 1)
        load_s = time.perf_counter() - start
        gc.collect()
        state = directory.state
        per_channel = (rss() - before) / state.count()
        print(f"{args.iocs} IOCs x {args.records} records: {state.count()} channels")
        line("load from documents (decode + build)", f"{load_s:.1f} s", "(see --etcd)")
        line("memory per channel on top of the process", f"{per_channel:.0f} B", "<= 300 B")
        status_changes(directory, args)
    queries(state, args, rng)


def status_changes(directory: Directory, args: argparse.Namespace) -> None:
    """Time an IOC's status change: it decides again the owners of its shared names."""
    k = docs.Keys()
    state = directory.state
    chosen = args.iocs // 2 + 1
    shared = len(state.ioc_multi.get(state.ioc_index[iocid(chosen)], ()))
    samples = []
    for n in range(args.runs):
        value = ioc_value(args.iocs, args.records, chosen, ("inactive", "active")[n % 2])
        start = time.perf_counter()
        directory.apply(k.ioc(iocid(chosen)), value, state.revision + 1)
        samples.append(time.perf_counter() - start)
    figure = f"{p95(samples) * 1000:.2f} ms"
    line(f"an IOC's status changes ({shared} shared names decided again), p95", figure, "(info)")


def through_etcd(args: argparse.Namespace) -> State:
    """Write the fleet to a fresh etcd, load it through the feed, and measure how soon
    a change shows while another thread keeps writing (uploads running)."""
    import tempfile
    import threading
    from pathlib import Path

    from bridge.directory.feed import DirectoryFeed
    from bridge.etcd.backend import open_store
    from bridge.etcd.ops import chunk_ops
    from bridge.etcd.process import find_etcd_binary
    from bridge.testing.cluster import EtcdCluster

    with (
        tempfile.TemporaryDirectory() as tmp,
        EtcdCluster(1, Path(tmp), binary=find_etcd_binary()) as cluster,
    ):
        store = open_store(cluster.endpoints, timeout=10.0, deadline_s=60.0)
        start = time.perf_counter()
        ops = ((k.encode(), v) for k, v, _ in documents(args.iocs, args.records))
        for chunk in chunk_ops(ops):
            store.write(chunk)
        write_s = time.perf_counter() - start
        gc.collect()
        before = rss()
        directory = Directory(SHAPE)
        feed = DirectoryFeed(directory, store, lambda fn, *a: fn(*a))
        start = time.perf_counter()
        feed.start()
        while feed.loads < 1:
            time.sleep(0.01)
        load_s = time.perf_counter() - start
        gc.collect()
        state = directory.state
        per_channel = (rss() - before) / state.count()
        print(f"{args.iocs} IOCs x {args.records} records in etcd: {state.count()} channels")
        line("write the documents to etcd (what a bridge must do)", f"{write_s:.1f} s", "")
        line("load through the feed (range reads at one revision)", f"{load_s:.1f} s", "< write")
        line("memory per channel on top of the process", f"{per_channel:.0f} B", "<= 300 B")
        stop = threading.Event()
        k = docs.Keys()

        def uploads() -> None:
            n = 0
            while not stop.is_set():
                batch = [(k.record("load:IOC", f"L{n + i}").encode(), b"{}") for i in range(128)]
                store.write(batch)
                n += 128

        writer = threading.Thread(target=uploads, daemon=True)
        writer.start()
        lags = []
        for i in range(50):
            name = f"MARK{i:03d}"
            value = record_value(Record(0, name, "ai", [], {}, "a mark"))
            start = time.perf_counter()
            store.put(k.record("fakehost:IOC0000", name), value)
            while state.slot(name) is None or state.owner[state.slot(name)] < 0:
                time.sleep(0.001)
            lags.append(time.perf_counter() - start)
        stop.set()
        writer.join()
        lags.sort()
        line("change in etcd visible while writes run, p99", f"{lags[-1] * 1000:.0f} ms", "< 1 s")
        feed.stop()
        from bridge.cli import scan_pvs

        wanted = f"IOC{args.iocs // 2:04d}:PV000000:ALIAS"
        start = time.perf_counter()
        found = scan_pvs(store, k, [wanted])
        assert found[0].get("owner") == iocid(args.iocs // 2), found
        line(
            "recsync pv NAME with no directory to ask (a scan)",
            f"{time.perf_counter() - start:.1f} s",
            "(info)",
        )
        store.close()
        return state


def queries(state: State, args: argparse.Namespace, rng: random.Random) -> None:
    """Time the queries of issue 13 over `state`."""

    def exact() -> bytes:
        i, j = rng.randrange(args.iocs), rng.randrange(args.records)
        slot = state.slot(f"IOC{i:04d}:PV{j:06d}")
        assert slot is not None
        return state.encode(slot)

    figure, _ = timed(exact, args.runs * 10)
    line("GET channels/{name} (exact), p95", f"{figure * 1000:.3f} ms", "< 1 ms")

    def autocomplete() -> bytes:
        i, j = rng.randrange(args.iocs), rng.randrange(args.records // 10)
        return listing(state, [("~name", f"*C{i:04d}:PV{j:05d}*")])

    figure, body = timed(autocomplete, args.runs)
    found = body.count(b'"tags"') if isinstance(body, bytes) else 0
    line(
        f"~name=*fragment* no ~size ({found} channels), p95", f"{figure * 1000:.1f} ms", "< 50 ms"
    )

    def broad() -> bytes:
        return listing(state, [("~name", f"*PV{rng.randrange(args.records // 100):04d}*")])

    figure, body = timed(broad, max(3, args.runs // 4))
    found = body.count(b'"tags"') if isinstance(body, bytes) else 0
    line(f"~name=*PV00nn* no ~size ({found} channels), p95", f"{figure * 1000:.1f} ms", "(info)")

    def filtered() -> bytes:
        first = rng.randrange(max(1, args.iocs // 100))
        params = [("~name", ""), ("iocName", f"IOC{first:02d}*"), ("pvStatus", "Active")]
        return listing(state, params[1:])

    figure, body = timed(filtered, args.runs)
    found = body.count(b'"tags"') if isinstance(body, bytes) else 0
    line(
        f"iocName=IOCnn*&pvStatus=Active ({found} channels), p95",
        f"{figure * 1000:.1f} ms",
        "< 250 ms",
    )

    def counted() -> int:
        return search.count(state, parse_query([("pvStatus", "Active"), ("recordType", "ai")]))

    figure, total = timed(counted, max(3, args.runs // 4))
    line(
        f"count pvStatus=Active&recordType=ai ({total}), p95", f"{figure * 1000:.1f} ms", "(info)"
    )


if __name__ == "__main__":
    main()
