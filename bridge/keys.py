"""The etcd key layout and value documents (data model v1, the public interface).

Pure: builds key bytes and JSON values, never talks to etcd. Everything that
knows where something lives in etcd, or what a value looks like, is here, so the
bridge, the `recsync` command and the tests agree by construction.

Names are data, never paths: every key component is percent-encoded where it
contains ``/``, ``%``, a control character, or is exactly ``.`` or ``..``, so a
record called ``../../bridges/x`` stays inside its IOC's own key range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
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
    upload order (`bridge.wire.Decoder.start_runs`); None (JSON null) unless a
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
