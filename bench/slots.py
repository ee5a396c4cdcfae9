"""Slot benchmark (issue 11, finding 3): how long honest IOCs wait for an upload slot
while 100 tricklers hold on.

A real bridge (``twistd recsync-bridge``, default limits: maxActive 20, a share of 10
per address, minUploadRate 1000 bytes/s over 5 s) on a single-node etcd, all on
loopback. Tricklers (`bridge.testing.hostile.Tricklers`) send ClientGreet, one
record, then one AddInfo a second, and reconnect whenever the bridge closes them.
Once they hold every slot they can (the bridge's status line says so), honest
simulated C RecCasters (`bridge.testing.fakeioc`, 200 records each) connect, each
from a loopback address of its own, and one more from a trickler's address.

Figure per honest IOC: its wait, from its connect to the bridge's first Ping (sent
as soon as the bridge has read its UploadDone, so it is the slot wait plus the
upload's own reading time), and when it was ``active`` in etcd. Scenarios:

* ``none``: no tricklers (the upload time alone);
* ``one``: 100 tricklers from one address (127.0.0.2; ``maxConnectionsPerHost`` 101,
  so that the honest IOC from there can connect too);
* ``four``: 100 tricklers from four addresses (25 each), which take all 20 slots.

Usage: ``python bench/slots.py [--scenario none,one,four] [--honest 10]``; about two
minutes. Prints one table; ``--json`` prints the figures as JSON instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bridge.documents import Keys  # noqa: E402
from bridge.etcd.client import make_client  # noqa: E402
from bridge.testing.cluster import EtcdCluster  # noqa: E402
from bridge.testing.fakeioc import FakeIOC, make_ioc  # noqa: E402
from bridge.testing.harness import BridgeProcess  # noqa: E402
from bridge.testing.hostile import Tricklers  # noqa: E402

PREFIX = "/slots"
SCENARIOS = {
    "none": [],
    "one": ["127.0.0.2"],
    "four": [f"127.0.0.{i}" for i in range(2, 6)],
}


def status(process: BridgeProcess) -> dict[str, int]:
    """The figures of the bridge's last status line."""
    lines = [line for line in process.log_text().splitlines() if "status: " in line]
    if not lines:
        return {}
    text = lines[-1].split("status: ", 1)[1]
    return {k: int(v) for k, v in (item.split("=") for item in text.split(", "))}


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run(name: str, cluster: EtcdCluster, workdir: Path, honest: int) -> dict[str, Any]:
    sources = SCENARIOS[name]
    recceiver: dict[str, object] = {"statusInterval": 0.5, "loglevel": "INFO"}
    if len(sources) == 1:
        # Room for the honest IOC beside the 100 tricklers from that one address.
        recceiver["maxConnectionsPerHost"] = 101
    process = BridgeProcess(
        workdir / name,
        endpoints=cluster.endpoints,
        prefix=f"{PREFIX}/{name}",
        recceiver=recceiver,
        name=name,
    )
    tricklers = Tricklers("127.0.0.1", 0, sources, count=100) if sources else None
    client = make_client(cluster.endpoints, timeout=2.0)
    keys = Keys(f"{PREFIX}/{name}")
    iocs: list[FakeIOC] = []
    active_at: dict[int, float] = {}
    try:
        process.start().wait_ready()
        if tricklers is not None:
            tricklers.port = process.port
            tricklers.start()
            want = min(20, 10 * len(sources))
            wait_for(lambda: status(process).get("active") == want, 60.0, "tricklers")
        held = status(process)
        specs = [make_ioc(f"HONEST{i}", 200, hostname=f"{name}host") for i in range(honest + 1)]
        for i, spec in enumerate(specs):
            ioc = FakeIOC(spec)
            own = i < honest or not sources
            source = f"127.0.0.{20 + i}" if own else sources[0]
            ioc.connect("127.0.0.1", process.port, source=source)
            iocs.append(ioc)
        pending = set(range(len(specs)))
        deadline = time.monotonic() + 700.0
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                value, _ = client.get(keys.ioc(f"{name}host:{specs[i].iocname}"))
                if value is not None and json.loads(value)["status"] == "active":
                    active_at[i] = time.monotonic()
                    pending.discard(i)
            time.sleep(0.05)
        final = status(process)
    finally:
        if tricklers is not None:
            tricklers.stop()
        for ioc in iocs:
            ioc.close()
        process.stop()
        client.close()

    def wait(i: int) -> float | None:
        ioc = iocs[i]
        if ioc.pinged_at is None or ioc.connected_at is None:
            return None
        return ioc.pinged_at - ioc.connected_at

    def to_active(i: int) -> float | None:
        connected = iocs[i].connected_at
        return None if i not in active_at or connected is None else active_at[i] - connected

    others = [w for i in range(honest) if (w := wait(i)) is not None]
    return {
        "scenario": name,
        "tricklers": 100 if sources else 0,
        "trickler_addresses": len(sources),
        "slots_held_by_tricklers": held.get("active", 0) if sources else 0,
        "queued_before": held.get("queued", 0),
        "honest_served": len(others),
        "honest_wait_median_s": statistics.median(others) if others else None,
        "honest_wait_max_s": max(others) if others else None,
        "honest_active_max_s": max(
            (t for i in range(honest) if (t := to_active(i)) is not None), default=None
        ),
        "same_address_wait_s": wait(honest) if sources else None,
        "same_address_active_s": to_active(honest) if sources else None,
        "tricklers_closed": tricklers.stats["closed"] if tricklers else 0,
        "trickler_connects": tricklers.stats["connects"] if tricklers else 0,
        "limit_minUploadRate": final.get("limit_minUploadRate", 0),
    }


def show(results: list[dict[str, Any]]) -> None:
    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    columns = list(results[0])
    width = max(map(len, columns))
    for column in columns:
        print(f"{column:<{width}}  " + "  ".join(f"{fmt(r[column]):>10}" for r in results))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="none,one,four")
    parser.add_argument("--honest", type=int, default=10, help="honest IOCs, other addresses")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = [n for n in args.scenario.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="bench-slots-") as tmp:
        cluster = EtcdCluster(1, Path(tmp) / "etcd")
        cluster.start()
        try:
            results = [run(name, cluster, Path(tmp), args.honest) for name in names]
        finally:
            cluster.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        show(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
