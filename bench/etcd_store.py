"""The etcd layer's hot paths: client CPU and throughput per operation, real and in memory.

    python bench/etcd_store.py [--keys N] [--repeat R]

Starts one etcd on loopback (`bridge.testing.cluster`), then times the store's bulk
operations (`bridge.etcd.store.Store`) on N keys with record-sized values (about 230
bytes, as the writer stores): ``write`` (puts, 128 per transaction), ``get_many``,
``unequal`` (value compares), ``write_guarded`` (creates guarded by "absent"), and a
``scan`` of the N keys. For each it prints the wall time per key and this process's CPU
time per key (protobuf building, gRPC, decoding: what the bridge pays per record), the
best of R runs. Then the same on the in-memory etcd (`bridge.testing.memstore`), which
the property tests of the rules drive: its keys per second.
Nothing is sent outside 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.etcd.backend import open_store  # noqa: E402
from bridge.etcd.ops import Guarded  # noqa: E402
from bridge.etcd.store import Store  # noqa: E402
from bridge.testing.cluster import EtcdCluster  # noqa: E402
from bridge.testing.memstore import MemoryEtcd  # noqa: E402

VALUE = b'{"name":"X","type":"ai","iocid":"h:IOC","desc":"' + b"d" * 150 + b'","aliases":[]}'


def operations(store: Store, n: int, run: int) -> dict[str, Callable[[], object]]:
    """The timed operations on `n` keys under a prefix of their own for `run`."""
    prefix = f"/bench-store/{run}/"
    keys = [f"{prefix}{i:07d}".encode() for i in range(n)]
    fresh = [f"{prefix}g{i:07d}".encode() for i in range(n)]
    texts = [k.decode() for k in keys]
    return {
        "write": lambda: store.write((k, VALUE) for k in keys),
        "get_many": lambda: store.get_many(texts),
        "unequal": lambda: store.unequal((k, VALUE, None) for k in keys),
        "write_guarded": lambda: store.write_guarded(Guarded(k, 0, VALUE) for k in fresh),
        "scan": lambda: sum(len(page.entries) for page in store.scan(prefix)),
    }


def measure(
    make_store: Callable[[], Store], n: int, repeat: int
) -> dict[str, tuple[float, float]]:
    """operation -> (best wall s, best CPU s) over `repeat` runs, each on fresh keys."""
    best: dict[str, tuple[float, float]] = {}
    for run in range(repeat):
        store = make_store()
        try:
            for name, operation in operations(store, n, run).items():
                wall, cpu = time.perf_counter(), time.process_time()
                operation()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                old = best.get(name, (wall, cpu))
                best[name] = (min(old[0], wall), min(old[1], cpu))
        finally:
            store.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.keys
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        with EtcdCluster(1, Path(tmp) / "etcd") as etcd:
            real = measure(
                lambda: open_store(etcd.endpoints, timeout=10.0, deadline_s=30.0), n, args.repeat
            )
    memory = measure(lambda: MemoryEtcd().store(), n, args.repeat)
    print(f"{n} keys, values of {len(VALUE)} bytes, best of {args.repeat}")
    print(f"{'operation':<14} {'etcd µs/key':>12} {'client CPU µs/key':>18} {'memory keys/s':>14}")
    for name, (wall, cpu) in real.items():
        mem_wall = memory[name][0]
        print(
            f"{name:<14} {wall / n * 1e6:>12.1f} {cpu / n * 1e6:>18.1f} "
            f"{n / mem_wall if mem_wall else float('inf'):>14.0f}"
        )


if __name__ == "__main__":
    main()
