"""Record documents as any bridge stored them, read tolerantly (pure).

Two forms live side by side in one etcd: data model v2's lean document, written for
every record that is new or changed, and v1's, left in place until its record changes
(an unchanged re-upload writes nothing):

    v2  {"type": "ai", "desc": "Beam current", "aliases": ["X:ALIAS"],
         "infos": {"archive": "Monitor 1"}}       desc, aliases, infos left out when empty
    v1  {"name": "X", "type": "ai", "iocid": "h:IOC", "desc": null, "aliases": [],
         "infos": {}}

The record's name and IOC always come from the key (``P/records/<iocid>/<name>``); a v1
document's ``name`` and ``iocid`` repeat them and are not read. Values are data any
peer may have shaped: a field of the wrong type counts as absent, alias names that are
not strings are dropped, info values that are not strings are shown as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from bridge import documents

_NO_INFOS: Mapping[str, Any] = {}


class RecordFields(NamedTuple):
    """What a record document says about its record, whichever form it has.

    `infos` is the stored object itself (not copied: one is read per record loaded);
    read its values with `text`. (A tuple: one is made per record loaded, and a frozen
    dataclass takes twice as long to make.)
    """

    rtype: str | None
    desc: str | None
    aliases: tuple[str, ...]
    infos: Mapping[str, Any]


def text(value: Any) -> str | None:
    """A document value as text: None stays None, other non-strings are converted."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def record_fields(doc: Mapping[str, Any]) -> RecordFields:
    """The fields of a record document decoded from JSON (v1 or v2; see the module
    docstring): only JSON's own str, list and dict count as such."""
    rtype, desc = doc.get("type"), doc.get("desc")
    aliases = doc.get("aliases")
    infos = doc.get("infos")
    return RecordFields(
        rtype if type(rtype) is str else None,
        desc if type(desc) is str else None,
        tuple(a for a in aliases if type(a) is str) if type(aliases) is list and aliases else (),
        infos if type(infos) is dict else _NO_INFOS,
    )


def parse_record(value: bytes) -> RecordFields | None:
    """The fields of a stored record document; None unless it is a JSON object."""
    try:
        doc = documents.loads(value)
    except ValueError:
        return None
    return record_fields(doc) if isinstance(doc, Mapping) else None
