"""Liveness rules: who holds an IOC, a session's end, the sweeps, the shutdown hand-over.

A session *holds* its IOC while ``P/alive/<iocid>`` carries the session's own alive
value (bridge id and connect time), on its bridge's lease. The rules:

* an upload begins by putting the IOC document (``uploading``) and the alive key;
* later IOC-document writes of the session hold only while the alive key is ours;
  when it is absent (our lease expired in an outage, yet the session lives) the
  session puts it back, guarded by "absent"; when another session's, it leaves the
  IOC alone;
* the session's end marks the IOC ``inactive`` and deletes the alive key in one
  transaction guarded by "the alive key is ours"; a failed answer after a retried
  attempt is read as done when the document shows that very end;
* two sessions on one bridge resolving to one iocid: the second is stored under
  its ``ip:port``, unless the first is closing (then the new one takes over);
* the dead-bridge sweep marks an IOC inactive when its alive key is gone and its
  document still says live, guarded by both being as read; the orphan sweep (by the
  last bridge to stop) does the same for alive keys on no registered bridge's lease;
* a stopping bridge with others registered *hands over*: its sessions' ends write
  nothing, the alive keys expire with its lease, and a survivor sweeps the IOCs that
  did not reconnect elsewhere; the last bridge writes the ends and sweeps orphans.

Time comes in as ISO-8601 text (`bridge.model.iso_time`), the lease as its id: call
the rules that put an alive key inside the writer's lease retry, so a lease etcd lost
is replaced before the rule is asked again.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from bridge import documents as docs
from bridge.documents import parse_ioc
from bridge.etcd.ops import Compare, Delete, Entry, Get, Put
from bridge.model import IOCIdentity, Peer, fallback_iocid
from bridge.rules.txn import Txn

# -- identity ----------------------------------------------------------------------------


class Holder(enum.Enum):
    """Another session of this bridge with the same iocid, as the new session finds it."""

    NONE = "none"
    #: Its connection is still open: the new session is kept apart.
    LIVE = "live"
    #: Its connection is gone, only its end is still to be written: the new one takes over.
    CLOSING = "closing"


def session_identity(wanted: IOCIdentity, peer: Peer, holder: Holder) -> tuple[IOCIdentity, bool]:
    """The identity a new session is stored under, and whether it collided.

    A collision (another live session of this bridge holds the iocid) stores the new
    session under its unstable ``ip:port``; the caller logs one warning naming both.
    """
    if holder is not Holder.LIVE:
        return wanted, False
    return replace(wanted, iocid=fallback_iocid(peer), stable=False), True


# -- a session's IOC document and alive key ----------------------------------------------


def begin(keys: docs.Keys, iocid: str, doc: bytes, alive: bytes, lease: int) -> Txn:
    """The upload begins: the ``uploading`` document and our alive key, unconditionally.

    Nothing compares: whoever held the alive key (an older session of the IOC, on
    this bridge or another) loses it, and its end then leaves the IOC alone.
    """
    return Txn((), (Put(keys.ioc(iocid), doc), Put(keys.alive(iocid), alive, lease)))


def put_ioc(
    keys: docs.Keys, iocid: str, doc: bytes, alive: bytes, lease: int, *, alive_too: bool
) -> Txn:
    """Write the session's IOC document (and its alive key) while the alive key is ours.

    On failure the answer is the alive key's value: pass it to `retake`.
    """
    alive_key = keys.alive(iocid)
    success: tuple[Put, ...] = (Put(keys.ioc(iocid), doc),)
    if alive_too:
        success += (Put(alive_key, alive, lease),)
    return Txn((Compare.holds(alive_key, alive),), success, (Get(alive_key),))


def retake(
    keys: docs.Keys,
    iocid: str,
    doc: bytes,
    alive: bytes,
    lease: int,
    *,
    found: bytes | None,
    stopping: bool,
) -> Txn | None:
    """After `put_ioc` failed with the alive key at `found`: put both back if it is gone.

    Absent: our lease expired during an outage while our session lived, so the
    session takes its IOC back, guarded by "absent". Another session's value: that
    session holds the IOC now; None. None too while the bridge stops (nobody would
    remove an alive key put back now).
    """
    if found is not None or stopping:
        return None
    alive_key = keys.alive(iocid)
    return Txn(
        (Compare.absent(alive_key),), (Put(keys.ioc(iocid), doc), Put(alive_key, alive, lease))
    )


# -- a session's end ---------------------------------------------------------------------


def inactive(doc: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The IOC document `doc` once its session ended (or its bridge died) at `now`."""
    return {**doc, "status": docs.STATUS_INACTIVE, "disconnected": now}


def session_end(
    keys: docs.Keys,
    iocid: str,
    doc: Mapping[str, Any],
    alive: bytes,
    now: str,
    *,
    handing_over: bool = False,
) -> Txn | None:
    """The session ended: ``inactive`` and the alive key gone, while the key is ours.

    `doc` is the IOC document the session last wrote, `alive` its alive value (empty:
    the upload never began). None: write nothing, when the bridge hands its IOCs over
    (the alive key expires with the lease) or when nothing was ever stored. On
    failure the answers are the alive key and the IOC document: pass them to `ended`.
    A session that ended is followed by the IOC's name-index hand-over.
    """
    if handing_over or not alive:
        return None
    alive_key, ioc_key = keys.alive(iocid), keys.ioc(iocid)
    return Txn(
        (Compare.holds(alive_key, alive),),
        (Delete(alive_key), Put(ioc_key, docs.dumps(inactive(doc, now)))),
        (Get(alive_key), Get(ioc_key)),
    )


def ended(bridge_id: str, connected: str, alive: bytes | None, ioc: bytes | None) -> bool:
    """Read the answer of a failed `session_end`: True if the end is written anyway.

    A retry of an attempt that etcd applied although its answer was lost finds the
    alive key gone and the IOC document ``inactive`` from this bridge, for the
    session that connected at `connected`. Any other state: another session holds
    the IOC, or nobody does and the document is not this session's end.
    """
    if alive is not None or ioc is None:
        return False
    doc = parse_ioc(ioc)
    return (
        doc is not None
        and doc.status == docs.STATUS_INACTIVE
        and doc.bridge == bridge_id
        and doc.connected == connected
    )


# -- sweeps ------------------------------------------------------------------------------


def sweep_on_delete(prev_lease: int | None, own_lease: int | None) -> bool:
    """An alive key was deleted: check its IOC after ``grace`` unless it was on our lease.

    By lease, not bridge id: a restarted bridge keeps its id, and the alive keys of
    its previous incarnation expire under the new one's eyes.
    """
    return own_lease is None or prev_lease != own_lease


def sweep_dead(
    keys: docs.Keys, iocid: str, alive: Entry | None, ioc: Entry | None, now: str
) -> Txn | None:
    """Mark `iocid` inactive when its alive key is gone and its document says live.

    Guarded by "alive key still absent" and "document unchanged since read", so a
    session that took the IOC over meanwhile (or another sweeping bridge) wins. The
    caller skips the IOCs it serves itself (its own sessions put their alive keys
    back). Success is followed by the IOC's name-index hand-over.
    """
    if alive is not None or ioc is None:
        return None
    doc = parse_ioc(ioc.value)
    if doc is None or not doc.live:
        return None
    ioc_key = keys.ioc(iocid)
    return Txn(
        (Compare.absent(keys.alive(iocid)), Compare.unmodified(ioc_key, ioc.mod_revision)),
        (Put(ioc_key, docs.dumps(doc.inactive(now))),),
    )


def resync_suspects(keys: docs.Keys, alive: Collection[str], iocs: Iterable[Entry]) -> list[str]:
    """IOCs whose document says live but that have no alive key (to `sweep_dead`).

    `alive`: iocids with an alive key, listed before `iocs` were read.
    """
    out = []
    for raw in iocs:
        iocid = keys.split(raw.key)[-1]
        doc = parse_ioc(raw.value)
        if iocid not in alive and doc is not None and doc.live:
            out.append(iocid)
    return out


def orphans(alive: Iterable[Entry], leases: Collection[int]) -> list[Entry]:
    """Alive keys on none of `leases` (every registered bridge's, and our own)."""
    return [raw for raw in alive if raw.lease not in leases]


def sweep_orphan(keys: docs.Keys, alive: Entry, ioc: Entry | None, now: str) -> Txn | None:
    """Mark an orphan's IOC inactive and delete its alive key, both guarded as read.

    `ioc`: the IOC document of the alive key's iocid, as read after the alive key.

    Run by the last bridge to stop, for IOCs that bridges stopping before it handed
    over, counting on a survivor. Success is followed by the name-index hand-over.
    """
    if ioc is None:
        return None
    doc = parse_ioc(ioc.value)
    if doc is None or not doc.live:
        return None
    ioc_key = keys.ioc(keys.split(alive.key)[-1])
    return Txn(
        (
            Compare.unmodified(alive.key, alive.mod_revision),
            Compare.unmodified(ioc_key, ioc.mod_revision),
        ),
        (Delete(alive.key), Put(ioc_key, docs.dumps(doc.inactive(now)))),
    )


# -- shutdown ----------------------------------------------------------------------------


class Shutdown(enum.Enum):
    #: Others live: sessions end without writing; their alive keys expire with the lease.
    HAND_OVER = "hand over"
    #: No other bridge: sessions end as usual, then orphans are swept and the lease revoked.
    LAST = "last"


def shutdown(others: Sequence[str] | None) -> Shutdown:
    """How a stopping bridge leaves, given the other registered bridges.

    `others` None: etcd could not be reached to find out; nothing can be written
    anyway, so hand over (the lease expires on its own).
    """
    return Shutdown.LAST if others is not None and not others else Shutdown.HAND_OVER
