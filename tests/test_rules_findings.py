"""What today's rules do not survive: minimal examples, each xfail(strict=True).

Each example drives the simulation of tests/rules_sim.py by hand, step by step, to
the state that hypothesis found (tests/test_rules_sim.py), then asserts what should
hold. Only those final assertions can make an example fail as expected
(``raises=AssertionError``): a step that finds the state otherwise raises
`SetupFailed` or `LookupError`, which fails the test. The reason names the rule at
fault; issue 11 will change some of these rules, and a fixed rule turns its example
into an unexpected pass, so the mark goes.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.documents import load_object, parse_pv
from bridge.model import Record
from tests.rules_sim import KEYS, World

DB = [Record(0, "A", "ai", ["A:1"], {}, "x")]


def doc_of(world: World, iocid: str) -> dict[str, Any]:
    found = load_object(world.kv.value(KEYS.ioc(iocid)) or b"null")
    require(found is not None, f"no IOC document for {iocid}")
    assert found is not None
    return found


class SetupFailed(Exception):
    """An example did not reach the state it is about (so its xfail must not count)."""


def require(condition: bool, what: str) -> None:
    if not condition:
        raise SetupFailed(what)


def R(name: str, *aliases: str, t: str = "ai") -> Record:
    return Record(0, name, t, list(aliases), {}, "x")


def entry_of(world: World, name: str) -> Any:
    value = world.kv.value(KEYS.pv(name))
    return None if value is None else parse_pv(value)


def uploaded(world: World, ioc: int, bridge: int, db: list[Record]) -> None:
    """IOC `ioc` uploads `db` on `bridge` completely, then disconnects."""
    session = world.connect(ioc, world.bridges[bridge], db)
    world.settle()
    world.disconnect(session)
    world.settle()
    world.tick()


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="liveness.begin compares nothing, and record writes are not guarded by holding "
    "the IOC: of two open sessions of one iocid on two bridges (an IOC rebooted before its "
    "old connection timed out), the later begin holds the IOC, and when that one is the old "
    "session its end marks the IOC inactive while the new one is connected (issue 11, "
    "part 1: the reboot case)",
)
def test_two_sessions_of_one_ioc_on_two_bridges_leave_the_newer_one_holding_it() -> None:
    world = World(2)
    world.settle()
    old = world.connect(1, world.bridges[0], DB)
    world.until(old, "leased")  # the old connection's begin is on its way when the IOC reboots
    new = world.connect(1, world.bridges[1], DB)  # the old connection stays open (no FIN)
    world.complete(new)
    world.settle()  # the old begin lands and the old session uploads the same records
    world.disconnect(old)  # the old connection times out
    world.settle()
    assert world.current[1] is new
    assert world.kv.value(KEYS.alive("h:IOC1")) == new.alive
    assert doc_of(world, "h:IOC1")["status"] == "active"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="record writes are not guarded by holding the IOC: a session that lost the alive "
    "key still writes records, so the digests another session stores do not describe what "
    "is stored, and later unchanged uploads keep a record the IOC no longer has "
    "(issue 11, part 1: no session changes records of an iocid it does not hold)",
)
def test_stored_digests_always_describe_the_stored_records() -> None:
    world = World(2)
    world.settle()
    old = world.connect(1, world.bridges[0], [R("A")])
    new = world.connect(1, world.bridges[1], [])  # the IOC rebooted, without record A
    world.until(old, "write")  # the old session began: it held the IOC...
    world.until(new, "acquire", 2)  # ...until the new one began (nothing stored yet)
    world.complete(old)  # writes A; its document write is refused (not its alive key)
    world.complete(new)  # finishes with the digests of an empty upload
    world.disconnect(old)
    world.settle()
    require(doc_of(world, "h:IOC1")["record_digests"] == [], "the new upload's digests")
    assert world.kv.value(KEYS.record("h:IOC1", "A")) is None


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="uploads delete stale records (and records drop aliases) before unclaiming their "
    "names: work cut off in between (a bridge dying, or etcd failing the unclaim) leaves "
    "claims that no later upload removes, since unclaims come only from what is stored "
    "(unclaiming first would leave a stored name unclaimed, which the next upload repairs)",
)
@pytest.mark.parametrize(
    ("before", "after", "name"),
    [([R("A", "A:1")], [], "A"), ([R("A", "A:1")], [R("A")], "A:1")],
    ids=["stale record", "dropped alias"],
)
def test_a_bridge_dying_between_a_delete_and_its_unclaim_leaves_no_claim_forever(
    before: list[Record], after: list[Record], name: str
) -> None:
    world = World(2)
    world.settle()
    uploaded(world, 1, 0, before)
    again = world.connect(1, world.bridges[0], after)
    world.until(again, "read", nth=2 if after else 1)  # deleted, or put without the alias
    world.kill(world.bridges[0])
    world.settle()
    uploaded(world, 1, 1, after)  # a complete upload on the other bridge
    found = entry_of(world, name)
    assert found is None or "h:IOC1" not in found.claims


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="an unchanged record's claim never rewrites the entry it owns (names.claimed: the "
    "owner's unchanged claim is left alone even with other details), so a bridge dying "
    "between a changed record's put and its claim leaves the entry's type stale until the "
    "record changes again",
)
def test_a_bridge_dying_between_a_record_and_its_claim_is_repaired_by_the_next_upload() -> None:
    world = World(2)
    world.settle()
    uploaded(world, 1, 0, [R("A", t="ai")])
    again = world.connect(1, world.bridges[0], [R("A", t="bo")])
    world.until(again, "read")  # record A (now bo) is written; its claim comes next
    world.kill(world.bridges[0])
    world.settle()
    uploaded(world, 1, 1, [R("A", t="bo")])
    assert entry_of(world, "A").rtype == "bo"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a dead-bridge sweep whose transaction etcd applied but whose answer was lost is "
    "retried, finds the IOC document changed (by itself) and reports no change, so the IOC's "
    "names are not handed over: an inactive IOC keeps owning a name a live IOC provides "
    "(read the failed answer as liveness.ended does)",
)
def test_a_sweep_whose_answer_was_lost_still_hands_the_names_over() -> None:
    world = World(2)
    world.settle()
    two = world.connect(2, world.bridges[1], [R("A")])
    world.settle()
    one = world.connect(1, world.bridges[0], [R("A")])  # a new record: takes A over
    world.settle()
    require(two.begun and one.begun, "both uploaded")
    require(entry_of(world, "A").owner == "h:IOC1", "A is h:IOC1's")
    world.kill(world.bridges[0])
    world.until("sweep h:IOC1", "txn")
    world.step(world.worker("sweep h:IOC1"), lose_answer=True)  # applied; the answer is lost
    world.settle()
    require(doc_of(world, "h:IOC1")["status"] == "inactive", "h:IOC1 swept")
    assert entry_of(world, "A").owner == "h:IOC2"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a session's end after its alive key went with a lost lease is refused "
    "(liveness.ended: not ours, not ended), and its own bridge ignores the key's deletion "
    "as its own lease's, so with no other bridge the IOC says active forever "
    "(issue 11, finding 6)",
)
def test_an_ioc_that_left_during_an_outage_of_a_single_bridge_is_marked_inactive() -> None:
    world = World(1)
    world.settle()
    session = world.connect(1, world.bridges[0], [R("A")])
    world.settle()
    world.disconnect(session)  # the IOC leaves; its end waits for etcd...
    world.outage(world.bridges[0])  # ...which dropped the bridge's lease meanwhile
    world.settle()
    assert doc_of(world, "h:IOC1")["status"] == "inactive"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the liveness facts a successor is chosen on are not compared when the entry is "
    "written (only the entry's revision is): a claimant chosen while live that goes inactive "
    "before the write lands, and whose own hand-over ran in between, keeps the name while "
    "another claimant that provides it is live, until that one uploads again (compare the "
    "chosen owner's IOC document as read)",
)
def test_a_successor_that_left_meanwhile_does_not_keep_the_name() -> None:
    world = World(1)
    bridge = world.bridges[0]
    world.settle()
    for ioc in (1, 2, 0):  # each takes X with a new record: owner h:IOC0, claims B, C, A
        world.connect(ioc, bridge, [R("X")])
        world.settle()
    leaving, successor = world.current[0], world.current[2]
    require(leaving is not None and successor is not None, "both connected")
    assert leaving is not None and successor is not None
    world.disconnect(leaving)
    world.until(leaving, "guarded")  # its hand-over chose the latest live claimant, h:IOC2...
    world.disconnect(successor)  # ...which leaves now: inactive, its own hand-over finds
    world.complete(successor)  # X still h:IOC0's and does nothing
    world.settle()  # the first hand-over's write lands: X goes to h:IOC2
    require(doc_of(world, "h:IOC1")["status"] == "active", "h:IOC1 still here")
    assert entry_of(world, "X").owner == "h:IOC1"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a surviving bridge sweeps every IOC of a bridge whose lease etcd dropped, also "
    "those still connected; a hand-over in that window finds no live claimant, and the "
    "connected ones come back by putting their alive key back (liveness.retake) without "
    "any claim, so an inactive IOC keeps a name a live one provides until that one uploads "
    "again (issue 11, part 8: re-establish the truth after a lost lease)",
)
def test_an_ioc_back_after_its_bridges_outage_takes_over_the_names_it_shares() -> None:
    world = World(2)
    world.settle()
    world.connect(1, world.bridges[0], [R("A")])
    world.settle()
    leaving = world.connect(0, world.bridges[0], [R("A")])  # new record: owner h:IOC0
    world.settle()
    world.disconnect(leaving)  # h:IOC0 leaves; its end waits for etcd...
    world.outage(world.bridges[0])  # ...which dropped bridge 0's lease: bridge 1 sweeps
    world.settle()  # h:IOC1 first (then back), h:IOC0 (nobody live to hand A to)
    require(doc_of(world, "h:IOC1")["status"] == "active", "h:IOC1 back")
    require(doc_of(world, "h:IOC0")["status"] == "inactive", "h:IOC0 gone")
    assert entry_of(world, "A").owner == "h:IOC1"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="claims are not tied to holding the IOC: an IOC that reconnects to another bridge "
    "while its old session's claim is still on its way (etcd slow), and whose new upload "
    "drops the name, keeps that claim forever: no later upload unclaims a name its stored "
    "records do not hold (issue 11, part 1: no session changes what an iocid it does not "
    "hold has stored)",
)
def test_a_claim_landing_after_the_ioc_moved_to_another_bridge_does_not_stay() -> None:
    world = World(2)
    world.settle()
    old = world.connect(0, world.bridges[1], [R("A", "B", "C")])
    world.until(old, "guarded")  # record A written; its names' creation on its way
    world.disconnect(old)  # the connection drops; that write is still in flight
    new = world.connect(0, world.bridges[0], [R("A", "B")])  # back elsewhere, without C
    world.complete(new)
    world.settle()  # the old creation lands
    assert load_object(world.kv.value(KEYS.record("h:IOC0", "A")) or b"{}") == {  # as sent
        "name": "A", "type": "ai", "iocid": "h:IOC0", "desc": "x", "aliases": ["B"], "infos": {}
    }  # fmt: skip
    assert entry_of(world, "C") is None
