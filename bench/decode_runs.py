"""CPU per record of decoding one C RecCaster upload, with and without runs.

Pure, no etcd: one IOC's upload (`bridge.testing.fakeioc`, 3 infos, DESC, an alias on every
10th record) is fed to `bridge.protocol.wire.Decoder` (or, with runs, to
`bridge.protocol.runs.RunDecoder`) in 64 KiB reads, and the best of
several repeats is printed in microseconds per record for:

* plain: the decoder as it was before runs;
* runs, first upload: cutting and digesting runs, nothing expected, every record
  decoded (what a first upload pays);
* runs, unchanged: every run matches its expected digest, nothing is decoded (what
  a reconnect storm pays);
* plain + session: decoding plus `bridge.protocol.session.Session` building the records.

    python bench/decode_runs.py [--records 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.model import Peer  # noqa: E402
from bridge.protocol import runs as r  # noqa: E402
from bridge.protocol import wire  # noqa: E402
from bridge.protocol.session import Session, SessionLimits  # noqa: E402
from bridge.testing import fakeioc  # noqa: E402

CHUNK = 65536


def plain(chunks: Sequence[bytes]) -> None:
    decoder = wire.Decoder()
    for chunk in chunks:
        decoder.feed(chunk)


def with_session(chunks: Sequence[bytes]) -> None:
    decoder = wire.Decoder()
    session = Session(1, Peer("127.0.0.1", 1), SessionLimits(), lambda: 1)
    session.start(0.0)
    for chunk in chunks:
        session.receive(decoder.feed(chunk), 0.0)


def runs(chunks: Sequence[bytes], expected: Sequence[str] | None) -> list[r.RunDecoded]:
    decoder = r.RunDecoder()
    decoder.start_runs(b"bench")
    out: list[r.RunDecoded] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        while decoder.awaiting:
            decoder.expect(expected)
            out += decoder.feed(b"")
    return out


def best(fn: Callable[[], object], records: int, repeats: int) -> float:
    """Microseconds per record, best of `repeats` (each long enough to time)."""
    loops = max(1, 30_000 // records)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - start) / loops / records * 1e6)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = fakeioc.upload_bytes(fakeioc.make_ioc("B", args.records))
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    expected = [m.digest for m in runs(chunks, None) if isinstance(m, r.RunEnd)]
    again = fakeioc.upload_bytes(fakeioc.make_ioc("B", args.records), first_rid=args.records + 1)
    again_chunks = [again[i : i + CHUNK] for i in range(0, len(again), CHUNK)]
    assert all(
        isinstance(m, r.UnchangedRun)
        for m in runs(again_chunks, expected)
        if isinstance(m, r.UnchangedRun | r.RunEnd)
    )
    print(f"{args.records} records, {len(data) / args.records:.0f} bytes each on the wire")
    for label, fn in (
        ("plain", lambda: plain(chunks)),
        ("runs, first upload", lambda: runs(chunks, None)),
        ("runs, unchanged", lambda: runs(again_chunks, expected)),
        ("plain + session", lambda: with_session(chunks)),
    ):
        print(f"  {label:20} {best(fn, args.records, args.repeats):6.2f} us/record")


if __name__ == "__main__":
    main()
