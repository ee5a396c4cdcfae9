"""Liveness rules (bridge/rules/liveness.py), one table per rule.

Each row reads: the situation, what the rule decides, and why. The IOC is ``h:I``,
this bridge ``b1``.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge import documents as docs
from bridge.etcd.ops import Compare, Delete, Entry, Get, Put
from bridge.model import IOCIdentity, Peer
from bridge.rules import liveness as lv
from bridge.rules.liveness import Holder, Shutdown
from bridge.rules.txn import Txn

KEYS = docs.Keys("/p")
IOC = "h:I"
NOW = "2027-01-15T08:00:10.000Z"
CONNECTED = "2027-01-15T08:00:00.000Z"
ALIVE = docs.dumps(docs.alive_document("b1", CONNECTED))
OTHER_ALIVE = docs.dumps(docs.alive_document("b2", NOW))
IOC_KEY, ALIVE_KEY = KEYS.ioc(IOC), KEYS.alive(IOC)
#: The bridge's lease, as the writer passes it to the rules that put alive keys.
LEASE = 7


def doc(status: str = "active", bridge: str = "b1", connected: str = CONNECTED) -> dict[str, Any]:
    return {"iocid": IOC, "status": status, "bridge": bridge, "connected": connected}


def value(**fields: str) -> bytes:
    return docs.dumps(doc(**fields))


# -- identity ----------------------------------------------------------------------------

WANTED = IOCIdentity(IOC, "h", "I", stable=True)
PEER = Peer("10.0.0.2", 5002)

IDENTITY = [
    # (why, another session of this bridge with the iocid, identity, collided)
    ("nobody else has the iocid: the session takes it", Holder.NONE, WANTED, False),
    ("another live session has it: kept apart under ip:port, with a warning",
     Holder.LIVE, IOCIdentity("10.0.0.2:5002", "h", "I", stable=False), True),
    ("the other session is closing (the IOC reconnected before its end was written): "
     "the new one takes it over", Holder.CLOSING, WANTED, False),
]  # fmt: skip


@pytest.mark.parametrize(("why", "holder", "identity", "collided"), IDENTITY)
def test_session_identity(why: str, holder: Holder, identity: IOCIdentity, collided: bool) -> None:
    assert lv.session_identity(WANTED, PEER, holder) == (identity, collided), why


# -- the IOC document and the alive key --------------------------------------------------


def test_an_upload_begins_with_document_and_alive_key_comparing_nothing() -> None:
    assert lv.begin(KEYS, IOC, b"D", ALIVE, LEASE) == Txn(
        (), (Put(IOC_KEY, b"D"), Put(ALIVE_KEY, ALIVE, LEASE))
    )


#: The pieces of the rows below: "the alive key is ours", the document, our alive key.
OURS, DOC, OUR_ALIVE = (
    Compare.holds(ALIVE_KEY, ALIVE),
    Put(IOC_KEY, b"D"),
    Put(ALIVE_KEY, ALIVE, LEASE),
)

PUT_IOC = [
    # (why, alive_too, expected)
    ("the document, while the alive key is ours; on failure, read the alive key",
     False, Txn((OURS,), (DOC,), (Get(ALIVE_KEY),))),
    ("after a new lease: the alive key too, on the new lease",
     True, Txn((OURS,), (DOC, OUR_ALIVE), (Get(ALIVE_KEY),))),
]  # fmt: skip


@pytest.mark.parametrize(("why", "alive_too", "expected"), PUT_IOC)
def test_put_ioc(why: str, alive_too: bool, expected: Txn) -> None:
    assert lv.put_ioc(KEYS, IOC, b"D", ALIVE, LEASE, alive_too=alive_too) == expected, why


RETAKE = [
    # (why, alive key found after put_ioc failed, stopping, expected)
    ("gone (our lease expired in an outage): put both back, guarded by absent",
     None, False, Txn((Compare.absent(ALIVE_KEY),), (DOC, OUR_ALIVE))),
    ("another session's: it holds the IOC now, leave its documents alone",
     OTHER_ALIVE, False, None),
    ("gone while the bridge stops: nobody would remove a key put back now",
     None, True, None),
]  # fmt: skip


@pytest.mark.parametrize(("why", "found", "stopping", "expected"), RETAKE)
def test_retake(why: str, found: bytes | None, stopping: bool, expected: Txn | None) -> None:
    assert lv.retake(KEYS, IOC, b"D", ALIVE, LEASE, found=found, stopping=stopping) == expected, (
        why
    )


# -- a session's end ---------------------------------------------------------------------

END_TXN = Txn(
    (Compare.holds(ALIVE_KEY, ALIVE),),
    (
        Delete(ALIVE_KEY),
        Put(IOC_KEY, docs.dumps({**doc(), "status": "inactive", "disconnected": NOW})),
    ),
    (Get(ALIVE_KEY), Get(IOC_KEY)),
)

SESSION_END = [
    # (why, alive value, handing over, expected)
    ("inactive and the alive key gone in one transaction, while the key is ours",
     ALIVE, False, END_TXN),
    ("the bridge hands its IOCs over: nothing written, the key expires with the lease",
     ALIVE, True, None),
    ("the upload never began: nothing was stored, nothing to end", b"", False, None),
]  # fmt: skip


@pytest.mark.parametrize(("why", "alive", "handing_over", "expected"), SESSION_END)
def test_session_end(why: str, alive: bytes, handing_over: bool, expected: Txn | None) -> None:
    got = lv.session_end(KEYS, IOC, doc(), alive, NOW, handing_over=handing_over)
    assert got == expected, why


ENDED = [
    # (why, alive key found, IOC document found, the end counts as written)
    ("another session holds the IOC: not ours to end", OTHER_ALIVE, value(), False),
    ("no IOC document at all: nothing ended", None, None, False),
    ("an earlier attempt etcd applied (its answer lost): our end is there",
     None, value(status="inactive"), True),
    ("the same state left by a sweep of our IOC (lease lost): the same end, read as done",
     None, value(status="inactive"), True),
    ("alive key gone with our lost lease, document still active: not ended, and today "
     "nothing else will end it on a single bridge (issue 11, finding 6)",
     None, value(status="active"), False),
    ("inactive from another bridge: someone else's end", None,
     value(status="inactive", bridge="b2"), False),
    ("inactive from an earlier session of ours: not this session's end", None,
     value(status="inactive", connected="2027-01-01T00:00:00.000Z"), False),
    ("an unreadable document: not ended", None, b"{", False),
]  # fmt: skip


@pytest.mark.parametrize(("why", "alive", "ioc", "done"), ENDED)
def test_ended(why: str, alive: bytes | None, ioc: bytes | None, done: bool) -> None:
    assert lv.ended("b1", CONNECTED, alive, ioc) is done, why


# -- sweeps ------------------------------------------------------------------------------

SWEEP_ON_DELETE = [
    # (why, lease the deleted key was on, our lease, check it after grace)
    ("another bridge's key: check its IOC", 7, 9, True),
    ("a key on our own lease: our sessions look after it", 9, 9, False),
    ("an earlier incarnation of this bridge (same id, other lease): check", 8, 9, True),
    ("before we hold a lease: check", 7, None, True),
]


@pytest.mark.parametrize(("why", "prev", "own", "check"), SWEEP_ON_DELETE)
def test_sweep_on_delete(why: str, prev: int, own: int | None, check: bool) -> None:
    assert lv.sweep_on_delete(prev, own) is check, why


def entry(key: str, data: bytes, rev: int, lease: int = 0) -> Entry:
    return Entry(key, data, rev, lease)


SWEPT = docs.dumps({**doc(), "status": "inactive", "disconnected": NOW})

SWEEP_DEAD = [
    # (why, alive key, IOC document, expected)
    ("alive key gone, document live: inactive, if both are still as read",
     None, entry(IOC_KEY, value(), 12),
     Txn((Compare.absent(ALIVE_KEY), Compare.unmodified(IOC_KEY, 12)), (Put(IOC_KEY, SWEPT),))),
    ("uploading counts as live too",
     None, entry(IOC_KEY, value(status="uploading"), 12),
     Txn((Compare.absent(ALIVE_KEY), Compare.unmodified(IOC_KEY, 12)),
         (Put(IOC_KEY, docs.dumps({**doc(status="uploading"), "status": "inactive",
                                "disconnected": NOW})),))),
    ("the alive key is back (the IOC reconnected): nothing to do",
     entry(ALIVE_KEY, OTHER_ALIVE, 13), entry(IOC_KEY, value(), 12), None),
    ("already inactive: nothing to do", None, entry(IOC_KEY, value(status="inactive"), 12), None),
    ("no IOC document: nothing to do", None, None, None),
    ("an unreadable IOC document: left alone", None, entry(IOC_KEY, b"[", 12), None),
]  # fmt: skip


@pytest.mark.parametrize(("why", "alive", "ioc", "expected"), SWEEP_DEAD)
def test_sweep_dead(
    why: str, alive: Entry | None, ioc: Entry | None, expected: Txn | None
) -> None:
    assert lv.sweep_dead(KEYS, IOC, alive, ioc, NOW) == expected, why


def test_resync_suspects_are_live_documents_without_an_alive_key() -> None:
    iocs = [
        entry(KEYS.ioc(name), value(status=status), 5)
        for name, status in [
            ("a", "active"),
            ("b", "active"),
            ("c", "inactive"),
            ("d", "uploading"),
        ]
    ]
    assert lv.resync_suspects(KEYS, {"b"}, iocs) == ["a", "d"]


def test_orphans_are_alive_keys_on_no_registered_bridges_lease() -> None:
    keys = [entry(KEYS.alive(n), ALIVE, 3, lease) for n, lease in [("a", 1), ("b", 2)]]
    assert lv.orphans(keys, {2, 9}) == keys[:1]


SWEEP_ORPHAN = [
    # (why, IOC document, expected)
    ("live: inactive and the alive key deleted, both guarded as read",
     entry(IOC_KEY, value(), 12),
     Txn((Compare.unmodified(ALIVE_KEY, 3), Compare.unmodified(IOC_KEY, 12)),
         (Delete(ALIVE_KEY), Put(IOC_KEY, SWEPT)))),
    ("already inactive: left alone", entry(IOC_KEY, value(status="inactive"), 12), None),
    ("no IOC document: left alone", None, None),
]  # fmt: skip


@pytest.mark.parametrize(("why", "ioc", "expected"), SWEEP_ORPHAN)
def test_sweep_orphan(why: str, ioc: Entry | None, expected: Txn | None) -> None:
    alive = entry(ALIVE_KEY, ALIVE, 3, lease=1)
    assert lv.sweep_orphan(KEYS, alive, ioc, NOW) == expected, why


SHUTDOWN = [
    # (why, other registered bridges, how to leave)
    ("others run: hand the IOCs over", ["b2"], Shutdown.HAND_OVER),
    ("the last bridge: end the sessions, sweep orphans, revoke", [], Shutdown.LAST),
    ("etcd unreachable: nothing can be written, hand over", None, Shutdown.HAND_OVER),
]


@pytest.mark.parametrize(("why", "others", "expected"), SHUTDOWN)
def test_shutdown(why: str, others: list[str] | None, expected: Shutdown) -> None:
    assert lv.shutdown(others) is expected, why


# -- fidelity: the rules send what today's writer and sweeper send ---------------------------
# These go once the writer and the sweeper call the rules.

from bridge.etcd.ops import Lease, Page, TxnResult  # noqa: E402
from bridge.model import Peer as _Peer  # noqa: E402
from bridge.processors.etcdwriter import EtcdWriter, _Session  # noqa: E402
from bridge.processors.sweep import Sweeper  # noqa: E402


class Store:
    """Stands in for the etcd store: records transactions, answers from a script."""

    def __init__(self, answers: list[TxnResult], found: dict[str, Entry]) -> None:
        self.sent: list[Txn] = []
        self.answers = answers
        self.found = found

    def txn(self, compares: Any, success: Any, failure: Any = (), **_: Any) -> TxnResult:
        self.sent.append(Txn(tuple(compares), tuple(success), tuple(failure)))
        return self.answers.pop(0)

    def get_many(self, keys: Any) -> dict[str, Entry]:
        return {key: self.found[key] for key in keys if key in self.found}

    def get(self, key: str) -> Entry | None:
        return self.found.get(key)

    def scan(self, prefix: str, **_: Any) -> list[Page]:
        return [Page([e for key, e in sorted(self.found.items()) if key.startswith(prefix)], 1)]


def result(succeeded: bool, *found: bytes | None) -> TxnResult:
    """A transaction's answer: whether it held, and what each `Get` of its branch read."""
    return TxnResult(
        succeeded, [[] if v is None else [Entry("k", v, 1)] for v in found], revision=1
    )


def writer_with(store: Store, stopping: bool = False) -> EtcdWriter:
    lease = Lease(LEASE, 10)
    writer = EtcdWriter(store, KEYS, "b1", lambda: lease, lambda: 1_800_000_010.0)  # type: ignore[arg-type]
    writer.stopping = stopping
    return writer


def session() -> _Session:
    s = _Session(1, _Peer("10.0.0.2", 5002), WANTED)
    s.alive, s.connected, s.doc = ALIVE, CONNECTED, doc()
    return s


@pytest.mark.parametrize(("why", "alive", "ioc", "done"), ENDED)
def test_the_writers_session_end_sends_and_reads_as_the_rules(
    why: str, alive: bytes | None, ioc: bytes | None, done: bool
) -> None:
    store = Store([result(False, alive, ioc)], {})
    s = session()
    assert writer_with(store)._write_end(s) is done, why
    assert store.sent == [lv.session_end(KEYS, IOC, s.doc, ALIVE, NOW)]
    assert lv.ended("b1", CONNECTED, alive, ioc) is done


@pytest.mark.parametrize(("why", "found", "stopping", "expected"), RETAKE)
def test_the_writers_ioc_document_write_sends_as_the_rules(
    why: str, found: bytes | None, stopping: bool, expected: Txn | None
) -> None:
    second = [result(True)] if expected is not None else []
    store = Store([result(False, found), *second], {})
    s = session()
    writer_with(store, stopping)._put_ioc(s, alive_too=False)
    value = docs.dumps(s.doc)
    first = lv.put_ioc(KEYS, IOC, value, ALIVE, LEASE, alive_too=False)
    again = lv.retake(KEYS, IOC, value, ALIVE, LEASE, found=found, stopping=stopping)
    assert (again is None) == (expected is None), why
    assert store.sent == [first, *([again] if again else [])], why


def test_the_writers_upload_begin_sends_as_the_rules() -> None:
    store = Store([result(True)], {})
    s = _Session(1, _Peer("10.0.0.2", 5002), WANTED)
    writer_with(store)._begin(s, {})
    assert store.sent == [lv.begin(KEYS, IOC, docs.dumps(s.doc), s.alive, LEASE)]


class Index:
    """The name index a sweep hands over to: nothing to do here."""

    def hand_over(self, iocid: str) -> None:
        pass


def sweeper_with(store: Store) -> Sweeper:
    return Sweeper(store, KEYS, Index(), lambda: 1_800_000_010.0, lambda _: False)  # type: ignore[arg-type]


@pytest.mark.parametrize(("why", "alive", "ioc", "expected"), SWEEP_DEAD)
def test_the_sweepers_dead_bridge_sweep_sends_as_the_rules(
    why: str, alive: Entry | None, ioc: Entry | None, expected: Txn | None
) -> None:
    found = {e.key: e for e in (alive, ioc) if e is not None}
    store = Store([result(False)], found)
    assert sweeper_with(store).mark_dead(IOC) is False  # refused: no hand-over needed here
    assert store.sent == ([expected] if expected else []), why


def test_the_sweepers_orphan_sweep_sends_as_the_rules() -> None:
    orphan = entry(KEYS.alive("o"), ALIVE, 3, lease=1)
    kept = entry(KEYS.alive("k"), ALIVE, 4, lease=2)
    registered = entry(KEYS.bridge("b2"), b"{}", 5, lease=2)
    iocs = [entry(KEYS.ioc(i), value(), 6) for i in ("o", "k")]
    found = {e.key: e for e in (orphan, kept, registered, *iocs)}
    store = Store([result(True)], found)
    assert sweeper_with(store).sweep_orphans(own_lease=9) == 1
    assert lv.orphans([orphan, kept], {2, 9}) == [orphan]
    assert store.sent == [lv.sweep_orphan(KEYS, orphan, iocs[0], NOW)]
