"""What the pages show, computed from a directory `State` (pure; safe on a worker thread).

The pages (bridge/web/pages.py) and the ChannelFinder API share one read model: these
functions read the same columns and IOC documents the API reads, and PV searches go
through the same grammar (`bridge.directory.query`) and engine (`bridge.directory.search`).
Nothing here holds state; every function takes the `State` to read, so a page is computed
from one snapshot while the reactor keeps applying changes (see bridge/directory/model.py
on what a query thread may see).

Times are the ISO-8601 UTC strings the bridge writes (``2026-11-23T21:00:00.123Z``); they
sort as text, which is how "most recent" is found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.directory.channels import LIVE_STATUSES
from bridge.directory.model import FLAG_ALIAS, IOCEntry, State
from bridge.directory.owners import Claimant
from bridge.directory.query import Glob

#: Aliases a PV page lists at most.
MAX_ALIASES = 100
#: Columns `ioc_rows` can sort by.
IOC_SORTS = ("iocid", "status", "host", "name", "engineer", "records", "pvs", "bridge", "since")


@dataclass(frozen=True, slots=True)
class IOCRow:
    """One IOC as the IOC list shows it.

    `pvs` is how many channels (records and aliases) the IOC owns; `shared` how many
    of those other IOCs claim too; `records`/`aliases` are what its document says it
    uploaded.
    """

    iocid: str
    up: bool
    status: str
    host: str
    name: str
    engineer: str
    bridge: str
    records: int
    aliases: int
    pvs: int
    shared: int
    since: str
    doc: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Overview:
    """The figures of the overview page."""

    iocs_up: int
    iocs_down: int
    channels: int
    duplicates: int
    bridges: int
    revision: int
    recent: list[IOCRow]


@dataclass(frozen=True, slots=True)
class PVClaimant:
    """An IOC that has a record (or alias) by some name."""

    iocid: str
    up: bool
    status: str
    host: str
    owner: bool
    #: DESC of this IOC's record, as the view holds it (None if unknown).
    desc: str | None = None
    #: The name of its record that provides the name (itself, or the aliased record).
    record: str = ""
    #: That record's type (None if unknown).
    rtype: str | None = None


@dataclass(frozen=True, slots=True)
class PVView:
    """One name as the PV page shows it.

    `record` is the owner's record the name belongs to (itself, or the aliased record);
    `aliases` that record's aliases; `claimants` every IOC that claims the name, ranked
    by the ownership rule (bridge/rules/ownership.py): the owner first.
    """

    name: str
    channel: bool
    alias: bool
    record: str
    rtype: str | None
    desc: str | None
    owner: str | None
    claimants: list[PVClaimant]
    aliases: list[str]
    infos: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One record of an IOC: its name, its type and DESC, and who owns the name
    (`owner` None: nobody; not this IOC: a duplicate owned elsewhere)."""

    name: str
    rtype: str | None
    desc: str | None
    owner: str | None


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    name: str
    owner: str
    claims: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BridgeRow:
    """A bridge document, with how many IOCs hold an alive key of it right now."""

    bridge_id: str
    host: str
    port: int | None
    version: str
    started: str
    alive: int


def text(value: Any) -> str:
    """A document field as text ("" when absent)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def is_up(doc: Mapping[str, Any] | None) -> bool:
    return doc is not None and doc.get("status") in LIVE_STATUSES


def since(doc: Mapping[str, Any]) -> str:
    """When the IOC's status last changed: its upload (or connection) while up, its
    disconnection when down."""
    if is_up(doc):
        return text(doc.get("uploaded") or doc.get("connected"))
    return text(doc.get("disconnected") or doc.get("uploaded") or doc.get("connected"))


def last_event(doc: Mapping[str, Any]) -> str:
    return max(text(doc.get(k)) for k in ("connected", "uploaded", "disconnected"))


def text_filter(pattern: str) -> Glob | None:
    """The glob a filter box means: ChannelFinder's glob, and a text without ``*`` or
    ``?`` matches anywhere (as pvinfo wraps input in ``*...*``); None for no filter."""
    pattern = pattern.strip()
    if not pattern:
        return None
    if not any(c in pattern for c in "*?"):
        pattern = f"*{pattern}*"
    return Glob.compile(pattern)


def _owned(state: State) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per IOC index: channels it owns, and those of them other IOCs claim too."""
    size = len(state.iocs) + 1
    mask = state.visible()
    owner = state.owner[: len(mask)]
    owners = owner[mask]
    owned = np.bincount(owners[owners >= 0], minlength=size)
    shared_mask = mask & (state.claims[: len(mask)] > 1)
    shared = owner[shared_mask]
    return owned, np.bincount(shared[shared >= 0], minlength=size)


def _row(entry: IOCEntry, owned: npt.NDArray[np.int64], shared: npt.NDArray[np.int64]) -> IOCRow:
    doc = entry.doc or {}
    env = doc.get("env")
    env = env if isinstance(env, Mapping) else {}
    return IOCRow(
        iocid=entry.iocid,
        up=is_up(doc),
        status=text(doc.get("status")) or "unknown",
        host=text(doc.get("hostname") or doc.get("ip")),
        name=text(doc.get("iocname")),
        engineer=text(doc.get("engineer") or env.get("ENGINEER")),
        bridge=text(doc.get("bridge")),
        records=_int(doc.get("records")),
        aliases=_int(doc.get("aliases")),
        pvs=int(owned[entry.index]) if entry.index < len(owned) else 0,
        shared=int(shared[entry.index]) if entry.index < len(shared) else 0,
        since=since(doc),
        doc=doc,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _documented(state: State) -> list[IOCEntry]:
    return [entry for entry in list(state.iocs) if entry.doc is not None]


def ioc_rows(
    state: State,
    *,
    pattern: str = "",
    status: str = "",
    sort: str = "iocid",
    descending: bool = False,
) -> list[IOCRow]:
    """Every IOC with a document, filtered and sorted.

    `pattern` (see `text_filter`) must match the IOC id, host, IOC name or engineer;
    `status` is ``up``, ``down`` or anything else for both; `sort` one of `IOC_SORTS`
    (ties broken by IOC id).
    """
    owned, shared = _owned(state)
    rows = [_row(entry, owned, shared) for entry in _documented(state)]
    glob = text_filter(pattern)
    if glob is not None:
        rows = [
            r for r in rows if any(glob.matches(t) for t in (r.iocid, r.host, r.name, r.engineer))
        ]
    if status in ("up", "down"):
        rows = [r for r in rows if r.up == (status == "up")]
    key = _SORT_KEYS.get(sort, _SORT_KEYS["iocid"])
    rows.sort(key=lambda r: r.iocid)
    rows.sort(key=key, reverse=descending)
    return rows


_SORT_KEYS: dict[str, Any] = {
    "iocid": lambda r: r.iocid,
    "status": lambda r: (not r.up, r.status),
    "host": lambda r: r.host.lower(),
    "name": lambda r: r.name.lower(),
    "engineer": lambda r: r.engineer.lower(),
    "records": lambda r: r.records,
    "pvs": lambda r: r.pvs,
    "bridge": lambda r: r.bridge,
    "since": lambda r: r.since,
}


def ioc(state: State, iocid: str) -> IOCRow | None:
    """One IOC, None when it has no document."""
    index = state.ioc_index.get(iocid)
    if index is None or state.iocs[index].doc is None:
        return None
    owned, shared = _owned(state)
    return _row(state.iocs[index], owned, shared)


def overview(state: State, recent: int = 10) -> Overview:
    """The overview's figures; `recent` IOCs whose status changed last."""
    rows = ioc_rows(state)
    up = sum(1 for r in rows if r.up)
    rows.sort(key=lambda r: last_event(r.doc), reverse=True)
    mask = state.visible()
    duplicates = int(np.count_nonzero(mask & (state.claims[: len(mask)] > 1)))
    return Overview(
        iocs_up=up,
        iocs_down=len(rows) - up,
        channels=int(np.count_nonzero(mask)),
        duplicates=duplicates,
        bridges=len(state.bridges),
        revision=state.revision,
        recent=rows[:recent],
    )


def _walk(state: State, mask: npt.NDArray[np.bool_], after: str | None, size: int) -> list[int]:
    """Up to `size` slots that `mask` lets through, in name order, after name `after`."""
    chunks = list(state.order.chunks)
    first, position = state.order.after(after) if after is not None else (0, 0)
    found: list[int] = []
    for index in range(first, len(chunks)):
        slots = chunks[index].slots
        begin = position if index == first else 0
        inside = slots[begin:]
        inside = inside[inside < len(mask)]
        found += inside[mask[inside]][: size - len(found)].tolist()
        if len(found) >= size:
            break
    return found


def ioc_records(
    state: State, iocid: str, *, pattern: str = "", after: str | None = None, size: int = 100
) -> tuple[list[RecordRow], int]:
    """A page of the IOC's records in name order (after name `after`), and how many
    records it has in the view (that match `pattern`, see `text_filter`)."""
    index = state.ioc_index.get(iocid)
    if index is None:
        return [], 0
    count = len(state.names)
    mask = state.rec_ioc[:count] == index
    for slot, waiting in list(state.extra.items()):
        if index in waiting and slot < count:
            mask[slot] = True
    glob = text_filter(pattern)
    if glob is not None:
        mask &= _name_mask(state, glob, count)
    total = int(np.count_nonzero(mask))
    rows = []
    for slot in _walk(state, mask, after, size):
        owner = int(state.owner[slot])
        facts = state.facts(slot, index)
        rows.append(
            RecordRow(
                name=state.names[slot],
                rtype=state.type_name(facts.rtype) if facts is not None else None,
                desc=facts.desc if facts is not None else None,
                owner=state.iocs[owner].iocid if owner >= 0 else None,
            )
        )
    return rows, total


def _name_mask(state: State, glob: Glob, count: int) -> npt.NDArray[np.bool_]:
    mask = np.zeros(count, dtype=np.bool_)
    for chunk in list(state.order.chunks):
        hits = chunk.slots[chunk.matching(glob, state.names)]
        mask[hits[hits < count]] = True
    return mask


def _claimant(state: State, claimant: Claimant, owner: bool) -> PVClaimant:
    entry = state.iocs[claimant.ioc]
    doc = entry.doc or {}
    facts = state.facts(claimant.record, claimant.ioc)
    return PVClaimant(
        entry.iocid,
        is_up(doc),
        text(doc.get("status")) or "unknown",
        text(doc.get("hostname")),
        owner,
        facts.desc if facts is not None else None,
        state.names[claimant.record],
        state.type_name(facts.rtype) if facts is not None else None,
    )


def pv(state: State, name: str) -> PVView | None:
    """Everything the view holds about `name`; None when no IOC claims it."""
    slot = state.slot(name)
    if slot is None or slot >= len(state.owner) or state.owner[slot] < 0:
        return None
    owner_index = int(state.owner[slot])
    target = int(state.target[slot])
    facts = state.facts(target, owner_index)
    infos: list[tuple[str, str]] = []
    if facts is not None:
        infos = [(t, v) for t, v in zip(state.shape.infotags, facts.infos, strict=False) if v]
    aliases = sorted(state.names[a] for a in facts.aliases) if facts is not None else []
    return PVView(
        name=name,
        channel=bool(state.visible()[slot]),
        alias=target != slot,
        record=state.names[target],
        rtype=state.type_name(facts.rtype) if facts is not None else None,
        desc=facts.desc if facts is not None else None,
        owner=state.iocs[owner_index].iocid,
        claimants=[_claimant(state, c, i == 0) for i, c in enumerate(state.claimants(slot))],
        aliases=aliases[:MAX_ALIASES],
        infos=infos,
    )


def duplicates(
    state: State, *, after: str | None = None, size: int = 100
) -> tuple[list[DuplicateRow], int]:
    """A page of the names more than one IOC claims, in name order, and their number."""
    mask = state.visible()
    mask = mask & (state.claims[: len(mask)] > 1)
    rows = []
    for slot in _walk(state, mask, after, size):
        claims = tuple(state.iocs[c.ioc].iocid for c in state.claimants(slot))
        rows.append(DuplicateRow(state.names[slot], claims[0], claims))
    return rows, int(np.count_nonzero(mask))


def bridges(state: State) -> list[BridgeRow]:
    """Every registered bridge, by id, with the number of alive keys naming it."""
    alive: dict[str, int] = {}
    for doc in list(state.alive.values()):
        if isinstance(doc, Mapping):
            key = text(doc.get("bridge"))
            alive[key] = alive.get(key, 0) + 1
    rows = []
    for bridge_id, doc in sorted(state.bridges.items()):
        port = doc.get("port")
        rows.append(
            BridgeRow(
                bridge_id=bridge_id,
                host=text(doc.get("host")),
                port=port if isinstance(port, int) else None,
                version=text(doc.get("version")),
                started=text(doc.get("started")),
                alive=alive.get(bridge_id, 0),
            )
        )
    return rows


def search_parameters(search_text: str) -> list[tuple[str, str]]:
    """ChannelFinder query parameters from what a person types in the search box.

    Words are separated by spaces. ``key=value`` is a property filter (``key!=value``
    negated, as in the API), ``~tag=...`` (or ``tag=``, ``tags=``) a tag filter, and any
    other ``~key=value`` is passed as it is. A bare word is a name glob: with ``*`` or
    ``?`` it is used as written, ``=NAME`` is that exact name, and a word without
    wildcards matches anywhere in the name (pvinfo's convention). Several words are
    ANDed, as repeated ``~name`` are. No word at all means every name.
    """
    params: list[tuple[str, str]] = []
    for word in search_text.split():
        key, equals, value = word.partition("=")
        if equals and key:
            if key.lower().rstrip("!") in ("tag", "tags", "~tag"):
                params.append(("~tag" + ("!" if key.endswith("!") else ""), value))
            else:
                params.append((key, value))
        elif equals:
            params.append(("~name", value))
        elif any(c in word for c in "*?"):
            params.append(("~name", word))
        else:
            params.append(("~name", f"*{word}*"))
    if not any(k == "~name" for k, _ in params):
        params.append(("~name", "*"))
    return params


@dataclass(frozen=True, slots=True)
class PVRow:
    """One channel as the search results show it (pvinfo's columns)."""

    name: str
    iocid: str
    host: str
    iocname: str
    up: bool
    status: str
    rtype: str | None
    desc: str | None
    alias_of: str | None
    claims: int


def pv_rows(state: State, slots: Sequence[int]) -> list[PVRow]:
    """The channels at `slots`, read from the columns (whatever ``[cf]`` shapes)."""
    rows = []
    for slot in slots:
        owner = int(state.owner[slot])
        entry = state.iocs[owner] if owner >= 0 else None
        doc = (entry.doc if entry is not None else None) or {}
        target = int(state.target[slot])
        facts = state.facts(target, owner) if owner >= 0 else None
        rows.append(
            PVRow(
                name=state.names[slot],
                iocid=entry.iocid if entry is not None else "",
                host=text(doc.get("hostname") or doc.get("ip")),
                iocname=text(doc.get("iocname")),
                up=is_up(doc),
                status=text(doc.get("status")) or "unknown",
                rtype=state.type_name(facts.rtype) if facts is not None else None,
                desc=facts.desc if facts is not None else None,
                alias_of=state.names[target] if state.flags[slot] & FLAG_ALIAS else None,
                claims=state.claim_count(slot),
            )
        )
    return rows


def channel_properties(state: State, slot: int) -> list[tuple[str, str]]:
    """The channel's properties as the API sends them, (name, value) in order."""
    import orjson

    found = orjson.loads(state.encode(slot))
    return [(text(p.get("name")), text(p.get("value"))) for p in found.get("properties", [])]


def names_of(state: State, slots: Sequence[int]) -> list[str]:
    return [state.names[s] for s in slots]
