"""The directory: an in-memory view of the data model's documents (pure, no I/O).

Fed one document at a time as a watch delivers them (`Directory.apply`), or all at once
at one revision (`Directory.load`), it holds what channels are made of:

- IOCs (`IOCEntry`), from ``P/iocs/<iocid>``: the document, its channel properties,
  whether the IOC is live (`bridge.rules.ownership.LIVE_STATUSES`);
- one *slot* per name ever seen as a record or an alias in ``P/records/``, for the life
  of the view: its name (`State.names`), its place in name order (`State.order`);
- *records* (one IOC's record at a slot's name): type, DESC, the configured info tags,
  its aliases and its key's mod_revision. One record per slot lives in columns (numpy
  arrays, a few bytes each: `rec_ioc`, `rec_type`, `rec_rev`, and the `desc`/`infos`
  lists); when several IOCs have a record by that name, the others wait in
  `State.extra`;
- *claims* (data model v2: no stored name index). An IOC claims a name through each of
  its records named so or listing it as an alias; the owner is chosen by the rule of
  `bridge.rules.ownership`. The owner's claim is in columns (`owner`, `target`: the
  slot of the record the channel is, `flags`, `claims`: how many IOCs claim); a name
  with more than one claim keeps them all in `State.multi`, and `State.ioc_multi`
  lists, per IOC, its names there, so that a change of an IOC's status re-decides the
  owners of only its shared names.

``P/pvs/``, ``P/shared/`` (v1's stored name index, ignored) and keys outside the data
model are not read. A channel is a slot with a claim: name, owner IOC and the owner's
record. Memory is what makes this shape: a million Python objects per kind would not fit
the budget of bench/directory.py, a few arrays and one string per name do.

All changes happen on one thread (the reactor's). Queries may run on other threads over
`Directory.state`: columns are written element by element and replaced, never resized
in place, claim sets are replaced rather than changed, and a reload swaps in a whole new
`State`, so a query sees a consistent-enough view (at worst one document newer in one
column than in another).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from bridge import documents
from bridge.directory import encoding, owners
from bridge.directory.channels import (
    NO_IOC,
    ChannelShape,
    IOCProperties,
    PropertyEncoder,
    ioc_properties,
)
from bridge.directory.names import BulkIndex, SortedNames
from bridge.directory.records import record_fields, text
from bridge.rules import ownership

FLAG_ALIAS = owners.FLAG_ALIAS
_REVISION_LIMIT = np.iinfo(np.uint32).max
#: `State.rec_alias` of a record with more than one alias.
SEVERAL = -2


@dataclass(slots=True)
class IOCEntry:
    """One IOC known to the view: its document (None if none was seen), properties,
    and whether it is live."""

    iocid: str
    index: int
    doc: Mapping[str, Any] | None = None
    props: IOCProperties = NO_IOC
    live: bool = False


class Facts(NamedTuple):
    """One IOC's record at one slot's name.

    `rtype` is a code of `State.types` (-1: none), `infos` the configured info tags'
    values (`ChannelShape.infotags`), `revision` its key's mod_revision, `aliases` the
    slots of its alias names.
    """

    rtype: int
    desc: str | None
    infos: tuple[str | None, ...]
    revision: int
    aliases: tuple[int, ...]


def _grow(array: npt.NDArray[Any], size: int, fill: int) -> npt.NDArray[Any]:
    if size <= len(array):
        return array
    bigger = np.full(max(size, len(array) + len(array) // 4, 1024), fill, dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger


def _column(fill: int, dtype: Any) -> Any:
    return field(default_factory=lambda: np.full(0, fill, dtype))


@dataclass
class State:
    """Everything one load (plus the changes after it) built; see the module docstring."""

    shape: ChannelShape
    names: list[str] = field(default_factory=list)
    # The owner's claim on each slot's name (owner -1: nobody claims it).
    owner: npt.NDArray[np.int32] = _column(-1, np.int32)
    target: npt.NDArray[np.int32] = _column(-1, np.int32)
    flags: npt.NDArray[np.uint8] = _column(0, np.uint8)
    claims: npt.NDArray[np.int16] = _column(0, np.int16)
    # The record in columns at each slot (rec_ioc -1: none).
    rec_ioc: npt.NDArray[np.int32] = _column(-1, np.int32)
    rec_type: npt.NDArray[np.int32] = _column(-1, np.int32)
    #: mod_revisions; becomes int64 once one passes 2**32 - 1 (`_set_revision`).
    rec_rev: npt.NDArray[Any] = _column(0, np.uint32)
    desc: list[str | None] = field(default_factory=list)
    #: One list per configured info tag (`ChannelShape.infotags`), values interned.
    infos: list[list[str | None]] = field(default_factory=list)
    #: The alias slot of the record in columns: -1 none, `SEVERAL`: see `rec_aliases`.
    rec_alias: npt.NDArray[np.int32] = _column(-1, np.int32)
    #: Alias slots of the records in columns that have more than one alias.
    rec_aliases: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: slot -> IOC -> its record there, for records not in the columns.
    extra: dict[int, dict[int, Facts]] = field(default_factory=dict)
    #: slot -> every claim on its name, for names with more than one claim.
    multi: dict[int, frozenset[owners.Claim]] = field(default_factory=dict)
    #: IOC -> the slots in `multi` it has a claim on.
    ioc_multi: dict[int, set[int]] = field(default_factory=dict)
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
        self._bulk: BulkIndex | None = None

    # -- slots and lookups ------------------------------------------------------------

    def slot(self, name: str) -> int | None:
        if self._bulk is not None:
            return self._bulk.find(name)
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
            self._bulk.add(slot)
        else:
            self.order.insert(slot)
        return slot

    def begin_bulk(self) -> None:
        """Start a bulk load: slots are created unordered until `end_bulk`."""
        self._bulk = BulkIndex(self.names)

    def end_bulk(self) -> None:
        """Sort every slot by name once, and leave bulk mode."""
        names = self.names
        count = len(names)
        ordered = np.array(sorted(range(count), key=names.__getitem__), dtype=np.int32)
        self._bulk = None
        self.owner, self.target = self.owner[:count].copy(), self.target[:count].copy()
        self.flags, self.claims = self.flags[:count].copy(), self.claims[:count].copy()
        self.rec_ioc, self.rec_type = self.rec_ioc[:count].copy(), self.rec_type[:count].copy()
        self.rec_rev, self.rec_alias = self.rec_rev[:count].copy(), self.rec_alias[:count].copy()
        self.order.build(ordered)
        for chunk in self.order.chunks:
            chunk.text(names)
        owners.settle_all(self)

    def _reserve(self, size: int) -> None:
        if size <= len(self.rec_alias):  # every column has the same length
            return
        self.owner = _grow(self.owner, size, -1)
        self.target = _grow(self.target, size, -1)
        self.flags = _grow(self.flags, size, 0)
        self.claims = _grow(self.claims, size, 0)
        self.rec_ioc = _grow(self.rec_ioc, size, -1)
        self.rec_type = _grow(self.rec_type, size, -1)
        self.rec_rev = _grow(self.rec_rev, size, 0)
        self.rec_alias = _grow(self.rec_alias, size, -1)

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

    def type_name(self, code: int) -> str | None:
        return self.types[code] if code >= 0 else None

    def intern(self, value: str | None) -> str | None:
        """One object per distinct info value (``Monitor 1`` is on most records)."""
        if value is None:
            return None
        return self._values.setdefault(value, value)

    def facts(self, slot: int, ioc: int) -> Facts | None:
        """IOC `ioc`'s record named `names[slot]`, None when it has none."""
        if self.rec_ioc[slot] == ioc:
            return Facts(
                int(self.rec_type[slot]),
                self.desc[slot],
                tuple(column[slot] for column in self.infos),
                int(self.rec_rev[slot]),
                self._aliases(slot),
            )
        waiting = self.extra.get(slot)
        return waiting.get(ioc) if waiting else None

    def visible(self) -> npt.NDArray[np.bool_]:
        """Slots that are channels: a claim, and aliases only if shaped so."""
        owner, flags = self.owner, self.flags
        count = min(len(owner), len(flags))
        mask = owner[:count] >= 0
        if not self.shape.alias:
            mask &= (flags[:count] & FLAG_ALIAS) == 0
        return mask

    def channel_type(self, slot: int) -> int:
        """The type code of channel `slot` (its owner's record's), -1 when unknown."""
        owner = int(self.owner[slot])
        facts = self.facts(int(self.target[slot]), owner) if owner >= 0 else None
        return facts.rtype if facts is not None else -1

    def channel_types(self, slots: npt.NDArray[np.intp]) -> npt.NDArray[np.int32]:
        """`channel_type` of every slot in `slots` (channels, owner >= 0), gathered."""
        targets, owners = self.target[slots], self.owner[slots]
        codes = self.rec_type[targets]
        for k in np.flatnonzero(self.rec_ioc[targets] != owners).tolist():
            facts = self.extra.get(int(targets[k]), {}).get(int(owners[k]))
            codes[k] = facts.rtype if facts is not None else -1
        return codes

    def claim_count(self, slot: int) -> int:
        """How many IOCs claim the name at `slot`."""
        count = int(self.claims[slot])
        return owners.count(self, slot) if count >= owners.MAX_COUNT else count

    def claimants(self, slot: int) -> list[owners.Claimant]:
        """Every IOC claiming the name at `slot`, ranked by the rule (the owner first)."""
        return owners.claimants(self, slot)

    # -- documents ----------------------------------------------------------------------

    def put_ioc(self, iocid: str, doc: Mapping[str, Any] | None) -> None:
        entry = self.ioc(iocid)
        entry.doc = doc
        entry.props = NO_IOC if doc is None else ioc_properties(self.shape, doc)
        live = doc is not None and ownership.is_live(doc.get("status"))
        if live != entry.live:
            entry.live = live
            for slot in list(self.ioc_multi.get(entry.index, ())):
                owners.settle(self, slot)

    def put_record(self, iocid: str, name: str, doc: Mapping[str, Any], revision: int) -> None:
        """IOC `iocid`'s record `name` is `doc` (v1 or v2), written at `revision`."""
        fields = record_fields(doc)
        record = self.new_slot(name)
        ioc = self.ioc(iocid).index
        aliases = tuple(self.new_slot(a) for a in ownership.record_names(name, fields.aliases)[1:])
        facts = Facts(
            self.type_code(fields.rtype) if fields.rtype is not None else -1,
            fields.desc,
            tuple(self.intern(text(fields.infos.get(tag))) for tag in self.shape.infotags),
            revision,
            aliases,
        )
        old = self.facts(record, ioc)
        self._put_facts(record, ioc, facts)
        claim = (ioc, record)
        settle = self._bulk is None  # a bulk load settles every slot at its end
        for slot in old.aliases if old is not None else ():
            if slot not in aliases:
                owners.drop(self, slot, claim)
                if settle:
                    owners.settle(self, slot)
        for slot in (record, *aliases):
            owners.add(self, slot, claim)
            if settle:
                owners.settle(self, slot)

    def drop_record(self, iocid: str, name: str) -> None:
        record = self.slot(name)
        ioc = self.ioc_index.get(iocid)
        if record is None or ioc is None:
            return
        old = self.facts(record, ioc)
        if old is None:
            return
        self._drop_facts(record, ioc)
        for slot in (record, *old.aliases):
            owners.drop(self, slot, (ioc, record))
            if self._bulk is None:
                owners.settle(self, slot)

    # -- records ------------------------------------------------------------------------

    def _put_facts(self, slot: int, ioc: int, facts: Facts) -> None:
        if int(self.rec_ioc[slot]) in (-1, ioc):
            self._store(slot, ioc, facts)
        else:
            self.extra.setdefault(slot, {})[ioc] = facts

    def _drop_facts(self, slot: int, ioc: int) -> None:
        if self.rec_ioc[slot] != ioc:
            waiting = self.extra.get(slot)
            if waiting is not None:
                waiting.pop(ioc, None)
                if not waiting:
                    del self.extra[slot]
            return
        self.rec_ioc[slot] = -1
        self.rec_type[slot] = -1
        self.desc[slot] = None
        for column in self.infos:
            column[slot] = None
        self._set_aliases(slot, ())
        waiting = self.extra.get(slot)
        if waiting:
            other = next(iter(waiting))
            facts = waiting.pop(other)
            if not waiting:
                del self.extra[slot]
            self._store(slot, other, facts)

    def _store(self, slot: int, ioc: int, facts: Facts) -> None:
        self.rec_ioc[slot] = ioc
        self.rec_type[slot] = facts.rtype
        self._set_revision(slot, facts.revision)
        self.desc[slot] = facts.desc
        for column, value in zip(self.infos, facts.infos, strict=False):
            column[slot] = value
        self._set_aliases(slot, facts.aliases)

    def _aliases(self, slot: int) -> tuple[int, ...]:
        alias = int(self.rec_alias[slot])
        if alias == -1:
            return ()
        return (alias,) if alias >= 0 else self.rec_aliases.get(slot, ())

    def _set_aliases(self, slot: int, aliases: tuple[int, ...]) -> None:
        """Most records have no alias or one: a column; more go to a dict."""
        if len(aliases) > 1:
            self.rec_aliases[slot] = aliases
            self.rec_alias[slot] = SEVERAL
            return
        if self.rec_alias[slot] == SEVERAL:
            self.rec_aliases.pop(slot, None)
        self.rec_alias[slot] = aliases[0] if aliases else -1

    def _set_revision(self, slot: int, revision: int) -> None:
        if revision > _REVISION_LIMIT and self.rec_rev.dtype != np.int64:
            self.rec_rev = self.rec_rev.astype(np.int64)
        self.rec_rev[slot] = revision

    # -- channels -----------------------------------------------------------------------

    def encode(self, slot: int) -> bytes:
        """Channel `slot` as a ChannelFinder sends it (`bridge.directory.encoding`)."""
        return encoding.encode(self, slot)

    def count(self) -> int:
        return int(np.count_nonzero(self.visible()))


#: A key, its value, and the revision that last wrote it (etcd's mod_revision).
Item = tuple[str, bytes, int]


class Directory:
    """The view, applied document by document; queries read `state` (see module doc)."""

    def __init__(self, shape: ChannelShape, prefix: str = documents.DEFAULT_PREFIX) -> None:
        self.shape = shape
        self.keys = documents.Keys(prefix)
        self.state = State(shape)

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        """A put (`value` the stored bytes) or a delete (`value` None) of one key, made
        at `revision` (the key's mod_revision after a put).

        Keys outside the data model and values that are not JSON objects are ignored.
        """
        _apply(self.state, self.keys, key, value, revision)
        if revision:
            self.state.revision = revision

    def load(self, items: Iterable[Item], revision: int) -> None:
        """Replace everything with `items`, every key under the prefix at `revision`."""
        self.state = build_state(self.shape, self.keys, items, revision)


def _decode(value: bytes) -> Mapping[str, Any] | None:
    try:
        doc = documents.loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, Mapping) else None


#: The kinds of keys the view reads (``P/<kind>/...``); v1's ``pvs`` and ``shared`` and
#: anything else are not among them.
IOCS, RECORDS, BRIDGES, ALIVE = "iocs", "records", "bridges", "alive"


def _apply(
    state: State, layout: documents.Keys, key: str, value: bytes | None, revision: int
) -> None:
    head = layout.prefix + "/"
    if not key.startswith(head):
        return
    # What `documents.Keys.split` does, without a generator per key (a load splits
    # a million keys).
    parts = key[len(head) :].split("/")
    if "%" in key:
        parts = [documents.decode_component(part) for part in parts]
    doc = _decode(value) if value is not None else None
    if value is not None and doc is None:
        return
    kind = parts[0]
    if kind == RECORDS and len(parts) == 3:
        if doc is None:
            state.drop_record(parts[1], parts[2])
        else:
            state.put_record(parts[1], parts[2], doc, revision)
    elif kind == IOCS and len(parts) == 2:
        state.put_ioc(parts[1], doc)
    elif kind == BRIDGES and len(parts) == 2:
        _put(state.bridges, parts[1], doc)
    elif kind == ALIVE and len(parts) == 2:
        _put(state.alive, parts[1], doc)


def _put(table: dict[str, Any], key: str, doc: Mapping[str, Any] | None) -> None:
    if doc is None:
        table.pop(key, None)
    else:
        table[key] = doc


def build_state(
    shape: ChannelShape,
    layout: documents.Keys,
    items: Iterable[Item],
    revision: int,
) -> State:
    """A new `State` from every key at one revision; names are sorted once at the end."""
    state = State(shape, revision=revision)
    state.begin_bulk()
    for key, value, modified in items:
        _apply(state, layout, key, value, modified)
    state.end_bulk()
    return state
