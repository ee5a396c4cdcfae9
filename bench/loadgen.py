"""Asyncio load generator: many simulated C RecCaster IOCs, each on its own TCP connection.

Every simulated IOC speaks the exact byte sequence of the C RecCaster (docs/protocol.md,
Real clients and their quirks; `bridge.testing.fakeioc` produces it): ClientGreet
first, without waiting for the ServerGreet; then EPICS_VERSION and the environment;
each record followed by its aliases, its info tags and ``recordDesc``; UploadDone;
then a Pong for every Ping, echoing the nonce.

Data comes from `bridge.testing.fakeioc.make_ioc` (deterministic; ``variant``/``changed``/
``removed`` for re-upload scenarios) and `bridge.testing.fakeioc.upload_frames`. To keep
the generator's own CPU and memory out of the measurement, uploads are encoded
before a scenario starts (`prepare_uploads`, in worker processes) into one file
per IOC, without the ClientGreet, which carries the announced key and is sent
separately. A connection streams its file in 64 kB chunks and waits for the socket
to drain before reading the next chunk, so the generator holds at most one chunk
per connection whatever the upload size (the bridge pauses reading from queued
connections; their data then waits in our chunk and the kernel's socket buffers).

Two ways to run it:

* imported (bench/scale.py): `LoadGen` runs an event loop in a background thread;
  `LoadGen.start` opens connections, `LoadGen.close` ends them cleanly (FIN), which
  makes the IOCs re-upload when they connect again;
* ``python bench/loadgen.py probe ...``: responsiveness probes (see `run_probes`),
  in their own process so that the load generator's work cannot delay them;
* ``python bench/loadgen.py run ...``: a standalone load, for manual experiments.

What a probe measures. A probe is a small IOC that is connected and LIVE (its
upload is done) before a scenario starts and stays connected. The bridge sends a
Ping after ``tcptimeout`` seconds in which it heard nothing from the IOC, and a
probe sends nothing but Pongs. So when the bridge is responsive, the next Ping
arrives ``tcptimeout`` seconds after the probe sent its Pong. For every Ping after
the first, the probe records ``interval`` = (Ping arrival) - (previous Pong sent)
and ``lateness = interval - tcptimeout``. Lateness is the sum of: the time until
the bridge's reactor read and handled the Pong (it restarts the silence timer when
it handles the Pong), the lateness of the bridge's timer, the time to write the
Ping, and loopback transit both ways. A reactor blocked for X seconds shows up as
lateness of about X. It is therefore an upper bound of the extra delay a Ping/Pong
round trip suffers inside the bridge, sampled every ``tcptimeout`` seconds per probe.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bridge.errors import RemoteProtocolError  # noqa: E402
from bridge.protocol import wire  # noqa: E402
from bridge.testing.fakeioc import IOCSpec, make_ioc, upload_bytes, upload_frames  # noqa: E402

T = TypeVar("T")

#: Bytes per write of an upload; what one connection holds in the generator at most.
CHUNK = 64 * 1024
HOSTNAME = "fakehost"
#: A connection attempt that has not completed after this long is abandoned and retried.
CONNECT_ATTEMPT_S = 10.0
#: Pause between attempts: the bench's announcement interval, after which a C
#: RecCaster whose connect failed would try again.
CONNECT_RETRY_S = 0.5
#: Give up connecting after this long.
CONNECT_DEADLINE_S = 600.0


@dataclass(frozen=True)
class UploadPlan:
    """What one simulated IOC uploads: the arguments of `make_ioc` plus the first record id.

    The C RecCaster never resets its record-id counter, so an IOC process that
    reconnects sends the same records with new ids (``first_rid`` = previous
    count + 1); an IOC that restarted begins at 1 again.
    """

    iocname: str
    records: int
    variant: int = 0
    changed: float = 0.0
    removed: float = 0.0
    first_rid: int = 1
    hostname: str = HOSTNAME

    @property
    def iocid(self) -> str:
        """The iocid the bridge derives (``HOSTNAME:IOCNAME``, data model rule 1)."""
        return f"{self.hostname}:{self.iocname}"

    def spec(self) -> IOCSpec:
        return make_ioc(
            self.iocname,
            self.records,
            hostname=self.hostname,
            variant=self.variant,
            changed=self.changed,
            removed=self.removed,
        )

    def filename(self) -> str:
        return (
            f"{self.hostname}-{self.iocname}-n{self.records}-v{self.variant}"
            f"-c{self.changed:g}-r{self.removed:g}-rid{self.first_rid}.bin"
        )


def write_upload(plan: UploadPlan, directory: str) -> tuple[str, int]:
    """Encode `plan`'s upload (every frame after ClientGreet) into a file; reuse an existing one.

    Returns (path, size in bytes). Runs in worker processes.
    """
    path = Path(directory) / plan.filename()
    if path.exists():
        return str(path), path.stat().st_size
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    size = 0
    with open(tmp, "wb") as out:
        buf: list[bytes] = []
        pending = 0
        for frame in upload_frames(plan.spec(), plan.first_rid):
            buf.append(frame)
            pending += len(frame)
            if pending >= CHUNK:
                out.write(b"".join(buf))
                size += pending
                buf, pending = [], 0
        out.write(b"".join(buf))
        size += pending
    os.replace(tmp, path)
    return str(path), size


def prepare_uploads(
    plans: Sequence[UploadPlan], directory: Path, workers: int = 2
) -> list[tuple[UploadPlan, Path, int]]:
    """Upload files for every plan, encoded by `workers` spawned processes.

    Spawned, not forked: the caller may hold gRPC channels, which do not survive fork.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if workers <= 1 or len(plans) < 4:
        done = [write_upload(plan, str(directory)) for plan in plans]
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            done = list(pool.map(write_upload, plans, [str(directory)] * len(plans), chunksize=8))
    return [(plan, Path(path), size) for plan, (path, size) in zip(plans, done, strict=True)]


@dataclass
class ConnStats:
    """What one simulated IOC saw; times are `time.monotonic` seconds."""

    iocname: str
    bytes_total: int
    connect_start: float = 0.0
    #: The first connection (attempt) that succeeded.
    connected: float | None = None
    server_greeted: float | None = None
    #: The end of the first complete upload.
    upload_sent: float | None = None
    closed: float | None = None
    connect_attempts: int = 0
    #: Connections the bridge (or the kernel) ended; each is followed by a reconnect.
    server_closes: int = 0
    pings: int = 0
    error: str | None = None
    #: No connection could be made before `CONNECT_DEADLINE_S`.
    gave_up: bool = False


class SimIOC:
    """One simulated IOC, streaming a prepared upload file.

    Like the C RecCaster, it connects again (after `CONNECT_RETRY_S`, our announcement
    interval) and uploads everything again whenever the bridge ends its connection,
    until `close` is called.
    """

    def __init__(
        self, plan: UploadPlan, path: Path, size: int, host: str, port: int, key: int
    ) -> None:
        self.plan = plan
        self.path = path
        self.host = host
        self.port = port
        self.key = key
        self.stats = ConnStats(plan.iocname, size)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def settled(self) -> bool:
        """True once an upload was completely written, or connecting was given up."""
        return self.stats.upload_sent is not None or self.stats.gave_up

    async def run(self) -> ConnStats:
        """Connect, greet, upload, answer pings; reconnect when the bridge disconnects."""
        stats = self.stats
        stats.connect_start = time.monotonic()
        deadline = stats.connect_start + CONNECT_DEADLINE_S
        while not self._closing:
            try:
                reader, writer = await self._connect(deadline)
            except (TimeoutError, OSError) as exc:
                stats.error = repr(exc)
                stats.gave_up = True
                break
            if stats.connected is None:
                stats.connected = time.monotonic()
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader, writer))
            try:
                writer.write(wire.ClientGreet(0, 0, self.key).encode())
                await self._stream(writer)
                if stats.upload_sent is None and not self._closing:
                    stats.upload_sent = time.monotonic()
            except OSError as exc:
                stats.error = repr(exc)
            try:
                await self._reader_task
            except asyncio.CancelledError:
                pass
            if self._closing:
                break
            stats.server_closes += 1
            writer.close()
            await asyncio.sleep(CONNECT_RETRY_S)
            deadline = time.monotonic() + CONNECT_DEADLINE_S
        return stats

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        offset = 0
        while not self._closing:
            with open(self.path, "rb") as f:
                f.seek(offset)
                chunk = f.read(CHUNK)
            if not chunk:
                return
            offset += len(chunk)
            writer.write(chunk)
            await writer.drain()

    async def _connect(self, deadline: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect, retrying like a client whose connect failed (the listen queue overflowed)."""
        while True:
            self.stats.connect_attempts += 1
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), CONNECT_ATTEMPT_S
                )
            except (TimeoutError, OSError):
                if time.monotonic() + CONNECT_RETRY_S >= deadline or self._closing:
                    raise
            await asyncio.sleep(CONNECT_RETRY_S)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = wire.Decoder()
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                for message in decoder.feed(data):
                    if isinstance(message, wire.ServerGreet):
                        self.stats.server_greeted = time.monotonic()
                    elif isinstance(message, wire.Ping):
                        self.stats.pings += 1
                        writer.write(wire.Pong(message.nonce).encode())
        except (OSError, RemoteProtocolError) as exc:
            self.stats.error = repr(exc)
        if not self._closing:
            self.stats.closed = time.monotonic()

    async def close(self) -> None:
        """Close cleanly (FIN); the bridge then ends the session. No reconnect follows."""
        self._closing = True
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 10)
            except (TimeoutError, OSError):
                pass
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except asyncio.CancelledError:
                pass
        self.stats.closed = time.monotonic()


class LoadGen:
    """An event loop in a daemon thread that runs simulated IOCs for a synchronous caller.

    `bridges` are (host, port, key) of the bridges to upload to: the i-th IOC of a
    `start` (in plan order) goes to ``bridges[i % len(bridges)]``, so an IOC meets the
    same bridge again when it reconnects, as it would hear the same announcement first.
    """

    def __init__(self, bridges: Sequence[tuple[str, int, int]]) -> None:
        if not bridges:
            raise ValueError("at least one bridge is needed")
        self.bridges = list(bridges)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="loadgen", daemon=True)
        self._thread.start()
        self._running: dict[SimIOC, concurrent.futures.Future[ConnStats]] = {}

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, uploads: Iterable[tuple[UploadPlan, Path, int]]) -> list[SimIOC]:
        """Open every connection at once; returns at once (the uploads go on in the loop)."""
        iocs = [
            SimIOC(plan, path, size, *self.bridges[i % len(self.bridges)])
            for i, (plan, path, size) in enumerate(uploads)
        ]
        for ioc in iocs:
            self._running[ioc] = asyncio.run_coroutine_threadsafe(ioc.run(), self.loop)
        return iocs

    def wait_sent(self, iocs: Sequence[SimIOC], timeout: float) -> list[ConnStats]:
        """Wait until every IOC wrote one whole upload (or gave up connecting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(ioc.settled for ioc in iocs):
            time.sleep(0.05)
        return [ioc.stats for ioc in iocs]

    def close(self, iocs: Sequence[SimIOC], timeout: float = 60.0) -> None:
        """Close the given connections cleanly, all at once."""

        async def close_all() -> None:
            await asyncio.gather(*(ioc.close() for ioc in iocs))

        self.call(close_all(), timeout)
        for ioc in iocs:
            future = self._running.pop(ioc, None)
            if future is not None:
                try:
                    future.result(10)
                except Exception:  # its stats say what went wrong
                    pass

    def stop(self) -> None:
        """Close whatever is still open and stop the loop."""
        if self._running:
            try:
                self.close(list(self._running))
            except Exception:  # best effort at shutdown
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# -- responsiveness probes -------------------------------------------------------------


async def _probe(
    index: int,
    spec: IOCSpec,
    host: str,
    port: int,
    key: int,
    tcptimeout: float,
    out: TextIO,
    stop: asyncio.Event,
) -> None:
    """One probe IOC: upload, then only Pongs; one JSON line per Ping (see module doc)."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            _emit(out, {"event": "connect_failed", "probe": index, "error": repr(exc)})
            await asyncio.sleep(1.0)
            continue
        writer.write(upload_bytes(spec, key=key))
        decoder = wire.Decoder()
        last_pong: float | None = None
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                read = asyncio.create_task(reader.read(4096))
                done, _ = await asyncio.wait({read, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    writer.close()
                    return
                data = read.result()
                if not data:
                    _emit(out, {"event": "closed_by_server", "probe": index})
                    break
                for message in decoder.feed(data):
                    if not isinstance(message, wire.Ping):
                        continue
                    now = time.monotonic()
                    if last_pong is None:
                        _emit(out, {"event": "live", "probe": index, "t": now})
                    else:
                        interval = now - last_pong
                        _emit(
                            out,
                            {
                                "event": "ping",
                                "probe": index,
                                "t": now,
                                "interval": interval,
                                "lateness": interval - tcptimeout,
                            },
                        )
                    writer.write(wire.Pong(message.nonce).encode())
                    last_pong = time.monotonic()
        except (OSError, RemoteProtocolError) as exc:
            _emit(out, {"event": "error", "probe": index, "error": repr(exc)})
        finally:
            stopper.cancel()
            writer.close()
        await asyncio.sleep(0.5)


def _emit(out: TextIO, doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc) + "\n")
    out.flush()


async def run_probes(
    host: str, port: int, key: int, count: int, records: int, tcptimeout: float, out: TextIO
) -> None:
    """Run `count` probes until SIGTERM/SIGINT; lines go to `out` as they happen."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    specs = [make_ioc(f"PROBE{i:02d}", records, hostname=HOSTNAME) for i in range(count)]
    await asyncio.gather(
        *(_probe(i, spec, host, port, key, tcptimeout, out, stop) for i, spec in enumerate(specs))
    )


def read_probe_log(path: Path) -> list[dict[str, Any]]:
    """Every complete line a probe process wrote so far."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return lines


# -- command line ----------------------------------------------------------------------


def _run(args: argparse.Namespace) -> None:
    plans = [
        UploadPlan(
            f"IOC{i:05d}",
            args.records,
            variant=args.variant,
            changed=args.changed,
            removed=args.removed,
            first_rid=args.first_rid,
        )
        for i in range(args.iocs)
    ]
    directory = Path(args.cache)
    started = time.monotonic()
    uploads = prepare_uploads(plans, directory, args.workers)
    print(f"prepared {len(uploads)} uploads in {time.monotonic() - started:.1f} s", flush=True)
    gen = LoadGen([(args.host, args.port, args.key)])
    try:
        started = time.monotonic()
        iocs = gen.start(uploads)
        stats = gen.wait_sent(iocs, args.timeout)
        sent = [s for s in stats if s.upload_sent is not None]
        print(
            f"{len(sent)}/{len(stats)} uploads written in {time.monotonic() - started:.1f} s;"
            f" reconnects: {sum(s.server_closes for s in stats)}",
            flush=True,
        )
        if args.hold > 0:
            time.sleep(args.hold)
    finally:
        gen.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "probe"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--key", type=int, default=0, help="the announced key")
    run = sub.choices["run"]
    run.add_argument("--iocs", type=int, default=10)
    run.add_argument("--records", type=int, default=1000)
    run.add_argument("--variant", type=int, default=0)
    run.add_argument("--changed", type=float, default=0.0)
    run.add_argument("--removed", type=float, default=0.0)
    run.add_argument("--first-rid", type=int, default=1)
    run.add_argument("--cache", default="/tmp/recsync-loadgen-cache")
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--timeout", type=float, default=600.0)
    run.add_argument("--hold", type=float, default=0.0, help="seconds to stay connected")
    probe = sub.choices["probe"]
    probe.add_argument("--count", type=int, default=4)
    probe.add_argument("--records", type=int, default=10)
    probe.add_argument(
        "--tcptimeout",
        type=float,
        required=True,
        help="the bridge's tcptimeout, to compute lateness",
    )
    probe.add_argument("--out", default="-", help="JSON lines file (default stdout)")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the load generator only talks to loopback")
    if args.command == "run":
        _run(args)
        return 0
    if args.out == "-":
        asyncio.run(
            run_probes(
                args.host,
                args.port,
                args.key,
                args.count,
                args.records,
                args.tcptimeout,
                sys.stdout,
            )
        )
    else:
        with open(args.out, "a") as out:
            asyncio.run(
                run_probes(
                    args.host, args.port, args.key, args.count, args.records, args.tcptimeout, out
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
