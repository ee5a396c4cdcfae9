"""What etcd holds during fault scenarios (tests/test_failover.py, bench/faults.py).

`content_problems` compares everything under a prefix with what a set of fake IOCs
uploaded, and `LivenessChecker` watches the liveness invariants of the data model
while faults are injected. Both read etcd through the bridge's own store and watch
(`bridge.etcd`).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from bridge.documents import (
    ALIVE,
    BRIDGES,
    IOCS,
    STATUS_ACTIVE,
    STATUS_INACTIVE,
    STATUS_UPLOADING,
    Keys,
    loads,
    pv_document,
    pv_names,
    record_value,
)
from bridge.etcd.backend import open_store
from bridge.etcd.ops import Entry, Event
from bridge.etcd.store import Store
from bridge.etcd.watch import Watch
from bridge.model import DESC_INFO_KEY, Record
from bridge.testing.fakeioc import IOCSpec


def spec_iocid(spec: IOCSpec) -> str:
    """The iocid the bridge derives for `spec` (HOSTNAME and IOCNAME are always sent)."""
    env = dict(spec.env)
    return f"{env['HOSTNAME']}:{env['IOCNAME']}"


def spec_records(spec: IOCSpec) -> list[Record]:
    """`spec`'s records as the bridge's sessions build them from the wire."""
    records = []
    for item in spec.records:
        record = Record(0, item.name, item.rtype)
        for alias in item.aliases:
            record.add_alias(alias)
        for key, value in item.infos:
            record.add_info(key, value)
        if item.desc:
            record.add_info(DESC_INFO_KEY, item.desc)
        records.append(record)
    return records


def content_problems(
    store: Store, prefix: str, specs: Mapping[str, IOCSpec], bridges: Collection[str]
) -> list[str]:
    """What differs from "every IOC in `specs` active on one of `bridges`, exactly".

    Checks every key under `prefix`: exactly the bridge documents of `bridges`; for each
    IOC an ``active`` document served by one of them, an alive key of that bridge on the
    bridge document's lease, its records byte for byte as the bridge encodes `spec`'s,
    a name-index entry for every record and alias name owned and claimed by it alone;
    and nothing else. Returns one line per problem (empty when exact).
    """
    keys = Keys(prefix)
    entries = {e.key: e for page in store.scan(keys.everything()) for e in page.entries}

    def take(key: str) -> Entry | None:
        return entries.pop(key) if key in entries else None

    problems: list[str] = []
    leases: dict[str, int] = {}
    for key, found in list(entries.items()):
        parts = keys.split(key)
        if parts[0] == BRIDGES:
            del entries[key]
            leases[parts[1]] = found.lease
    if set(leases) != set(bridges):
        problems.append(f"bridge documents {sorted(leases)}, expected {sorted(bridges)}")
    for iocid, spec in specs.items():
        records = spec_records(spec)
        doc_entry = take(keys.ioc(iocid))
        alive_entry = take(keys.alive(iocid))
        doc = loads(doc_entry.value) if doc_entry is not None else {}
        if doc.get("status") != STATUS_ACTIVE or doc.get("bridge") not in bridges:
            problems.append(f"{iocid}: status {doc.get('status')!r} on {doc.get('bridge')!r}")
        counts = (doc.get("records"), doc.get("aliases"))
        expected_counts = (len(records), sum(len(r.aliases) for r in records))
        if doc and counts != expected_counts:
            problems.append(f"{iocid}: document counts {counts}, expected {expected_counts}")
        alive = loads(alive_entry.value) if alive_entry is not None else {}
        if alive_entry is None or alive.get("bridge") != doc.get("bridge"):
            problems.append(f"{iocid}: alive key {alive!r} does not match the document")
        elif alive_entry.lease != leases.get(str(doc.get("bridge"))):
            problems.append(f"{iocid}: alive key not on its bridge's lease")
        for record in records:
            stored = take(keys.record(iocid, record.name))
            if stored is None or stored.value != record_value(record, iocid):
                problems.append(f"{iocid}: record {record.name} missing or different")
            for name, is_alias in pv_names(record):
                indexed = take(keys.pv(name))
                want = pv_document(iocid, record.name, record.rtype, is_alias, [iocid])
                if indexed is None or loads(indexed.value) != want:
                    problems.append(f"{iocid}: name-index entry {name} missing or different")
    problems += [f"unexpected key {key}" for key in sorted(entries)]
    return problems


def _epoch(text: Any) -> float:
    if not isinstance(text, str):
        return 0.0
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class LivenessChecker:
    """Follows every alive key, bridge document and IOC document while a scenario runs.

    One watch on the prefix (`bridge.etcd.watch.Watch`) sees every change in revision
    order (watched again from the last revision seen after an error; a compacted
    history is read again). Measured, by the time changes arrive here:

    * `max_unmatched`: longest time an IOC document said active/uploading without an
      alive key of the same bridge (data model § Liveness: at most TTL + a few s);
    * `max_stale`: longest time an IOC document said active/uploading for a session
      declared dead (`declare_dead`: its bridge was killed, or the IOC vanished);
    * `violations`: an IOC under `protect` (served by a healthy bridge) seen inactive;
    * `history`: every (time, status, bridge) each IOC document went through.

    Give it endpoints of members the scenario does not freeze: a watch on a hung
    member is silent until its probe moves it, and the times measured would be wrong.
    """

    def __init__(self, endpoints: Sequence[str], prefix: str, timeout: float = 1.0) -> None:
        self.keys = Keys(prefix)
        self.store = open_store(list(endpoints), timeout=timeout, deadline_s=20.0)
        self._watched = (ALIVE, BRIDGES, IOCS)
        self._lock = threading.Lock()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None
        self.revision = 0
        self.docs: dict[str, dict[str, Any]] = {}
        self.alive: dict[str, dict[str, Any]] = {}
        self.bridges: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[tuple[float, str, str]]] = {}
        self.violations: list[str] = []
        self.max_unmatched = 0.0
        self.max_unmatched_ioc = ""
        self.max_stale = 0.0
        self.max_stale_ioc = ""
        self._unmatched: dict[str, float] = {}
        self._stale: dict[str, float] = {}
        self._dead: list[tuple[str | None, str | None, float, float]] = []
        self._protected: set[str] = set()

    @property
    def rewatches(self) -> int:
        return self._watch.rewatches if self._watch is not None else 0

    # -- control --------------------------------------------------------------------

    def start(self) -> LivenessChecker:
        revision = self._load()
        self._watch = Watch(
            self.store,
            self.keys.everything(),
            reload=self._load,
            start_revision=revision + 1,
            probe_interval=1.0,
        )
        self._thread = threading.Thread(target=self._run, daemon=True, name="liveness")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.store.close()
        self._settle(time.monotonic())

    def declare_dead(self, *, bridge: str | None = None, iocid: str | None = None) -> None:
        """Sessions of `bridge` (or of `iocid`) that began before now are dead from now."""
        with self._lock:
            self._dead.append((bridge, iocid, time.time(), time.monotonic()))
            self._evaluate_all(time.monotonic())

    def protect(self, iocids: Iterable[str]) -> None:
        """These IOCs are served by healthy bridges: seeing one inactive is a violation."""
        with self._lock:
            self._protected.update(iocids)
            self._evaluate_all(time.monotonic())

    def unprotect(self, iocids: Iterable[str]) -> None:
        with self._lock:
            self._protected.difference_update(iocids)

    def wait_revision(self, revision: int, timeout: float = 20.0) -> None:
        """Block until changes up to `revision` have been seen."""
        deadline = time.monotonic() + timeout
        while self.revision < revision:
            if time.monotonic() > deadline:
                raise AssertionError(f"liveness watch stuck at {self.revision} < {revision}")
            time.sleep(0.02)

    def statuses(self, iocid: str) -> list[str]:
        """The statuses `iocid`'s document went through, repeats collapsed."""
        out: list[str] = []
        for _, status, _ in self.history.get(iocid, []):
            if not out or out[-1] != status:
                out.append(status)
        return out

    def summary(self) -> dict[str, Any]:
        with self._lock:
            self._settle(time.monotonic(), close=False)
            return {
                "max_unmatched_s": round(self.max_unmatched, 2),
                "max_unmatched_ioc": self.max_unmatched_ioc,
                "max_stale_s": round(self.max_stale, 2),
                "max_stale_ioc": self.max_stale_ioc,
                "violations": list(self.violations),
                "rewatches": self.rewatches,
            }

    # -- the watch ----------------------------------------------------------------------

    def _load(self) -> int:
        """Read alive keys, bridge and IOC documents at one revision; returns it."""
        found: dict[str, bytes] = {}
        revision: int | None = None
        for part in self._watched:
            for page in self.store.scan(self.keys.everything() + part + "/", revision=revision):
                revision = page.revision
                found.update((entry.key, entry.value) for entry in page.entries)
        assert revision is not None
        with self._lock:
            now = time.monotonic()
            for key, value in found.items():
                self._put(key, value, now)
            for kind, table in ((ALIVE, self.alive), (IOCS, self.docs)):
                for name in list(table):
                    key = self.keys.alive(name) if kind == ALIVE else self.keys.ioc(name)
                    if key not in found:
                        self._delete(key, now)
            self.revision = revision
        return revision

    def _run(self) -> None:
        assert self._watch is not None
        for events in self._watch:
            self._apply(events)

    def _apply(self, events: Sequence[Event]) -> None:
        with self._lock:
            now = time.monotonic()
            for event in events:
                if self.keys.split(event.key)[0] in self._watched:
                    if event.kind == "delete":
                        self._delete(event.key, now)
                    else:
                        self._put(event.key, event.value, now)
                self.revision = max(self.revision, event.revision)

    def _put(self, key: str, value: bytes, now: float) -> None:
        parts = self.keys.split(key)
        doc = loads(value)
        if parts[0] == ALIVE:
            self.alive[parts[1]] = doc
        elif parts[0] == BRIDGES:
            self.bridges[parts[1]] = doc
        elif parts[0] == IOCS:
            self.docs[parts[1]] = doc
            entry = (now, str(doc.get("status")), str(doc.get("bridge")))
            past = self.history.setdefault(parts[1], [])
            if not past or past[-1][1:] != entry[1:]:
                past.append(entry)
        if parts[0] in (ALIVE, IOCS):
            self._evaluate(parts[1], now)

    def _delete(self, key: str, now: float) -> None:
        parts = self.keys.split(key)
        table = {ALIVE: self.alive, BRIDGES: self.bridges, IOCS: self.docs}.get(parts[0])
        if table is not None:
            table.pop(parts[1], None)
        if parts[0] in (ALIVE, IOCS):
            self._evaluate(parts[1], now)

    # -- the invariants -------------------------------------------------------------------

    def _evaluate_all(self, now: float) -> None:
        for iocid in list(self.docs):
            self._evaluate(iocid, now)

    def _evaluate(self, iocid: str, now: float) -> None:
        doc = self.docs.get(iocid)
        alive = self.alive.get(iocid)
        status = doc.get("status") if doc is not None else None
        live = doc is not None and status in (STATUS_ACTIVE, STATUS_UPLOADING)
        matched = (
            alive is not None and doc is not None and alive.get("bridge") == doc.get("bridge")
        )
        self._interval(self._unmatched, iocid, live and not matched, now, now, "unmatched")
        died = self._died(doc) if live and doc is not None else None
        self._interval(self._stale, iocid, died is not None, now, died or now, "stale")
        if iocid in self._protected and status == STATUS_INACTIVE:
            self.violations.append(f"{iocid} served by a healthy bridge was marked inactive")

    def _died(self, doc: Mapping[str, Any]) -> float | None:
        connected = _epoch(doc.get("connected"))
        for bridge, iocid, wall, mono in self._dead:
            if bridge is not None and doc.get("bridge") != bridge:
                continue
            if iocid is not None and doc.get("iocid") != iocid:
                continue
            if connected < wall:
                return mono
        return None

    def _interval(
        self, open_: dict[str, float], iocid: str, flag: bool, now: float, start: float, what: str
    ) -> None:
        if flag and iocid not in open_:
            open_[iocid] = start
        elif not flag and iocid in open_:
            self._record(what, iocid, now - open_.pop(iocid))

    def _record(self, what: str, iocid: str, duration: float) -> None:
        if what == "unmatched" and duration > self.max_unmatched:
            self.max_unmatched, self.max_unmatched_ioc = duration, iocid
        if what == "stale" and duration > self.max_stale:
            self.max_stale, self.max_stale_ioc = duration, iocid

    def _settle(self, now: float, close: bool = True) -> None:
        """Count intervals still open as if they ended now."""
        for what, open_ in (("unmatched", self._unmatched), ("stale", self._stale)):
            for iocid, since in list(open_.items()):
                self._record(what, iocid, now - since)
                if close:
                    del open_[iocid]
