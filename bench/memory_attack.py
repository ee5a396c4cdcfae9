"""Memory benchmark (issue 11, finding 4): the bridge's peak RSS under memory attacks.

A real bridge (``twistd recsync-bridge``, default limits unless told otherwise) on a
single-node etcd, on loopback. Each scenario starts a fresh bridge, measures its
resident set before (``baseline``), samples it every 0.2 s during the attack, and
reports the peak (``VmHWM``, the kernel's lifetime high-water mark, and the highest
sample), with the bridge's status figures at the end. Scenarios:

* ``names``: 15 IOCs whose HOSTNAME and IOCNAME are 60 KB each, 300 records each
  (the iocid used to be copied into every key, document and claim);
* ``partial``: 4,900 connections from 49 source addresses (100 each, the default
  ``maxConnectionsPerHost``), each sending all but the last byte of a frame that
  announces a 65,798-byte body, before any ClientGreet
  (`bridge.testing.hostile.PartialFrames`);
* ``partial-greeted``: the same after a ClientGreet: 20 of them hold upload slots,
  the others wait for one;
* ``etcd-stalled``: 60 IOCs of 1,000 records with a 3 KB info each upload at once
  with ``maxActive`` 60 (and as many per address); 2 s later etcd is stopped
  (SIGSTOP), and continued 20 s later. What waits for etcd meanwhile (each upload's
  batch in progress and its two transactions) is bounded by ``maxHeldBytes``, not by
  ``maxActive``. Run it with ``--max-held-bytes`` to compare budgets.

After each attack (and during the partial-frame ones) the bench checks that the
bridge still serves: an honest IOC of 200 records uploads and is ``active`` in etcd
(``honest_active_s``, ``honest_active_during_s``: seconds from its connect).

Usage: ``python bench/memory_attack.py [--scenario names,partial,partial-greeted]
[--max-held-bytes N] [--json]``. A few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bridge.documents import Keys  # noqa: E402
from bridge.etcd.client import make_client  # noqa: E402
from bridge.testing.cluster import EtcdCluster  # noqa: E402
from bridge.testing.fakeioc import FakeIOC, IOCSpec, RecordSpec, make_ioc  # noqa: E402
from bridge.testing.harness import BridgeProcess  # noqa: E402
from bridge.testing.hostile import PartialFrames  # noqa: E402

PREFIX = "/memattack"
SCENARIOS = ("names", "partial", "partial-greeted", "etcd-stalled")
#: 49 loopback addresses, 100 connections each (the default maxConnectionsPerHost).
SOURCES = [f"127.0.1.{i}" for i in range(1, 50)]
#: IOCs (and upload slots) of the etcd-stalled scenario.
STALLED_IOCS = 60


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


class Sampler:
    """The bridge's VmRSS every 0.2 s, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, proc_kb(self.pid, "VmRSS"))
            except (OSError, RuntimeError):
                return
            self._stop.wait(0.2)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def status(process: BridgeProcess) -> dict[str, int]:
    lines = [line for line in process.log_text().splitlines() if "status: " in line]
    if not lines:
        return {}
    text = lines[-1].split("status: ", 1)[1]
    return {k: int(v) for k, v in (item.split("=") for item in text.split(", "))}


def wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def is_active(client: Any, keys: Keys, iocid: str) -> bool:
    value, _ = client.get(keys.ioc(iocid))
    return value is not None and json.loads(value)["status"] == "active"


def attack_names(process: BridgeProcess, args: argparse.Namespace) -> dict[str, Any]:
    iocs = []
    refused = 0
    long = "N" * 60_000
    for i in range(15):
        spec = make_ioc(f"{long}{i}", 300, hostname="H" * 60_000)
        ioc = FakeIOC(spec)
        try:
            ioc.connect("127.0.0.1", process.port, source=f"127.0.2.{i + 1}")
        except OSError:
            refused += 1  # closed by the bridge before the upload was all sent
        else:
            iocs.append(ioc)
    closed = wait_for(lambda: all(ioc.closed_by_server.is_set() for ioc in iocs), 30.0)
    for ioc in iocs:
        ioc.close()
    return {"attackers": 15, "closed_while_sending": refused, "all_closed": closed}


def attack_partial(
    process: BridgeProcess, greet: bool, honest: Callable[[], float | None]
) -> dict[str, Any]:
    swarm = PartialFrames("127.0.0.1", process.port, SOURCES, 4900, greet=greet)
    swarm.start()
    opened = swarm.opened.wait(300.0)
    # Let the bridge read what it will (the kernel buffers hold the rest), then hold.
    time.sleep(10.0)
    figures = status(process)
    honest_during = honest()
    swarm.stop()
    return {
        "honest_active_during_s": None if honest_during is None else round(honest_during, 2),
        "attackers": 4900,
        "connected": swarm.stats["connects"],
        "all_opened": opened,
        "closed_by_bridge": swarm.stats["closed"],
        "connections_during": figures.get("connections"),
        "active_during": figures.get("active"),
        "queued_during": figures.get("queued"),
        "held_bytes_during": figures.get("held_bytes"),
    }


def attack_etcd_stalled(
    process: BridgeProcess, cluster: EtcdCluster, client: Any, keys: Keys
) -> dict[str, Any]:
    pid = cluster.members[0].pid
    assert pid is not None
    blob = "b" * 3000
    specs = []
    for i in range(STALLED_IOCS):
        name = f"STALL{i:03d}"
        records = tuple(
            RecordSpec(f"{name}:PV{r:05d}", "ai", (), (("blob", blob),), "stalled")
            for r in range(1000)
        )
        specs.append(IOCSpec((("HOSTNAME", "stall"), ("IOCNAME", name)), records))
    iocs = []
    threads = []
    for i, spec in enumerate(specs):
        ioc = FakeIOC(spec)
        iocs.append(ioc)
        thread = threading.Thread(
            target=ioc.connect,
            args=("127.0.0.1", process.port),
            kwargs={"source": f"127.0.3.{1 + i}", "timeout": 120.0},
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    time.sleep(2.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(20.0)
        during = status(process)
    finally:
        os.kill(pid, signal.SIGCONT)
    for thread in threads:
        thread.join(120)
    served = wait_for(
        lambda: all(is_active(client, keys, f"stall:{s.iocname}") for s in specs), 600.0
    )
    for ioc in iocs:
        ioc.close()
    return {
        "iocs": STALLED_IOCS,
        "records_each": 1000,
        "all_active_after": served,
        "held_bytes_during": during.get("held_bytes"),
        "paused_by_budget_during": during.get("paused_by_budget"),
        "active_during": during.get("active"),
    }


def honest_check(process: BridgeProcess, client: Any, keys: Keys, name: str) -> float | None:
    spec = make_ioc(f"AFTER-{name}", 200, hostname="honest")
    ioc = FakeIOC(spec)
    start = time.monotonic()
    ioc.connect("127.0.0.1", process.port, source="127.0.0.99")
    try:
        if wait_for(lambda: is_active(client, keys, f"honest:{spec.iocname}"), 120.0):
            return time.monotonic() - start
        return None
    finally:
        ioc.close()


def run(
    name: str, cluster: EtcdCluster, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    recceiver: dict[str, object] = {"statusInterval": 1.0, "loglevel": "INFO"}
    if name == "etcd-stalled":
        recceiver |= {"maxActive": STALLED_IOCS, "maxActivePerHost": STALLED_IOCS}
    if args.max_held_bytes:
        recceiver["maxHeldBytes"] = args.max_held_bytes
    prefix = f"{PREFIX}/{name}"
    process = BridgeProcess(
        workdir / name, endpoints=cluster.endpoints, prefix=prefix, recceiver=recceiver, name=name
    )
    client = make_client(cluster.endpoints, timeout=5.0)
    keys = Keys(prefix)
    try:
        process.start().wait_ready()
        time.sleep(2.0)
        baseline = proc_kb(process.pid, "VmRSS")
        with Sampler(process.pid) as sampler:
            if name == "names":
                figures = attack_names(process, args)
            elif name == "etcd-stalled":
                figures = attack_etcd_stalled(process, cluster, client, keys)
            else:
                figures = attack_partial(
                    process,
                    greet=name == "partial-greeted",
                    honest=lambda: honest_check(process, client, keys, name + "-during"),
                )
            honest = honest_check(process, client, keys, name)
            hwm = proc_kb(process.pid, "VmHWM")
        time.sleep(1.5)  # the next status line (statusInterval 1 s)
        final = status(process)
    finally:
        process.stop()
        client.close()
    limits = {k: v for k, v in final.items() if k.startswith("limit_")}
    return {
        "scenario": name,
        "baseline_mb": round(baseline / 1024, 1),
        "peak_sampled_mb": round(sampler.peak_kb / 1024, 1),
        "peak_hwm_mb": round(hwm / 1024, 1),
        "honest_active_s": None if honest is None else round(honest, 2),
        **figures,
        "max_held_bytes": final.get("max_held_bytes"),
        "budget_pauses": final.get("budget_pauses"),
        "limits": limits,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="names,partial,partial-greeted")
    parser.add_argument("--max-held-bytes", type=int, default=0, help="default: the bridge's")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = [n for n in args.scenario.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    # 4,900 sockets here and as many in the bridge, which inherits this limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20_000)), hard))
    with tempfile.TemporaryDirectory(prefix="bench-memattack-") as tmp:
        cluster = EtcdCluster(1, Path(tmp) / "etcd")
        cluster.start()
        try:
            results = [run(name, cluster, Path(tmp), args) for name in names]
        finally:
            cluster.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
