"""A simulation of bridges over a model of etcd, driving bridge.rules (tests only).

`World` runs bridges, their sessions and sweeps (tests/rules_apply.py) over `KV`
(tests/rules_kv.py). Work is done one etcd call at a time, by `step`, so a test decides
how the work of different sessions and bridges interleaves, where a bridge dies, and
which answers are lost (the call is then sent again, as the store's retries do).

Simplifications, each on purpose: facts for the name rules (liveness, records) are
read in the same step as the entries they go with; a lease is renewed at once when
etcd drops it; time advances one second per step of the test.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge import documents as docs
from bridge.documents import parse_ioc, parse_pv
from bridge.etcd.ops import Entry, Guarded, Put
from bridge.model import IOCIdentity, Peer, Record, iso_time
from bridge.rules import liveness
from bridge.rules.txn import Txn
from tests.rules_apply import RUN, STATS, Appliers, Bridge, Call, Refused, Session, Work
from tests.rules_kv import KEYS, KV, Facts

__all__ = ["KEYS", "KV", "Bridge", "Record", "Session", "World"]

#: Calls that write: their answer can be lost after etcd applied them (`World.step`).
WRITES = ("txn", "leased", "guarded", "write")


@dataclass(eq=False)
class Worker:
    """A queue of work done one etcd call at a time (a session's transactions, a sweep)."""

    bridge: Bridge
    label: str
    queue: deque[Callable[[], Work]] = field(default_factory=deque)
    current: Work | None = None
    call: Call | None = None
    #: The last call's answer was lost: it is sent again at the next step.
    again: bool = False
    session: Session | None = None
    #: iocid whose state a death of this worker mid-way may leave half written.
    iocid: str = ""


class World(Appliers):
    """Bridges, IOCs and etcd; see the module docstring."""

    def __init__(self, bridges: int) -> None:
        self.kv = KV()
        self.clock = 1_800_000_000.0
        self.bridges = [Bridge(f"b{i}") for i in range(bridges)]
        self.workers: list[Worker] = []
        self.locks: dict[int, Worker] = {}
        self.ports = 40000
        #: The IOC's session that its process uses now (None: not connected).
        self.current: dict[int, Session | None] = {}
        #: iocids a worker death left half written, until their next complete upload.
        self.dirty: set[str] = set()
        #: iocids a worker death ever left half written (not all of it is ever repaired).
        self.scarred: set[str] = set()
        self.lost_ends: dict[str, bytes] = {}
        self.retaken: dict[str, bytes] = {}
        #: Entry name -> revision of a write made on stale liveness facts (`_stale_facts`).
        self.stale_owner: dict[str, int] = {}
        #: Whether a sweep's answers may be lost too (`step`).
        self.lose_sweeps = True
        #: Digests of complete uploads -> the records they describe.
        self.uploaded: dict[tuple[str, ...], list[Record]] = {}
        #: Leases of bridges that stopped and handed over: they expire some time later.
        self.expiring: list[int] = []
        for bridge in self.bridges:
            self.start(bridge)

    # -- time, bridges ---------------------------------------------------------------------

    def now(self) -> str:
        return iso_time(self.clock)

    def tick(self) -> None:
        self.clock += 1

    def start(self, bridge: Bridge) -> None:
        bridge.lease = self.kv.grant()
        bridge.running, bridge.stopping, bridge.handing_over, bridge.last = (
            True,
            False,
            False,
            False,
        )
        bridge.sessions, bridge.connections, bridge.by_iocid = [], [], {}
        self._register(bridge)
        self.spawn(bridge, "resync", lambda: self.resync(bridge))

    def _register(self, bridge: Bridge) -> None:
        doc = docs.dumps(docs.bridge_document("h", 5075, "sim", self.now()))
        self.kv.txn(Txn((), (Put(KEYS.bridge(bridge.name), doc, bridge.lease),)))

    def kill(self, bridge: Bridge) -> None:
        """The process dies: its work stops where it is; its lease expires (not waited for)."""
        for worker in [w for w in self.workers if w.bridge is bridge]:
            self._drop(worker)
        for session in bridge.connections:
            if self.current.get(session.ioc) is session:
                self.current[session.ioc] = None
        bridge.sessions, bridge.connections, bridge.by_iocid = [], [], {}
        bridge.running = False
        self.lapse(bridge.lease)

    def lapse(self, lease: int) -> None:
        """etcd drops `lease`: its alive keys vanish, and running bridges sweep their IOCs."""
        self._deleted(self.kv.revoke(lease))

    def outage(self, bridge: Bridge) -> None:
        """etcd dropped a running bridge's lease: it takes a new one and re-announces.

        The delete events come first, while the bridge still takes the lost lease for
        its own (it notices the loss at its next refresh), as measured in issue 11.
        """
        self.lapse(bridge.lease)
        bridge.lease = self.kv.grant()
        self._register(bridge)
        self.spawn(bridge, "reassert", lambda: self.reassert(bridge))

    def _deleted(self, gone: Iterable[Entry]) -> None:
        for entry in gone:
            parts = KEYS.split(entry.key)
            if parts[0] != docs.ALIVE:
                continue
            for other in self.bridges:
                if other.running and liveness.sweep_on_delete(entry.lease, other.lease):
                    self.spawn(other, f"sweep {parts[1]}", self._sweep(other, parts[1]))

    def _sweep(self, bridge: Bridge, iocid: str) -> Callable[[], Work]:
        return lambda: self.mark_dead(bridge, iocid)

    def stop(self, bridge: Bridge) -> None:
        """SIGTERM: hand over or be the last (`liveness.shutdown`), then close every session."""
        others = [b.name for b in self.bridges if b is not bridge and b.running and not b.stopping]
        bridge.stopping = True
        mode = liveness.shutdown(others)
        if mode is liveness.Shutdown.HAND_OVER:
            bridge.handing_over = True
            self.kv.write([(KEYS.bridge(bridge.name).encode(), None)])
        else:
            bridge.last = True
        for session in list(bridge.connections):
            self.disconnect(session)

    def stopped(self, bridge: Bridge) -> bool:
        """A stopping bridge whose work is done leaves (the last sweeps orphans first)."""
        if not bridge.stopping or any(w.bridge is bridge for w in self.workers):
            return False
        if bridge.last:
            bridge.last = False
            self.spawn(bridge, "orphans", lambda: self.sweep_orphans(bridge))
            return False
        bridge.running, bridge.stopping = False, False
        if bridge.handing_over:
            self.expiring.append(bridge.lease)  # it expires later (`lapse`)
        else:
            self.lapse(bridge.lease)  # revoked
        return True

    # -- workers -----------------------------------------------------------------------------

    def spawn(self, bridge: Bridge, label: str, work: Callable[[], Work]) -> Worker:
        worker = Worker(bridge, label, deque([work]))
        self.workers.append(worker)
        return worker

    def runnable(self) -> list[Worker]:
        return [w for w in self.workers if not self._blocked(w)]

    def _blocked(self, worker: Worker) -> bool:
        call = worker.call
        if call is None or call[0] != "acquire":
            return False
        holder = self.locks.get(id(call[1]))
        return holder is not None and holder is not worker

    def step(self, worker: Worker, lose_answer: bool = False) -> None:
        """Send `worker`'s next etcd call (or start its next piece of work)."""
        if worker.current is None:
            worker.current = worker.queue.popleft()()
            self._next(worker, None)
            return
        assert worker.call is not None
        answer = self._execute(worker, worker.call)
        if worker.session is None and not self.lose_sweeps:
            lose_answer = False
        if lose_answer and worker.call[0] in WRITES and not worker.again:
            worker.again = True  # applied; the answer never came: sent again next step
            STATS["answer lost"] += 1
            return
        worker.again = False
        self._next(worker, answer)

    def _next(self, worker: Worker, answer: Any) -> None:
        assert worker.current is not None
        try:
            worker.call = worker.current.send(answer)
        except Refused:
            assert worker.session is not None
            worker.current, worker.call = None, None
            worker.queue.clear()
            self.disconnect(worker.session)
        except StopIteration:
            worker.current, worker.call = None, None
            if not worker.queue:
                self.workers.remove(worker)

    def _execute(self, worker: Worker, call: Call) -> Any:
        kind, kv = call[0], self.kv
        if kind == "mark":
            worker.iocid = call[1]
            return None
        if kind == "acquire":
            self.locks[id(call[1])] = worker
            return None
        if kind == "release":
            self.locks.pop(id(call[1]), None)
            return None
        if kind == "txn":
            return kv.txn(call[1])
        if kind == "leased":  # the rule is asked with the lease current when it is sent
            txn = call[1](worker.bridge.lease)
            return None if txn is None else kv.txn(txn)
        if kind == "guarded":
            failed = kv.guarded(call[1])
            if len(call) > 2:
                self._stale_facts([g for g in call[1] if g not in failed], call[2])
            return failed
        if kind == "write":
            return kv.write(call[1])
        if kind == "unequal":
            return kv.unequal(call[1])
        if kind == "get":
            return kv.get_many(call[1])
        if kind == "read":
            return kv.get_many(call[1]), Facts(kv)
        assert kind == "scan"
        return kv.scan(call[1])

    def _stale_facts(self, written: list[Guarded], facts: Facts) -> None:
        """Entries written on liveness facts that changed since they were read.

        Nothing compares them (test_a_successor_that_left_meanwhile_...): when such a
        write leaves an owner that is not live with a live claimant, it is remembered
        (entry name -> the revision written) and the live-owner check skips it.
        """
        for item in written:
            entry = parse_pv(item.value) if item.value is not None else None
            if entry is None:
                continue
            now = {c: self.live(c) for c in entry.claims}
            if all(now[c] == facts.is_live(c) for c in entry.claims):
                continue
            if not now[entry.owner] and any(now.values()):
                STATS["stale liveness facts"] += 1
                self.stale_owner[KEYS.split(item.key.decode())[1]] = self.kv.revision

    def live(self, iocid: str) -> bool:
        """The IOC's document says ``uploading`` or ``active`` now."""
        value = self.kv.value(KEYS.ioc(iocid))
        doc = parse_ioc(value) if value is not None else None
        return doc is not None and doc.live

    def _drop(self, worker: Worker) -> None:
        """A worker dies with its bridge: what it was doing stays half done."""
        if worker.current is not None:
            STATS["work cut off"] += 1
            iocid = worker.session.iocid if worker.session else worker.iocid
            self.dirty.add(iocid)
            self.scarred.add(iocid)
        for key, holder in list(self.locks.items()):
            if holder is worker:
                del self.locks[key]
        self.workers.remove(worker)

    # -- scenarios -------------------------------------------------------------------------

    def working(self, session: Session) -> bool:
        """The session's upload work (not its end) is under way."""
        worker = next((w for w in self.workers if w.session is session), None)
        return worker is not None and worker.current is not None and not session.closing

    def worker(self, session: Session | str) -> Worker:
        """The worker of a session, or the first whose label starts with the text."""
        if isinstance(session, str):
            return next(w for w in self.workers if w.label.startswith(session))
        return next(w for w in self.workers if w.session is session)

    def until(self, session: Session | str, kind: str, nth: int = 1) -> Call:
        """Run a session's (or labelled) work up to, not including, its `nth` call of `kind`."""
        worker = self.worker(session)
        seen = 0
        while True:
            if worker not in self.workers:
                raise LookupError(f"{worker.label} finished without a {kind!r} call")
            self.step(worker)
            if worker.call is not None and worker.call[0] == kind:
                seen += 1
                if seen == nth:
                    return worker.call

    def complete(self, session: Session) -> None:
        """Run `session`'s work to the end of its queue (others wait)."""
        worker = self.worker(session)
        while worker in self.workers:
            self.step(worker)

    def settle(self) -> None:
        """Let every piece of work finish, stopping bridges leave, handed-over leases expire."""
        for _ in range(100_000):
            for bridge in self.bridges:
                self.stopped(bridge)
            ready = self.runnable()
            if ready:
                self.step(ready[0])
                continue
            if not self.expiring:
                return
            self.lapse(self.expiring.pop(0))
        raise AssertionError("the simulation does not settle")

    # -- IOCs --------------------------------------------------------------------------------

    def connect(
        self,
        ioc: int,
        bridge: Bridge,
        db: list[Record],
        withdraw: int | None = None,
        begin_fails: bool = False,
    ) -> Session:
        """IOC `ioc` connects to `bridge` and uploads `db` (DelRecord of one earlier record
        after run `withdraw`). Its previous session, if still connected, lingers open."""
        self.ports += 1
        peer = Peer(f"10.0.0.{ioc}", self.ports)
        wanted = IOCIdentity(f"h:IOC{ioc}", "h", f"IOC{ioc}", stable=True)
        session = Session(bridge, ioc, wanted, peer, db, begin_fails)
        bridge.connections.append(session)
        self.current[ioc] = session
        runs = [db[i : i + RUN] for i in range(0, len(db), RUN)]
        script: list[Callable[[], Work]] = [lambda: self.begin(session)]
        for index, run in enumerate(runs):
            script.append(self._run(session, index, run))
            if withdraw == index and index > 0:
                script.append(lambda: self.withdraw(session, [runs[0][0].name]))
        script.append(lambda: self.finish(session))
        worker = self.spawn(bridge, f"session {wanted.iocid}", script[0])
        worker.queue.extend(script[1:])
        worker.session = session
        return session

    def _run(self, session: Session, index: int, records: list[Record]) -> Callable[[], Work]:
        return lambda: self.run(session, index, records)

    def disconnect(self, session: Session) -> None:
        """The connection closes: what was not received is never sent; the end is written."""
        worker = next((w for w in self.workers if w.session is session), None)
        if self.current.get(session.ioc) is session:
            self.current[session.ioc] = None
        if not session.registered:  # no transaction was cut: the writer never hears of it
            if worker is not None:
                self.workers.remove(worker)
            if session in session.bridge.connections:
                session.bridge.connections.remove(session)
            return
        if session.disconnected or session not in session.bridge.connections:
            return
        session.disconnected = True
        if worker is None:
            worker = self.spawn(session.bridge, f"end {session.iocid}", lambda: self.end(session))
            worker.session = session
        else:
            worker.queue.clear()
            worker.queue.append(lambda: self.end(session))
