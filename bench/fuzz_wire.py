"""Coverage-guided fuzz target for the RecSync stream decoders of `bridge.protocol`.

Property checked for every input: feeding bytes to a fresh
``Decoder(max_body_length=4096)`` in any chunking either returns decoded
messages or raises `RemoteProtocolError` (any other exception is a crash), and
``decoder.buffered`` never exceeds ``8 + max_body_length`` after a feed that
returns. A second decoder fed the same bytes in one read must agree with the
chunked one whenever neither raised.

Input layout: byte 0 selects how the rest is used.

* bits 0-5: chunk size; 0 feeds everything in one read, N feeds N bytes at a time;
* bit 6: runs mode (`runs.RunDecoder.start_runs`, as the server uses it for uploads): the
  stream is also decoded with runs, first expecting nothing, then expecting the
  digests that gave; it must give the plain decoder's messages (in any order; the
  record frames of a run that never ended may still be held), and the unchanged
  runs must stand for the same number of records. Bit 0 then also makes the
  decoder wait for the first run instead of stopping before the first record;
* bit 7: "framed" mode. The rest is read as records ``[msgid byte][len byte][body]``
  and turned into frames with the right magic and declared length, so the fuzzer
  reaches the body decoders without first having to learn the framing. In raw
  mode (bit 7 clear) the rest is fed exactly as given, which exercises the
  framing itself (magic, declared lengths, the size limit).

Runs (from the repository root; needs ``pip install atheris``):

    # CI short run, about a minute (libFuzzer's inputs grow to 4096 bytes):
    python bench/fuzz_wire.py -runs=200000

    # Long run with a persistent corpus, seeded with the spec vectors, one hour,
    # four worker processes (libFuzzer writes crash-* files to the current dir):
    python bench/fuzz_wire.py --write-seeds .fuzz/wire-corpus
    python bench/fuzz_wire.py .fuzz/wire-corpus -max_total_time=3600 \\
        -jobs=4 -workers=4 -max_len=16384 -print_final_stats=1

    # Reproduce a crash file:
    python bench/fuzz_wire.py crash-<sha1>

Without atheris (or with ``--iterations``), the same target runs under a plain
random-mutation loop over the seed inputs, which is slower and blind to
coverage but needs nothing beyond the standard library:

    python bench/fuzz_wire.py --iterations 200000 [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import atheris
except ImportError:  # pragma: no cover - depends on the machine
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["bridge"]):
        from bridge.errors import RemoteProtocolError
        from bridge.protocol import wire
        from bridge.protocol.runs import (
            RUN_HOLD_LIMIT,
            RunDecoded,
            RunDecoder,
            RunEnd,
            UnchangedRun,
        )
else:
    from bridge.errors import RemoteProtocolError
    from bridge.protocol import wire
    from bridge.protocol.runs import RUN_HOLD_LIMIT, RunDecoded, RunDecoder, RunEnd, UnchangedRun

MAX_BODY = 4096
BOUND = wire.HEADER_SIZE + MAX_BODY
_FRAME = struct.Struct(">HHI")
_MSGIDS = (0x8001, 0x8002, 0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0000, 0x0007)
_DECODED = (
    wire.ServerGreet,
    wire.Ping,
    wire.ClientGreet,
    wire.Pong,
    wire.AddRecord,
    wire.DelRecord,
    wire.UploadDone,
    wire.AddInfo,
    wire.Skipped,
)


def _framed(payload: bytes) -> bytes:
    """Records ``[msgid byte][len byte][body]`` → well-framed RecSync frames."""
    out = bytearray()
    pos = 0
    while pos + 2 <= len(payload):
        selector, length = payload[pos], payload[pos + 1]
        body = payload[pos + 2 : pos + 2 + length]
        pos += 2 + length
        msgid = _MSGIDS[selector % len(_MSGIDS)] if selector < 0xF0 else selector << 8
        out += _FRAME.pack(wire.PROTO_ID, msgid, len(body)) + body
    return bytes(out)


def _feed(stream: bytes, step: int) -> tuple[list[wire.Decoded], bool, int]:
    """Feed `stream` in chunks of `step` (0: one read); check the decoder's contract."""
    decoder = wire.Decoder(max_body_length=MAX_BODY)
    chunks = [stream] if step == 0 else [stream[i : i + step] for i in range(0, len(stream), step)]
    out: list[wire.Decoded] = []
    for chunk in chunks:
        try:
            got = decoder.feed(chunk)
        except RemoteProtocolError:
            return out, True, decoder.buffered
        if not isinstance(got, list) or not all(isinstance(m, _DECODED) for m in got):
            raise AssertionError(f"feed returned {got!r}")
        if decoder.buffered > BOUND:
            raise AssertionError(f"buffered {decoder.buffered} > {BOUND}")
        out.extend(got)
    return out, False, decoder.buffered


def _feed_runs(
    stream: bytes, step: int, expected: list[str] | None, first_run: bool
) -> tuple[list[RunDecoded], bool]:
    """`_feed` with runs on, answering the decoder whenever it waits (as the server)."""
    decoder = RunDecoder(max_body_length=MAX_BODY)
    decoder.start_runs(b"fuzz", max_aliases=2)
    chunks = [stream] if step == 0 else [stream[i : i + step] for i in range(0, len(stream), step)]
    out: list[RunDecoded] = []
    for chunk in chunks:
        try:
            got = decoder.feed(chunk)
            while decoder.awaiting:
                if first_run and decoder.before_records:
                    decoder.wait_for_first_run()
                else:
                    decoder.expect(expected)
                got += decoder.feed(b"")
        except RemoteProtocolError:
            return out, True
        if not all(isinstance(m, (*_DECODED, UnchangedRun, RunEnd)) for m in got):
            raise AssertionError(f"feed returned {got!r}")
        if decoder.buffered > BOUND or decoder.held > RUN_HOLD_LIMIT + len(chunk):
            raise AssertionError(f"buffered {decoder.buffered}, held {decoder.held}")
        out.extend(got)
    return out, False


def _records(out: list[RunDecoded]) -> int:
    return sum(
        len(m.names)
        if isinstance(m, UnchangedRun)
        else isinstance(m, wire.AddRecord) and m.atype == wire.ATYPE_RECORD
        for m in out
    )


def _check_runs(stream: bytes, step: int, first_run: bool) -> None:
    plain, plain_raised, _ = _feed(stream, step)
    runs, raised = _feed_runs(stream, step, None, first_run)
    if raised != plain_raised:
        raise AssertionError("runs and plain decoding disagree on raising")
    if raised:
        return
    plain_count = collections.Counter(map(repr, plain))
    decoded = collections.Counter(repr(m) for m in runs if not isinstance(m, RunEnd))
    if decoded - plain_count:
        raise AssertionError(f"runs gave more than plain: {decoded - plain_count}")
    missing = plain_count - decoded
    for message in plain:
        if repr(message) in missing and not (
            isinstance(message, wire.AddRecord)
            or (isinstance(message, wire.AddInfo) and message.rid)
            or (isinstance(message, wire.Skipped) and message.msgid in (3, 6))
        ):
            raise AssertionError(f"runs lost {message!r}")
    if wire.UploadDone() not in plain:
        return
    if missing:
        raise AssertionError(f"runs lost {missing} of a finished upload")
    digests = [m.digest for m in runs if isinstance(m, RunEnd)]
    again, _ = _feed_runs(stream, step, digests, first_run)
    if _records(again) != _records(plain):
        raise AssertionError("unchanged runs do not stand for the same records")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, payload = data[0], data[1:]
    stream = _framed(payload) if mode & 0x80 else payload
    step = mode & 0x3F
    if mode & 0x40:
        _check_runs(stream, step, bool(mode & 0x01))
        return
    chunked, chunked_raised, chunked_buffered = _feed(stream, step)
    if mode & 0x80 and (chunked_raised or chunked_buffered):
        raise AssertionError("well-framed input within the limit raised or left bytes over")
    if step == 0:
        return
    whole, whole_raised, whole_buffered = _feed(stream, 0)
    if whole_raised != chunked_raised:
        raise AssertionError("one read and chunked reads disagree on raising")
    if not whole_raised and (whole, whole_buffered) != (chunked, chunked_buffered):
        raise AssertionError(f"one read gave {whole!r}, chunked reads gave {chunked!r}")


# --- seeds and the fallback loop ---------------------------------------------------


def seeds() -> list[bytes]:
    """Seed inputs: the spec vectors and a C-client upload, in raw and framed modes."""
    upload = [
        wire.ClientGreet(0, 0, 0xCAFEF00D),
        wire.AddInfo(0, "EPICS_VERSION", "EPICS 7.0.8"),
        wire.AddRecord(11, wire.ATYPE_RECORD, "ai", "IOC1:PV1"),
        wire.AddRecord(11, wire.ATYPE_ALIAS, "", "IOC1:PV1:ALIAS"),
        wire.AddRecord(11, wire.ATYPE_ALIAS, "ai", "IOC1:PV1:ALIAS2"),
        wire.AddInfo(11, "recordDesc", "Temp °C"),
        wire.DelRecord(11),
        wire.UploadDone(),
        wire.Pong(0x12345678),
        wire.ServerGreet(0),
        wire.Ping(0x12345678),
    ]
    stream = b"".join(m.encode() for m in upload)
    framed = b"".join(
        bytes([_MSGIDS.index(m.msgid), len(m.encode()) - 8]) + m.encode()[8:] for m in upload
    )
    latin1 = (
        _FRAME.pack(wire.PROTO_ID, 6, 19) + bytes.fromhex("0000000504000007") + b"DESC\xb0C abc"
    )
    c_upload = b"".join(
        m.encode()
        for m in [
            wire.ClientGreet(0, 0, 1),
            wire.AddInfo(0, "IOCNAME", "F"),
            *(
                m
                for rid in (5, 6, 7)
                for m in (
                    wire.AddRecord(rid, wire.ATYPE_RECORD, "ai", f"F:{rid}"),
                    wire.AddRecord(rid, wire.ATYPE_ALIAS, "", f"F:{rid}:A"),
                    wire.AddInfo(rid, "archive", "Monitor"),
                )
            ),
            wire.UploadDone(),
        ]
    )
    return [
        b"\x40" + c_upload,
        b"\x43" + c_upload,
        b"\x47" + stream,
        b"\x00" + stream,
        b"\x01" + stream,
        b"\x07" + stream,
        b"\x00" + stream + latin1,
        b"\x80" + framed,
        b"\x83" + framed,
        b"\x00" + _FRAME.pack(wire.PROTO_ID, 3, MAX_BODY + 1),
    ]


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds()):
        (directory / f"seed-{i:02d}").write_bytes(seed)
    print(f"wrote {len(seeds())} seeds to {directory}")


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(8)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:  # bit flip
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:  # delete a range
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 4:  # truncate
            del buf[pos:]
        elif op == 5 and len(buf) >= 4:  # interesting u32 somewhere (declared lengths)
            i = rng.randrange(len(buf) - 3)
            value = rng.choice([0, 1, 7, 8, MAX_BODY, MAX_BODY + 1, 0xFFFF, 0xFFFFFFFF])
            buf[i : i + 4] = value.to_bytes(4, "big")
        elif op == 6:  # splice with another input
            other = rng.choice(pool)
            buf[pos:] = other[rng.randint(0, len(other)) :]
        elif op == 7 and buf:  # new chunking / mode byte
            buf[0] = rng.randrange(256)
    return bytes(buf)


def run_random(iterations: int, seed: int) -> None:
    rng = random.Random(seed)
    pool = seeds()
    start = time.monotonic()
    for i in range(iterations):
        data = mutate(rng, rng.choice(pool), pool)
        try:
            test_one_input(data)
        except Exception:
            crash = Path(f"crash-random-{seed}-{i}")
            crash.write_bytes(data)
            print(f"crash on iteration {i}, input saved to {crash}", file=sys.stderr)
            raise
        if len(pool) < 512 and rng.random() < 0.01:
            pool.append(data)
    print(f"{iterations} random inputs in {time.monotonic() - start:.1f} s, no failure")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--write-seeds", type=Path)
    parser.add_argument("-h", "--help", action="store_true")
    ours, rest = parser.parse_known_args()
    if ours.help:
        print(__doc__)
        return
    if ours.write_seeds is not None:
        write_seeds(ours.write_seeds)
        return
    if ours.iterations is not None or atheris is None:
        if atheris is None:
            print("atheris is not installed: plain random-mutation loop", file=sys.stderr)
        print(f"seed {ours.seed}")
        run_random(ours.iterations or 200_000, ours.seed)
        return
    atheris.Setup([sys.argv[0], *rest], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
