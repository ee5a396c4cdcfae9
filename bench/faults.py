"""Fault benchmark: what a bridge crash and an etcd outage cost, in seconds, records and MB.

Runs a 3-member etcd cluster and two bridges (real ``twistd`` processes) on loopback,
with fake C RecCaster IOCs (bridge.testing.fakeioc), and prints:

* failover time: from SIGKILL of a bridge in the middle of its IOCs' uploads until every
  one of its IOCs is ``active`` again through the other bridge (the IOCs reconnect as
  soon as they see the connection drop, as a C RecCaster does on the next announcement);
* longest stale-active time: the longest any IOC document said active/uploading for a
  dead session (a few IOCs of the killed bridge stay away, so the dead-bridge sweep
  is measured too), and the longest it said so without a matching alive key; both
  from a watch on etcd (bridge.testing.checks.LivenessChecker);
* records lost: every key under the prefix compared with what the IOCs uploaded
  (bridge.testing.checks.content_problems), after the crash and after the outage: must be 0;
* bridge memory during an outage of the whole etcd cluster with uploads in flight
  (resident set of each bridge sampled every 0.2 s; peak and before), and the time
  from etcd's return until every IOC is active again.

Usage: ``python bench/faults.py [--iocs 36] [--records 200] [--outage 30] [--json]``.
Timers default to those of tests/test_failover.py (lease TTL 3 s, grace 1 s); pass
``--ttl``/``--grace`` to measure others. Takes about a minute plus the outage.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bridge.documents import Keys  # noqa: E402
from bridge.etcd.backend import GrpcBackend  # noqa: E402
from bridge.etcd.client import call_with_retry, make_client  # noqa: E402
from bridge.etcd.process import free_port  # noqa: E402
from bridge.etcd.store import Store  # noqa: E402
from bridge.testing.checks import LivenessChecker, content_problems, spec_iocid  # noqa: E402
from bridge.testing.cluster import EtcdCluster  # noqa: E402
from bridge.testing.fakeioc import FakeIOC, IOCSpec, find_bridge, make_ioc  # noqa: E402
from bridge.testing.harness import BridgeProcess  # noqa: E402

PREFIX = "/faults"
#: IOCs of the killed bridge that stay away, so that the sweep's delay is measured.
STAY_AWAY = 3


class Bench:
    """A cluster, two bridges, the fake IOCs and a liveness checker."""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = workdir
        self.cluster = EtcdCluster(3, workdir / "etcd")
        self.keys = Keys(PREFIX)
        specs = [make_ioc(f"FLT{i:03d}", args.records, hostname="bench") for i in range(args.iocs)]
        self.specs: dict[str, IOCSpec] = {spec_iocid(s): s for s in specs}
        self.iocids = list(self.specs)
        self.bridges: dict[str, BridgeProcess] = {}
        self.udp: dict[str, int] = {}
        self.iocs: dict[str, FakeIOC] = {}
        self.since: dict[str, float] = {}
        self.next_rid = dict.fromkeys(self.specs, 1)
        self.client: Any = None
        self.checker: LivenessChecker | None = None

    def start(self) -> None:
        self.cluster.start()
        self.client = make_client(self.cluster.endpoints, timeout=1.0)
        self.checker = LivenessChecker(self.cluster.endpoints, PREFIX).start()
        for name in ("a", "b"):
            self.bridge(name)
        for process in self.bridges.values():
            process.wait_ready()

    def bridge(self, name: str) -> BridgeProcess:
        if name not in self.bridges:
            self.udp[name] = free_port()
            self.bridges[name] = BridgeProcess(
                self.workdir / name,
                endpoints=self.cluster.endpoints,
                prefix=PREFIX,
                announce_to=[f"127.0.0.1:{self.udp[name]}"],
                name=name,
                recceiver={
                    "announceInterval": 0.5,
                    "tcptimeout": 2.0,
                    "commitSizeLimit": 50,
                    "maxActive": 6,
                    "loglevel": "WARNING",
                },
                etcd={
                    "lease_ttl": self.args.ttl,
                    "grace": self.args.grace,
                    "timeout": 1.0,
                    "max_outage": self.args.outage + 30,
                },
            )
        return self.bridges[name].start()

    def connect(
        self, iocids: Iterable[str], bridge: str, specs: dict[str, IOCSpec] | None = None
    ) -> None:
        host, port, key = find_bridge(self.udp[bridge], timeout=10)
        for iocid in iocids:
            old = self.iocs.pop(iocid, None)
            if old is not None:
                old.close()
            spec = (specs or self.specs)[iocid]
            self.specs[iocid] = spec
            ioc = FakeIOC(spec, first_rid=self.next_rid[iocid])
            self.next_rid[iocid] += len(spec.records)
            self.since[iocid] = math.floor(time.time() * 1000) / 1000
            ioc.connect(host, port, key)
            self.iocs[iocid] = ioc

    def statuses(self) -> dict[str, tuple[str, str, float]]:
        pairs = call_with_retry(
            lambda: list(self.client.get_prefix(self.keys.iocs_prefix())), deadline_s=30
        )
        out = {}
        for value, _ in pairs:
            doc = json.loads(value)
            connected = datetime.datetime.fromisoformat(doc["connected"].replace("Z", "+00:00"))
            out[doc["iocid"]] = (doc["status"], doc["bridge"], connected.timestamp())
        return out

    def all_active(self, iocids: Iterable[str], bridge: str | None = None) -> bool:
        docs = self.statuses()
        return all(
            i in docs
            and docs[i][0] == "active"
            and docs[i][2] >= self.since[i]
            and (bridge is None or docs[i][1] == bridge)
            for i in iocids
        )

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)
        return time.monotonic() - start

    def lost(self, bridges: Sequence[str]) -> tuple[int, list[str]]:
        """(records missing or different, every problem) under the prefix."""
        store = Store(GrpcBackend(self.client), 20.0)
        problems = content_problems(store, PREFIX, self.specs, bridges)
        return sum(" record " in p for p in problems), problems

    def close(self) -> None:
        for ioc in self.iocs.values():
            ioc.close()
        for process in self.bridges.values():
            process.stop()
        if self.checker is not None:
            self.checker.stop()
        if self.client is not None:
            self.client.close()
        self.cluster.stop()


def crash(bench: Bench) -> dict[str, Any]:
    """SIGKILL bridge a in the middle of its IOCs' uploads; they move to b."""
    assert bench.checker is not None
    half = len(bench.iocids) // 2
    a_iocs, b_iocs = bench.iocids[:half], bench.iocids[half:]
    bench.connect(b_iocs, "b")
    bench.wait(lambda: bench.all_active(b_iocs), 120, "b's IOCs")
    bench.connect(a_iocs, "a")

    def mid_upload() -> bool:
        states = [s[0] for i, s in bench.statuses().items() if i in a_iocs]
        return "active" in states and (len(states) < len(a_iocs) or "uploading" in states)

    bench.wait(mid_upload, 60, "a's uploads to be under way")
    active_at_kill = sum(s[0] == "active" for i, s in bench.statuses().items() if i in a_iocs)
    bench.checker.declare_dead(bridge="a")
    killed = time.monotonic()
    bench.bridges["a"].kill()
    away, back = a_iocs[:STAY_AWAY], a_iocs[STAY_AWAY:]
    bench.wait(
        lambda: all(bench.iocs[i].closed_by_server.is_set() for i in a_iocs),
        10,
        "the IOCs to see the crash",
    )
    bench.connect(back, "b")
    bench.wait(lambda: bench.all_active(back, "b"), 120, "a's IOCs active on b")
    failover = time.monotonic() - killed

    def swept() -> bool:
        states = bench.statuses()
        return all(states[i][0] == "inactive" for i in away)

    bench.wait(swept, 60, "the sweep of IOCs that stayed away")
    bench.checker.wait_revision(int(bench.client.get_response("/").header.revision))
    sweep = (
        max(
            next(
                t
                for t, status, _ in bench.checker.history[i]
                if t > killed and status == "inactive"
            )
            for i in away
        )
        - killed
    )
    bench.connect(away, "b")
    bench.wait(lambda: bench.all_active(bench.iocids, "b"), 120, "every IOC on b")
    bench.wait(lambda: not bench.bridges["a"].running(), 10, "a to be gone")
    bench.wait(
        lambda: bench.checker is not None and "a" not in bench.checker.bridges,
        bench.args.ttl + 10,
        "a's lease to expire",
    )
    lost, problems = bench.lost(["b"])
    return {
        "iocs_moved": len(a_iocs),
        "active_on_a_at_kill": active_at_kill,
        "failover_s": round(failover, 2),
        "sweep_of_iocs_that_stayed_away_s": round(sweep, 2),
        "records_lost": lost,
        "problems": problems[:10],
    }


def outage(bench: Bench) -> dict[str, Any]:
    """Every etcd member down for `--outage` seconds while every IOC re-uploads."""
    bench.bridge("a").wait_ready()
    half = len(bench.iocids) // 2
    # New data (a third of the records changed), so the re-uploads have writes to do.
    changed = {
        i: make_ioc(
            bench.specs[i].iocname, bench.args.records, hostname="bench", variant=1, changed=0.3
        )
        for i in bench.iocids
    }
    bench.connect(bench.iocids[:half], "a", changed)
    bench.connect(bench.iocids[half:], "b", changed)
    time.sleep(0.2)  # the uploads begin
    before = {name: p.memory()[0] for name, p in bench.bridges.items()}
    for member in bench.cluster.members:
        member.kill()
    peak = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name, process in bench.bridges.items():
                peak[name] = max(peak[name], process.memory()[0])
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(bench.args.outage)
    closed = sum(ioc.closed_by_server.is_set() for ioc in bench.iocs.values())
    for member in bench.cluster.members:
        member.start()
    for member in bench.cluster.members:
        member.wait_healthy()
    back = time.monotonic()
    bench.wait(lambda: bench.all_active(bench.iocids), 120, "every IOC after the outage")
    recovery = time.monotonic() - back
    stop.set()
    sampler.join()
    after = {name: p.memory()[0] for name, p in bench.bridges.items()}
    lost, problems = bench.lost(["a", "b"])
    mb = 1 / 1e6
    return {
        "outage_s": bench.args.outage,
        "sessions_closed_during_outage": closed,
        "rss_before_mb": {n: round(v * mb, 1) for n, v in before.items()},
        "rss_peak_during_outage_mb": {n: round(v * mb, 1) for n, v in peak.items()},
        "rss_after_recovery_mb": {n: round(v * mb, 1) for n, v in after.items()},
        "all_active_after_etcd_back_s": round(recovery, 2),
        "records_lost": lost,
        "problems": problems[:10],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iocs", type=int, default=36)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--ttl", type=float, default=3.0, help="[etcd] lease_ttl")
    parser.add_argument("--grace", type=float, default=1.0, help="[etcd] grace")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds etcd is down")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--workdir", help="keep etcd data and bridge logs here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recsync-faults-") as tmp:
        bench = Bench(Path(args.workdir or tmp), args)
        try:
            bench.start()
            results: dict[str, Any] = {"crash": crash(bench), "outage": outage(bench)}
            assert bench.checker is not None
            results["liveness"] = bench.checker.summary()
        finally:
            bench.close()
    results["settings"] = {k: getattr(args, k) for k in ("iocs", "records", "ttl", "grace")}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)
    lost = results["crash"]["records_lost"] + results["outage"]["records_lost"]
    return 1 if lost or results["liveness"]["violations"] else 0


def report(r: dict[str, Any]) -> None:
    s, c, o, live = r["settings"], r["crash"], r["outage"], r["liveness"]
    print(
        f"recsync-bridge fault benchmark: 2 bridges, 3-member etcd, {s['iocs']} IOCs x "
        f"{s['records']} records; lease_ttl {s['ttl']:g} s, grace {s['grace']:g} s"
    )
    print(
        f"  bridge SIGKILLed mid-upload ({c['active_on_a_at_kill']}/{c['iocs_moved']} of its "
        f"IOCs active at the kill)"
    )
    print(f"    every IOC active again on the other bridge after  {c['failover_s']:6.2f} s")
    swept = c["sweep_of_iocs_that_stayed_away_s"]
    print(f"    IOCs that stayed away marked inactive after       {swept:6.2f} s")
    print(f"    records lost                                      {c['records_lost']:6d}")
    print(f"  whole etcd cluster down {o['outage_s']:g} s during uploads of every IOC")
    for name in sorted(o["rss_peak_during_outage_mb"]):
        print(
            f"    bridge {name} RSS at outage start / peak / after  "
            f"{o['rss_before_mb'][name]:6.1f} / {o['rss_peak_during_outage_mb'][name]:.1f}"
            f" / {o['rss_after_recovery_mb'][name]:.1f} MB"
        )
    print(
        f"    sessions closed during the outage                 "
        f"{o['sessions_closed_during_outage']:6d}"
    )
    print(
        f"    every IOC active again after etcd returned        "
        f"{o['all_active_after_etcd_back_s']:6.2f} s"
    )
    print(f"    records lost                                      {o['records_lost']:6d}")
    print("  over the whole run")
    print(
        f"    longest active/uploading for a dead session       {live['max_stale_s']:6.2f} s "
        f"({live['max_stale_ioc']})"
    )
    print(
        f"    longest active/uploading without its alive key    "
        f"{live['max_unmatched_s']:6.2f} s ({live['max_unmatched_ioc']})"
    )
    print(f"    healthy-bridge IOCs marked inactive               {len(live['violations']):6d}")
    for problem in c["problems"] + o["problems"]:
        print(f"  PROBLEM: {problem}")


if __name__ == "__main__":
    sys.exit(main())
