"""The directory's pages at facility scale, and IOC pings while pages are served.

Two measurements, each printed beside its target:

1. Pages (default): the documents a bridge writes for IOCS x RECORDS in data model v2
   (bench/directory.py's fleet: lean record documents, no name index, an alias on every
   10th record, a DESC and three info tags each) are loaded into a `Directory`, the
   pages and the ChannelFinder API are served by a real twisted.web site on loopback
   (query threads and all), and each page is fetched over HTTP, one request at a time;
   p95 of the full round trip, against < 200 ms.

       .venv/bin/python bench/pages.py                 # 1,000 x 1,000
       .venv/bin/python bench/pages.py --iocs 100      # quicker

2. ``--pings``: serving never delays IOC pings. The fleet is written to a real etcd
   (started here), then a bridge process with ``[http] bind`` starts cold: its directory
   loads everything from etcd while probe IOCs (bench/loadgen.py probe, in a process of
   their own, ``tcptimeout`` 1 s) are connected to it and two client threads fetch pages
   and API queries without pause. The probes' ping lateness (see bench/loadgen.py for
   exactly what it bounds) is reported, max and p99, against < 1 s.

       .venv/bin/python bench/pages.py --pings --iocs 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (str(REPO_ROOT), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from loadgen import read_probe_log  # noqa: E402

from bridge.directory.model import Directory  # noqa: E402


def _fleet_module() -> Any:
    """bench/directory.py (its name would shadow the package if imported plainly)."""
    spec = importlib.util.spec_from_file_location("bench_directory", BENCH_DIR / "directory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FLEET = _fleet_module()


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] if len(samples) > 1 else samples[0]


def line(what: str, figure: str, target: str) -> None:
    print(f"{what:<58} {figure:>12}   target {target}", flush=True)


def fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def paths(iocs: int, records: int, rng: random.Random) -> list[tuple[str, Callable[[], str]]]:
    """The pages timed: (label, a function giving a path, random where it matters)."""

    def ioc() -> str:
        return f"fakehost:IOC{rng.randrange(iocs):04d}"

    def pv() -> str:
        return f"IOC{rng.randrange(iocs):04d}:PV{rng.randrange(records):06d}"

    deep = f"IOC{iocs // 2:04d}:PV000000"
    return [
        ("/ (overview)", lambda: "/"),
        ("/overview.json (what the overview polls)", lambda: "/overview.json"),
        ("/iocs (all, first 100)", lambda: "/iocs"),
        ("/iocs?sort=pvs&desc=1", lambda: "/iocs?sort=pvs&desc=1"),
        ("/iocs?q=IOC01 (filtered)", lambda: "/iocs?q=IOC01"),
        ("/iocs/<iocid> (identity, records page 1)", lambda: "/iocs/" + ioc()),
        ("/iocs/<iocid>?q=PV0001 (records filtered)", lambda: f"/iocs/{ioc()}?q=PV0001"),
        ("/pvs?q=<fragment> (autocomplete-like)", lambda: f"/pvs?q=C{ioc()[-4:]}:PV00"),
        ("/pvs?q=*PV0001* (many matches, counted)", lambda: "/pvs?q=*PV0001*"),
        ("/pvs?q=&active=1 (every PV, counted)", lambda: "/pvs?active=1"),
        ("/pvs?after=<middle> (a page past 10,000)", lambda: f"/pvs?after={deep}&page=500"),
        ("/pvs/<name>", lambda: "/pvs/" + pv()),
        ("/duplicates", lambda: "/duplicates"),
        ("/bridges", lambda: "/bridges"),
    ]


def serve(directory: Directory) -> tuple[str, Callable[[], None]]:
    """Pages and API over `directory` on a loopback port, the reactor in a thread."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from bridge.web.cf import ChannelFinderAPI, QueryRunner
    from bridge.web.pages import Pages

    runner = QueryRunner(reactor)
    runner.start()
    root = Resource()
    root.putChild(b"ChannelFinder", ChannelFinderAPI(directory, runner, "/s").resource())
    Pages(directory, runner).mount(root)
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    thread = threading.Thread(
        target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
    )
    thread.start()

    def stop() -> None:
        reactor.callFromThread(runner.stop)
        reactor.callFromThread(reactor.stop)
        thread.join(10)

    return f"http://127.0.0.1:{port.getHost().port}", stop


def bench_pages(args: argparse.Namespace) -> None:
    directory = Directory(FLEET.SHAPE)
    started = time.perf_counter()
    directory.load(FLEET.documents(args.iocs, args.records), revision=1)
    state = directory.state
    print(
        f"{args.iocs} IOCs x {args.records} records: {state.count():,} channels "
        f"(loaded in {time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    base, stop = serve(directory)
    rng = random.Random(14)
    try:
        worst = 0.0
        for label, path in paths(args.iocs, args.records, rng):
            samples = []
            for _ in range(args.runs):
                target = base + path()
                began = time.perf_counter()
                status = fetch(target)
                samples.append(time.perf_counter() - began)
                assert status == 200, (target, status)
            figure = p95(samples)
            worst = max(worst, figure)
            line(f"GET {label}, p95", f"{figure * 1000:.1f} ms", "< 200 ms")
        line("slowest page, p95", f"{worst * 1000:.1f} ms", "< 200 ms")
    finally:
        stop()


def bench_pings(args: argparse.Namespace) -> None:
    """Ping lateness of connected IOCs while a cold bridge loads its directory and
    pages and API queries run without pause (module docstring)."""
    from bridge.etcd.backend import open_store
    from bridge.etcd.ops import chunk_ops
    from bridge.etcd.process import find_etcd_binary, free_port
    from bridge.testing.cluster import EtcdCluster
    from bridge.testing.fakeioc import find_bridge
    from bridge.testing.harness import BridgeProcess

    with (
        tempfile.TemporaryDirectory() as tmp,
        EtcdCluster(1, Path(tmp) / "etcd", binary=find_etcd_binary()) as etcd,
    ):
        store = open_store(etcd.endpoints, timeout=10.0, deadline_s=60.0)
        started = time.perf_counter()
        ops = ((k.encode(), v) for k, v, _ in FLEET.documents(args.iocs, args.records))
        for chunk in chunk_ops(ops):
            store.write(chunk)
        store.close()
        print(f"fleet written to etcd in {time.perf_counter() - started:.0f} s", flush=True)
        udp_port, http_port = free_port(), free_port()
        bridge = BridgeProcess(
            Path(tmp) / "bridge",
            endpoints=etcd.endpoints,
            announce_to=[f"127.0.0.1:{udp_port}"],
            recceiver={"announceInterval": 0.5, "tcptimeout": args.tcptimeout},
        )
        with open(bridge.config, "a") as config:
            config.write(f"[http]\nbind = 127.0.0.1:{http_port}\n")
        log = Path(tmp) / "probes.jsonl"
        probes: subprocess.Popen[bytes] | None = None
        stop = threading.Event()
        served = [0, 0, 0]  # pages, API queries (200s), other answers
        try:
            bridge.start().wait_ready(120)
            host, port, key = find_bridge(udp_port, timeout=10)
            probes = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH_DIR / "loadgen.py"),
                    "probe",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--key",
                    str(key),
                    "--count",
                    str(args.probes),
                    "--tcptimeout",
                    str(args.tcptimeout),
                    "--out",
                    str(log),
                ],
                start_new_session=True,
            )
            base = f"http://127.0.0.1:{http_port}"
            rng = random.Random(15)
            page_paths = paths(args.iocs, args.records, rng)
            api = [
                "/ChannelFinder/resources/channels?~name=*C0{:03d}:PV00*",
                "/ChannelFinder/resources/channels?iocName=IOC00{:02d}*&pvStatus=Active",
                "/ChannelFinder/resources/channels/count?~name=*PV{:04d}*",
            ]

            def hammer(index: int) -> None:
                while not stop.is_set():
                    if index == 0:
                        target = base + rng.choice(page_paths)[1]()
                    else:
                        target = base + rng.choice(api).format(rng.randrange(100))
                    try:
                        ok = fetch(target) == 200
                    except OSError:
                        time.sleep(0.05)  # not listening yet
                        continue
                    served[index] += ok
                    served[2] += not ok

            threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in (0, 1)]
            for thread in threads:
                thread.start()
            started = time.monotonic()
            loaded: float | None = None
            while time.monotonic() - started < args.timeout:
                if "ChannelFinder API at" in bridge.log_text():
                    loaded = time.monotonic() - started
                    time.sleep(args.after)
                    break
                time.sleep(0.2)
            stop.set()
            for thread in threads:
                thread.join(60)
        finally:
            stop.set()
            if probes is not None:
                probes.terminate()
                probes.wait(20)
            bridge.stop()
        lateness = sorted(e["lateness"] for e in read_probe_log(log) if e.get("event") == "ping")
        when = f"loaded in {loaded:.0f} s" if loaded else f"NOT loaded after {args.timeout:.0f} s"
        print(
            f"directory {when} from the bridge's start; "
            f"{served[0]} pages and {served[1]} API queries answered 200 meanwhile and "
            f"{args.after if loaded else 0:.0f} s after ({served[2]} other answers, e.g. "
            f"404 for IOCs not loaded yet); {len(lateness)} pings",
            flush=True,
        )
        if not lateness:
            raise RuntimeError("no ping measured")
        p99 = lateness[min(len(lateness) - 1, int(len(lateness) * 0.99))]
        line("ping lateness while pages are served, p99", f"{p99 * 1000:.0f} ms", "< 1 s")
        line("ping lateness while pages are served, max", f"{lateness[-1] * 1000:.0f} ms", "< 1 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iocs", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30, help="requests per page")
    parser.add_argument("--pings", action="store_true", help="measure 2 (see above)")
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--tcptimeout", type=float, default=1.0)
    parser.add_argument("--after", type=float, default=20.0, help="seconds after the load")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()
    if args.pings:
        bench_pings(args)
    else:
        bench_pages(args)


if __name__ == "__main__":
    main()
