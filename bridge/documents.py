"""The data model: etcd key layout, JSON documents, and their parsers (v1, public).

Pure: builds keys and JSON values, and parses stored values back, never talks to
etcd. Everything that knows where something lives in etcd, or what a value looks
like, is here, so the writer, every reader (the `recsync` command, the read API)
and the tests agree by construction.

Writers build documents with the ``*_document`` functions; readers parse values with
the ``parse_*`` functions, one per document kind. Stored values are data written by
any bridge version (or by hand), so a parser never raises: a value that is not a
JSON object of the expected kind gives None, and a field of the wrong type gives the
default its class documents.

Names are data, never paths: every key component is percent-encoded where it
contains ``/``, ``%``, a control character, or is exactly ``.`` or ``..``, so a
record called ``../../bridges/x`` stays inside its IOC's own key range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.model import Record

DEFAULT_PREFIX = "/recsync"

IOCS = "iocs"
RECORDS = "records"
PVS = "pvs"
ALIVE = "alive"
SHARED = "shared"
BRIDGES = "bridges"

STATUS_UPLOADING = "uploading"
STATUS_ACTIVE = "active"
STATUS_INACTIVE = "inactive"
#: IOC statuses whose IOC holds a live session with some bridge.
LIVE_STATUSES = frozenset({STATUS_UPLOADING, STATUS_ACTIVE})

_MUST_ESCAPE = frozenset("/%") | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}
_NEEDS_ESCAPE = re.compile("[/%\x00-\x1f\x7f]")


def encode_component(text: str) -> str:
    """Percent-encode one key component so that it can never span or escape a level."""
    if text in (".", ".."):
        return "%2E" * len(text)
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return "".join(f"%{ord(ch):02X}" if ch in _MUST_ESCAPE else ch for ch in text)


def decode_component(text: str) -> str:
    """Invert `encode_component`."""
    if "%" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%" and _is_hex(text[i + 1 : i + 3]):
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


class Keys:
    """Key builder for one prefix. All methods return ``str``; etcd stores them as UTF-8."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix.rstrip("/")

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def ioc(self, iocid: str) -> str:
        return self._key(IOCS, encode_component(iocid))

    def iocs_prefix(self) -> str:
        return self._key(IOCS, "")

    def records_prefix(self, iocid: str) -> str:
        return self._key(RECORDS, encode_component(iocid), "")

    def record(self, iocid: str, name: str) -> str:
        return self._key(RECORDS, encode_component(iocid), encode_component(name))

    def pv(self, name: str) -> str:
        return self._key(PVS, encode_component(name))

    def pvs_prefix(self) -> str:
        return self._key(PVS, "")

    def alive(self, iocid: str) -> str:
        return self._key(ALIVE, encode_component(iocid))

    def shared(self, iocid: str) -> str:
        """Marks an IOC that some name-index entry lists with another claimant."""
        return self._key(SHARED, encode_component(iocid))

    def alive_prefix(self) -> str:
        return self._key(ALIVE, "")

    def bridge(self, bridge_id: str) -> str:
        return self._key(BRIDGES, encode_component(bridge_id))

    def bridges_prefix(self) -> str:
        return self._key(BRIDGES, "")

    def everything(self) -> str:
        return self.prefix + "/"

    def split(self, key: str) -> tuple[str, ...]:
        """Split a key under this prefix into its decoded components after the prefix.

        ``split(keys.record("a:b", "X/Y"))`` is ``("records", "a:b", "X/Y")``.
        """
        head = self.prefix + "/"
        if not key.startswith(head):
            raise ValueError(f"key {key!r} is not under {head!r}")
        return tuple(decode_component(part) for part in key[len(head) :].split("/"))


def dumps(doc: Mapping[str, Any]) -> bytes:
    """The one JSON encoding used for every value: compact, UTF-8, key order as given.

    Deterministic for equal input, so an unchanged record encodes to identical bytes
    and can be recognised without decoding what etcd holds.
    """
    return orjson.dumps(doc)


def loads(value: bytes) -> Any:
    """Decode a stored value; `ValueError` when it is not UTF-8 JSON."""
    return orjson.loads(value)


def record_document(record: Record, iocid: str) -> dict[str, Any]:
    """The record document. It shares the record's alias list and info dict (no copies:
    one is built per record stored); copy before changing either."""
    return {
        "name": record.name,
        "type": record.rtype,
        "iocid": iocid,
        "desc": record.desc,
        "aliases": record.aliases,
        "infos": record.infos,
    }


def record_value(record: Record, iocid: str) -> bytes:
    return dumps(record_document(record, iocid))


def pv_names(record: Record) -> Iterable[tuple[str, bool]]:
    """Every name-index entry a record owns: its name, then each alias (``is_alias``)."""
    yield record.name, False
    for alias in record.aliases:
        yield alias, True


def pv_document(
    owner: str, record: str, rtype: str, alias: bool, claims: list[str]
) -> dict[str, Any]:
    return {"iocid": owner, "record": record, "type": rtype, "alias": alias, "claims": claims}


def shared_document(name: str) -> dict[str, Any]:
    """``P/shared/<iocid>``: `name` is one the IOC shared when the mark was set."""
    return {"name": name}


def alive_document(bridge_id: str, since: str) -> dict[str, Any]:
    return {"bridge": bridge_id, "since": since}


def bridge_document(host: str, port: int | None, version: str, started: str) -> dict[str, Any]:
    """The bridge document (``P/bridges/<bridge id>``); `port` is None until known."""
    return {"host": host, "port": port, "version": version, "started": started}


def _port(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def ioc_document(
    *,
    iocid: str,
    status: str,
    hostname: str,
    iocname: str | None,
    ip: str,
    port: int,
    env: Mapping[str, str],
    bridge_id: str,
    connected: str,
    uploaded: str | None,
    disconnected: str | None,
    records: int,
    aliases: int,
    record_digests: list[str] | None = None,
) -> dict[str, Any]:
    """The IOC document; named fields are conveniences derived from ``env``.

    `record_digests`: one digest per run of records of the IOC's stored upload, in
    upload order (`bridge.protocol.runs.RunDecoder.start_runs`); None (JSON null) unless a
    complete upload is stored.
    """
    return {
        "iocid": iocid,
        "status": status,
        "hostname": hostname,
        "iocname": iocname,
        "ip": ip,
        "port": port,
        "ca_port": _port(env.get("RSRV_SERVER_PORT")),
        "pva_port": _port(env.get("PVAS_SERVER_PORT")),
        "epics_version": env.get("EPICS_VERSION"),
        "engineer": env.get("ENGINEER"),
        "location": env.get("LOCATION"),
        "env": dict(env),
        "bridge": bridge_id,
        "connected": connected,
        "uploaded": uploaded,
        "disconnected": disconnected,
        "records": records,
        "aliases": aliases,
        "record_digests": record_digests,
    }


# -- parsers: one per document kind ------------------------------------------------------


def load_object(value: bytes) -> dict[str, Any] | None:
    """The JSON object in `value`, or None when it is not UTF-8 JSON or not an object."""
    try:
        doc = loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_list(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(key): str(item) for key, item in value.items()}


@dataclass(frozen=True, slots=True)
class IocDocument:
    """A parsed IOC document (``P/iocs/<iocid>``).

    Every field is None (``env``: empty) when the stored field is missing or of the
    wrong type. `fields` is the whole stored object, unknown keys included, for
    writers that change one field and keep the rest.
    """

    fields: dict[str, Any]
    iocid: str | None
    status: str | None
    hostname: str | None
    iocname: str | None
    bridge: str | None
    connected: str | None
    uploaded: str | None
    disconnected: str | None
    records: int | None
    aliases: int | None
    #: One digest per run of the stored upload; None unless a list of strings.
    record_digests: list[str] | None
    env: dict[str, str]

    @property
    def live(self) -> bool:
        """The IOC holds a session with some bridge (`LIVE_STATUSES`)."""
        return self.status in LIVE_STATUSES

    @property
    def since(self) -> str | None:
        """When the IOC entered its status: uploaded (active), disconnected (inactive),
        otherwise connected."""
        if self.status == STATUS_ACTIVE:
            return self.uploaded
        if self.status == STATUS_INACTIVE:
            return self.disconnected
        return self.connected

    def inactive(self, disconnected: str) -> dict[str, Any]:
        """The stored document marked inactive at `disconnected`, every other key kept."""
        return {**self.fields, "status": STATUS_INACTIVE, "disconnected": disconnected}


def parse_ioc(value: bytes) -> IocDocument | None:
    """The IOC document in `value`; None unless it is a JSON object."""
    doc = load_object(value)
    if doc is None:
        return None
    digests = doc.get("record_digests")
    return IocDocument(
        fields=doc,
        iocid=_str(doc.get("iocid")),
        status=_str(doc.get("status")),
        hostname=_str(doc.get("hostname")),
        iocname=_str(doc.get("iocname")),
        bridge=_str(doc.get("bridge")),
        connected=_str(doc.get("connected")),
        uploaded=_str(doc.get("uploaded")),
        disconnected=_str(doc.get("disconnected")),
        records=_int(doc.get("records")),
        aliases=_int(doc.get("aliases")),
        record_digests=(
            digests
            if isinstance(digests, list) and all(isinstance(d, str) for d in digests)
            else None
        ),
        env=_str_dict(doc.get("env")),
    )


@dataclass(frozen=True, slots=True)
class RecordDocument:
    """A parsed record document (``P/records/<iocid>/<name>``).

    `rtype` is "" and `aliases`/`infos` are empty when missing or of the wrong type
    (alias names and info values that are not strings are converted); `complete` is
    False then, so a caller can tell a document it must not trust.
    """

    name: str
    rtype: str
    iocid: str | None
    desc: str | None
    aliases: list[str]
    infos: dict[str, str]
    complete: bool

    @property
    def names(self) -> list[str]:
        """The record's name, then its aliases: every name-index entry it owns."""
        return [self.name, *self.aliases]


def parse_record(value: bytes) -> RecordDocument | None:
    """The record document in `value`; None unless a JSON object with a string name."""
    doc = load_object(value)
    name = _str(doc.get("name")) if doc is not None else None
    if doc is None or name is None:
        return None
    rtype, aliases, infos = doc.get("type"), doc.get("aliases"), doc.get("infos")
    return RecordDocument(
        name=name,
        rtype=rtype if isinstance(rtype, str) else "",
        iocid=_str(doc.get("iocid")),
        desc=_str(doc.get("desc")),
        aliases=_str_list(aliases),
        infos=_str_dict(infos),
        complete=isinstance(rtype, str) and isinstance(aliases, list),
    )


def record_names(value: bytes) -> list[str]:
    """The record name and alias names in a stored record document ([] if unreadable)."""
    doc = parse_record(value)
    return [] if doc is None else doc.names


@dataclass(frozen=True, slots=True)
class PvEntry:
    """A parsed name-index entry (``P/pvs/<name>``): its owner and every claimant."""

    owner: str
    record: str
    rtype: str
    alias: bool
    claims: list[str]

    def value(self) -> bytes:
        return dumps(
            pv_document(self.owner, self.record, self.rtype, self.alias, list(self.claims))
        )


def parse_pv(value: bytes) -> PvEntry | None:
    """The entry in `value`, or None when it is not a well-formed name-index document."""
    try:
        doc = loads(value)
        claims = [str(c) for c in doc["claims"]]
        return PvEntry(
            str(doc["iocid"]), str(doc["record"]), str(doc["type"]), bool(doc["alias"]), claims
        )
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class AliveDocument:
    """A parsed alive key (``P/alive/<iocid>``); fields None when missing or not strings."""

    bridge: str | None
    since: str | None


def parse_alive(value: bytes) -> AliveDocument | None:
    """The alive document in `value`; None unless it is a JSON object."""
    doc = load_object(value)
    if doc is None:
        return None
    return AliveDocument(_str(doc.get("bridge")), _str(doc.get("since")))


@dataclass(frozen=True, slots=True)
class BridgeDocument:
    """A parsed bridge document (``P/bridges/<id>``); fields None when missing or of the
    wrong type."""

    host: str | None
    port: int | None
    version: str | None
    started: str | None


def parse_bridge(value: bytes) -> BridgeDocument | None:
    """The bridge document in `value`; None unless it is a JSON object."""
    doc = load_object(value)
    if doc is None:
        return None
    return BridgeDocument(
        _str(doc.get("host")),
        _int(doc.get("port")),
        _str(doc.get("version")),
        _str(doc.get("started")),
    )


@dataclass(frozen=True, slots=True)
class SharedMark:
    """A parsed shared mark (``P/shared/<iocid>``): `name` None when missing."""

    name: str | None


def parse_shared(value: bytes) -> SharedMark | None:
    """The shared mark in `value`; None unless it is a JSON object."""
    doc = load_object(value)
    return None if doc is None else SharedMark(_str(doc.get("name")))
