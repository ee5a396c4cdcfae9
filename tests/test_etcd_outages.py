"""What the bridge says and does while etcd is away or refuses writes (issue 12, part 6).

The reporting rules are tested on `Report` with a fake clock; then a real bridge rides
out a real etcd that stops answering (SIGSTOP), and one whose space quota runs out (the
NOSPACE alarm): it says so once, stops announcing and taking uploads, and comes back by
itself once the alarm is disarmed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import Logger, formatEvent

from bridge.errors import NoSpace
from bridge.etcd.backend import open_store
from bridge.etcd.monitor import SUMMARY_S, Report
from bridge.etcd.ops import Delete, Put
from bridge.etcd.process import etcd_environment, find_etcd_binary, free_port, free_ports
from bridge.etcd.store import Store
from bridge.testing.checks import content_problems, spec_iocid
from bridge.testing.cluster import EtcdCluster, EtcdMember
from bridge.testing.fakeioc import FakeIOC, make_ioc
from bridge.testing.harness import BridgeProcess
from tests.helpers import poll

# -- the reporting rules ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def report() -> Iterator[tuple[Report, Clock, list[str]]]:
    lines: list[str] = []
    log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    clock = Clock()
    yield Report("127.0.0.1:2379", log, clock), clock, lines


def test_an_outage_is_one_line_at_once_a_summary_at_most_every_30_s_and_one_at_the_end(
    report: tuple[Report, Clock, list[str]],
) -> None:
    rep, clock, lines = report
    rep.failed("Connection refused")
    assert lines == [
        "etcd at 127.0.0.1:2379 does not answer: Connection refused; uploads wait until it does"
    ]
    for _ in range(int(SUMMARY_S) * 3):  # a poll every second for 90 s
        clock.now += 1
        rep.failed(None)  # nothing new to say about why
    assert lines[1:] == [
        "etcd at 127.0.0.1:2379 still does not answer after 30 s: Connection refused",
        "etcd at 127.0.0.1:2379 still does not answer after 60 s: Connection refused",
        "etcd at 127.0.0.1:2379 still does not answer after 90 s: Connection refused",
    ]
    clock.now += 0.5
    rep.answered(())
    assert lines[-1] == "etcd at 127.0.0.1:2379 answers again, after 90 s"
    rep.answered(())
    assert len(lines) == 5


def test_an_alarm_is_one_line_naming_it_and_what_to_run_then_one_when_disarmed(
    report: tuple[Report, Clock, list[str]],
) -> None:
    rep, clock, lines = report
    rep.answered(())
    assert lines == [] and rep.alarms == ()
    rep.answered(("NOSPACE",))
    assert rep.alarms == ("NOSPACE",)
    (line,) = lines
    assert line.startswith("etcd refuses writes: alarm NOSPACE raised (its database is over ")
    assert "etcdctl defrag" in line and "etcdctl alarm disarm" in line
    assert "takes no new uploads and does not announce" in line
    for _ in range(45):
        clock.now += 1
        rep.answered(("NOSPACE",))
    assert lines[1:] == ["etcd still refuses writes after 30 s: alarm NOSPACE"]
    rep.answered(())
    assert lines[2:] == [
        "etcd takes writes again after 45 s (alarm NOSPACE disarmed); taking uploads and "
        "announcing again"
    ]
    assert rep.alarms == ()


# -- real etcd, real bridge ------------------------------------------------------------------


def announcements(port: int, seconds: float) -> int:
    """How many datagrams arrive on UDP 127.0.0.1:`port` within `seconds`."""
    count = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind(("127.0.0.1", port))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            udp.settimeout(left)
            try:
                udp.recvfrom(64)
            except TimeoutError:
                break
            count += 1
    return count


def greeted(port: int) -> bool:
    """Whether a new connection to the bridge is greeted (not closed at accept)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        try:
            return len(sock.recv(64)) > 0
        except (ConnectionResetError, TimeoutError):
            return False


def warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "#warn]" in line or "#critical]" in line]


@pytest.mark.etcd
def test_an_unreachable_etcd_is_reported_once_then_its_return(tmp_path: Path) -> None:
    with EtcdCluster(1, tmp_path / "etcd", binary=find_etcd_binary()) as cluster:
        process = BridgeProcess(
            tmp_path, endpoints=cluster.endpoints, etcd={"max_outage": 2, "lease_ttl": 3}
        )
        endpoint = cluster.endpoints[0]
        process.start().wait_ready()
        try:
            os.kill(cluster.members[0].pid, signal.SIGSTOP)
            poll(lambda: "does not answer" in process.log_text(), what="the outage reported")
            time.sleep(8)  # several failed polls, and calls that give up after max_outage
            os.kill(cluster.members[0].pid, signal.SIGCONT)
            poll(lambda: "answers again" in process.log_text(), what="the return reported")
        finally:
            os.kill(cluster.members[0].pid, signal.SIGCONT)
            process.stop()
    lines = warnings(process.log_text())
    down = [x for x in lines if "does not answer" in x]
    assert len(down) == 1 and f"etcd at {endpoint} does not answer: " in down[0]
    (back,) = [x for x in lines if "answers again" in x]
    assert f"etcd at {endpoint} answers again, after " in back
    # Nothing else repeats while etcd is away: at most the announcer's hold and the
    # bridge's lease, each once.
    others = [x for x in lines if x not in down and x != back]
    assert len(others) <= 3, others
    assert not [x for x in others if "failed" in x], others


@pytest.fixture
def small_etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    """A single etcd whose database may grow to only 1.5 MiB."""
    client_port, peer_port = free_ports(2)
    member = EtcdMember(
        find_etcd_binary(),
        "small",
        tmp_path / "small",
        client_port,
        peer_port,
        f"small=http://127.0.0.1:{peer_port}",
        f"small-{uuid.uuid4().hex}",
        extra_flags=("--quota-backend-bytes", str(3 << 19)),
    )
    member.start()
    try:
        member.wait_healthy(30)
        yield member
    finally:
        member.terminate()


def etcdctl(endpoint: str, *args: str) -> str:
    binary = shutil.which("etcdctl")
    if binary is None:
        pytest.skip("etcdctl not found (Debian package etcd-client)")
    env = {**etcd_environment(), "ETCDCTL_API": "3"}
    result = subprocess.run(
        [binary, "--endpoints", endpoint, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def fill_until_nospace(store: Store) -> None:
    value = os.urandom(48 << 10).hex().encode()  # 96 KiB, incompressible
    for i in range(1000):
        try:
            store.txn([], [Put(f"/fill/{i:05d}", value)])
        except NoSpace:
            return
    raise AssertionError("etcd never ran out of space")


@pytest.mark.etcd
def test_nospace_stops_uploads_and_announcements_until_disarmed(
    tmp_path: Path, small_etcd: EtcdMember
) -> None:
    endpoint = small_etcd.endpoint
    udp_port = free_port()
    process = BridgeProcess(
        tmp_path,
        endpoints=[endpoint],
        announce_to=[f"127.0.0.1:{udp_port}"],
        recceiver={"announceInterval": 0.5},
    )
    store = open_store([endpoint], timeout=2.0, deadline_s=10.0)
    try:
        process.start().wait_ready()
        assert announcements(udp_port, 1.5) >= 2
        fill_until_nospace(store)
        poll(lambda: "etcd refuses writes" in process.log_text(), what="the alarm reported")
        (raised,) = [x for x in process.log_text().splitlines() if "etcd refuses writes" in x]
        assert "alarm NOSPACE raised" in raised and "etcdctl alarm disarm" in raised
        # Neither announcements nor new uploads while etcd refuses writes.
        time.sleep(1.0)  # an announcement already on its way
        assert announcements(udp_port, 2.0) == 0
        assert not greeted(process.port)
        # A bridge starting now would store nothing: it exits with one line instead.
        late = BridgeProcess(tmp_path / "late", endpoints=[endpoint], name="late")
        late.start()
        assert late.wait(60) == 1
        (line,) = [x for x in late.log_text().splitlines() if "could not start" in x]
        assert line.split("could not start: ", 1)[1].startswith(
            f"etcd at {endpoint} refuses writes (alarm NOSPACE: its database is over its "
            "quota): compact and defragment it"
        )
        # An operator frees space and disarms the alarm: the bridge comes back by itself.
        store.txn([], [Delete("/fill/", prefix=True)])
        revision = store.revision()
        etcdctl(endpoint, "compact", str(revision))
        etcdctl(endpoint, "defrag")
        etcdctl(endpoint, "alarm", "disarm")
        poll(lambda: "takes writes again" in process.log_text(), what="the bridge back")
        assert announcements(udp_port, 1.5) >= 2
        spec = make_ioc("AFTER-NOSPACE", 5, hostname="ns")
        ioc = FakeIOC(spec)
        try:
            ioc.connect("127.0.0.1", process.port)
            poll(
                lambda: (
                    not content_problems(store, "/recsync", {spec_iocid(spec): spec}, {"bridge"})
                ),
                what="an upload stored after the alarm",
            )
        finally:
            ioc.close()
    finally:
        process.stop()
        store.close()
    text = process.log_text()
    assert "Traceback" not in text and text.count("alarm NOSPACE raised") == 1, text
    refused = [x for x in text.splitlines() if "connection refused" in x]
    assert len(refused) == 1 and "etcd refuses writes (alarm NOSPACE)" in refused[0]
