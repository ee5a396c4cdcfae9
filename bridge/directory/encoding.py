"""A channel of a directory `State` as a ChannelFinder sends it (pure; any thread).

The properties and their order are the reference ``cf`` processor's
(bridge/directory/channels.py); the IOC-level ones are encoded once per IOC
(`channels.IOCProperties`), the record-level ones come from the owner's record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.directory.channels import (
    ALIAS,
    DUPLICATE_COUNT,
    NO_IOC,
    RECORD_DESC,
    RECORD_TYPE,
    channel_json,
)
from bridge.directory.owners import FLAG_ALIAS

if TYPE_CHECKING:
    from bridge.directory.model import State


def record_values(state: State, slot: int) -> list[tuple[str, str, bool]]:
    """The record-level properties of channel `slot` (``recordType`` .. info tags):
    (name, value, whether the value repeats across channels)."""
    shape = state.shape
    out: list[tuple[str, str, bool]] = []
    owner = int(state.owner[slot])
    facts = state.facts(int(state.target[slot]), owner) if owner >= 0 else None
    if facts is None:
        return out
    if shape.record_type and facts.rtype >= 0:
        out.append((RECORD_TYPE, state.types[facts.rtype], True))
    if shape.record_desc and facts.desc is not None:
        out.append((RECORD_DESC, facts.desc, False))
    for tag, value in zip(shape.infotags, facts.infos, strict=False):
        if value is not None and not (tag == RECORD_DESC and shape.record_desc):
            out.append((tag, value, True))
    return out


def encode(state: State, slot: int) -> bytes:
    """Channel `slot` as a ChannelFinder sends it."""
    encoder = state.encoder
    owner = int(state.owner[slot])
    props = state.iocs[owner].props if owner >= 0 else NO_IOC
    encoded: list[bytes] = []
    if state.shape.alias and state.flags[slot] & FLAG_ALIAS:
        encoded.append(encoder.encode(ALIAS, state.names[state.target[slot]]))
    encoded += props.head
    for name, value, repeats in record_values(state, slot):
        if repeats:
            encoded.append(encoder.encode_repeated(name, value))
        else:
            encoded.append(encoder.encode(name, value))
    encoded += props.tail
    claims = state.claim_count(slot)
    if claims > 1:
        encoded.append(encoder.encode_repeated(DUPLICATE_COUNT, str(claims)))
    return channel_json(state.names[slot], props.owner or state.shape.username, encoded)
