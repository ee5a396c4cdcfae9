"""Channels as the reference RecCeiver's ``cf`` processor shaped them, and their JSON
exactly as a ChannelFinder sends it (pure).

A channel is ``{"name", "owner", "properties", "tags"}``; a property inside it is
``{"name", "owner", "value", "channels": []}``; keys in that order, nothing else (Phoebus
refuses unknown keys and then shows an empty table). The reference writes no tags, so
``"tags"`` is always ``[]``.

Properties, in the order the reference gives a new channel: ``alias`` (alias channels
only, when `ChannelShape.alias`), ``hostName``, ``iocName``, ``iocid``, ``iocIP``,
``pvStatus``, ``time``, ``recceiverID``, ``recordType``, ``recordDesc``, the listed info
tags, the mapped environment variables, ``caPort``, ``pvaPort``; then what only this
directory knows: ``duplicateCount`` (present only on a name that more than one IOC
claims: how many do). A property whose value is unknown is left out, as the reference
does.

Owners: a channel belongs to the IOC's ``ENGINEER`` (`ChannelShape.env_owner_variable`),
else ``CF_USERNAME``, else `ChannelShape.username`; every property belongs to
`ChannelShape.username`, because a ChannelFinder resets property owners to those of the
property definitions, which the reference created as that user.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.rules import ownership

HOST_NAME = "hostName"
IOC_NAME = "iocName"
IOC_ID = "iocid"
IOC_IP = "iocIP"
PV_STATUS = "pvStatus"
TIME = "time"
RECCEIVER_ID = "recceiverID"
ALIAS = "alias"
RECORD_TYPE = "recordType"
RECORD_DESC = "recordDesc"
CA_PORT = "caPort"
PVA_PORT = "pvaPort"
DUPLICATE_COUNT = "duplicateCount"

ACTIVE = "Active"
INACTIVE = "Inactive"
#: IOC document statuses shown as ``pvStatus=Active``: those of a live IOC, whose
#: claims win ownership (an uploading IOC is connected).
LIVE_STATUSES = ownership.LIVE_STATUSES

#: The IOC-level properties every channel has, in the reference's order.
HEAD_PROPERTIES = (HOST_NAME, IOC_NAME, IOC_ID, IOC_IP, PV_STATUS, TIME, RECCEIVER_ID)


@dataclass(frozen=True)
class ChannelShape:
    """What the ``[cf]`` section says channels look like (the reference's keys).

    Attributes:
        alias: one channel per alias, with ``alias=<record name>`` (``alias``).
        record_type: a ``recordType`` property (``recordType``).
        record_desc: a ``recordDesc`` property from the record's DESC (``recordDesc``).
        infotags: info tags copied as properties (``infotags``, space separated).
        env_vars: (IOC environment variable, property name) pairs
            (``environment_vars = ENGINEER:Engineer, ...``).
        ioc_connection_info: ``caPort`` and ``pvaPort`` properties (``iocConnectionInfo``).
        username: owner of the properties, and of channels whose IOC names nobody
            (``username``).
        env_owner_variable: the environment variable naming a channel's owner
            (``envOwnerVariable``).
        timezone: ``time`` carries the UTC offset (``timezone`` set to anything).
    """

    alias: bool = False
    record_type: bool = False
    record_desc: bool = False
    infotags: tuple[str, ...] = ()
    env_vars: tuple[tuple[str, str], ...] = ()
    ioc_connection_info: bool = True
    username: str = "cfstore"
    env_owner_variable: str = "ENGINEER"
    timezone: bool = False

    def env_properties(self) -> dict[str, str]:
        """Environment variable -> property name, in the reference's order (mapped
        variables first, then the connection ports)."""
        mapping = dict(self.env_vars)
        if self.ioc_connection_info:
            mapping["RSRV_SERVER_PORT"] = CA_PORT
            mapping["PVAS_SERVER_PORT"] = PVA_PORT
        return mapping

    def record_properties(self) -> tuple[str, ...]:
        """Record-level property names other than ``alias`` and ``recordType``."""
        desc = (RECORD_DESC,) if self.record_desc else ()
        return desc + tuple(t for t in self.infotags if t != RECORD_DESC or not desc)

    def property_names(self) -> list[str]:
        """Every property a channel may have, sorted (``GET .../properties``)."""
        names = set(HEAD_PROPERTIES) | set(self.env_properties().values())
        names |= set(self.record_properties()) | {DUPLICATE_COUNT}
        if self.alias:
            names.add(ALIAS)
        if self.record_type:
            names.add(RECORD_TYPE)
        return sorted(names)


def dumps(value: Any) -> bytes:
    """JSON of `value`; a string that is not valid Unicode (lone surrogates) is sent
    with U+FFFD in their place rather than failing the whole response."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(_clean(value))


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def property_json(name: str, owner: str, value: str | None) -> bytes:
    """One property as a ChannelFinder sends it."""
    return dumps({"name": name, "owner": owner, "value": value, "channels": []})


_PROPERTY_END = b',"channels":[]}'


class PropertyEncoder:
    """Encodes properties of one owner fast: the part before the value is built once
    per property name, and values that repeat (record types, info tags) once each."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._heads: dict[str, bytes] = {}
        self._repeated: dict[tuple[str, str], bytes] = {}

    def head(self, name: str) -> bytes:
        head = self._heads.get(name)
        if head is None:
            head = b"".join(
                (b'{"name":', dumps(name), b',"owner":', dumps(self.owner), b',"value":')
            )
            self._heads[name] = head
        return head

    def encode(self, name: str, value: str) -> bytes:
        """A property whose value is likely unique (a DESC, an alias target)."""
        return b"".join((self.head(name), dumps(value), _PROPERTY_END))

    def encode_repeated(self, name: str, value: str) -> bytes:
        """A property whose value repeats across channels; cached (bounded)."""
        key = (name, value)
        found = self._repeated.get(key)
        if found is None:
            found = self.encode(name, value)
            if len(self._repeated) < 100_000:
                self._repeated[key] = found
        return found


def channel_json(name: str, owner: str, properties: list[bytes]) -> bytes:
    """One channel from its already encoded properties."""
    return b"".join(
        (
            b'{"name":',
            dumps(name),
            b',"owner":',
            dumps(owner),
            b',"properties":[',
            b",".join(properties),
            b'],"tags":[]}',
        )
    )


def definition_json(name: str, owner: str, channels: list[bytes] | None = None) -> bytes:
    """A property definition (``GET .../properties``): value null, its channels."""
    return b"".join(
        (
            b'{"name":',
            dumps(name),
            b',"owner":',
            dumps(owner),
            b',"value":null,"channels":[',
            b",".join(channels or ()),
            b"]}",
        )
    )


def cf_time(iso: str | None, with_offset: bool) -> str | None:
    """The reference's ``time`` text for an ISO-8601 UTC time from etcd.

    The reference writes ``str(datetime.now())`` on its own host: local time, with
    microseconds unless they are zero, and the UTC offset only when ``timezone`` is set
    (``2026-05-15 10:56:04.123000`` or ``2026-05-15 10:56:04.123000+02:00``).
    """
    if not iso:
        return None
    try:
        moment = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    local = moment.astimezone()
    return str(local if with_offset else local.replace(tzinfo=None))


@dataclass(frozen=True, slots=True)
class IOCProperties:
    """The IOC-level part of every channel an IOC owns.

    Attributes:
        owner: the channel owner.
        values: property name -> value, for filtering.
        head: encoded properties before the record-level ones.
        tail: encoded properties after them.
    """

    owner: str
    values: Mapping[str, str]
    head: tuple[bytes, ...]
    tail: tuple[bytes, ...]


#: The properties of a channel whose IOC has no document.
NO_IOC = IOCProperties("", {}, (), ())


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def ioc_properties(shape: ChannelShape, doc: Mapping[str, Any]) -> IOCProperties:
    """The IOC-level properties of an IOC document (data model: IOC document)."""
    env = doc.get("env") or {}
    if not isinstance(env, Mapping):
        env = {}
    status = doc.get("status")
    live = status in LIVE_STATUSES
    moment = doc.get("uploaded") or doc.get("connected")
    if not live:
        moment = doc.get("disconnected") or moment
    head_values = (
        (HOST_NAME, _text(doc.get("hostname")) or _text(doc.get("ip"))),
        (IOC_NAME, _text(doc.get("iocname")) or _text(doc.get("port"))),
        (IOC_ID, _text(doc.get("iocid"))),
        (IOC_IP, _text(doc.get("ip"))),
        (PV_STATUS, (ACTIVE if live else INACTIVE) if status else None),
        (TIME, cf_time(_text(moment), shape.timezone)),
        (RECCEIVER_ID, _text(doc.get("bridge"))),
    )
    tail_values = tuple(
        (prop, _text(env.get(var))) for var, prop in shape.env_properties().items()
    )
    owner = (
        _text(env.get(shape.env_owner_variable)) or _text(env.get("CF_USERNAME")) or shape.username
    )
    values = {k: v for k, v in head_values + tail_values if v is not None}
    return IOCProperties(
        owner,
        values,
        tuple(property_json(k, shape.username, v) for k, v in head_values if v is not None),
        tuple(property_json(k, shape.username, v) for k, v in tail_values if v is not None),
    )
