"""Names a peer sends, as a session holds and bounds them. Pure, like the session.

* `NameLimits`: the longest host name, IOC name, iocid, record or alias name, record
  type and info key a session takes, and what each check says when one is longer
  (`identity_problem`, `record_problem`, `alias_problem`, `info_key_problem`: the
  configuration key of the limit, as every limit is counted, and a log line).
* `NameLog`: the names of the records an upload committed so far, for DelRecord.
* `short`: a name fit for a log line.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bridge.model import Peer, derive_identity
from bridge.protocol.wire import longer_than

#: What a check returns for a name over its limit: (configuration key, log line).
Problem = tuple[str, str]


@dataclass(frozen=True, slots=True)
class NameLimits:
    """Longest names a peer may send, in UTF-8 bytes (``[recceiver]`` keys in brackets).

    The defaults are far above what an honest IOC sends (EPICS record names have at
    most 60 characters, host names at most 253) and far below what the fields allow
    (64 KiB), since a name is copied into every etcd key and document that names it.
    A peer whose identity is too long is closed (its IOC could only be stored under
    another name); a record, alias or info whose name is too long is skipped, with its
    aliases and infos, and the rest of the upload is stored.
    """

    #: ``HOSTNAME`` (``maxHostnameLength``; a DNS name has at most 253).
    hostname: int = 253
    #: ``IOCNAME`` and ``IOC`` (``maxIocNameLength``).
    iocname: int = 255
    #: The iocid derived from them (``maxIocidLength``): with the two above at their
    #: defaults it is never the one hit.
    iocid: int = 512
    #: Record and alias names (``maxRecordNameLength``).
    record_name: int = 255
    #: Record types (``maxRecordTypeLength``; EPICS record types are C identifiers).
    record_type: int = 64
    #: Info keys, of records and client-wide (``maxInfoKeyLength``).
    info_key: int = 128


#: The client-wide infos that name the IOC (data model, IOC identity): key -> the
#: `NameLimits` field and configuration key bounding them.
IDENTITY_KEYS: Final[dict[str, tuple[str, str]]] = {
    "HOSTNAME": ("hostname", "maxHostnameLength"),
    "IOCNAME": ("iocname", "maxIocNameLength"),
    "IOC": ("iocname", "maxIocNameLength"),
}


def identity_problem(
    limits: NameLimits, client_infos: Mapping[str, str], peer: Peer, key: str, value: str
) -> Problem | None:
    """Whether the client-wide info `key` (one of `IDENTITY_KEYS`) set to `value`, or
    the iocid it makes with `client_infos`, is too long."""
    attr, setting = IDENTITY_KEYS[key]
    limit: int = getattr(limits, attr)
    if longer_than(value, limit):
        return setting, f"{key} {short(value)} exceeds {setting}={limit}"
    iocid = derive_identity({**client_infos, key: value}, peer).iocid
    if longer_than(iocid, limits.iocid):
        return "maxIocidLength", f"iocid {short(iocid)} exceeds maxIocidLength={limits.iocid}"
    return None


def record_problem(limits: NameLimits, name: str, rtype: str) -> Problem | None:
    """Whether a record's name or type is too long (it is skipped, with its aliases and
    infos)."""
    if longer_than(name, limits.record_name):
        return _skipped("record name", name, limits.record_name, "maxRecordNameLength")
    if longer_than(rtype, limits.record_type):
        return (
            "maxRecordTypeLength",
            f"record {short(name)} of type {short(rtype)} exceeds "
            f"maxRecordTypeLength={limits.record_type}; that record with its aliases and "
            "infos skipped, and any more such",
        )
    return None


def alias_problem(limits: NameLimits, alias: str) -> Problem | None:
    """Whether an alias name is too long (that alias is skipped)."""
    if longer_than(alias, limits.record_name):
        return _skipped("alias", alias, limits.record_name, "maxRecordNameLength")
    return None


def info_key_problem(limits: NameLimits, key: str) -> Problem | None:
    """Whether an info key is too long (that info is skipped)."""
    if longer_than(key, limits.info_key):
        return _skipped("info key", key, limits.info_key, "maxInfoKeyLength")
    return None


def _skipped(what: str, name: str, limit: int, setting: str) -> Problem:
    skipped = {
        "record name": "that record with its aliases and infos",
        "alias": "that alias",
        "info key": "that info",
    }[what]
    return (
        setting,
        f"{what} {short(name)} exceeds {setting}={limit}; {skipped} skipped, and any more such",
    )


def short(name: str, limit: int = 80) -> str:
    """A name for a log line: repr (control characters escaped), cut to `limit`."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[: limit - 4]}...{text[-1]} ({len(name)} chars)"


class NameLog:
    """Record id -> name of each record committed so far in the upload, for DelRecord.

    Flat arrays, about 12 bytes plus the UTF-8 name per record, instead of a dict of
    objects (about 130 bytes per record): the log grows with the upload, and no known
    client sends DelRecord. The dict its lookups need is built at the first one.
    A record id sent again stands for the later record, as in a dict.
    """

    __slots__ = ("_ends", "_index", "_names", "_rids")

    def __init__(self) -> None:
        self._rids = array("I")
        self._ends = array("Q")
        self._names = bytearray()
        self._index: dict[int, int] | None = None

    def clear(self) -> None:
        self._rids, self._ends = array("I"), array("Q")
        self._names, self._index = bytearray(), None

    @property
    def nbytes(self) -> int:
        """Bytes held (the lookup dict, if built, at about 100 bytes an entry)."""
        index = 0 if self._index is None else 100 * len(self._index)
        return len(self._names) + 12 * len(self._rids) + index

    def add(self, rid: int, name: str) -> None:
        if self._index is not None:
            self._index[rid] = len(self._rids)
        self._rids.append(rid)
        # Any str round-trips (the decoder never makes lone surrogates; callers might).
        self._names += name.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._names))

    def pop(self, rid: int) -> str | None:
        """The name of record `rid`, which is then forgotten; None if there is none."""
        if self._index is None:
            self._index = {r: i for i, r in enumerate(self._rids)}
        position = self._index.pop(rid, None)
        if position is None:
            return None
        start = self._ends[position - 1] if position else 0
        return self._names[start : self._ends[position]].decode("utf-8", "surrogatepass")
