"""Running a `Query` over a directory `State` (pure; safe on a worker thread).

The plan: property terms become one boolean mask over every slot, IOC-level ones by
evaluating each IOC once and gathering through the owner column, record types once per
type, the rest value by value over the slots still in (a memo per distinct value). Then
the chunks of names are walked in name order from ``~search_after``; in each chunk the
candidates the mask lets through are filtered by the ``~name`` globs (a literal search in
the chunk's text when many are left, a regex per name when few), and the walk stops as
soon as the page is full, unless an exact total was asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bridge.directory.channels import (
    ALIAS,
    DUPLICATE_COUNT,
    RECORD_DESC,
    RECORD_TYPE,
)
from bridge.directory.model import FLAG_ALIAS, State
from bridge.directory.names import Chunk
from bridge.directory.query import Glob, NameTerm, PropertyTerm, Query

Mask = npt.NDArray[np.bool_]
#: Fewer candidates than this in a chunk are checked name by name.
FEW = 64


@dataclass(frozen=True, slots=True)
class Selection:
    """The page of channels (slots, in name order) and how many matched.

    `count` is exact when `exact`; otherwise it is the number of slots returned, as a
    ChannelFinder counts without ``~track_total_hits``.
    """

    slots: list[int]
    count: int
    exact: bool


def select(
    state: State, query: Query, *, exact_count: bool, after: str | None = None
) -> Selection:
    """The channels `query` matches, from ``~from`` for ``~size``, in name order.

    `after` overrides ``~search_after`` (a scroll id). With `exact_count` every match of
    the query is counted (``~search_after`` aside, as Elasticsearch's total does);
    otherwise the walk stops when the page is full.
    """
    size, offset = query.size, query.offset
    mask = _mask(state, query)
    wanted = offset + size
    found: list[int] = []
    total = 0
    start = after if after is not None else query.search_after
    chunks = list(state.order.chunks)
    first, position = state.order.after(start) if start is not None else (0, 0)
    selective = _selective(mask, query)
    for index in range(first, len(chunks)):
        chunk = chunks[index]
        mask = _cover(mask, chunk.slots)
        candidates = _chunk_matches(
            state, chunk, query, mask, position if index == first else 0, selective
        )
        matched = len(candidates)
        if matched and total < wanted:
            found.extend(chunk.slots[candidates[: wanted - total]].tolist())
        total += matched
        if total >= wanted and not exact_count:
            break
    page = found[offset:wanted]
    if exact_count and start is not None:
        # Elasticsearch's total counts every hit of the query, not only those after.
        total = count(state, query)
    return Selection(page, total if exact_count else len(page), exact_count)


def count(state: State, query: Query) -> int:
    """How many channels `query` matches (``~size`` and ``~from`` do not apply)."""
    mask = _mask(state, query)
    if not query.names:
        return int(np.count_nonzero(mask))
    total = 0
    selective = _selective(mask, query)
    for chunk in list(state.order.chunks):
        mask = _cover(mask, chunk.slots)
        total += len(_chunk_matches(state, chunk, query, mask, 0, selective))
    return total


def _selective(mask: Mask, query: Query) -> bool:
    """Whether to apply the mask before the names: when it lets few slots through."""
    return not query.names or bool(np.count_nonzero(mask) * 20 < len(mask))


def _chunk_matches(
    state: State, chunk: Chunk, query: Query, mask: Mask, begin: int, selective: bool
) -> npt.NDArray[np.intp]:
    """Positions (from `begin`, sorted) in `chunk` of the channels `query` matches."""
    slots = chunk.slots
    if selective:
        candidates = np.flatnonzero(mask[slots[begin:]]) + begin
        for term in query.names:
            if not len(candidates):
                break
            candidates = _filter_names(chunk, candidates, term, state.names)
        return candidates
    hits: npt.NDArray[np.intp] | None = None
    for term in query.names:
        if any(g.matches_everything for g in term.alternatives):
            continue
        found = _term_hits(chunk, term, state.names)
        hits = found if hits is None else np.intersect1d(hits, found, assume_unique=True)
        if not len(hits):
            return hits
    if hits is None:
        hits = np.arange(begin, len(slots))
    elif begin:
        hits = hits[hits >= begin]
    return hits[mask[slots[hits]]]


def _term_hits(chunk: Chunk, term: NameTerm, names: list[str]) -> npt.NDArray[np.intp]:
    hits = [chunk.matching(g, names) for g in term.alternatives]
    return hits[0] if len(hits) == 1 else np.unique(np.concatenate(hits))


def _cover(mask: Mask, slots: npt.NDArray[np.int32]) -> Mask:
    """`mask`, padded with False if slots were added after it was computed."""
    if len(slots) and int(slots.max()) >= len(mask):
        return np.pad(mask, (0, int(slots.max()) + 1 - len(mask)))
    return mask


def _filter_names(
    chunk: Chunk, candidates: npt.NDArray[np.intp], term: NameTerm, names: list[str]
) -> npt.NDArray[np.intp]:
    if any(g.matches_everything for g in term.alternatives):
        return candidates
    if len(candidates) < FEW:
        slots = chunk.slots
        keep = [p for p in candidates.tolist() if term.matches(names[slots[p]])]
        return np.array(keep, dtype=np.intp)
    union = _term_hits(chunk, term, names)
    return candidates[np.isin(candidates, union, assume_unique=True)]


def _mask(state: State, query: Query) -> Mask:
    mask = state.visible()
    if any(not t.negated for t in query.tags):
        # The reference writes no tags: no channel has one.
        return np.zeros_like(mask)
    # Cheap terms (IOC-level, record type) first, so value-by-value ones see fewer slots.
    for term in sorted(query.properties, key=lambda t: _cost(state, t)):
        if not mask.any():
            break
        mask &= _term(state, term, np.flatnonzero(mask), len(mask))
    return mask


def _cost(state: State, term: PropertyTerm) -> int:
    cheap = _ioc_properties(state) | {RECORD_TYPE}
    return 0 if all(p in cheap for p in _properties(state, term.key)) else 1


def _properties(state: State, key: Glob) -> list[str]:
    return [p for p in state.shape.property_names() if key.matches(p)]


def _ioc_properties(state: State) -> set[str]:
    from bridge.directory.channels import HEAD_PROPERTIES

    return set(HEAD_PROPERTIES) | set(state.shape.env_properties().values())


def _term(state: State, term: PropertyTerm, within: npt.NDArray[np.intp], size: int) -> Mask:
    """Where `term` holds; only slots in `within` are evaluated (others: False)."""
    props = _properties(state, term.key)
    result = np.zeros(size, dtype=np.bool_)
    if not term.negated:
        alts = term.alternatives
        for prop in props:
            result |= _values(state, prop, lambda v: any(g.matches(v) for g in alts), within, size)
        return result
    for glob in term.alternatives:
        if glob.pattern == "*":
            present = np.zeros_like(result)
            for prop in props:
                present |= _values(state, prop, lambda v: True, within, size)
            absent = np.zeros_like(result)
            absent[within] = ~present[within]
            result |= absent
        else:
            differs = _differs(glob)
            for prop in props:
                result |= _values(state, prop, differs, within, size)
    return result


def _differs(glob: Glob) -> Callable[[str], bool]:
    return lambda value: not glob.matches(value)


def _values(
    state: State,
    prop: str,
    test: Callable[[str], bool],
    within: npt.NDArray[np.intp],
    size: int,
) -> Mask:
    """Slots in `within` that have property `prop` with a value passing `test`."""
    out = np.zeros(size, dtype=np.bool_)
    if prop in _ioc_properties(state):
        owners = state.owner[within]
        iocs = list(state.iocs)
        ok = np.zeros(max(len(iocs), int(owners.max(initial=-1)) + 1) + 1, dtype=np.bool_)
        memo = _Memo(test)
        for entry in iocs:
            value = entry.props.values.get(prop)
            ok[entry.index + 1] = value is not None and memo(value)
        out[within] = ok[owners + 1]
        return out
    if prop == RECORD_TYPE:
        if state.shape.record_type:
            types = list(state.types)
            ok = np.array([False] + [test(t) for t in types], dtype=np.bool_)
            codes = state.channel_types(within)
            out[within] = ok[np.minimum(codes, len(types) - 1) + 1]
        return out
    if prop == ALIAS:
        if state.shape.alias:
            aliases = within[(state.flags[within] & FLAG_ALIAS) != 0]
            memo = _Memo(test)
            names, target = state.names, state.target
            out[[s for s in aliases.tolist() if memo(names[target[s]])]] = True
        return out
    if prop == DUPLICATE_COUNT:
        shared = within[state.claims[within] > 1]
        out[[s for s in shared.tolist() if test(str(state.claim_count(s)))]] = True
        return out
    return _record_values(state, prop, test, within, out)


def _record_values(
    state: State, prop: str, test: Callable[[str], bool], within: npt.NDArray[np.intp], out: Mask
) -> Mask:
    shape = state.shape
    if prop == RECORD_DESC and shape.record_desc:
        index = -1
    elif prop in shape.infotags:
        index = shape.infotags.index(prop)
    else:
        return out
    memo = _Memo(test)
    keep = []
    owner, target, resident = state.owner, state.target, state.rec_ioc
    column = state.desc if index < 0 else state.infos[index]
    for slot in within.tolist():
        record, ioc = int(target[slot]), int(owner[slot])
        if resident[record] == ioc:
            value = column[record]
        else:
            facts = state.facts(record, ioc)
            value = None if facts is None else facts.desc if index < 0 else facts.infos[index]
        if value is not None and memo(value):
            keep.append(slot)
    out[keep] = True
    return out


class _Memo:
    """`test` remembered per distinct value (info values repeat across records)."""

    def __init__(self, test: Callable[[str], bool]) -> None:
        self.test = test
        self.seen: dict[str, bool] = {}

    def __call__(self, value: str) -> bool:
        known = self.seen.get(value)
        if known is None:
            known = self.seen[value] = self.test(value)
        return known
