"""Failure scenarios with real processes: a 3-member etcd cluster, two bridges, fake IOCs.

Issue #3: kill any bridge or etcd member at any moment, and every IOC ends up
``active`` again through a surviving bridge with its exact record set; no record is
lost or duplicated; no IOC document says ``active`` for a dead session longer than
the lease TTL plus a few seconds; no IOC served by a healthy bridge is ever marked
``inactive`` because another bridge started, stopped or died.

The test plays the RecCasters: when an IOC's bridge dies it reconnects it to a
surviving bridge (found through that bridge's UDP announcement) with new record ids,
as the C client does. Every scenario runs a `LivenessChecker` (a watch on alive keys,
bridge and IOC documents) and ends with `content_problems`, which compares every key
under the prefix with what the fake IOCs uploaded.

Timers are short (lease TTL 3 s, grace 1 s, tcptimeout 1.5 s) to keep the suite fast.
"""

from __future__ import annotations

import datetime
import json
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase as TrialTestCase

from bridge.documents import Keys
from bridge.errors import EtcdUnavailable
from bridge.etcd.backend import GrpcBackend, GrpcWatch
from bridge.etcd.client import call_with_retry, make_client
from bridge.etcd.process import free_port
from bridge.etcd.store import Store
from bridge.model import Peer, Record, Transaction
from bridge.processors.etcd import EtcdProcessor
from bridge.processors.etcdwriter import EtcdWriter
from bridge.testing.checks import LivenessChecker, content_problems, spec_iocid
from bridge.testing.cluster import EtcdCluster, EtcdMember
from bridge.testing.fakeioc import FakeIOC, IOCSpec, find_bridge, make_ioc
from bridge.testing.harness import BridgeProcess
from tests.helpers import poll, until

pytestmark = [pytest.mark.etcd, pytest.mark.failover]

PREFIX = "/failover"
TTL = 3.0
GRACE = 1.0
TCPTIMEOUT = 1.5
#: "Lease TTL plus a few seconds": the longest a dead session may still look live.
STALE_BOUND = TTL + GRACE + 3.0
#: The longest an IOC document may say active/uploading without a matching alive key.
UNMATCHED_BOUND = TTL + 3.0
#: A new etcd leader extends every lease by the election timeout (1 s), and electing
#: it takes 1-2 s: a bridge that dies while the leader hangs keeps its lease that much
#: longer.
ELECTION = 3.0
RECCEIVER = {
    "announceInterval": 0.5,
    "tcptimeout": TCPTIMEOUT,
    # Small batches and few upload slots: uploads take long enough to be interrupted.
    "commitSizeLimit": 20,
    "maxActive": 3,
}
#: twistd exits by re-raising the SIGTERM it handled, after a clean shutdown.
CLEAN_EXIT = (0, -signal.SIGTERM)
ETCD = {"lease_ttl": TTL, "grace": GRACE, "timeout": 1.0, "max_outage": 60}


class Scenario:
    """Bridges, fake IOCs, a checker and an etcd client for one failure scenario."""

    def __init__(
        self, tmp_path: Path, cluster: EtcdCluster, n_iocs: int = 24, n_records: int = 120
    ) -> None:
        self.tmp_path = tmp_path
        self.cluster = cluster
        self.keys = Keys(PREFIX)
        specs = [make_ioc(f"FO{i:02d}", n_records, hostname="fohost") for i in range(n_iocs)]
        self.specs: dict[str, IOCSpec] = {spec_iocid(s): s for s in specs}
        self.iocids = list(self.specs)
        self.client = make_client(cluster.endpoints, timeout=1.0)
        self.store = Store(GrpcBackend(self.client), 20.0)
        self.bridges: dict[str, BridgeProcess] = {}
        self.udp: dict[str, int] = {}
        self.iocs: dict[str, FakeIOC] = {}
        self.serving: dict[str, str] = {}
        #: iocid -> wall time of its current connection (its document's "connected" >=).
        self.since: dict[str, float] = {}
        self._next_rid = dict.fromkeys(self.specs, 1)
        self.checker: LivenessChecker | None = None

    # -- set-up ---------------------------------------------------------------------------

    def watch(self, endpoints: Sequence[str] | None = None) -> LivenessChecker:
        self.checker = LivenessChecker(endpoints or self.cluster.endpoints, PREFIX).start()
        return self.checker

    def bridge(self, name: str, **etcd: object) -> BridgeProcess:
        """Start bridge `name` (not waiting); it announces to its own UDP port."""
        self.udp.setdefault(name, free_port())
        process = self.bridges.get(name)
        if process is None:
            process = BridgeProcess(
                self.tmp_path / name,
                endpoints=self.cluster.endpoints,
                prefix=PREFIX,
                announce_to=[f"127.0.0.1:{self.udp[name]}"],
                recceiver=RECCEIVER,
                etcd={**ETCD, **etcd},
                name=name,
            )
            self.bridges[name] = process
        return process.start()

    def bridges_up(self, *names: str, **etcd: object) -> None:
        started = [self.bridge(name, **etcd) for name in names]
        for process in started:
            process.wait_ready()

    # -- IOCs -----------------------------------------------------------------------------

    def connect(
        self, iocids: Iterable[str], bridge: str, heard: tuple[str, int, int] | None = None
    ) -> None:
        """(Re)connect IOCs to `bridge`, found through its announcement (or the one
        `heard` earlier), with new ids."""
        host, port, key = heard or find_bridge(self.udp[bridge], timeout=10)
        assert port == self.bridges[bridge].port
        for iocid in iocids:
            old = self.iocs.pop(iocid, None)
            if old is not None:
                old.close()
            spec = self.specs[iocid]
            ioc = FakeIOC(spec, first_rid=self._next_rid[iocid])
            self._next_rid[iocid] += len(spec.records)
            self.since[iocid] = math.floor(time.time() * 1000) / 1000
            ioc.connect(host, port, key)
            self.iocs[iocid] = ioc
            self.serving[iocid] = bridge

    def on(self, bridge: str) -> list[str]:
        return [i for i in self.iocids if self.serving.get(i) == bridge]

    # -- etcd -----------------------------------------------------------------------------

    def docs(self) -> dict[str, dict[str, Any]]:
        """Every IOC document, by iocid."""
        pairs = call_with_retry(
            lambda: list(self.client.get_prefix(self.keys.iocs_prefix())), deadline_s=20
        )
        return {self.keys.split(meta.key.decode())[-1]: json.loads(value) for value, meta in pairs}

    def statuses(self, iocids: Iterable[str]) -> dict[str, str | None]:
        docs = self.docs()
        return {i: docs[i]["status"] if i in docs else None for i in iocids}

    def bridge_ids(self) -> set[str]:
        pairs = call_with_retry(
            lambda: list(self.client.get_prefix(self.keys.bridges_prefix())), deadline_s=20
        )
        return {self.keys.split(meta.key.decode())[-1] for _, meta in pairs}

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}\n" + self.logs()
                )
            time.sleep(0.05)

    def wait_status(
        self, iocids: Iterable[str], status: str, timeout: float = 30.0, bridge: str | None = None
    ) -> float:
        """Wait until every IOC has `status` (on `bridge`); returns the seconds it took.

        ``active`` means active through the IOC's current connection, not an earlier one.
        """
        wanted = list(iocids)
        start = time.monotonic()

        def current(doc: dict[str, Any]) -> bool:
            if status != "active":
                return True
            connected = datetime.datetime.fromisoformat(doc["connected"].replace("Z", "+00:00"))
            return connected.timestamp() >= self.since.get(doc["iocid"], 0.0)

        def done() -> bool:
            docs = self.docs()
            return all(
                i in docs
                and docs[i]["status"] == status
                and current(docs[i])
                and (bridge is None or docs[i]["bridge"] == bridge)
                for i in wanted
            )

        self.wait(done, timeout, f"{len(wanted)} IOCs {status} on {bridge or 'any bridge'}")
        return time.monotonic() - start

    # -- checks ---------------------------------------------------------------------------

    def verify(self, bridges: Iterable[str], stale_bound: float = STALE_BOUND) -> None:
        """Exact final content, and the liveness invariants over the whole scenario."""
        live = set(bridges)
        self.wait(lambda: self.bridge_ids() == live, TTL + 5, f"bridge documents {live}")
        # Alive keys may still be on their way back (a bridge whose lease expired puts
        # them back under a new one); the checker bounds how long they may be missing.
        deadline = time.monotonic() + UNMATCHED_BOUND
        while (
            problems := content_problems(self.store, PREFIX, self.specs, live)
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not problems, "\n".join(problems[:20]) + self.logs()
        assert self.checker is not None
        summary = self.checker.summary()
        assert not summary["violations"], summary
        assert summary["max_stale_s"] <= stale_bound, summary
        assert summary["max_unmatched_s"] <= UNMATCHED_BOUND, summary

    def logs(self, lines: int = 30) -> str:
        out = []
        for name, process in self.bridges.items():
            tail = "\n".join(process.log_text().splitlines()[-lines:])
            out.append(f"\n--- {name} log (tail) ---\n{tail}")
        return "".join(out)

    def close(self) -> None:
        for ioc in self.iocs.values():
            ioc.close()
        for process in self.bridges.values():
            process.stop()
        if self.checker is not None:
            self.checker.stop()
        self.client.close()
        left = [p.pid for p in self.bridges.values() if p.running()]
        assert not left, f"bridge processes left running: {left}"


@pytest.fixture
def scenario(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[Scenario]:
    s = Scenario(tmp_path, etcd_cluster)
    try:
        yield s
    finally:
        s.close()


def member_of(process: BridgeProcess, cluster: EtcdCluster) -> EtcdMember:
    """The etcd member the bridge process has a connection to (its client's endpoint)."""
    ports = {m.client_port: m for m in cluster.members}
    for conn in psutil.Process(process.pid).net_connections(kind="tcp"):
        if conn.raddr and conn.raddr.port in ports and conn.status == "ESTABLISHED":
            return ports[conn.raddr.port]
    raise AssertionError("bridge has no etcd connection")


def wait_mid_upload(s: Scenario, iocids: Sequence[str], timeout: float = 30.0) -> None:
    """Wait until some of the IOCs are active and some are not yet."""

    def mid() -> bool:
        states = s.statuses(iocids).values()
        return any(v == "active" for v in states) and any(v != "active" for v in states)

    s.wait(mid, timeout, "an upload in progress")


# -- bridges ---------------------------------------------------------------------------------


def test_sigkill_bridge_mid_upload(scenario: Scenario) -> None:
    s = scenario
    checker = s.watch()
    s.bridges_up("a", "b")
    half = len(s.iocids) // 2
    a_iocs, b_iocs = s.iocids[:half], s.iocids[half:]
    s.connect(b_iocs, "b")
    s.connect(a_iocs, "a")
    wait_mid_upload(s, a_iocs)
    checker.declare_dead(bridge="a")
    s.bridges["a"].kill()
    s.wait_status(b_iocs, "active")
    checker.protect(b_iocs)
    # Most of a's IOCs reconnect at once; two stay away past TTL + grace, to be swept.
    late, prompt = a_iocs[:2], a_iocs[2:]
    s.connect(prompt, "b")
    s.wait_status(prompt, "active", bridge="b")
    checker.protect(prompt)
    s.wait_status(late, "inactive", timeout=STALE_BOUND + 2)
    s.connect(late, "b")
    s.wait_status(s.iocids, "active", bridge="b")
    s.verify(["b"])
    for iocid in prompt:  # taken over before the sweep could touch them
        assert "inactive" not in checker.statuses(iocid), checker.history[iocid]


def test_sigterm_bridge_hands_over_without_flap_then_last_bridge_cleans_up(
    scenario: Scenario,
) -> None:
    s = scenario
    checker = s.watch()
    s.bridges_up("a", "b")
    half = len(s.iocids) // 2
    a_iocs, b_iocs = s.iocids[:half], s.iocids[half:]
    s.connect(a_iocs, "a")
    s.connect(b_iocs, "b")
    s.wait_status(a_iocs, "active", bridge="a")
    s.wait_status(b_iocs, "active", bridge="b")
    checker.protect(s.iocids)

    late, prompt = a_iocs[:2], a_iocs[2:]
    checker.unprotect(late)
    checker.declare_dead(bridge="a")
    started = time.monotonic()
    assert s.bridges["a"].terminate() in CLEAN_EXIT
    took = time.monotonic() - started
    assert took < 5, f"SIGTERM took {took:.1f} s"
    # a unregistered at once, but its IOCs were not marked inactive
    assert s.bridge_ids() == {"b"}
    assert set(s.statuses(a_iocs).values()) == {"active"}
    assert all(ioc.closed_by_server.wait(5) for i, ioc in s.iocs.items() if i in a_iocs)
    s.connect(prompt, "b")
    s.wait_status(prompt, "active", bridge="b")
    # Those that did not come back within TTL + grace are swept by b.
    s.wait_status(late, "inactive", timeout=STALE_BOUND + 2)
    s.connect(late, "b")
    s.wait_status(s.iocids, "active", bridge="b")
    s.verify(["b"])
    for iocid in prompt:  # active, then uploading and active on b: never inactive
        assert checker.statuses(iocid) == ["uploading", "active", "uploading", "active"], (
            checker.history[iocid]
        )

    # The last bridge out marks every IOC inactive at once and leaves no live keys.
    checker.unprotect(s.iocids)
    assert s.bridges["b"].terminate() in CLEAN_EXIT
    assert set(s.statuses(s.iocids).values()) == {"inactive"}
    assert not call_with_retry(
        lambda: list(s.client.get_prefix(s.keys.alive_prefix())), deadline_s=10
    )
    assert s.bridge_ids() == set()


def test_bridge_restarted_while_the_other_keeps_serving(scenario: Scenario) -> None:
    s = scenario
    checker = s.watch()
    s.bridges_up("a", "b")
    half = len(s.iocids) // 2
    a_iocs, b_iocs = s.iocids[:half], s.iocids[half:]
    s.connect(a_iocs, "a")
    s.connect(b_iocs, "b")
    s.wait_status(s.iocids, "active")
    checker.protect(b_iocs)

    # A restart (SIGTERM, start again with the same id and port): IOCs reconnect to it.
    late, prompt = a_iocs[:2], a_iocs[2:]
    checker.declare_dead(bridge="a")
    assert s.bridges["a"].terminate() in CLEAN_EXIT
    s.bridges_up("a")
    s.connect(prompt, "a")
    s.wait_status(prompt, "active", bridge="a")
    s.wait_status(late, "inactive", timeout=STALE_BOUND + 2)  # a's old lease expired
    s.connect(late, "a")
    s.wait_status(s.iocids, "active")
    for iocid in prompt:
        assert "inactive" not in checker.statuses(iocid), checker.history[iocid]

    # A crash and a quick restart: the previous incarnation's alive keys still live.
    checker.declare_dead(bridge="a")
    s.bridges["a"].kill()
    s.bridges_up("a")
    s.connect(a_iocs, "a")
    s.wait_status(a_iocs, "active", bridge="a")
    checker.protect(a_iocs)
    s.verify(["a", "b"])

    # Both stop at once: whichever stops last marks every IOC inactive.
    checker.unprotect(s.iocids)
    for process in s.bridges.values():
        process.signal(signal.SIGTERM)
    for process in s.bridges.values():
        assert process.wait(20) in CLEAN_EXIT
    s.wait_status(s.iocids, "inactive", timeout=5)
    assert not call_with_retry(
        lambda: list(s.client.get_prefix(s.keys.alive_prefix())), deadline_s=10
    )


def test_ioc_vanishing_without_fin(scenario: Scenario) -> None:
    s = scenario
    checker = s.watch()
    s.bridges_up("a", "b")
    half = len(s.iocids) // 2
    a_iocs, b_iocs = s.iocids[:half], s.iocids[half:]
    s.connect(a_iocs, "a")
    s.connect(b_iocs, "b")
    s.wait_status(s.iocids, "active")
    gone, moved = a_iocs[0], a_iocs[1]
    checker.protect(iocid for iocid in s.iocids if iocid != gone)

    # `gone` stops answering (no FIN): the bridge's ping timeout ends the session.
    checker.declare_dead(iocid=gone)
    s.iocs[gone].answer_pings = False
    s.wait_status([gone], "inactive", timeout=2 * TCPTIMEOUT + 3)
    # `moved` goes silent on a but at once reconnects to b; a's timeout must not
    # mark it inactive, since its alive key is b's now.
    s.iocs[moved].answer_pings = False
    stale = s.iocs.pop(moved)
    s.connect([moved], "b")
    s.wait_status([moved], "active", bridge="b")
    s.wait(lambda: stale.closed_by_server.is_set(), 2 * TCPTIMEOUT + 3, "a's ping timeout")
    stale.close()
    s.connect([gone], "b")
    s.wait_status(s.iocids, "active")
    s.verify(["a", "b"])
    assert "inactive" not in checker.statuses(moved), checker.history[moved]


# -- etcd ------------------------------------------------------------------------------------


def test_sigkill_etcd_leader_mid_upload(scenario: Scenario) -> None:
    s = scenario
    leader = s.cluster.leader()
    checker = s.watch([m.endpoint for m in s.cluster.members if m is not leader])
    checker.protect(s.iocids)  # every bridge stays healthy: no IOC may ever be inactive
    s.bridges_up("a", "b")
    half = len(s.iocids) // 2
    s.connect(s.iocids[:half], "a")
    s.connect(s.iocids[half:], "b")
    wait_mid_upload(s, s.iocids)
    leader.kill()
    s.wait_status(s.iocids, "active", timeout=40)
    leader.start()
    leader.wait_healthy()
    s.verify(["a", "b"])


def test_sigstop_etcd_member_longer_than_the_client_timeout(scenario: Scenario) -> None:
    """The member bridge a uses hangs while uploads run and bridge b dies.

    Bridge a must fail over its calls and its alive-key watch (a watch on a hung
    member just goes silent), so it still sweeps b's IOCs in time.
    """
    s = scenario
    s.bridges_up("a", "b")
    half = len(s.iocids) // 2
    a_iocs, b_iocs = s.iocids[:half], s.iocids[half:]
    s.connect(b_iocs, "b")
    s.wait_status(b_iocs, "active", bridge="b")
    frozen = member_of(s.bridges["a"], s.cluster)
    checker = s.watch([m.endpoint for m in s.cluster.members if m is not frozen])
    checker.protect(a_iocs)
    frozen.freeze()
    try:
        hung_at = time.monotonic()
        s.connect(a_iocs, "a")
        late, prompt = b_iocs[:2], b_iocs[2:]
        checker.declare_dead(bridge="b")
        s.bridges["b"].kill()
        s.connect(prompt, "a")
        s.wait_status(late, "inactive", timeout=STALE_BOUND + ELECTION + 2)
        s.wait_status(a_iocs + prompt, "active", bridge="a")
        # Hold the freeze well past the client timeout and the lease TTL.
        time.sleep(max(0.0, 2 * TTL + 2 - (time.monotonic() - hung_at)))
    finally:
        frozen.thaw()
    s.connect(late, "a")
    s.wait_status(s.iocids, "active", bridge="a")
    checker.protect(s.iocids)
    s.verify(["a"], stale_bound=STALE_BOUND + ELECTION)  # the frozen member may be the leader


@pytest.mark.slow
def test_all_of_etcd_down_for_30_s_during_uploads(
    tmp_path: Path, etcd_cluster: EtcdCluster
) -> None:
    """Sessions stay up (pings), uploads wait paused and finish when etcd returns;
    bridge b, whose max_outage is shorter than the outage, closes its uploading
    sessions instead, and those IOCs upload again afterwards. An IOC that reconnects
    to its bridge during the outage keeps its identity (its old session's end could
    not be written yet)."""
    s = Scenario(tmp_path, etcd_cluster, n_iocs=24, n_records=150)
    try:
        checker = s.watch()
        s.bridge("a")
        s.bridge("b", max_outage=12)
        for process in s.bridges.values():
            process.wait_ready()
        live = s.iocids[:8]
        s.connect(live[:4], "a")
        s.connect(live[4:], "b")
        s.wait_status(live, "active")
        checker.protect(live)
        heard = find_bridge(s.udp["a"], timeout=10)  # used during the outage, below
        uploads = s.iocids[8:]
        a_up, b_up = uploads[:8], uploads[8:]
        s.connect(a_up, "a")
        s.connect(b_up, "b")
        wait_mid_upload(s, uploads)
        pings = {i: s.iocs[i].pings for i in live}
        for member in etcd_cluster.members:
            member.kill()
        time.sleep(10)  # the outage, 30 s in all
        # Bridges stop announcing once etcd has been away longer than the lease; the
        # IOC reconnects with the announcement it heard before.
        assert "not announcing" in s.bridges["a"].log_text()
        rebooted = live[0]
        checker.unprotect([rebooted])
        s.connect([rebooted], "a", heard)
        time.sleep(20)
        assert all(not s.iocs[i].closed_by_server.is_set() for i in live + a_up)
        assert all(s.iocs[i].pings > pings[i] for i in live[1:]), "sessions were not pinged"
        for member in etcd_cluster.members:
            member.start()
        for member in etcd_cluster.members:
            member.wait_healthy()
        s.wait_status(live + a_up, "active", timeout=30)
        closed = [i for i in b_up if s.iocs[i].closed_by_server.is_set()]
        assert closed, "bridge b kept uploading sessions beyond its max_outage"
        s.connect(closed, "b")
        s.wait_status(s.iocids, "active", timeout=30)
        s.verify(["a", "b"])
        assert "etcd did not answer for longer than [etcd] max_outage" in s.bridges["b"].log_text()
    finally:
        s.close()


def test_a_bridge_stops_announcing_while_etcd_is_unreachable(tmp_path: Path) -> None:
    with EtcdCluster(1, tmp_path / "etcd") as etcd:
        udp = free_port()
        process = BridgeProcess(
            tmp_path / "bridge",
            endpoints=etcd.endpoints,
            prefix=PREFIX,
            announce_to=[f"127.0.0.1:{udp}"],
            recceiver={"announceInterval": 0.3},
            etcd={"lease_ttl": 2.0, "timeout": 0.5},
        )
        process.start()
        try:
            process.wait_ready()
            assert find_bridge(udp, timeout=5)[1] == process.port
            etcd.members[0].freeze()
            try:
                poll(lambda: "not announcing" in process.log_text(), what="holding back")
                with pytest.raises(TimeoutError):  # five intervals without one
                    find_bridge(udp, timeout=1.5)
            finally:
                etcd.members[0].thaw()
            poll(lambda: "announcing again" in process.log_text(), what="announcing again")
            assert find_bridge(udp, timeout=5)[1] == process.port
        finally:
            process.stop()


def test_liveness_checker_sees_a_flap(scenario: Scenario) -> None:
    """The checker itself: an IOC marked inactive while protected is reported."""
    s = scenario
    checker = s.watch()
    iocid = s.iocids[0]
    key = s.keys.ioc(iocid)
    s.client.put(key, json.dumps({"iocid": iocid, "status": "active", "bridge": "x"}))
    s.wait(lambda: iocid in checker.docs, 10, "the checker to see the document")
    checker.protect([iocid])
    s.client.put(key, json.dumps({"iocid": iocid, "status": "inactive", "bridge": "x"}))
    s.wait(lambda: checker.violations, 10, "a violation")
    assert checker.statuses(iocid) == ["active", "inactive"]
    assert checker.max_unmatched > 0  # active without an alive key, until it went inactive


# -- the processor in-process: recovery paths that are hard to time with real faults ---------


class ProcessorRecoveryTests(TrialTestCase):
    """The etcd processor under the real reactor, against the session's etcd."""

    @pytest.fixture(autouse=True)
    def _etcd(self, etcd_server: EtcdCluster, etcd_client: Any, prefix: str) -> None:
        self.client = etcd_client
        self.keys = Keys(prefix)
        self.config = SimpleNamespace(
            endpoints=tuple(etcd_server.endpoints),
            prefix=prefix,
            lease_ttl=3,
            timeout=1.0,
            username=None,
            password=None,
            ca=None,
            cert=None,
            key=None,
            max_outage=10.0,
            grace=0.2,
        )

    def test_resync_after_compaction(self) -> Deferred[None]:
        """An alive key deleted while the watch was down, its history compacted since:
        watching again from the last revision seen fails, and the processor falls
        back to a full resync, which still sweeps the IOC."""

        async def body() -> None:
            backends: list[WatchOutage] = []

            def connect(endpoints: Sequence[str]) -> Store:
                backends.append(WatchOutage(make_client(endpoints, timeout=1.0)))
                return Store(backends[-1], 10.0)

            processor = EtcdProcessor(self.config, "survivor", reactor, connect=connect)
            processor.startService()
            self.addCleanup(processor.stopService)
            await processor.whenReady()
            await until(lambda: processor.watching)
            seen = processor.rewatches
            assert processor.sweeper is not None
            resyncs: list[int] = []
            resync = processor.sweeper.resync
            processor.sweeper.resync = lambda: resyncs.append(1) or resync()  # type: ignore
            backends[0].down = True  # the watch breaks, and cannot be opened again
            await until(lambda: not processor.watching)
            # A bridge that dies while our watch is down (its events are never seen).
            lease = self.client.lease(60)
            store = Store(GrpcBackend(self.client), 10.0)
            writer = EtcdWriter(store, self.keys, "dead", lambda: lease, time.time)
            txn = Transaction(
                1,
                Peer("127.0.0.1", 4000),
                0,
                {"HOSTNAME": "h", "IOCNAME": "C"},
                (Record(1, "C:X", "ai"),),
                upload_done=True,
            )
            writer.apply(txn)
            self.client.revoke_lease(lease.id)
            revision = int(self.client.get_response("/").header.revision)
            self.client.compact(revision)
            assert processor.alive_watch is not None
            assert processor.alive_watch.watch.revision < revision
            backends[0].down = False
            await until(lambda: processor.rewatches > seen and processor.watching)
            doc = json.loads(self.client.get(self.keys.ioc("h:C"))[0])
            await until(
                lambda: (
                    json.loads(self.client.get(self.keys.ioc("h:C"))[0])["status"] == "inactive"
                )
            )
            assert doc["bridge"] == "dead"
            assert resyncs, "the compacted history was not noticed"

        return ensureDeferred(body())

    def test_upload_after_the_lease_was_lost_takes_a_new_lease(self) -> Deferred[None]:
        """A long outage can end with the lease gone: the next upload's first write
        meets "requested lease not found", takes a new lease and goes on."""

        async def body() -> None:
            processor = EtcdProcessor(self.config, "renewer", reactor)
            processor.startService()
            self.addCleanup(processor.stopService)
            await processor.whenReady()
            await until(lambda: processor._refresher is not None and processor.watching)
            assert processor._refresher is not None
            processor._refresher.stop()  # so that only the write can notice
            old = processor.lease.id
            self.client.revoke_lease(old)
            peer, infos = Peer("127.0.0.1", 4001), {"HOSTNAME": "h", "IOCNAME": "R"}
            await processor.commit(
                Transaction(5, peer, 0, infos, (Record(1, "R:X", "ai"),), upload_done=True)
            )
            value, meta = self.client.get(self.keys.alive("h:R"))
            assert meta.lease_id == processor.lease.id != old
            assert json.loads(self.client.get(self.keys.ioc("h:R"))[0])["status"] == "active"
            bridge = self.client.get(self.keys.bridge("renewer"))[1]
            assert bridge is not None and bridge.lease_id == processor.lease.id

        return ensureDeferred(body())


class WatchOutage(GrpcBackend):
    """A real backend whose watch streams break, and cannot be opened, while `down`."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.down = False

    def watch(self, key: bytes, range_end: bytes, start: int, prev_kv: bool) -> Any:
        if self.down:
            raise EtcdUnavailable("watch refused (test)")
        return _Breakable(super().watch(key, range_end, start, prev_kv), self)


class _Breakable:
    def __init__(self, stream: GrpcWatch, backend: WatchOutage) -> None:
        self.stream = stream
        self.backend = backend
        self.endpoint = stream.endpoint

    def next(self, timeout: float) -> Any:
        if self.backend.down:
            raise EtcdUnavailable("watch broken (test)")
        return self.stream.next(timeout)

    def cancel(self) -> None:
        self.stream.cancel()


async def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, 0.05, lambda: None)
