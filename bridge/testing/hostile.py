"""Hostile peers for tests and benchmarks, on loopback only.

* `Tricklers`: connections that send a ClientGreet, one record, then one AddInfo a
  second, to hold an upload slot; each reconnects when the bridge closes it.
* `PartialFrames`: connections that each send the start of a frame announcing a
  65,798-byte body (all of it but one byte) and then nothing more.

Both connect from the loopback source addresses they are given (Linux routes all
of 127.0.0.0/8 to the loopback interface), so that they appear as several hosts,
and run in one daemon thread each with non-blocking sockets: a hundred or thousands
of peers cost one thread.
"""

from __future__ import annotations

import collections
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Sequence

from bridge.protocol import wire

#: The frame `PartialFrames` starts: an AddInfo announcing the largest legal body.
PARTIAL_LENGTH = wire.MAX_BODY_LENGTH


def _connect(host: str, port: int, source: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
    sock.setblocking(False)
    return sock


class _Swarm:
    """Sockets driven by one thread; subclasses say what each sends and when."""

    def __init__(self, host: str, port: int, sources: Sequence[str], count: int) -> None:
        self.host, self.port = host, port
        self.sources = list(itertools.islice(itertools.cycle(sources), count))
        #: connects, closed (by the bridge), connect_failed; read by the caller.
        self.stats: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=type(self).__name__)
        self._selector = selectors.DefaultSelector()

    def start(self) -> _Swarm:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _open(self, index: int) -> socket.socket | None:
        try:
            sock = _connect(self.host, self.port, self.sources[index])
        except OSError:
            self.stats["connect_failed"] += 1
            return None
        self.stats["connects"] += 1
        self._selector.register(sock, selectors.EVENT_READ, index)
        return sock

    def _drain(self, timeout: float) -> list[int]:
        """Read (and drop) what the bridge sent; returns the indexes it closed."""
        closed = []
        for key, _ in self._selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.recv(65536):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            self._selector.unregister(sock)
            sock.close()
            self.stats["closed"] += 1
            closed.append(key.data)
        return closed

    def _close_all(self, socks: dict[int, socket.socket]) -> None:
        for sock in socks.values():
            self._selector.unregister(sock)
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        raise NotImplementedError


class Tricklers(_Swarm):
    """`count` connections that greet, send one record, then one AddInfo every
    `interval` seconds, reconnecting (and starting over) whenever they are closed."""

    def __init__(
        self,
        host: str,
        port: int,
        sources: Sequence[str],
        count: int = 100,
        interval: float = 1.0,
    ) -> None:
        super().__init__(host, port, sources, count)
        self.interval = interval

    @staticmethod
    def opening(index: int) -> bytes:
        record = wire.AddRecord(1, wire.ATYPE_RECORD, "ai", f"TRICKLE:{index}")
        return wire.ClientGreet().encode() + record.encode()

    def _run(self) -> None:
        socks: dict[int, socket.socket] = {}
        info = wire.AddInfo(1, "drip", "x").encode()
        next_drip = time.monotonic()
        while not self._stop.is_set():
            for index in range(len(self.sources)):
                if index not in socks and not self._stop.is_set():
                    sock = self._open(index)
                    if sock is not None:
                        socks[index] = sock
                        self._send(socks, index, self.opening(index))
            if time.monotonic() >= next_drip:
                next_drip += self.interval
                for index in list(socks):
                    self._send(socks, index, info)
            for index in self._drain(max(0.0, min(0.2, next_drip - time.monotonic()))):
                socks.pop(index, None)
        self._close_all(socks)

    def _send(self, socks: dict[int, socket.socket], index: int, data: bytes) -> None:
        try:
            socks[index].send(data)
        except BlockingIOError:
            pass  # the bridge does not read this one (it waits for a slot): drop it
        except OSError:
            self._selector.unregister(socks[index])
            socks.pop(index).close()
            self.stats["closed"] += 1


class PartialFrames(_Swarm):
    """`count` connections that each send ``8 + PARTIAL_LENGTH - 1`` bytes of one frame
    (all but its last byte), optionally after a ClientGreet, and then wait."""

    def __init__(
        self, host: str, port: int, sources: Sequence[str], count: int, greet: bool = False
    ) -> None:
        super().__init__(host, port, sources, count)
        self.greet = greet
        #: Bytes the kernel took from each connection (the bridge or its socket buffer).
        self.sent = 0
        self.opened = threading.Event()

    def frame(self) -> bytes:
        header = wire.HEADER.pack(wire.PROTO_ID, wire.MSG_ADD_INFO, PARTIAL_LENGTH)
        start = wire.ClientGreet().encode() if self.greet else b""
        return start + header + b"x" * (PARTIAL_LENGTH - 1)

    def _run(self) -> None:
        socks: dict[int, socket.socket] = {}
        pending: dict[int, memoryview] = {}
        frame = self.frame()
        for index in range(len(self.sources)):
            if self._stop.is_set():
                break
            sock = self._open(index)
            if sock is not None:
                socks[index] = sock
                pending[index] = memoryview(frame)
            self._push(socks, pending)
        self.opened.set()
        while not self._stop.is_set():
            self._push(socks, pending)
            for index in self._drain(0.1):
                socks.pop(index, None)
                pending.pop(index, None)
        self._close_all(socks)

    def _push(self, socks: dict[int, socket.socket], pending: dict[int, memoryview]) -> None:
        for index in list(pending):
            try:
                sent = socks[index].send(pending[index])
            except BlockingIOError:
                continue
            except OSError:
                pending.pop(index)
                continue
            self.sent += sent
            pending[index] = pending[index][sent:]
            if not pending[index]:
                del pending[index]
