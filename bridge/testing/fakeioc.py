"""A simulated RecCaster IOC for tests, the demo and the load generator.

It speaks exactly what the C RecCaster puts on the wire (docs/protocol.md, Real
clients and their quirks): ClientGreet first, without waiting for the server;
EPICS_VERSION then the environment; each record followed by its aliases, its
info tags and ``recordDesc``; UploadDone; then a Pong for every Ping.

`IOCSpec` and `make_ioc` build deterministic data; `upload_bytes` turns it into
the exact byte stream; `FakeIOC` runs one connection on a blocking socket with a
background thread answering pings (tests); `find_bridge` waits for a real UDP
announcement the way a client does.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from bridge.errors import RemoteProtocolError
from bridge.protocol import wire


@dataclass(frozen=True)
class RecordSpec:
    name: str
    rtype: str = "ai"
    aliases: tuple[str, ...] = ()
    infos: tuple[tuple[str, str], ...] = ()
    desc: str | None = None


@dataclass(frozen=True)
class IOCSpec:
    """What an IOC uploads: its environment (client-wide infos) and its records."""

    env: tuple[tuple[str, str], ...]
    records: tuple[RecordSpec, ...] = field(default=())

    @property
    def iocname(self) -> str:
        return dict(self.env).get("IOCNAME", "")


def make_ioc(
    iocname: str,
    n_records: int,
    *,
    hostname: str = "fakehost",
    variant: int = 0,
    changed: float = 0.0,
    removed: float = 0.0,
) -> IOCSpec:
    """Deterministic IOC data: 3 info tags and a DESC per record, an alias on every 10th.

    ``changed`` and ``removed`` are fractions of records whose DESC is altered
    (tagged with ``variant``) or which are left out, for re-upload scenarios.
    """
    env = (
        ("EPICS_VERSION", "EPICS 7.0.8"),
        ("HOSTNAME", hostname),
        ("IOCNAME", iocname),
        ("ENGINEER", "fake"),
        ("RSRV_SERVER_PORT", "5064"),
    )
    change_every = int(1 / changed) if changed else 0
    remove_every = int(1 / removed) if removed else 0
    records = []
    for i in range(n_records):
        if remove_every and i % remove_every == remove_every - 1:
            continue
        name = f"{iocname}:PV{i:06d}"
        desc = f"Fake PV {i}"
        if change_every and i % change_every == 0:
            desc += f" v{variant}"
        records.append(
            RecordSpec(
                name=name,
                rtype=("ai", "ao", "bi", "longin")[i % 4],
                aliases=(f"{name}:ALIAS",) if i % 10 == 0 else (),
                infos=(("archive", "Monitor 1"), ("autosaveFields", "VAL"), ("group", iocname)),
                desc=desc,
            )
        )
    return IOCSpec(env, tuple(records))


def upload_frames(spec: IOCSpec, first_rid: int = 1) -> Iterator[bytes]:
    """Every frame of one upload, in the C RecCaster's order (ClientGreet excluded)."""
    for key, value in spec.env:
        yield wire.AddInfo(0, key, value).encode()
    for rid, record in enumerate(spec.records, first_rid):
        yield wire.AddRecord(rid, wire.ATYPE_RECORD, record.rtype, record.name).encode()
        for alias in record.aliases:
            yield wire.AddRecord(rid, wire.ATYPE_ALIAS, "", alias).encode()
        for key, value in record.infos:
            yield wire.AddInfo(rid, key, value).encode()
        if record.desc:
            yield wire.AddInfo(rid, "recordDesc", record.desc).encode()
    yield wire.UploadDone().encode()


def upload_bytes(spec: IOCSpec, first_rid: int = 1, key: int = 0) -> bytes:
    """ClientGreet plus the whole upload as one byte string."""
    return wire.ClientGreet(0, 0, key).encode() + b"".join(upload_frames(spec, first_rid))


def find_bridge(port: int, timeout: float, host: str = "127.0.0.1") -> tuple[str, int, int]:
    """Wait for an announcement on UDP ``host:port``; return (server host, TCP port, key)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((host, port))
        udp.settimeout(timeout)
        while True:
            data, (source, _) = udp.recvfrom(64)
            try:
                announce = wire.Announce.decode(data)
            except RemoteProtocolError:
                continue
            if announce.addr == wire.ANNOUNCE_ADDR_SOURCE:
                server = source
            else:
                server = socket.inet_ntoa(announce.addr.to_bytes(4, "big"))
            return server, announce.port, announce.key


class FakeIOC:
    """One simulated IOC connection on a blocking socket.

    `connect` greets, uploads and returns once everything is sent; a daemon
    thread then answers Pings until `close` (or until `answer_pings` is cleared,
    which simulates an IOC that vanished without a FIN). The bridge pings at once
    when it has read the UploadDone, so `pinged_at` - `connected_at` is how long the
    IOC waited for its upload slot and the upload took (``time.monotonic`` seconds).
    """

    def __init__(self, spec: IOCSpec, first_rid: int = 1) -> None:
        self.spec = spec
        self.first_rid = first_rid
        self.answer_pings = True
        self.pings = 0
        self.server_greeted = threading.Event()
        self.closed_by_server = threading.Event()
        self.connected_at: float | None = None
        self.pinged_at: float | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def connect(
        self, host: str, port: int, key: int = 0, timeout: float = 20.0, source: str = ""
    ) -> None:
        """Connect (from the loopback address `source`, if given) and upload."""
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.connected_at = time.monotonic()
        self._sock = sock
        sock.sendall(upload_bytes(self.spec, self.first_rid, key))
        self._thread = threading.Thread(target=self._reader, daemon=True, name="fake-ioc")
        self._thread.start()

    def _reader(self) -> None:
        assert self._sock is not None
        decoder = wire.Decoder()
        self._sock.settimeout(None)
        try:
            while True:
                data = self._sock.recv(4096)
                if not data:
                    break
                for message in decoder.feed(data):
                    if isinstance(message, wire.ServerGreet):
                        self.server_greeted.set()
                    elif isinstance(message, wire.Ping):
                        if self.pinged_at is None:
                            self.pinged_at = time.monotonic()
                        self.pings += 1
                        if self.answer_pings:
                            self._sock.sendall(wire.Pong(message.nonce).encode())
        except OSError:
            pass
        self.closed_by_server.set()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)
