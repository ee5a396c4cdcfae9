"""The directory: an in-memory view of the data model's documents (pure, no I/O).

Fed one document at a time as a watch delivers them (`Directory.apply`), or all at once
at one revision (`Directory.load`), it holds what channels are made of:

- IOCs (`IOCEntry`), from ``P/iocs/<iocid>``: the document and its channel properties;
- one *slot* per name ever seen in ``P/pvs/`` or ``P/records/``, for the life of the
  view: its name (`State.names`), its place in name order (`State.order`), and columns
  (numpy arrays, a few bytes each) for the name-index entry (owner IOC, the record an
  alias points at, alias flag, record type, number of claimants);
- the record at each name: DESC and the configured info tags, of the IOC whose record
  it is (`State.rec_ioc`); when several IOCs have a record by that name, the others wait
  in `State.extra` and are swapped in when one of them owns the name.

A channel is a slot with a name-index entry: name, owner IOC and the owner's record.
Memory is what makes this shape: a million Python objects per kind would not fit the
budget of bench/directory.py, a few arrays and one string per name do.

All changes happen on one thread (the reactor's). Queries may run on other threads over
`Directory.state`: columns are written element by element and replaced, never resized
in place, and a reload swaps in a whole new `State`, so a query sees a consistent-enough
view (at worst one document newer in one column than in another).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge import documents
from bridge.directory.channels import (
    ALIAS,
    DUPLICATE_COUNT,
    RECORD_DESC,
    RECORD_TYPE,
    ChannelShape,
    IOCProperties,
    PropertyEncoder,
    channel_json,
    ioc_properties,
)
from bridge.directory.names import SortedNames

NO_IOC = IOCProperties("", {}, (), ())
FLAG_ALIAS = 1


@dataclass(slots=True)
class IOCEntry:
    """One IOC known to the view: its document (None if none was seen) and properties."""

    iocid: str
    index: int
    doc: Mapping[str, Any] | None = None
    props: IOCProperties = NO_IOC


#: The record-level facts of one (IOC, name): DESC, then the configured info tags.
Facts = tuple[str | None, tuple[str | None, ...]]


def _grow(array: npt.NDArray[Any], size: int, fill: int) -> npt.NDArray[Any]:
    if size <= len(array):
        return array
    bigger = np.full(max(size, len(array) + len(array) // 4, 1024), fill, dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger


@dataclass
class State:
    """Everything one load (plus the changes after it) built; see the module docstring."""

    shape: ChannelShape
    names: list[str] = field(default_factory=list)
    owner: npt.NDArray[np.int32] = field(default_factory=lambda: np.full(0, -1, np.int32))
    target: npt.NDArray[np.int32] = field(default_factory=lambda: np.full(0, -1, np.int32))
    flags: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, np.uint8))
    rtype: npt.NDArray[np.int32] = field(default_factory=lambda: np.full(0, -1, np.int32))
    claims: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, np.int16))
    rec_ioc: npt.NDArray[np.int32] = field(default_factory=lambda: np.full(0, -1, np.int32))
    desc: list[str | None] = field(default_factory=list)
    #: One list per configured info tag (`ChannelShape.infotags`), values interned.
    infos: list[list[str | None]] = field(default_factory=list)
    extra: dict[int, dict[int, Facts]] = field(default_factory=dict)
    claim_lists: dict[int, tuple[str, ...]] = field(default_factory=dict)
    types: list[str] = field(default_factory=list)
    type_index: dict[str, int] = field(default_factory=dict)
    iocs: list[IOCEntry] = field(default_factory=list)
    ioc_index: dict[str, int] = field(default_factory=dict)
    bridges: dict[str, Any] = field(default_factory=dict)
    alive: dict[str, Any] = field(default_factory=dict)
    revision: int = 0

    def __post_init__(self) -> None:
        self.order = SortedNames(self.names)
        self._values: dict[str, str] = {}
        self.infos = [[] for _ in self.shape.infotags]
        self.encoder = PropertyEncoder(self.shape.username)
        #: During a bulk load: name -> slot, and the order is built once at the end.
        self._bulk: dict[str, int] | None = None

    # -- slots and lookups ------------------------------------------------------------

    def slot(self, name: str) -> int | None:
        if self._bulk is not None:
            return self._bulk.get(name)
        return self.order.find(name)

    def new_slot(self, name: str) -> int:
        """The slot of `name`, created (and placed in name order) when it is new."""
        found = self.slot(name)
        if found is not None:
            return found
        slot = len(self.names)
        self._reserve(slot + 1)
        self.names.append(name)
        self.desc.append(None)
        for column in self.infos:
            column.append(None)
        if self._bulk is not None:
            self._bulk[name] = slot
        else:
            self.order.insert(slot)
        return slot

    def begin_bulk(self) -> None:
        """Start a bulk load: slots are created unordered until `end_bulk`."""
        self._bulk = {}

    def end_bulk(self) -> None:
        """Sort every slot by name once, and leave bulk mode."""
        names = self.names
        ordered = sorted(range(len(names)), key=names.__getitem__)
        self._bulk = None
        count = len(names)
        self.owner, self.target = self.owner[:count].copy(), self.target[:count].copy()
        self.flags, self.rtype = self.flags[:count].copy(), self.rtype[:count].copy()
        self.claims, self.rec_ioc = self.claims[:count].copy(), self.rec_ioc[:count].copy()
        self.order.build(np.array(ordered, dtype=np.int32))
        for chunk in self.order.chunks:
            chunk.text(names)

    def _reserve(self, size: int) -> None:
        self.owner = _grow(self.owner, size, -1)
        self.target = _grow(self.target, size, -1)
        self.flags = _grow(self.flags, size, 0)
        self.rtype = _grow(self.rtype, size, -1)
        self.claims = _grow(self.claims, size, 0)
        self.rec_ioc = _grow(self.rec_ioc, size, -1)

    def ioc(self, iocid: str) -> IOCEntry:
        index = self.ioc_index.get(iocid)
        if index is None:
            index = len(self.iocs)
            self.iocs.append(IOCEntry(iocid, index))
            self.ioc_index[iocid] = index
        return self.iocs[index]

    def type_code(self, rtype: str) -> int:
        code = self.type_index.get(rtype)
        if code is None:
            code = self.type_index[rtype] = len(self.types)
            self.types.append(rtype)
        return code

    def intern(self, value: str | None) -> str | None:
        """One object per distinct info value (``Monitor 1`` is on most records)."""
        if value is None:
            return None
        return self._values.setdefault(value, value)

    def facts(self, slot: int, ioc: int) -> Facts | None:
        """The record-level facts of IOC `ioc`'s record named `names[slot]`."""
        if self.rec_ioc[slot] == ioc:
            return self.desc[slot], tuple(column[slot] for column in self.infos)
        return self.extra.get(slot, {}).get(ioc)

    def visible(self) -> npt.NDArray[np.bool_]:
        """Slots that are channels: a name-index entry, and aliases only if shaped so."""
        owner, flags = self.owner, self.flags
        count = min(len(owner), len(flags))
        mask = owner[:count] >= 0
        if not self.shape.alias:
            mask &= (flags[:count] & FLAG_ALIAS) == 0
        return mask

    # -- documents ----------------------------------------------------------------------

    def put_ioc(self, iocid: str, doc: Mapping[str, Any] | None) -> None:
        entry = self.ioc(iocid)
        entry.doc = doc
        entry.props = NO_IOC if doc is None else ioc_properties(self.shape, doc)

    def put_index(self, name: str, doc: Mapping[str, Any]) -> None:
        slot = self.new_slot(name)
        owner = self.ioc(str(doc.get("iocid"))).index
        is_alias = bool(doc.get("alias"))
        record = doc.get("record")
        target = self.new_slot(record) if is_alias and isinstance(record, str) else slot
        claims = doc.get("claims")
        claim_list = tuple(str(c) for c in claims) if isinstance(claims, list) else ()
        self.owner[slot] = owner
        self.target[slot] = target
        self.flags[slot] = FLAG_ALIAS if is_alias else 0
        rtype = doc.get("type")
        self.rtype[slot] = self.type_code(rtype) if isinstance(rtype, str) else -1
        self.claims[slot] = min(len(claim_list), 32767)
        if len(claim_list) > 1:
            self.claim_lists[slot] = claim_list
        else:
            self.claim_lists.pop(slot, None)
        self._prefer(target, owner)

    def drop_index(self, name: str) -> None:
        slot = self.slot(name)
        if slot is not None:
            self.owner[slot] = -1
            self.claims[slot] = 0
            self.claim_lists.pop(slot, None)

    def put_record(self, iocid: str, name: str, doc: Mapping[str, Any]) -> None:
        slot = self.new_slot(name)
        ioc = self.ioc(iocid).index
        desc = doc.get("desc")
        infos = doc.get("infos")
        infos = infos if isinstance(infos, Mapping) else {}
        facts: Facts = (
            desc if isinstance(desc, str) else None,
            tuple(self.intern(_text(infos.get(tag))) for tag in self.shape.infotags),
        )
        holder = int(self.rec_ioc[slot])
        if holder in (-1, ioc):
            self._store(slot, ioc, facts)
        elif self.owner[slot] == ioc:
            self._stash(slot, holder)
            self._store(slot, ioc, facts)
        else:
            self.extra.setdefault(slot, {})[ioc] = facts

    def drop_record(self, iocid: str, name: str) -> None:
        slot = self.slot(name)
        index = self.ioc_index.get(iocid)
        if slot is None or index is None:
            return
        if self.rec_ioc[slot] != index:
            waiting = self.extra.get(slot)
            if waiting is not None:
                waiting.pop(index, None)
                if not waiting:
                    del self.extra[slot]
            return
        self.rec_ioc[slot] = -1
        self.desc[slot] = None
        for column in self.infos:
            column[slot] = None
        waiting = self.extra.get(slot)
        if waiting:
            owner = int(self.owner[slot])
            self._prefer(slot, owner if owner in waiting else next(iter(waiting)))

    def _store(self, slot: int, ioc: int, facts: Facts) -> None:
        self.rec_ioc[slot] = ioc
        self.desc[slot] = facts[0]
        for column, value in zip(self.infos, facts[1], strict=False):
            column[slot] = value

    def _stash(self, slot: int, holder: int) -> None:
        self.extra.setdefault(slot, {})[holder] = (
            self.desc[slot],
            tuple(column[slot] for column in self.infos),
        )

    def _prefer(self, slot: int, ioc: int) -> None:
        """Put IOC `ioc`'s record at `slot` in the columns, if it waits in `extra`."""
        waiting = self.extra.get(slot)
        if not waiting or ioc not in waiting or self.rec_ioc[slot] == ioc:
            return
        facts = waiting.pop(ioc)
        if self.rec_ioc[slot] >= 0:
            self._stash(slot, int(self.rec_ioc[slot]))
        if not waiting:
            self.extra.pop(slot, None)
        self._store(slot, ioc, facts)

    # -- channels -----------------------------------------------------------------------

    def record_values(self, slot: int) -> list[tuple[str, str, bool]]:
        """The record-level properties of channel `slot` (``recordType`` .. info tags):
        (name, value, whether the value repeats across channels)."""
        shape = self.shape
        out: list[tuple[str, str, bool]] = []
        code = int(self.rtype[slot])
        if shape.record_type and code >= 0:
            out.append((RECORD_TYPE, self.types[code], True))
        target, owner = int(self.target[slot]), int(self.owner[slot])
        if self.rec_ioc[target] == owner:
            desc = self.desc[target]
            infos: tuple[str | None, ...] = tuple(column[target] for column in self.infos)
        else:
            facts = self.extra.get(target, {}).get(owner)
            if facts is None:
                return out
            desc, infos = facts
        if shape.record_desc and desc is not None:
            out.append((RECORD_DESC, desc, False))
        for tag, value in zip(shape.infotags, infos, strict=False):
            if value is not None and not (tag == RECORD_DESC and shape.record_desc):
                out.append((tag, value, True))
        return out

    def property_value(self, slot: int, name: str) -> str | None:
        """The value of property `name` on channel `slot` (None when absent)."""
        if name == ALIAS:
            alias = self.shape.alias and self.flags[slot] & FLAG_ALIAS
            return self.names[int(self.target[slot])] if alias else None
        if name == DUPLICATE_COUNT:
            count = int(self.claims[slot])
            return str(count) if count > 1 else None
        owner = int(self.owner[slot])
        if owner >= 0:
            value = self.iocs[owner].props.values.get(name)
            if value is not None:
                return value
        return {k: v for k, v, _ in self.record_values(slot)}.get(name)

    def encode(self, slot: int) -> bytes:
        """Channel `slot` as a ChannelFinder sends it."""
        encoder = self.encoder
        owner = int(self.owner[slot])
        props = self.iocs[owner].props if owner >= 0 else NO_IOC
        encoded: list[bytes] = []
        if self.shape.alias and self.flags[slot] & FLAG_ALIAS:
            encoded.append(encoder.encode(ALIAS, self.names[self.target[slot]]))
        encoded += props.head
        for name, value, repeats in self.record_values(slot):
            if repeats:
                encoded.append(encoder.encode_repeated(name, value))
            else:
                encoded.append(encoder.encode(name, value))
        encoded += props.tail
        claims = int(self.claims[slot])
        if claims > 1:
            encoded.append(encoder.encode_repeated(DUPLICATE_COUNT, str(claims)))
        return channel_json(self.names[slot], props.owner or self.shape.username, encoded)

    def count(self) -> int:
        return int(np.count_nonzero(self.visible()))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


class Directory:
    """The view, applied document by document; queries read `state` (see module doc)."""

    def __init__(self, shape: ChannelShape, prefix: str = documents.DEFAULT_PREFIX) -> None:
        self.shape = shape
        self.keys = documents.Keys(prefix)
        self.state = State(shape)

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        """A put (`value` the stored bytes) or a delete (`value` None) of one key.

        Keys outside the data model and values that are not JSON objects are ignored.
        """
        _apply(self.state, self.keys, key, value)
        if revision:
            self.state.revision = revision

    def load(self, entries: Iterable[tuple[str, bytes]], revision: int) -> None:
        """Replace everything with `entries`, every key under the prefix at `revision`."""
        self.state = build_state(self.shape, self.keys, entries, revision)


def _decode(value: bytes) -> Mapping[str, Any] | None:
    try:
        doc = documents.loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, Mapping) else None


def _apply(state: State, layout: documents.Keys, key: str, value: bytes | None) -> None:
    try:
        parts = layout.split(key)
    except ValueError:
        return
    doc = _decode(value) if value is not None else None
    if value is not None and doc is None:
        return
    kind = parts[0]
    if kind == documents.PVS and len(parts) == 2:
        if doc is None:
            state.drop_index(parts[1])
        else:
            state.put_index(parts[1], doc)
    elif kind == documents.RECORDS and len(parts) == 3:
        if doc is None:
            state.drop_record(parts[1], parts[2])
        else:
            state.put_record(parts[1], parts[2], doc)
    elif kind == documents.IOCS and len(parts) == 2:
        state.put_ioc(parts[1], doc)
    elif kind == documents.BRIDGES and len(parts) == 2:
        _put(state.bridges, parts[1], doc)
    elif kind == documents.ALIVE and len(parts) == 2:
        _put(state.alive, parts[1], doc)


def _put(table: dict[str, Any], key: str, doc: Mapping[str, Any] | None) -> None:
    if doc is None:
        table.pop(key, None)
    else:
        table[key] = doc


def build_state(
    shape: ChannelShape,
    layout: documents.Keys,
    entries: Iterable[tuple[str, bytes]],
    revision: int,
) -> State:
    """A new `State` from every key at one revision; names are sorted once at the end."""
    state = State(shape, revision=revision)
    state.begin_bulk()
    for key, value in entries:
        _apply(state, layout, key, value)
    state.end_bulk()
    return state
