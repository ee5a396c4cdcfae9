"""The announcer's timer, and holding back while the bridge cannot store."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from bridge.server.announce import AnnounceService, announce_interface


class UDPClock(MemoryReactorClock):
    """A clock that also hands out (inert) UDP ports."""

    def listenUDP(
        self,
        port: int,
        protocol: object,
        interface: str = "",  # noqa: N802
        maxPacketSize: int = 8192,
    ) -> object:  # noqa: N803
        class Port:
            def stopListening(self) -> None:  # noqa: N802
                return None

        return Port()


def test_announcements_pause_while_the_bridge_cannot_store() -> None:
    clock = UDPClock()
    can_store = [True]
    service = AnnounceService(clock, 5075, [("127.0.0.1", 9)], 1.0, ready=lambda: can_store[0])
    sent: list[float] = []
    service.announcer.announce = lambda: sent.append(clock.seconds())  # type: ignore[method-assign]
    with capturedLogs() as events:
        service.startService()
        clock.advance(1.0)
        can_store[0] = False
        for _ in range(3):
            clock.advance(1.0)
        can_store[0] = True
        clock.advance(1.0)
    service.stopService()
    assert sent == [0.0, 1.0, 5.0]
    lines = [
        formatEvent(e)
        for e in events
        if e.get("log_namespace", "").startswith("bridge.server.announce.AnnounceService")
    ]
    assert len(lines) == 2
    assert "not announcing" in lines[0] and "etcd unreachable or refusing writes" in lines[0]
    assert "announcing again" in lines[1]


def test_without_a_check_it_always_announces() -> None:
    clock = UDPClock()
    service = AnnounceService(clock, 5075, [("127.0.0.1", 9)], 2.0)
    sent: list[float] = []
    service.announcer.announce = lambda: sent.append(clock.seconds())  # type: ignore[method-assign]
    service.startService()
    clock.advance(2.0)
    clock.advance(2.0)
    service.stopService()
    assert sent == [0.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("bind", "interface"),
    [
        ("", ""),
        ("0.0.0.0", "0.0.0.0"),
        ("10.1.2.3", "10.1.2.3"),
        ("::", "0.0.0.0"),  # dual stack: IPv4 IOCs can connect, so announce over IPv4
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::1", None),  # IPv6 only: no RecCaster could connect
        ("localhost", "localhost"),
    ],
)
def test_announcements_go_out_over_ipv4(bind: str, interface: str | None) -> None:
    assert announce_interface(bind) == interface


def test_an_ipv6_only_bridge_says_once_that_it_does_not_announce() -> None:
    clock = UDPClock()
    service = AnnounceService(clock, 5075, [("127.0.0.1", 9)], 1.0, bind_host="::1")
    with capturedLogs() as events:
        service.startService()
        clock.advance(5.0)
    service.stopService()
    lines = [formatEvent(e) for e in events]
    assert len(lines) == 1 and "not announcing" in lines[0] and "IPv6 address ::1" in lines[0]
