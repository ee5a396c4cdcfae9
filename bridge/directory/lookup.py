"""PV names looked up as ``recsync pv`` shows them: from the view, or from a scan of the
record documents when no view is at hand (pure).

Both give the same object per name (`summary`), so ``recsync pv`` prints the same
whichever way it asked:

    {"pv": NAME, "owner": IOCID, "record": RECORD, "type": TYPE, "alias": BOOL,
     "status": OWNER'S STATUS, "claims": [IOCID, ...]}      claims ranked, owner first
    {"pv": NAME, "status": "unknown"}                        no IOC claims NAME

The owner, its record (the name itself, or the record listing it as an alias) and the
claimants' order are those of `bridge.rules.ownership`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bridge.directory.model import State
from bridge.directory.records import parse_record
from bridge.rules import ownership

#: Names one ``/pv.json`` request may ask about.
MAX_NAMES = 1000


def summary(
    name: str,
    owner: str,
    record: str,
    rtype: str | None,
    status: str | None,
    claims: Iterable[str],
) -> dict[str, Any]:
    """One claimed name (module docstring)."""
    return {
        "pv": name,
        "owner": owner,
        "record": record,
        "type": rtype,
        "alias": record != name,
        "status": status,
        "claims": list(claims),
    }


def unknown(name: str) -> dict[str, Any]:
    """A name no IOC claims."""
    return {"pv": name, "status": "unknown"}


def _status(doc: Mapping[str, Any] | None) -> str | None:
    status = doc.get("status") if doc is not None else None
    return status if isinstance(status, str) else None


def from_state(state: State, name: str) -> dict[str, Any]:
    """`name` as the view holds it."""
    slot = state.slot(name)
    if slot is None or slot >= len(state.owner) or state.owner[slot] < 0:
        return unknown(name)
    owner = state.iocs[int(state.owner[slot])]
    return summary(
        name,
        owner.iocid,
        state.names[int(state.target[slot])],
        state.type_name(state.channel_type(slot)),
        _status(owner.doc),
        (state.iocs[c.ioc].iocid for c in state.claimants(slot)),
    )


class Scan:
    """What the record documents say about some names, fed one record at a time (in
    any order); it keeps only what concerns those names."""

    def __init__(self, names: Iterable[str]) -> None:
        self._wanted = set(names)
        self._providers: dict[str, list[ownership.Provider]] = {}
        self._types: dict[tuple[str, str], str | None] = {}

    def record(self, iocid: str, name: str, value: bytes, revision: int) -> None:
        """IOC `iocid`'s record `name` is `value` (v1 or v2), written at `revision`."""
        fields = parse_record(value)
        if fields is None:
            return
        for provided in ownership.record_names(name, fields.aliases):
            if provided in self._wanted:
                provider = ownership.Provider(iocid, name, revision)
                self._providers.setdefault(provided, []).append(provider)
                self._types[(iocid, name)] = fields.rtype

    def claimants(self) -> set[str]:
        """Every IOC claiming one of the names: their statuses decide the owners."""
        return {p.iocid for found in self._providers.values() for p in found}

    def result(self, name: str, statuses: Mapping[str, str | None]) -> dict[str, Any]:
        """`name` as the records say, given the claimants' `statuses` (None: no IOC
        document, or one without a status)."""
        decided = ownership.resolve(
            name,
            self._providers.get(name, []),
            lambda iocid: ownership.is_live(statuses.get(iocid)),
        )
        if decided is None:
            return unknown(name)
        owner, record = decided.owner.iocid, decided.record.record
        return summary(
            name,
            owner,
            record,
            self._types.get((owner, record)),
            statuses.get(owner),
            (c.iocid for c in decided.claimants),
        )
