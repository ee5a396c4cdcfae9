"""Domain values shared by the session, the processors and the etcd store.

Pure: no Twisted, no sockets, no clocks. A session builds `Record` objects while
an IOC uploads and hands them to the processors inside `Transaction` values; once
handed over, a record is never mutated again.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: AddInfo key under which RecCaster 1.5+ sends a record's DESC field.
DESC_INFO_KEY = "recordDesc"


@dataclass(frozen=True, slots=True)
class Peer:
    """The IOC end of a TCP session."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(slots=True)
class Record:
    """One record as uploaded: name, type, aliases, info tags and DESC.

    `rid` is the id the client chose; it is only meaningful within one connection.
    """

    rid: int
    name: str
    rtype: str
    aliases: list[str] = field(default_factory=list)
    infos: dict[str, str] = field(default_factory=dict)
    desc: str | None = None

    def add_info(self, key: str, value: str) -> None:
        """Store an info tag; `recordDesc` becomes the DESC (last value wins)."""
        if key == DESC_INFO_KEY:
            self.desc = value
        else:
            self.infos[key] = value

    def add_alias(self, alias: str) -> None:
        if alias != self.name and alias not in self.aliases:
            self.aliases.append(alias)


@dataclass(frozen=True, slots=True)
class KeptRun:
    """A run of records that the IOC sent exactly as in its previous upload.

    The session learns this from the digest of the run's frames
    (`bridge.protocol.runs`), so the records were never built. The processor that
    gave the expected digests (`bridge.interfaces.IUnchangedRuns`) still holds them
    as they were.

    Attributes:
        index: the run's position in the upload, from 0.
        digest: its digest, equal to the expected one.
        names: its records' names, in order.
        rtypes: their record types.
        aliases: its records' alias names.
        alias_of: for each alias, the position of its record in `names`.
    """

    index: int
    digest: str
    names: Sequence[str]
    rtypes: Sequence[str]
    aliases: Sequence[str]
    alias_of: Sequence[int]


@dataclass(frozen=True, slots=True)
class Transaction:
    """A slice of one session's upload, committed in order by the processors.

    The first transaction of a connection has ``seq == 0``. Records are cut at
    record boundaries only: a record, its aliases and its infos are never split.

    Attributes:
        session_id: unique per TCP connection within one bridge process.
        peer: the IOC's address.
        seq: position of this transaction in its session.
        client_infos: every client-wide info (record id 0) received so far,
            last value wins.
        records: records completed since the previous transaction.
        removed: names of records withdrawn with DelRecord.
        kept: runs sent unchanged since this session's previous transaction.
        digests: digests of the runs that ended since the previous transaction, in
            order ("" for a run that cannot be compared); empty when the session does
            not cut runs.
        upload_done: True on the transaction that UploadDone closed.
        connected: False only on the final transaction, sent when the session ends.
        reason: why the session ended (only when ``connected`` is False).
    """

    session_id: int
    peer: Peer
    seq: int
    client_infos: Mapping[str, str]
    records: Sequence[Record] = ()
    removed: Sequence[str] = ()
    kept: Sequence[KeptRun] = ()
    digests: Sequence[str] = ()
    upload_done: bool = False
    connected: bool = True
    reason: str = ""

    @property
    def initial(self) -> bool:
        return self.seq == 0


@dataclass(frozen=True, slots=True)
class IOCIdentity:
    """How an IOC is named in etcd, and whether that name survives a reconnect."""

    iocid: str
    hostname: str
    iocname: str | None
    stable: bool


def derive_identity(client_infos: Mapping[str, str], peer: Peer) -> IOCIdentity:
    """Name an IOC as the data model's "IOC identity" section says.

    1. ``<host>:<IOCNAME>``, host being the HOSTNAME the IOC sent, else its IP;
    2. else ``<host>:<IOC>``;
    3. else ``<ip>:<tcp source port>``, which changes on every reconnect.
    """
    host = client_infos.get("HOSTNAME") or peer.host
    for key in ("IOCNAME", "IOC"):
        name = client_infos.get(key)
        if name:
            return IOCIdentity(f"{host}:{name}", host, name, stable=True)
    return IOCIdentity(fallback_iocid(peer), host, None, stable=False)


def fallback_iocid(peer: Peer) -> str:
    """The unstable ``<ip>:<port>`` identity (rule 3)."""
    return f"{peer.host}:{peer.port}"


def iso_time(seconds: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. ``2026-11-23T21:00:00.123Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
