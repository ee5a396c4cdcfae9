"""The rules together, under hypothesis: IOCs on several bridges over a model of etcd.

A state machine (tests/rules_sim.py has the model) connects IOCs to bridges and has
them upload databases drawn from one small pool of names (so names are shared
between IOCs, records and aliases), changed or unchanged, with DelRecord now and
then; interleaves the etcd calls of every session and sweep in any order;
disconnects IOCs, lets them reconnect while their old session lingers, kills,
restarts and stops bridges, and has etcd drop a bridge's lease.

Checked after every step (*always*), and after letting all work finish (*settled*):

* always: every index entry is readable, lists each claimant once, at least one,
  and its owner among them; an entry with several claimants has each one's shared mark;
* settled: claims are exactly the IOCs whose stored records hold the name, and the
  owner's record is the one the entry describes; when a claimant is live the owner
  is live; with a bridge running, no IOC says live without an alive key; an IOC's
  current session holds its alive key and its document says live; stored run
  digests describe exactly the stored records.

Work cut off by a dying bridge leaves its IOC *dirty* until its next complete upload,
which makes every name its stored records hold claimed again; that IOC is left out of
the other settled checks from then on (tests/test_rules_findings.py shows what is not
repaired).

Each machine below turns on what today's rules are expected to survive. What they
do not survive is kept as a minimal failing example in tests/test_rules_findings.py,
marked xfail(strict=True), with the reason; where a machine avoids a known failure,
it says so and names the example.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bridge import documents as docs
from bridge.documents import load_object, parse_pv
from bridge.model import Record
from tests.rules_sim import KEYS, World

#: Examples per machine; search deeper with ``RULES_SIM_EXAMPLES=2000``.
EXAMPLES = int(os.environ.get("RULES_SIM_EXAMPLES", "100"))
POOL = ["A", "B", "C", "D", "E", "F"]
IOCS = 3
BRIDGES = 2


@st.composite
def databases(draw: st.DrawFn) -> list[Record]:
    """A well-formed database: names unique across its records and aliases (as EPICS
    requires), drawn from the shared pool."""
    names = draw(st.lists(st.sampled_from(POOL), unique=True, min_size=1, max_size=5))
    records: list[Record] = []
    for name in names:
        as_alias: bool = draw(st.booleans())
        if records and as_alias and len(records[-1].aliases) < 2:
            records[-1].aliases.append(name)
        else:
            rtype = draw(st.sampled_from(["ai", "bo"]))
            records.append(Record(0, name, rtype, [], {}, draw(st.sampled_from(["x", "y"]))))
    return records


def copy(db: list[Record]) -> list[Record]:
    return [Record(0, r.name, r.rtype, list(r.aliases), {}, r.desc) for r in db]


@st.composite
def variants(draw: st.DrawFn) -> list[list[Record]]:
    """A database and versions of it as an IOC's database changes: cut short, one record
    changed, one record more, an alias dropped (so unchanged runs, a changed run, fewer
    and more runs all occur)."""
    base = draw(databases())
    out = [base]
    for _ in range(draw(st.integers(1, 2))):
        db = copy(draw(st.sampled_from(out)))
        how = draw(st.sampled_from(["cut", "change", "add", "unalias"]))
        if how == "cut" and len(db) > 1:
            db = db[: draw(st.integers(1, len(db) - 1))]
        elif how == "change":
            i = draw(st.integers(0, len(db) - 1))
            db[i].desc = "y" if db[i].desc == "x" else "x"
        elif how == "add":
            used = {n for r in db for n in (r.name, *r.aliases)}
            free = [n for n in POOL if n not in used]
            if free:
                db.append(Record(0, draw(st.sampled_from(free)), "ai", [], {}, "x"))
        elif how == "unalias":
            with_aliases = [r for r in db if r.aliases]
            if with_aliases:
                draw(st.sampled_from(with_aliases)).aliases.pop()
        out.append(db)
    return out


# -- what the settled store says ---------------------------------------------------------


def stored_records(world: World) -> dict[str, dict[str, dict[str, Any]]]:
    """iocid -> record name -> record document."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in world.kv.scan(KEYS.records_prefix("")[:-1]):
        _, iocid, name = KEYS.split(entry.key)
        doc = load_object(entry.value)
        assert doc is not None
        out.setdefault(iocid, {})[name] = doc
    return out


def providers(world: World) -> dict[str, dict[str, tuple[str, str, bool]]]:
    """name -> iocid -> (record, type, alias) under which its stored records hold it."""
    out: dict[str, dict[str, tuple[str, str, bool]]] = {}
    for iocid, records in stored_records(world).items():
        for name, doc in records.items():
            out.setdefault(name, {})[iocid] = (name, doc["type"], False)
            for alias in doc["aliases"]:
                out.setdefault(alias, {})[iocid] = (name, doc["type"], True)
    return out


def index(world: World) -> dict[str, Any]:
    return {KEYS.split(e.key)[1]: parse_pv(e.value) for e in world.kv.scan(KEYS.pvs_prefix())}


def live(world: World, iocid: str) -> bool:
    return world.live(iocid)


class Bridges(RuleBasedStateMachine):
    """IOCs, bridges and etcd; subclasses choose which trouble may happen."""

    bridges = BRIDGES
    kills = False
    outages = False
    stops = False
    lingering = False
    lost_answers = False
    #: Sweeps' answers may be lost too (known: test_a_sweep_whose_answer_was_lost_...).
    lost_sweeps = False
    withdrawals = True

    def __init__(self) -> None:
        super().__init__()
        self.world = World(self.bridges)
        self.world.lose_sweeps = self.lost_sweeps
        self.dbs: list[list[Record]] = []

    @initialize(dbs=variants())
    def databases(self, dbs: list[list[Record]]) -> None:
        self.dbs = dbs

    # -- what happens --------------------------------------------------------------------

    def _up(self) -> list[int]:
        return [i for i, b in enumerate(self.world.bridges) if b.running and not b.stopping]

    @precondition(lambda self: self._up())
    @rule(
        ioc=st.integers(0, IOCS - 1),
        bridge=st.integers(0, 3),
        db=st.integers(0, 2),
        withdraw=st.none() | st.integers(1, 3),
    )
    def connect(self, ioc: int, bridge: int, db: int, withdraw: int | None) -> None:
        """An IOC connects (closing its previous connection unless it lingers)."""
        world = self.world
        up = self._up()
        target = world.bridges[up[bridge % len(up)]]
        if any(
            s.ioc == ioc and b is not target and world.working(s)
            for b in world.bridges
            for s in b.connections
        ):
            return  # known: that work lands late (test_two_sessions_..., test_a_claim_landing_...)
        previous = world.current.get(ioc)
        if previous is not None and not self.lingering:
            world.disconnect(previous)
        database = copy(self.dbs[db % len(self.dbs)])
        world.connect(ioc, target, database, withdraw if self.withdrawals else None)
        world.tick()

    @precondition(lambda self: self.world.runnable())
    @rule(picks=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=12))
    def step(self, picks: list[tuple[int, bool]]) -> None:
        """A few etcd calls, each of some session or sweep (its answer lost, sometimes)."""
        for pick, lose in picks:
            ready = self.world.runnable()
            if not ready:
                return
            self.world.step(ready[pick % len(ready)], lose and self.lost_answers)

    @precondition(lambda self: any(self.world.current.values()))
    @rule(ioc=st.integers(0, IOCS - 1))
    def disconnect(self, ioc: int) -> None:
        session = self.world.current.get(ioc)
        if session is not None:
            self.world.disconnect(session)
            self.world.tick()

    @precondition(lambda self: self.lingering)
    @rule()
    def close_lingering(self) -> None:
        """Old connections of reconnected IOCs time out."""
        for bridge in self.world.bridges:
            for session in list(bridge.sessions):
                if self.world.current.get(session.ioc) is not session:
                    self.world.disconnect(session)
        self.world.tick()

    @precondition(lambda self: self.kills and any(b.running for b in self.world.bridges))
    @rule(bridge=st.integers(0, 3))
    def kill(self, bridge: int) -> None:
        target = self.world.bridges[bridge % self.bridges]
        if target.running:
            self.world.kill(target)
            self.world.tick()

    @precondition(lambda self: any(not b.running for b in self.world.bridges))
    @rule(bridge=st.integers(0, 3))
    def restart(self, bridge: int) -> None:
        target = self.world.bridges[bridge % self.bridges]
        if not target.running:
            self.world.start(target)
            self.world.tick()

    @precondition(lambda self: self.outages and self._up())
    @rule(bridge=st.integers(0, 3))
    def outage(self, bridge: int) -> None:
        """etcd drops a bridge's lease (an outage longer than the lease)."""
        up = self._up()
        self.world.outage(self.world.bridges[up[bridge % len(up)]])
        self.world.tick()

    @precondition(lambda self: self.stops and self._up())
    @rule(bridge=st.integers(0, 3))
    def stop(self, bridge: int) -> None:
        up = self._up()
        self.world.stop(self.world.bridges[up[bridge % len(up)]])
        self.world.tick()

    @precondition(lambda self: any(b.stopping for b in self.world.bridges))
    @rule()
    def leave(self) -> None:
        """Stopping bridges whose work is done exit (the last one sweeps orphans first)."""
        for bridge in self.world.bridges:
            self.world.stopped(bridge)

    @precondition(lambda self: self.world.expiring)
    @rule()
    def expire(self) -> None:
        """A stopped bridge's lease runs out."""
        self.world.lapse(self.world.expiring.pop(0))
        self.world.tick()

    @rule(now=st.integers(0, 3))
    def settle(self, now: int) -> None:
        """Sometimes (not to serialise everything): let all work finish, then check."""
        if now == 0:
            self.world.settle()
            self.check_settled()

    def teardown(self) -> None:
        self.world.settle()
        self.check_settled()

    # -- always --------------------------------------------------------------------------

    @invariant()
    def entries_are_well_formed(self) -> None:
        for name, entry in index(self.world).items():
            assert entry is not None, f"{name}: unreadable entry"
            assert entry.claims, f"{name}: an entry without claimants"
            assert len(set(entry.claims)) == len(entry.claims), f"{name}: {entry.claims}"
            assert entry.owner in entry.claims, f"{name}: owner {entry.owner} not claiming"

    @invariant()
    def every_claimant_of_a_shared_entry_is_marked(self) -> None:
        for name, entry in index(self.world).items():
            if entry is not None and len(entry.claims) > 1:
                for iocid in entry.claims:
                    assert self.world.kv.value(KEYS.shared(iocid)), f"{name}: {iocid} unmarked"

    # -- settled -------------------------------------------------------------------------

    def check_settled(self) -> None:
        self.claims_are_exactly_the_providers()
        self.a_live_claimant_means_a_live_owner()
        self.live_documents_have_alive_keys()
        self.current_sessions_hold_their_iocs()
        self.digests_describe_the_stored_records()

    def claims_are_exactly_the_providers(self) -> None:
        """Every IOC whose stored records hold a name claims it; an IOC claims only names
        its stored records hold, and the owner's record is the entry's.

        After work cut off mid-way, the next complete upload makes the first true again,
        never the others (test_a_bridge_dying_between_..._leaves_..._forever).
        """
        world, held = self.world, providers(self.world)
        for name in set(held) | set(index(world)):
            entry = index(world).get(name)
            claims = set(entry.claims) if entry else set()
            stored_by = set(held.get(name, {}))
            assert stored_by - claims <= world.dirty, f"{name}: {sorted(stored_by)} unclaimed"
            assert claims - stored_by <= world.scarred, f"{name}: claims {sorted(claims)}"
            if entry is not None and entry.owner not in world.scarred:
                details = (entry.record, entry.rtype, entry.alias)
                assert held[name][entry.owner] == details, f"{name}: owner's record {details}"

    def a_live_claimant_means_a_live_owner(self) -> None:
        """Unless the entry was last written on stale liveness facts, or the live
        claimants came back by putting their alive key back and have not uploaded since
        (known: test_a_successor_that_left_meanwhile_..., test_an_ioc_back_after_...)."""
        world, held = self.world, providers(self.world)
        for name, entry in index(world).items():
            assert entry is not None
            if entry.owner in world.scarred or live(world, entry.owner):
                continue
            raw = world.kv.get(KEYS.pv(name).encode())
            if raw is not None and world.stale_owner.get(name) == raw.mod_revision:
                continue
            alive = [
                c
                for c in entry.claims
                if c in held.get(name, {})
                and live(world, c)
                and world.retaken.get(c) != world.kv.value(KEYS.ioc(c))
            ]
            assert not alive, f"{name}: owner {entry.owner} not live, live claimants {alive}"

    def live_documents_have_alive_keys(self) -> None:
        """Unless the IOC's end was lost with its bridge's lease and no other bridge swept
        it since (known: test_an_ioc_that_left_during_an_outage_of_a_single_bridge_...)."""
        world = self.world
        if not any(b.running for b in world.bridges):
            return
        for entry in world.kv.scan(KEYS.iocs_prefix()):
            iocid = KEYS.split(entry.key)[1]
            if world.lost_ends.get(iocid) == entry.value:
                continue
            if live(world, iocid):
                assert world.kv.value(KEYS.alive(iocid)), f"{iocid} live without an alive key"

    def current_sessions_hold_their_iocs(self) -> None:
        world = self.world
        for session in world.current.values():
            if session is None or not session.bridge.running:
                continue
            assert session.begun and live(world, session.iocid), f"{session.iocid} not live"
            assert world.kv.value(KEYS.alive(session.iocid)) == session.alive, (
                f"{session.iocid}: its current session does not hold the alive key"
            )

    def digests_describe_the_stored_records(self) -> None:
        world, stored = self.world, stored_records(self.world)
        for entry in world.kv.scan(KEYS.iocs_prefix()):
            iocid = KEYS.split(entry.key)[1]
            digests = (load_object(entry.value) or {}).get("record_digests")
            if digests is None or iocid in world.scarred:
                continue
            expected = {
                r.name: docs.record_document(r, iocid) for r in world.uploaded[tuple(digests)]
            }
            assert stored.get(iocid, {}) == expected, f"{iocid}: digests {digests}"


def run(machine: type[Bridges], examples: int, steps: int = 40) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


class Calm(Bridges):
    """Uploads, DelRecords, disconnects and reconnects on two bridges."""


class Lingering(Bridges):
    """IOCs reconnect while their old connection stays open, on one bridge (two bridges:
    test_two_sessions_of_one_ioc_on_two_bridges_...)."""

    bridges = 1
    lingering = True


class Killing(Bridges):
    """Bridges die anywhere in their work, and restart; answers get lost (not a sweep's:
    test_a_sweep_whose_answer_was_lost_...)."""

    kills = True
    lost_answers = True


class Stopping(Bridges):
    """Bridges stop (hand-over, or the last one) and restart."""

    stops = True


class Outages(Bridges):
    """etcd drops a bridge's lease while another bridge runs (one bridge alone:
    test_an_ioc_that_left_during_an_outage_of_a_single_bridge_...)."""

    outages = True
    lost_answers = True


class Everything(Bridges):
    """All of the above at once (but for what the examples named above show)."""

    kills = outages = stops = lost_answers = True


MACHINES = [Calm, Lingering, Killing, Stopping, Outages, Everything]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
def test_the_rules_keep_the_index_and_statuses_true(machine: type[Bridges]) -> None:
    run(machine, EXAMPLES)
