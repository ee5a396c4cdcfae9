"""CPU per message of `Session.receive` over one large C RecCaster upload.

Pure, no etcd, no decoding in the timed part: one IOC's upload (`bridge.testing.fakeioc`, 3
infos, DESC, an alias on every 10th record) is decoded once, grouped as the server
would hand it over (the messages of each 64 KiB read), and then fed to a fresh
`Session` per repeat. The best of several repeats is printed in nanoseconds per
message and microseconds per record: the session's share of an upload's cost, which
the scale benchmark is sensitive to.

    python bench/session_receive.py [--records 100000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.model import Peer  # noqa: E402
from bridge.protocol import wire  # noqa: E402
from bridge.protocol.effects import Commit  # noqa: E402
from bridge.protocol.session import Session, SessionLimits  # noqa: E402
from bridge.testing import fakeioc  # noqa: E402

CHUNK = 65536


def decoded_reads(records: int) -> list[list[wire.Decoded]]:
    """The upload's messages, one list per 64 KiB read, ClientGreet first."""
    data = fakeioc.upload_bytes(fakeioc.make_ioc("B", records))
    decoder = wire.Decoder()
    return [decoder.feed(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]


def receive_all(reads: Sequence[list[wire.Decoded]], records: int) -> float:
    """Seconds one session takes to receive every read; checks what it committed."""
    session = Session(1, Peer("127.0.0.1", 1), SessionLimits(max_records=records), lambda: 1)
    session.start(0.0)
    committed = 0
    start = time.perf_counter()
    for messages in reads:
        for effect in session.receive(messages, 0.0):
            if type(effect) is Commit:
                committed += len(effect.transaction.records)
    took = time.perf_counter() - start
    assert committed == records, committed
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    reads = decoded_reads(args.records)
    messages = sum(len(r) for r in reads)
    gc.freeze()  # the decoded upload is long-lived: keep it out of the collections
    took = min(receive_all(reads, args.records) for _ in range(args.repeats))
    print(f"{args.records} records, {messages} messages in {len(reads)} reads")
    print(f"  Session.receive  {took / messages * 1e9:6.1f} ns/message")
    print(f"  Session.receive  {took / args.records * 1e6:6.2f} us/record")


if __name__ == "__main__":
    main()
