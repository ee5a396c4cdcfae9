"""Claims on names and their owners in a directory `State` (pure; the reactor's thread).

Data model v2 stores no name index: an IOC claims a name through each of its records
named so or listing it as an alias, and the owner is whoever `bridge.rules.ownership`
says. A *claim* here is (IOC index, slot of the record that provides the name).

A name with one claim (nearly all of them) keeps it in the state's columns: `owner`
and `target`. A name with more keeps every claim in `State.multi` (a frozenset,
replaced on change, so a query thread never sees one change under it), the columns
then hold the claim the rule chose, and `State.ioc_multi` lists per IOC the names it
has a claim on there: a change of an IOC's status re-decides only those (`settle`),
since the owner of a name with one claim cannot change with anybody's status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from bridge.rules import ownership

if TYPE_CHECKING:
    from bridge.directory.model import State

#: (IOC index, slot of the record that provides the name).
Claim = tuple[int, int]
#: The largest count `State.claims` holds; more is counted from `State.multi`.
MAX_COUNT = int(np.iinfo(np.int16).max)
FLAG_ALIAS = 1
#: Slots `settle_all` handles at a time.
BLOCK = 1 << 16


class Claimant(NamedTuple):
    """An IOC claiming a name: its index, the slot of its record that provides the name
    (`bridge.rules.ownership.channel_record`), its claim's revision, whether it is live."""

    ioc: int
    record: int
    revision: int
    live: bool


def add(state: State, slot: int, claim: Claim) -> None:
    """Record `claim` on the name at `slot` (nothing when it is there already); call
    `settle` after."""
    found = state.multi.get(slot)
    if found is None:
        owner = int(state.owner[slot])
        if owner < 0:
            state.owner[slot], state.target[slot] = claim
            return
        current = (owner, int(state.target[slot]))
        if current == claim:
            return
        found = frozenset((current,))
    elif claim in found:
        return
    state.multi[slot] = found | {claim}
    for ioc, _ in state.multi[slot]:
        state.ioc_multi.setdefault(ioc, set()).add(slot)


def drop(state: State, slot: int, claim: Claim) -> None:
    """Forget `claim` on the name at `slot` (nothing when it is not there); call
    `settle` after."""
    found = state.multi.get(slot)
    if found is None:
        if (int(state.owner[slot]), int(state.target[slot])) == claim:
            state.owner[slot] = -1
        return
    rest = found - {claim}
    if not any(ioc == claim[0] for ioc, _ in rest):
        _unlist(state, claim[0], slot)
    if len(rest) > 1:
        state.multi[slot] = rest
        return
    del state.multi[slot]
    for ioc, target in rest:
        _unlist(state, ioc, slot)
        state.owner[slot], state.target[slot] = ioc, target


def _unlist(state: State, ioc: int, slot: int) -> None:
    listed = state.ioc_multi.get(ioc)
    if listed is not None:
        listed.discard(slot)
        if not listed:
            del state.ioc_multi[ioc]


def decide(state: State, slot: int) -> ownership.Ownership | None:
    """The rule's answer for a name with more than one claim (None for the others)."""
    found = state.multi.get(slot)
    if found is None:
        return None
    providers = []
    for ioc, target in found:
        facts = state.facts(target, ioc)
        revision = facts.revision if facts is not None else 0
        providers.append(ownership.Provider(state.iocs[ioc].iocid, state.names[target], revision))

    return ownership.resolve(state.names[slot], providers, _live(state))


def _live(state: State) -> Callable[[str], bool]:
    def live(iocid: str) -> bool:
        return state.iocs[state.ioc_index[iocid]].live

    return live


def settle(state: State, slot: int) -> None:
    """Put the owner's claim on the name at `slot` in the columns, with the number of
    claimants and whether the channel is an alias."""
    decided = decide(state, slot)
    if decided is not None:
        owner = state.ioc_index[decided.owner.iocid]
        record = decided.record.record
        target = next(t for i, t in state.multi[slot] if i == owner and state.names[t] == record)
        state.owner[slot], state.target[slot] = owner, target
        state.claims[slot] = min(len(decided.claimants), MAX_COUNT)
    else:
        state.claims[slot] = 1 if state.owner[slot] >= 0 else 0
    alias = state.owner[slot] >= 0 and state.target[slot] != slot
    state.flags[slot] = FLAG_ALIAS if alias else 0


def settle_all(state: State) -> None:
    """`settle` every slot (after a bulk load): the names with one claim at once, with
    whole columns, then each name with more."""
    # In blocks: temporaries as long as the columns would stay with the process.
    for first in range(0, len(state.owner), BLOCK):
        end = min(first + BLOCK, len(state.owner))
        claimed = state.owner[first:end] >= 0
        state.claims[first:end] = claimed
        slots = np.arange(first, end, dtype=np.int32)
        state.flags[first:end] = claimed & (state.target[first:end] != slots)  # FLAG_ALIAS
    for slot in list(state.multi):
        settle(state, slot)


def count(state: State, slot: int) -> int:
    """How many IOCs claim the name at `slot`, counted."""
    found = state.multi.get(slot)
    if found is not None:
        return len({ioc for ioc, _ in found})
    return 1 if state.owner[slot] >= 0 else 0


def claimants(state: State, slot: int) -> list[Claimant]:
    """Every IOC claiming the name at `slot`, ranked by the rule (the owner first)."""
    found = state.multi.get(slot)
    if found is None:
        owner = int(state.owner[slot])
        if owner < 0:
            return []
        target = int(state.target[slot])
        facts = state.facts(target, owner)
        revision = facts.revision if facts is not None else 0
        return [Claimant(owner, target, revision, state.iocs[owner].live)]
    name = state.names[slot]
    providers: dict[int, list[ownership.Provider]] = {}
    slots: dict[str, int] = {}
    for ioc, target in found:
        facts = state.facts(target, ioc)
        revision = facts.revision if facts is not None else 0
        record = state.names[target]
        slots[record] = target
        providers.setdefault(ioc, []).append(
            ownership.Provider(state.iocs[ioc].iocid, record, revision)
        )
    out = []
    for claim in ownership.ranked(
        ownership.claims((p for ps in providers.values() for p in ps), _live(state))
    ):
        ioc = state.ioc_index[claim.iocid]
        chosen = ownership.channel_record(name, providers[ioc])
        assert chosen is not None
        out.append(Claimant(ioc, slots[chosen.record], claim.revision, claim.live))
    return out
