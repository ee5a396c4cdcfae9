"""UDP announcements: how RecCaster IOCs find the bridge (docs/protocol.md, Discovery).

From the moment it starts, and then every ``announceInterval`` seconds, the
announcer sends the 16-byte announcement (SERV ADDR 255.255.255.255 = "connect
to the sender", the bound TCP port, a random key) to every ``addrlist``
destination. Send errors are logged once per destination and never stop the loop.

While the bridge cannot store (its ``ready`` check says so: etcd unreachable for
longer than the lease, or refusing writes), it does not announce, so IOCs that look
for a server find another bridge instead; connected IOCs are not affected.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bridge.logs import STARTUP_NAMESPACE
from bridge.protocol import wire

_startup_log = Logger(namespace=STARTUP_NAMESPACE)


class Announcer(DatagramProtocol):
    """Sends one announcement to each destination per `announce` call."""

    log = Logger()
    noisy = False

    def __init__(self, message: bytes, destinations: Sequence[tuple[str, int]]) -> None:
        self.message = message
        self.destinations = tuple(destinations)
        self.sent = 0
        self._failing: set[tuple[str, int]] = set()

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.transport.setBroadcastAllowed(True)
        # The reference server pauses reading too: nothing that arrives here matters.
        self.transport.stopReading()  # type: ignore[attr-defined]

    def announce(self) -> None:
        for destination in self.destinations:
            try:
                assert self.transport is not None
                self.transport.write(self.message, destination)
            except Exception as error:  # OSError, MessageLengthError, ...
                if destination not in self._failing:
                    self._failing.add(destination)
                    self.log.error(
                        "cannot announce to {host}:{port}: {error}",
                        host=destination[0],
                        port=destination[1],
                        error=error,
                    )
            else:
                self.sent += 1
                if destination in self._failing:
                    self._failing.discard(destination)
                    self.log.info(
                        "announcing to {host}:{port} again",
                        host=destination[0],
                        port=destination[1],
                    )


def announce_interface(bind_host: str) -> str | None:
    """The IPv4 address to announce from, for a TCP listener on `bind_host`.

    RecCasters listen for announcements on IPv4 only (docs/protocol.md, Discovery) and
    connect to the address an announcement came from. A dual-stack listener (``::``)
    takes IPv4 connections, so it announces from any IPv4 address; one bound to an
    IPv4-mapped address from that IPv4 address; one bound to any other IPv6 address
    cannot be reached over IPv4 at all (None). Host names are used as given.
    """
    try:
        address = ipaddress.ip_address(bind_host)
    except ValueError:
        return bind_host
    if isinstance(address, ipaddress.IPv4Address):
        return bind_host
    if address.is_unspecified:
        return "0.0.0.0"
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return None


class AnnounceService(Service):
    """Owns the UDP socket and the announcement timer for one TCP port.

    `ready`, if given, is asked before each announcement; none goes out while it
    returns False.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        tcp_port: int,
        destinations: Sequence[tuple[str, int]],
        interval: float,
        bind_host: str = "",
        key: int | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.reactor = reactor
        self.key = random.SystemRandom().getrandbits(32) if key is None else key
        message = wire.Announce(port=tcp_port, key=self.key).encode()
        self.announcer = Announcer(message, destinations)
        self.tcp_port = tcp_port
        self.interval = interval
        self.bind_host = bind_host
        self.ready = ready
        #: Announcements are held back (`ready` said no).
        self.holding = False
        self._loop: LoopingCall | None = None
        self._udp: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        interface = announce_interface(self.bind_host)
        if interface is None:
            self.log.warn(
                "not announcing: the bridge listens on the IPv6 address {host} only, which "
                "RecCasters (IPv4) cannot reach; bind to an IPv4 address or to [::]",
                host=self.bind_host,
            )
            return
        udp: Any = self.reactor
        # Announce from the TCP port number, as the reference server does; clients
        # only use the source *address*, so any free port would do if it is taken.
        try:
            self._udp = udp.listenUDP(self.tcp_port, self.announcer, interface=interface)
        except OSError:
            self._udp = udp.listenUDP(0, self.announcer, interface=interface)
        loop = LoopingCall(self._tick)
        clock: IReactorTime = self.reactor
        loop.clock = clock
        loop.start(self.interval, now=True)
        self._loop = loop
        _startup_log.info(
            "announcing TCP port {port} every {interval:g} s to {destinations}",
            port=self.tcp_port,
            interval=self.interval,
            destinations=", ".join(f"{h}:{p}" for h, p in self.announcer.destinations),
        )

    def _tick(self) -> None:
        if self.ready is not None and not self.ready():
            if not self.holding:
                self.holding = True
                self.log.warn(
                    "not announcing while the bridge cannot store (etcd unreachable or "
                    "refusing writes); IOCs looking for a server go elsewhere"
                )
            return
        if self.holding:
            self.holding = False
            self.log.info("announcing again: the bridge can store")
        self.announcer.announce()

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._udp is not None:
            udp, self._udp = self._udp, None
            return udp.stopListening()
        return None
