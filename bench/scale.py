"""Scale benchmark (issue #4): a real bridge, a single-node etcd and simulated IOCs on one machine.

Run from the repository root::

    python bench/scale.py                      # every scenario at full size (~20-25 min)
    python bench/scale.py --quick              # small sizes, a smoke test (< 1 min)
    python bench/scale.py --scenario storm,changed --iocs 1000 --records 1000

Scenarios (targets from the issue in brackets):

* ``cold``: ``--iocs`` x ``--records`` IOCs (`bridge.testing.fakeioc.make_ioc` data: 3 info
  tags and a DESC per record, an alias on every 10th) connect at once and must all
  be ``active`` with exact content [>= 16,000 records/s end to end, or >= 0.8 of
  the raw etcd ceiling if that is lower].
* ``big``: ``--big-iocs`` x ``--big-records`` (100 x 10,000), same targets, on a
  fresh etcd and bridge.
* ``storm``: after ``cold``, every IOC closes its connection, the bench waits until
  the bridge marked all of them inactive and is idle again (it goes on handing
  names over after that), then all reconnect at once with unchanged data [all
  active again within 15 s; 0 record and name-index keys written].
* ``changed``: the same, but each IOC restarts with 1 % of its records' DESC changed
  [only those records (and at most their index entries) written].
* ``huge``: one IOC with ``--huge-records`` (65,000) records in one upload, after a
  warm-up IOC with a tenth of that [lands exactly; the IOC turns active only after
  every record is committed].
* every scenario: bridge peak RSS <= 300 MB, and the responsiveness probes' worst
  Ping lateness < 1 s (see bench/loadgen.py for exactly what a probe measures).

``storm`` and ``changed`` need ``cold`` first; it runs (and is reported) whenever
either is chosen. Scenarios share one etcd and bridge per group: cold/storm/changed,
big, huge. Each group measures the raw ceiling, starts a fresh single-node etcd
(`bridge.testing.cluster.EtcdCluster`, default flags: auto-compaction on, 2 GiB quota), then
starts the bridge (`bridge.testing.harness.BridgeProcess`,
``twistd -n recsync-bridge``) announcing to a loopback UDP port, finds it through
that announcement, and starts the probes (a separate process).

How figures are taken:

* IOCs: bench/loadgen.py, one asyncio connection each, the C RecCaster's bytes. A
  connect that fails or hangs (the bridge's listen queue overflows when 1,000 IOCs
  connect at once) is retried every 0.5 s, and an IOC whose connection the bridge
  ends (or the kernel resets) connects and uploads again, as a C RecCaster does on
  the next announcement: ``connect_retries`` and ``reconnects`` count both.
* time to all-active: from just before the first connection is opened to the moment
  the bench's etcd watch on ``P/iocs/`` delivered the last IOC document's first
  ``active`` put of the scenario; records/s = uploaded records / that time.
* raw ceiling: the same record and name-index keys (values built with
  `bridge.documents.record_value` / `pv_document`) put straight into a fresh single-node
  etcd like the bridge's, 128 puts per transaction, with the bridge's client
  (`make_client`), once by one thread and once by ``--ceiling-threads`` threads (one
  client and one fresh etcd each; the bridge is not running then), for a
  sample of the group's IOCs (``--ceiling-records``, default 200,000 records); the
  better rate counts. Records/s counts a record with its index entries as one.
* writes: header revision before and after (etcd revisions used), and how many
  ``P/records/`` and ``P/pvs/`` keys of the scenario's IOCs have a mod_revision
  newer than the revision before.
* exact content, checked after the scenario, IOC by IOC, page by page: every record
  key's value bytes equal `keys.record_value` of the expected data, every name-index
  entry decodes to the expected `pv_document` (owner, record, type, alias flag,
  claims), no extra keys, the IOC document says active with the right counts, and
  every record and index key of the IOC written in the scenario has a mod_revision
  below the one that turned the IOC active.
* bridge RSS: sampled every 0.2 s (psutil) during the scenario; VmHWM is the
  process's lifetime peak. CPU seconds: psutil cpu_times (user + system) of the
  bridge, etcd, this process (load generator, watch, sampler) and the probe process
  over the scenario; "softirq" is the kernel's softirq time of the whole machine
  (loopback TCP is mostly processed there, charged to no process); "other" is the
  rest of the machine's busy CPU in that time (other people's work on a shared
  machine).
* ``--profile DIR``: py-spy records the bridge during each scenario (collapsed
  stacks, all threads, idle frames left out, 50 Hz, without pausing the process) into
  ``DIR/<group>-<scenario>.txt``; ``--profile-gil`` keeps only GIL-holding samples.
  With ``--bridges N`` only the first bridge is recorded.

``--bridges N`` runs N bridge processes against the one etcd, each announcing its
own port (the README's answer for more than one core's worth of uploads); the IOCs
are dealt out among them, RSS is the biggest bridge's, CPU the sum of all.

Diagnostics: ``--skip-verify`` (no content check), ``--ceiling-records 0`` (no
ceiling), ``--bridge-env NAME=VALUE`` (environment of the bridge process),
``--keep``/``--workdir`` (keep etcd data, bridge log, probe log),
``bench/profile_top.py`` (summarise a ``--profile`` file).

The exit status is 1 when something crashed or stored content was wrong; missed
performance targets are reported (PASS/FAIL per target) with exit status 0. The
last line of output is one JSON document with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (str(REPO_ROOT), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import psutil  # noqa: E402
from loadgen import (  # noqa: E402
    HOSTNAME,
    LoadGen,
    SimIOC,
    UploadPlan,
    prepare_uploads,
    read_probe_log,
)
from pyetcd import transactions as tx  # noqa: E402
from pyetcd.events import PutEvent  # noqa: E402

from bridge import documents as k  # noqa: E402
from bridge.etcd.client import make_client  # noqa: E402
from bridge.etcd.process import free_port  # noqa: E402
from bridge.model import Record  # noqa: E402
from bridge.testing.cluster import EtcdCluster  # noqa: E402
from bridge.testing.fakeioc import IOCSpec, find_bridge  # noqa: E402
from bridge.testing.harness import BridgeProcess  # noqa: E402

PREFIX = "/recsync"
RAW_PREFIX = "/rawceiling"
RATE_TARGET = 16_000.0
CEILING_FRACTION = 0.8
STORM_TARGET_S = 15.0
RSS_TARGET_MB = 300.0
PROBE_TARGET_S = 1.0
SAMPLE_INTERVAL_S = 0.2
#: CPU seconds per second below which the bridge counts as idle (probes and pings only).
IDLE_CPU = 0.1
SCAN_PAGE = 2000
TXN_OPS = 128
CLIENT_TIMEOUT_S = 30.0
MB = 1024 * 1024
SCENARIOS = ("cold", "storm", "changed", "big", "huge")


# -- expected data ---------------------------------------------------------------------


def spec_records(spec: IOCSpec) -> Iterator[Record]:
    """The `bridge.model.Record` values a correct bridge builds from `spec`."""
    for rs in spec.records:
        yield Record(0, rs.name, rs.rtype, list(rs.aliases), dict(rs.infos), rs.desc)


def expected_keys(keys: k.Keys, plan: UploadPlan) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(record key -> value bytes, index key -> decoded document) of one IOC's upload."""
    iocid = plan.iocid
    records: dict[str, bytes] = {}
    pvs: dict[str, Any] = {}
    for record in spec_records(plan.spec()):
        records[keys.record(iocid, record.name)] = k.record_value(record, iocid)
        for name, alias in k.pv_names(record):
            pvs[keys.pv(name)] = k.pv_document(iocid, record.name, record.rtype, alias, [iocid])
    return records, pvs


def pv_scan_prefix(keys: k.Keys, plan: UploadPlan) -> str:
    """Every name of `plan`'s IOC starts with ``IOCNAME:`` (make_ioc), so this covers them."""
    return keys.pv(plan.iocname + ":")


# -- etcd helpers -------------------------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    data = bytearray(prefix)
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return b"\0"
    data[-1] += 1
    return bytes(data)


def scan(
    client: Any, prefix: str, page: int = SCAN_PAGE, keys_only: bool = False
) -> Iterator[Any]:
    """Every KeyValue under `prefix` in key order, one bounded page per round trip."""
    start = prefix.encode()
    end = prefix_end(start)
    while True:
        response = client.get_range_response(start, end, limit=page, keys_only=keys_only)
        yield from response.kvs
        if not response.more or not response.kvs:
            return
        start = response.kvs[-1].key + b"\0"


def count_prefix(client: Any, prefix: str) -> int:
    return int(client.get_prefix_response(prefix, count_only=True).count)


def header_revision(client: Any) -> int:
    return int(client.get_response("/").header.revision)


# -- measurements ----------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def system_busy() -> tuple[float, float]:
    """Busy CPU seconds of the whole machine since boot, and the softirq part of it."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0)), float(getattr(t, "softirq", 0.0))


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """RSS of the bridge (the biggest, with several) and etcd every `SAMPLE_INTERVAL_S` s."""

    def __init__(self, bridge_pids: Sequence[int], etcd_pid: int | None) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.bridges = [psutil.Process(pid) for pid in bridge_pids]
        self.etcd = psutil.Process(etcd_pid) if etcd_pid else None
        self.samples: list[tuple[float, float, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                b = max(p.memory_info().rss for p in self.bridges) / MB  # per process
                e = self.etcd.memory_info().rss / MB if self.etcd else 0.0
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), b, e))
            self._stop_event.wait(SAMPLE_INTERVAL_S)

    def peak(self, t0: float, t1: float) -> tuple[float, float]:
        inside = [(b, e) for t, b, e in self.samples if t0 <= t <= t1]
        if not inside:
            return 0.0, 0.0
        return max(b for b, _ in inside), max(e for _, e in inside)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


@dataclass
class Usage:
    """CPU of every process involved between `begin` and `end`."""

    procs: dict[str, list[psutil.Process]]
    t0: float = 0.0
    t1: float = 0.0
    start: dict[str, float] = field(default_factory=dict)
    result: dict[str, float] = field(default_factory=dict)
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def begin(self) -> None:
        self.t0 = time.monotonic()
        self.start = {name: sum(cpu_seconds(p) for p in ps) for name, ps in self.procs.items()}
        self.start["system"], self.start["softirq"] = system_busy()
        self.loadavg = os.getloadavg()

    def end(self) -> None:
        self.t1 = time.monotonic()
        now = {name: sum(cpu_seconds(p) for p in ps) for name, ps in self.procs.items()}
        self.result = {f"{name}_cpu_s": now[name] - self.start[name] for name in now}
        busy, softirq = system_busy()
        busy -= self.start["system"]
        softirq -= self.start["softirq"]
        ours = sum(self.result.values())
        # Kernel softirq time (loopback TCP is mostly processed there) is charged to
        # no process; "other" is what is left: other users of the machine.
        self.result["softirq_cpu_s"] = softirq
        self.result["other_cpu_s"] = max(0.0, busy - ours - softirq)
        self.result["machine_busy_cpu_s"] = busy
        self.result["loadavg_1m_at_start"] = self.loadavg[0]


class StatusWatch:
    """Follows every IOC document's status through one etcd watch on ``P/iocs/``."""

    def __init__(self, client: Any, keys: k.Keys) -> None:
        self.client = client
        self.keys = keys
        self.lock = threading.Lock()
        self.status: dict[str, str] = {}
        self.first_active: dict[str, tuple[float, int]] = {}
        self.history: dict[str, list[str]] = {}
        self.error: BaseException | None = None
        self.watch_id = client.add_watch_prefix_callback(keys.iocs_prefix(), self._on_response)
        for kv in scan(client, keys.iocs_prefix()):
            self._record(kv.key, kv.value, kv.mod_revision, None)

    def _on_response(self, response: Any) -> None:
        if isinstance(response, BaseException):
            self.error = response
            return
        now = time.monotonic()
        for event in response.events:
            if isinstance(event, PutEvent):
                self._record(event.key, event.value, event.mod_revision, now)

    def _record(self, key: bytes, value: bytes, mod_revision: int, now: float | None) -> None:
        iocid = self.keys.split(key.decode())[1]
        status = json.loads(value)["status"]
        with self.lock:
            self.status[iocid] = status
            if now is None:
                return
            self.history.setdefault(iocid, []).append(status)
            if status == k.STATUS_ACTIVE and iocid not in self.first_active:
                self.first_active[iocid] = (now, mod_revision)

    def reset(self) -> None:
        """Forget first-active times and histories: a new scenario starts."""
        with self.lock:
            self.first_active.clear()
            self.history.clear()

    def poll(self) -> None:
        """Fallback when the watch failed: read every document (time = now)."""
        now = time.monotonic()
        for kv in scan(self.client, self.keys.iocs_prefix()):
            iocid = self.keys.split(kv.key.decode())[1]
            status = json.loads(kv.value)["status"]
            with self.lock:
                self.status[iocid] = status
                if status == k.STATUS_ACTIVE and iocid not in self.first_active:
                    self.first_active[iocid] = (now, kv.mod_revision)

    def count(self, iocids: Sequence[str], status: str, fresh: bool = False) -> int:
        with self.lock:
            if fresh:
                return sum(
                    1 for i in iocids if i in self.first_active and self.status.get(i) == status
                )
            return sum(1 for i in iocids if self.status.get(i) == status)

    def cancel(self) -> None:
        try:
            self.client.cancel_watch(self.watch_id)
        except Exception:  # best effort at shutdown
            pass


# -- raw etcd ceiling ------------------------------------------------------------------


def ceiling_batches(plans: Sequence[UploadPlan]) -> tuple[list[list[tuple[str, bytes]]], int]:
    """The record and index puts of `plans` under `RAW_PREFIX`, 128 per batch; and records."""
    keys = k.Keys(RAW_PREFIX)
    batches: list[list[tuple[str, bytes]]] = []
    batch: list[tuple[str, bytes]] = []
    n_records = 0
    for plan in plans:
        iocid = plan.iocid
        for record in spec_records(plan.spec()):
            n_records += 1
            puts = [(keys.record(iocid, record.name), k.record_value(record, iocid))]
            puts += [
                (
                    keys.pv(name),
                    k.dumps(k.pv_document(iocid, record.name, record.rtype, alias, [iocid])),
                )
                for name, alias in k.pv_names(record)
            ]
            for put in puts:
                batch.append(put)
                if len(batch) == TXN_OPS:
                    batches.append(batch)
                    batch = []
    if batch:
        batches.append(batch)
    return batches, n_records


def write_batches(endpoints: list[str], batches: Sequence[list[tuple[str, bytes]]]) -> None:
    client = make_client(endpoints, timeout=CLIENT_TIMEOUT_S)
    try:
        for batch in batches:
            client.transaction(
                compare=[], success=[tx.Put(key, v) for key, v in batch], failure=[]
            )
    finally:
        client.close()


def timed_write(
    endpoints: list[str], batches: Sequence[list[tuple[str, bytes]]], threads: int
) -> float:
    """Seconds to write every batch with `threads` threads, one client each."""
    parts = [batches[i::threads] for i in range(threads)]
    errors: list[BaseException] = []

    def work(part: Sequence[list[tuple[str, bytes]]]) -> None:
        try:
            write_batches(endpoints, part)
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(part,)) for part in parts]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.monotonic() - started
    if errors:
        raise errors[0]
    return took


def measure_ceiling(workdir: Path, plans: Sequence[UploadPlan], threads: int) -> dict[str, Any]:
    """Records/s of raw 128-put transactions; each thread count gets a fresh etcd."""
    batches, n_records = ceiling_batches(plans)
    n_puts = sum(len(b) for b in batches)
    rates: dict[str, float] = {}
    for n in sorted({1, threads}):
        with EtcdCluster(1, workdir / f"ceiling-etcd-{n}") as etcd:
            took = timed_write(etcd.endpoints, batches, n)
        shutil.rmtree(workdir / f"ceiling-etcd-{n}", ignore_errors=True)
        rates[f"threads_{n}"] = n_records / took
    del batches
    best = max(rates.values())
    return {
        "records": n_records,
        "puts": n_puts,
        "records_per_s": rates,
        "best_records_per_s": best,
        "best_puts_per_s": best * n_puts / n_records,
    }


# -- one group of scenarios on its own etcd and bridge -------------------------------------


@dataclass
class Target:
    name: str
    value: Any
    target: str
    ok: bool


@dataclass
class Result:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    content_ok: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            **self.figures,
            "content_ok": self.content_ok,
            "problems": self.problems[:20],
            "targets": [t.__dict__ for t in self.targets],
        }


class Group:
    """A fresh etcd, its raw ceiling, a bridge, the probes, the load generator and watch."""

    def __init__(self, name: str, workdir: Path, args: argparse.Namespace) -> None:
        self.name = name
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True)
        self.cache = workdir / "uploads"
        self.args = args
        self.keys = k.Keys(PREFIX)
        self.etcd: EtcdCluster | None = None
        self.client: Any = None
        self.bridges: list[BridgeProcess] = []
        self.probe_proc: subprocess.Popen[bytes] | None = None
        self.probe_log = self.workdir / "probes.jsonl"
        self.sampler: Sampler | None = None
        self.watch: StatusWatch | None = None
        self.gen: LoadGen | None = None
        self.ceiling: dict[str, Any] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None

    # -- lifecycle

    def start_etcd(self) -> None:
        self.etcd = EtcdCluster(1, self.workdir / "etcd")
        self.etcd.start()
        self.client = make_client(self.etcd.endpoints, timeout=CLIENT_TIMEOUT_S)

    def run_ceiling(self, plans: Sequence[UploadPlan]) -> None:
        if self.args.ceiling_records <= 0:
            return
        say(f"[{self.name}] raw etcd ceiling on {len(plans)} IOCs ...")
        self.ceiling = measure_ceiling(self.workdir, plans, self.args.ceiling_threads)
        rates = ", ".join(f"{n}: {r:,.0f}" for n, r in self.ceiling["records_per_s"].items())
        say(f"[{self.name}] ceiling records/s {rates}")

    def start_bridge(self) -> None:
        assert self.etcd is not None
        args = self.args
        count = args.bridges
        udp_ports = [free_port() for _ in range(count)]
        for i, udp_port in enumerate(udp_ports):
            self.bridges.append(
                BridgeProcess(
                    self.workdir,
                    endpoints=self.etcd.endpoints,
                    prefix=PREFIX,
                    announce_to=[f"127.0.0.1:{udp_port}"],
                    name="bridge" if count == 1 else f"bridge-{i + 1}",
                    recceiver={
                        "announceInterval": 0.5,
                        "tcptimeout": args.tcptimeout,
                        "maxActive": args.max_active,
                        "maxConnections": 20000,
                        "maxConnectionsPerHost": 20000,
                    },
                )
            )
        saved = {key: os.environ.get(key) for key in args.bridge_env}
        os.environ.update(args.bridge_env)  # BridgeProcess passes our environment on
        try:
            for bridge in self.bridges:
                bridge.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        targets = []
        for bridge, udp_port in zip(self.bridges, udp_ports, strict=True):
            bridge.wait_ready(60)
            targets.append(find_bridge(udp_port, timeout=10))
        self.sampler = Sampler([b.pid for b in self.bridges], self.etcd.members[0].pid)
        self.sampler.start()
        self.watch = StatusWatch(self.client, self.keys)
        self.gen = LoadGen(targets)
        host, port, key = targets[0]  # the probes use the first bridge
        probe_cmd = [
            sys.executable,
            str(BENCH_DIR / "loadgen.py"),
            "probe",
            "--host",
            host,
            "--port",
            str(port),
            "--key",
            str(key),
            "--count",
            str(args.probes),
            "--records",
            "10",
            "--tcptimeout",
            str(args.tcptimeout),
            "--out",
            str(self.probe_log),
        ]
        if args.probes:
            self.probe_proc = subprocess.Popen(probe_cmd, start_new_session=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                live = {
                    e["probe"] for e in read_probe_log(self.probe_log) if e.get("event") == "live"
                }
                if len(live) == args.probes:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("probes did not become live")

    def stop(self) -> None:
        if self.gen is not None:
            self.gen.stop()
        if self.probe_proc is not None and self.probe_proc.poll() is None:
            self.probe_proc.send_signal(signal.SIGTERM)
            try:
                self.probe_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.probe_proc.kill()
        if self.watch is not None:
            self.watch.cancel()
        if self.sampler is not None:
            self.sampler.stop()
        for bridge in self.bridges:
            bridge.stop()
        if self.client is not None:
            self.client.close()
        if self.etcd is not None:
            self.etcd.stop()

    # -- helpers

    def usage(self) -> Usage:
        assert self.bridges and self.etcd is not None
        procs: dict[str, list[psutil.Process]] = {
            "bridge": [psutil.Process(b.pid) for b in self.bridges],
            "etcd": [psutil.Process(self.etcd.members[0].pid or 0)],
            "bench": [psutil.Process()],
            "probe": [psutil.Process(self.probe_proc.pid)] if self.probe_proc else [],
        }
        return Usage(procs)

    def probe_figures(self, t0: float, t1: float) -> dict[str, Any]:
        events = read_probe_log(self.probe_log)
        pings = [e for e in events if e.get("event") == "ping" and t0 <= e["t"] <= t1]
        bad = [e for e in events if e.get("event") in ("closed_by_server", "error")]
        worst = max((e["lateness"] for e in pings), default=None)
        return {
            "probe_pings": len(pings),
            "probe_lateness_max_s": worst,
            "probe_disconnects_total": len(bad),
        }

    def wait_until(
        self,
        what: str,
        condition: Callable[[], bool],
        timeout: float,
        hopeless: Callable[[], bool] | None = None,
    ) -> bool:
        """Wait for `condition`; give up after `timeout` or once `hopeless()` is true."""
        assert self.watch is not None
        deadline = time.monotonic() + timeout
        last_poll = time.monotonic()
        while time.monotonic() < deadline:
            if condition():
                return True
            if hopeless is not None and hopeless():
                time.sleep(2.0)  # let the last commits land
                if condition():
                    return True
                say(f"[{self.name}] stopped waiting for {what}: connections failed")
                return False
            if self.watch.error is not None and time.monotonic() - last_poll > 1.0:
                self.watch.poll()
                last_poll = time.monotonic()
            time.sleep(0.02)
        say(f"[{self.name}] timed out after {timeout:.0f} s waiting for {what}")
        return False

    def wait_idle(self, timeout: float = 300.0) -> float:
        """Wait until the bridges used < `IDLE_CPU` of a core for a second; returns the time."""
        procs = [psutil.Process(b.pid) for b in self.bridges]
        deadline = time.monotonic() + timeout
        before = sum(cpu_seconds(p) for p in procs)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = sum(cpu_seconds(p) for p in procs)
            if now - before < IDLE_CPU:
                break
            before = now
        return time.monotonic()

    def start_profile(self, scenario: str) -> None:
        if not self.args.profile or not self.bridges:
            return
        out = Path(self.args.profile) / f"{self.name}-{scenario}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.profiler = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(self.bridges[0].pid),
                "--format",
                "raw",
                "--rate",
                "50",
                "--nonblocking",
                "--threads",
                *(["--gil"] if self.args.profile_gil else []),
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_profile(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            try:
                self.profiler.wait(30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
            self.profiler = None

    # -- a scenario: some IOCs upload, we wait until they are all active

    def upload(
        self,
        scenario: str,
        plans: Sequence[UploadPlan],
        *,
        close_first: Sequence[SimIOC] = (),
        expected_writes: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> tuple[Result, list[SimIOC]]:
        """Run one upload scenario; returns its result and the (still open) connections."""
        assert self.watch is not None and self.gen is not None and self.bridges
        assert self.sampler is not None
        watch = self.watch
        result = Result(scenario)
        fig = result.figures
        iocids = [p.iocid for p in plans]
        n_records = sum(len(p.spec().records) if p.removed else p.records for p in plans)
        fig.update(
            iocs=len(plans),
            records_per_ioc=plans[0].records,
            records=n_records,
            max_active=self.args.max_active,
        )
        say(f"[{self.name}] {scenario}: preparing {len(plans)} uploads ...")
        uploads = prepare_uploads(plans, self.cache, self.args.workers)
        fig["upload_mb"] = round(sum(size for *_, size in uploads) / 1e6, 1)
        if close_first:
            started = time.monotonic()
            self.gen.close(close_first)
            closed = [c.plan.iocid for c in close_first]
            self.wait_until(
                "inactive", lambda: watch.count(closed, k.STATUS_INACTIVE) == len(closed), 120
            )
            fig["all_inactive_after_close_s"] = round(time.monotonic() - started, 3)
            # The bridge goes on working after the IOC documents say inactive (name-index
            # hand-over); the storm starts once it is idle, so that it is measured alone.
            fig["bridge_idle_after_close_s"] = round(self.wait_idle() - started, 3)
        rev0 = header_revision(self.client)
        self.watch.reset()
        usage = self.usage()
        timeout = timeout or self.args.timeout
        say(
            f"[{self.name}] {scenario}: {len(plans)} IOCs x {n_records // max(1, len(plans))}"
            f" records connect ..."
        )
        self.start_profile(scenario)
        usage.begin()
        t0 = usage.t0
        iocs = self.gen.start(uploads)

        def hopeless() -> bool:
            """Every IOC not yet active gave up connecting."""
            with watch.lock:
                pending = [c for c in iocs if c.plan.iocid not in watch.first_active]
            return all(c.stats.gave_up for c in pending)

        done = self.wait_until(
            "all active",
            lambda: watch.count(iocids, k.STATUS_ACTIVE, fresh=True) == len(iocids),
            timeout,
            hopeless,
        )
        usage.end()
        self.stop_profile()
        t1 = usage.t1
        times = [self.watch.first_active[i][0] for i in iocids if i in self.watch.first_active]
        t_last = max(times) if done and times else t1
        seconds = t_last - t0
        fig["all_active"] = done
        fig["active_iocs"] = self.watch.count(iocids, k.STATUS_ACTIVE)
        fig["seconds_to_all_active"] = round(seconds, 3)
        fig["records_per_s"] = round(n_records / seconds) if done else None
        fig.update({key: round(v, 2) for key, v in usage.result.items()})
        bridge_peak, etcd_peak = self.sampler.peak(t0 - SAMPLE_INTERVAL_S, t1)
        fig["bridge_rss_peak_mb"] = round(bridge_peak, 1)
        fig["bridge_vmhwm_mb"] = round(max(vm_hwm_mb(b.pid) or 0.0 for b in self.bridges), 1)
        fig["etcd_rss_peak_mb"] = round(etcd_peak, 1)
        fig.update(self.probe_figures(t0, t1))
        stats = self.gen.wait_sent(iocs, 30)
        connects = [s.connected - s.connect_start for s in stats if s.connected is not None]
        fig["connect_s_max"] = round(max(connects, default=0.0), 3)
        fig["connect_retries"] = sum(max(0, s.connect_attempts - 1) for s in stats)
        fig["conn_gave_up"] = sum(s.gave_up for s in stats)
        fig["reconnects"] = sum(s.server_closes for s in stats)
        errors = sorted({s.error for s in stats if s.error is not None})
        if errors:
            fig["conn_error_kinds"] = errors[:5]
        rev1 = header_revision(self.client)
        fig["etcd_revisions_used"] = rev1 - rev0
        status = self.client.status()
        fig["etcd_db_mb"] = round(status.db_size / 1e6, 1)
        say(
            f"[{self.name}] {scenario}: {fig['active_iocs']}/{len(plans)} active after "
            f"{seconds:.2f} s; verifying content ..."
        )
        if self.args.skip_verify:
            fig["verified"] = False
        else:
            self.verify(result, plans, rev0)
        if expected_writes is not None:
            fig["expected_record_keys_written"] = expected_writes[0]
        self.check_targets(result, expected_writes)
        return result, iocs

    def verify(self, result: Result, plans: Sequence[UploadPlan], rev0: int) -> None:
        """Compare every stored key of every IOC with the expected data (see module doc)."""
        assert self.watch is not None
        started = time.monotonic()
        written_records = written_pvs = 0
        problems = result.problems
        not_active: list[str] = []
        docs = {
            self.keys.split(kv.key.decode())[1]: json.loads(kv.value)
            for kv in scan(self.client, self.keys.iocs_prefix())
        }
        for plan in plans:
            iocid = plan.iocid
            records, pvs = expected_keys(self.keys, plan)
            active_rev = self.watch.first_active.get(iocid, (0.0, 0))[1]
            doc = docs.get(iocid)
            if doc is None or doc.get("status") != k.STATUS_ACTIVE:
                # Not active: a missed target (reported as such), not wrong content;
                # its records may legitimately be incomplete.
                not_active.append(f"{iocid}: {doc and doc.get('status')}")
                continue
            if doc.get("records") != len(records) or doc.get("aliases") != len(pvs) - len(records):
                problems.append(
                    f"{iocid}: IOC document counts {doc.get('records')}/"
                    f"{doc.get('aliases')}, expected {len(records)}/"
                    f"{len(pvs) - len(records)}"
                )
            for kind, prefix, want in (
                ("record", self.keys.records_prefix(iocid), records),
                ("pv", pv_scan_prefix(self.keys, plan), pvs),
            ):
                seen = 0
                for kv in scan(self.client, prefix):
                    key = kv.key.decode()
                    expected = want.get(key)
                    if expected is None:
                        problems.append(f"{iocid}: unexpected {kind} key {key}")
                        continue
                    seen += 1
                    if kind == "record":
                        same = kv.value == expected
                    else:
                        same = json.loads(kv.value) == expected
                    if not same:
                        problems.append(f"{iocid}: {key} holds {kv.value[:200]!r}")
                    if kv.mod_revision > rev0:
                        if kind == "record":
                            written_records += 1
                        else:
                            written_pvs += 1
                        if active_rev and kv.mod_revision > active_rev:
                            problems.append(
                                f"{iocid}: {key} written at revision "
                                f"{kv.mod_revision}, after the IOC turned active "
                                f"at {active_rev}"
                            )
                if seen != len(want):
                    problems.append(f"{iocid}: {seen} of {len(want)} {kind} keys present")
        total_records = count_prefix(self.client, f"{PREFIX}/{k.RECORDS}/")
        total_pvs = count_prefix(self.client, self.keys.pvs_prefix())
        if not_active:
            result.figures["not_active_iocs"] = len(not_active)
            result.figures["not_active_first"] = not_active[:5]
        result.figures.update(
            record_keys_written=written_records,
            pv_keys_written=written_pvs,
            record_keys_total=total_records,
            pv_keys_total=total_pvs,
            verify_s=round(time.monotonic() - started, 1),
        )
        if problems:
            result.content_ok = False
            say(
                f"[{self.name}] {result.scenario}: CONTENT WRONG: {len(problems)} problems, "
                f"first: {problems[:3]}"
            )

    def check_targets(self, result: Result, expected_writes: tuple[int, int] | None) -> None:
        fig = result.figures
        targets = result.targets
        name = result.scenario
        if name in ("cold", "big") and self.ceiling is not None:
            best = self.ceiling["best_records_per_s"]
            fig["ceiling_records_per_s"] = {
                n: round(r) for n, r in self.ceiling["records_per_s"].items()
            }
            fig["ceiling_best_records_per_s"] = round(best)
            rate = fig["records_per_s"] or 0
            fig["ratio_to_ceiling"] = round(rate / best, 3)
            need = min(RATE_TARGET, CEILING_FRACTION * best)
            targets.append(
                Target(
                    "records_per_s",
                    rate,
                    f">= {need:,.0f} (min(16,000, 0.8 x ceiling {best:,.0f}))",
                    rate >= need,
                )
            )
        verified = "record_keys_written" in fig
        if name == "storm":
            s = fig["seconds_to_all_active"]
            targets.append(
                Target(
                    "seconds_to_all_active",
                    s,
                    f"<= {STORM_TARGET_S:g}",
                    fig["all_active"] and s <= STORM_TARGET_S,
                )
            )
        if name == "storm" and verified:
            written = fig["record_keys_written"] + fig["pv_keys_written"]
            targets.append(Target("record+pv keys written", written, "== 0", written == 0))
        if name == "changed" and expected_writes is not None and verified:
            targets.append(
                Target(
                    "record keys written",
                    fig["record_keys_written"],
                    f"== {expected_writes[0]}",
                    fig["record_keys_written"] == expected_writes[0],
                )
            )
            targets.append(
                Target(
                    "pv keys written",
                    fig["pv_keys_written"],
                    f"<= {expected_writes[1]} (names of changed records)",
                    fig["pv_keys_written"] <= expected_writes[1],
                )
            )
        if verified:
            targets.append(
                Target(
                    "all active, exact content",
                    fig["all_active"] and result.content_ok,
                    "yes",
                    bool(fig["all_active"] and result.content_ok),
                )
            )
        else:
            targets.append(
                Target(
                    "all active (content NOT verified)",
                    fig["all_active"],
                    "yes",
                    bool(fig["all_active"]),
                )
            )
        targets.append(
            Target(
                "bridge_rss_peak_mb",
                fig["bridge_rss_peak_mb"],
                f"<= {RSS_TARGET_MB:g}",
                fig["bridge_rss_peak_mb"] <= RSS_TARGET_MB,
            )
        )
        late = fig["probe_lateness_max_s"]
        if late is not None:
            targets.append(
                Target(
                    "probe_lateness_max_s",
                    round(late, 3),
                    f"< {PROBE_TARGET_S:g}",
                    late < PROBE_TARGET_S,
                )
            )


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else (shutil.which("py-spy") or "py-spy")


# -- the groups --------------------------------------------------------------------------


def fleet_plans(n: int, records: int, prefix: str = "IOC", **kw: Any) -> list[UploadPlan]:
    return [UploadPlan(f"{prefix}{i:05d}", records, **kw) for i in range(n)]


def sample_plans(plans: Sequence[UploadPlan], max_records: int) -> list[UploadPlan]:
    per = max(1, plans[0].records)
    return list(plans[: max(1, min(len(plans), max_records // per))])


def run_fleet(group: Group, args: argparse.Namespace, chosen: set[str]) -> list[Result]:
    plans = fleet_plans(args.iocs, args.records)
    group.run_ceiling(sample_plans(plans, args.ceiling_records))
    group.start_etcd()
    group.start_bridge()
    results = []
    cold, iocs = group.upload("cold", plans)
    results.append(cold)
    if "storm" in chosen:
        again = fleet_plans(args.iocs, args.records, first_rid=args.records + 1)
        storm, iocs = group.upload("storm", again, close_first=iocs, expected_writes=(0, 0))
        results.append(storm)
    if "changed" in chosen:
        changed = fleet_plans(args.iocs, args.records, variant=1, changed=0.01)
        per_ioc = [r for r in changed[0].spec().records if r.desc and r.desc.endswith(" v1")]
        n_changed = len(per_ioc) * len(changed)
        n_names = sum(1 + len(r.aliases) for r in per_ioc) * len(changed)
        result, iocs = group.upload(
            "changed", changed, close_first=iocs, expected_writes=(n_changed, n_names)
        )
        results.append(result)
    return results


def run_big(group: Group, args: argparse.Namespace) -> list[Result]:
    plans = fleet_plans(args.big_iocs, args.big_records, prefix="BIG")
    group.run_ceiling(sample_plans(plans, args.ceiling_records))
    group.start_etcd()
    group.start_bridge()
    result, _ = group.upload("big", plans)
    return [result]


def run_huge(group: Group, args: argparse.Namespace) -> list[Result]:
    group.start_etcd()
    group.start_bridge()
    assert group.sampler is not None and group.bridges and group.watch is not None
    time.sleep(1.0)
    idle = max((b for _, b, _ in group.sampler.samples), default=0.0)
    warm, _ = group.upload("huge-warmup", [UploadPlan("HUGEWARM", args.huge_records // 10)])
    result, _ = group.upload("huge", [UploadPlan("HUGE", args.huge_records)])
    history = list(group.watch.history.get(f"{HOSTNAME}:HUGE", []))
    fig = result.figures
    fig["status_sequence"] = history
    fig["bridge_rss_idle_mb"] = round(idle, 1)
    fig["bridge_rss_warmup_peak_mb"] = warm.figures["bridge_rss_peak_mb"]
    growth = fig["bridge_rss_peak_mb"] - warm.figures["bridge_rss_peak_mb"]
    fig["rss_growth_warmup_to_huge_mb"] = round(growth, 1)
    # Active only at the end: verify() already checked every key's mod_revision
    # against the revision that turned the IOC active; the IOC must also never have
    # been active before its last record landed (its statuses: uploading..., active).
    first = history.index(k.STATUS_ACTIVE) if k.STATUS_ACTIVE in history else -1
    ok = (
        first >= 0
        and all(s == k.STATUS_UPLOADING for s in history[:first])
        and all(s == k.STATUS_ACTIVE for s in history[first:])
    )
    result.targets.insert(
        0,
        Target(
            "turns active only at the end",
            history[-3:],
            "uploading ... then active (last)",
            ok and result.content_ok,
        ),
    )
    return [warm, result]


# -- output ------------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


TABLE_FIELDS = (
    "iocs",
    "records_per_ioc",
    "records",
    "upload_mb",
    "seconds_to_all_active",
    "records_per_s",
    "ceiling_best_records_per_s",
    "ratio_to_ceiling",
    "etcd_revisions_used",
    "record_keys_written",
    "pv_keys_written",
    "bridge_rss_peak_mb",
    "bridge_vmhwm_mb",
    "bridge_cpu_s",
    "etcd_cpu_s",
    "bench_cpu_s",
    "softirq_cpu_s",
    "other_cpu_s",
    "machine_busy_cpu_s",
    "loadavg_1m_at_start",
    "all_inactive_after_close_s",
    "bridge_idle_after_close_s",
    "probe_lateness_max_s",
    "probe_pings",
    "connect_s_max",
    "connect_retries",
    "reconnects",
    "conn_gave_up",
    "etcd_db_mb",
    "verify_s",
)


def print_table(results: Sequence[Result]) -> None:
    names = [r.scenario for r in results]
    width = max([12, *(len(n) for n in names)])
    print()
    print(f"{'figure':<28}" + "".join(f"{n:>{width + 2}}" for n in names))
    for key in TABLE_FIELDS:
        cells = []
        for r in results:
            v = r.figures.get(key)
            if v is None:
                text = "-"
            elif isinstance(v, float):
                text = f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
            elif isinstance(v, int) and not isinstance(v, bool):
                text = f"{v:,}"
            else:
                text = str(v)
            cells.append(f"{text:>{width + 2}}")
        print(f"{key:<28}" + "".join(cells))
    print()
    for r in results:
        for t in r.targets:
            verdict = "PASS" if t.ok else "FAIL"
            print(f"  {verdict}  {r.scenario:<12} {t.name:<28} {t.value!s:<24} target {t.target}")
        for p in r.problems[:5]:
            print(f"  PROBLEM {r.scenario}: {p}")
    print()


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="recsync-bridge scale benchmark (issue #4)")
    p.add_argument(
        "--scenario",
        default="all",
        help="all, or a comma-separated subset of " + ", ".join(SCENARIOS),
    )
    p.add_argument("--iocs", type=int, default=1000)
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--big-iocs", type=int, default=100)
    p.add_argument("--big-records", type=int, default=10_000)
    p.add_argument("--huge-records", type=int, default=65_000)
    p.add_argument("--max-active", type=int, default=20, help="the bridge's maxActive")
    p.add_argument(
        "--bridges",
        type=int,
        default=1,
        help="bridge processes, each announcing its own port; IOCs are dealt "
        "out among them (README: Scale)",
    )
    p.add_argument("--tcptimeout", type=float, default=2.0, help="the bridge's tcptimeout")
    p.add_argument("--probes", type=int, default=4, help="responsiveness probe IOCs")
    p.add_argument(
        "--ceiling-records",
        type=int,
        default=200_000,
        help="records in the raw-ceiling sample (0: no ceiling)",
    )
    p.add_argument("--ceiling-threads", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="processes encoding uploads")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per scenario")
    p.add_argument("--workdir", help="where etcd data, logs and uploads go (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="record the bridge (the first, with --bridges) with py-spy (raw "
        "collapsed stacks) per scenario",
    )
    p.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: only samples of the thread holding the GIL",
    )
    p.add_argument(
        "--skip-verify",
        action="store_true",
        help="diagnostics only: skip the content check (and the key-write counts)",
    )
    p.add_argument(
        "--bridge-env",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="extra environment for the bridge process, e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument("--json", metavar="FILE", help="also write the JSON result here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a smoke test: 50 x 200, 5 x 2,000, huge 6,500",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.iocs, args.records = 50, 200
        args.big_iocs, args.big_records = 5, 2000
        args.huge_records = 6500
        args.ceiling_records = 10_000
        args.timeout = min(args.timeout, 120.0)
    chosen = set(SCENARIOS) if args.scenario == "all" else set(args.scenario.split(","))
    unknown = chosen - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.chosen = chosen
    try:
        args.bridge_env = dict(item.split("=", 1) for item in args.bridge_env)
    except ValueError:
        p.error("--bridge-env takes NAME=VALUE")
    return args


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def git_state() -> dict[str, Any]:
    """The commit measured, and which tracked files differed from it (a working tree)."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "head": git("rev-parse", "--short", "HEAD"),
        "modified": git("diff", "--name-only", "HEAD").split(),
    }


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    # Stop cleanly (etcd, bridge and probes included) on SIGTERM, and on SIGINT even
    # when started in the background, where the shell ignores SIGINT.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="recsync-bench-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    say(
        f"work directory {workdir}; {psutil.cpu_count()} CPUs; load "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    results: list[Result] = []
    crashed: str | None = None
    chosen = args.chosen
    try:
        runs: list[tuple[str, Callable[[Group], list[Result]]]] = []
        if chosen & {"cold", "storm", "changed"}:
            runs.append(("fleet", lambda g: run_fleet(g, args, chosen)))
        if "big" in chosen:
            runs.append(("big", lambda g: run_big(g, args)))
        if "huge" in chosen:
            runs.append(("huge", lambda g: run_huge(g, args)))
        for name, run in runs:
            group = Group(name, workdir, args)
            try:
                results += run(group)
            finally:
                group.stop()
    except BaseException as exc:
        crashed = "".join(traceback.format_exception(exc))
        say(f"CRASHED:\n{crashed}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    content_ok = all(r.content_ok for r in results)
    targets_ok = all(t.ok for r in results for t in r.targets)
    doc = {
        "benchmark": "recsync-bridge scale",
        "git": git_state(),
        "config": {key: v for key, v in vars(args).items() if key != "chosen"},
        "cpus": psutil.cpu_count(),
        "results": [r.to_json() for r in results],
        "content_ok": content_ok,
        "targets_met": targets_ok,
        "crashed": crashed is not None,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    print(json.dumps(doc, default=str))
    return 1 if crashed or not content_ok else 0


if __name__ == "__main__":
    sys.exit(main())
