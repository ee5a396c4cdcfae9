"""Memory one upload holds per record: decoder, session and etcd writer on a real etcd.

The scale benchmark (`bench/scale.py`) measures the bridge's resident size; this one
says where per-record memory of a single upload goes. It starts a single-node etcd,
drives one simulated C RecCaster upload (`bridge.testing.fakeioc`) through the bridge's pure
core on one thread, exactly as the server would (`runs.RunDecoder`, `Session`,
`EtcdWriter`), and measures with tracemalloc what is still allocated just before the
upload's UploadDone: for a first upload, an unchanged re-upload (the fast path: runs
kept, never decoded) and a re-upload with 1 % of the records changed (every run
differs, so the IOC's stored records are loaded and compared one by one):

    python bench/upload_memory.py [--records 65000] [--top 6]

It prints bytes per record held by the upload at that point, and the lines that
allocated most of it. The upload's own bytes are allocated before measuring starts.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.documents import Keys  # noqa: E402
from bridge.etcd.backend import open_store  # noqa: E402
from bridge.model import Peer  # noqa: E402
from bridge.processors.etcdwriter import EtcdWriter  # noqa: E402
from bridge.protocol.effects import Commit, Effect  # noqa: E402
from bridge.protocol.runs import RunDecoder  # noqa: E402
from bridge.protocol.session import Session, SessionLimits  # noqa: E402
from bridge.testing import fakeioc  # noqa: E402
from bridge.testing.cluster import EtcdCluster  # noqa: E402

CHUNK = 65536


def apply(writer: EtcdWriter, effects: list[Effect]) -> None:
    for effect in effects:
        if isinstance(effect, Commit):
            writer.apply(effect.transaction)


def upload(writer: EtcdWriter, session: Session, decoder: RunDecoder, data: bytes) -> None:
    """Feed `data` as the server does (`bridge.server.connection.RecSyncProtocol`)."""
    for start in range(0, len(data), CHUNK):
        messages = decoder.feed(data[start : start + CHUNK])
        while True:
            apply(writer, session.receive(messages, 0.0))
            if not decoder.awaiting:
                break
            apply(writer, session.begin_records(0.0))
            decoder.expect(writer.known_runs(session.session_id))
            messages = decoder.feed(b"")


def measure(
    writer: EtcdWriter, spec: fakeioc.IOCSpec, first_rid: int, session_id: int, top: int
) -> tuple[float, list[Any]]:
    data = fakeioc.upload_bytes(spec, first_rid=first_rid)
    body, done = data[:-12], data[-12:]  # everything but UploadDone
    session = Session(
        session_id, Peer("127.0.0.1", 40000 + session_id), SessionLimits(), lambda: 1
    )
    session.start(0.0)
    decoder = RunDecoder()
    decoder.start_runs(session.digest_seed, session.limits.max_aliases)
    gc.collect()
    tracemalloc.start(1)
    base = tracemalloc.take_snapshot()
    upload(writer, session, decoder, body)
    gc.collect()
    held = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_record = sum(s.size_diff for s in held.compare_to(base, "filename")) / len(spec.records)
    lines = held.compare_to(base, "lineno")[:top]
    apply(writer, session.receive(decoder.feed(done), 0.0))
    apply(writer, session.connection_lost("closed"))
    return per_record, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=65_000)
    parser.add_argument("--top", type=int, default=6, help="allocating lines to show")
    args = parser.parse_args()
    spec = fakeioc.make_ioc("MEM", args.records)
    with EtcdCluster(1) as etcd:
        store = open_store(etcd.endpoints, timeout=5.0, deadline_s=30.0)
        lease = store.grant(600)
        writer = EtcdWriter(store, Keys("/bench-memory"), "bench", lambda: lease, time.time)
        try:
            changed = fakeioc.make_ioc("MEM", args.records, changed=0.01, variant=1)
            for label, upload_spec, first_rid, session_id in (
                ("first upload", spec, 1, 1),
                ("unchanged re-upload", spec, args.records + 1, 2),
                ("re-upload with 1 % changed", changed, 2 * args.records + 1, 3),
            ):
                per_record, lines = measure(writer, upload_spec, first_rid, session_id, args.top)
                print(
                    f"{label}: {per_record:.0f} bytes per record held before UploadDone "
                    f"({args.records} records)"
                )
                for line in lines:
                    print(f"    {line}")
        finally:
            store.close()


if __name__ == "__main__":
    main()
