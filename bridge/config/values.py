"""Value converters: text of one key to field values; each raises ValueError(reason),
and the reason is shown to the user (`bridge.config.load`)."""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import logging
import math
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

from bridge.config.model import (
    BROADCAST,
    BROADCAST_ALIAS,
    ETCD_PROC,
    Network,
)
from bridge.processors import BUILTIN, REFERENCE_PROCS
from bridge.protocol import wire

Parsed = dict[str, Any]
Parser = Callable[[str], Parsed]


def _items(text: str) -> list[str]:
    """The non-empty entries of a comma-separated list."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _real(minimum: float, *, inclusive: bool = True) -> Callable[[str], float]:
    """A converter to a finite float >= `minimum` (> when not `inclusive`)."""
    relation = ">=" if inclusive else ">"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("must be a number") from None
        too_small = value < minimum or (value == minimum and not inclusive)
        if not math.isfinite(value) or too_small:
            raise ValueError(f"must be a finite number {relation} {minimum:g}")
        return value

    return convert


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A converter to a whole number in [`minimum`, `maximum`]."""
    span = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be a whole number {span}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"must be a whole number {span}")
        return value

    return convert


def _is_hostname(text: str) -> bool:
    """True for a host name (RFC 1123 letters, digits, "-") that is not a number.

    "_" is accepted too: Docker and Compose service names often contain it.
    """
    labels = text.removesuffix(".").split(".")
    if len(text) > 253 or labels[-1].isdigit():
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    return all(
        0 < len(label) <= 63 and set(label.lower()) <= allowed and "-" not in (label[0], label[-1])
        for label in labels
    )


def _check_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _is_hostname(host):
        raise ValueError(f"{host!r} is not an IP address or host name")
    return host


def _split_host_port(text: str) -> tuple[str, str]:
    """Split ``host:port``, ``[ipv6]:port``, ``host`` or a bare IPv6 address."""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IPv6 address]:port")
        return host, rest[1:]
    if text.count(":") > 1:
        return text, ""  # a bare IPv6 address; a port needs the brackets
    host, _, port = text.partition(":")
    return host, port


def _port(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"port {text!r} is not a number") from None
    if not minimum <= value <= 65535:
        raise ValueError(f"port {value} is outside {minimum}-65535")
    return value


def _parse_bind(text: str) -> Parsed:
    # The reference treats an empty bind as "all interfaces, any port".
    host, port = _split_host_port(text)
    host = _check_host(host) if host else "0.0.0.0"
    return {"bind_host": host, "bind_port": _port(port, 0) if port else 0}


def _destination(entry: str) -> tuple[str, int]:
    host, port = _split_host_port(entry)
    try:
        address = ipaddress.ip_address(BROADCAST if host == BROADCAST_ALIAS else host)
    except ValueError:
        address = None
    # RecCasters listen on IPv4 only (docs/protocol.md, Discovery), and Twisted's UDP
    # write takes no host names.
    if not isinstance(address, ipaddress.IPv4Address):
        raise ValueError(f"{entry!r}: the host must be an IPv4 address or {BROADCAST_ALIAS}")
    return str(address), _port(port, 1) if port else wire.ANNOUNCE_PORT


def _parse_addrlist(text: str) -> Parsed:
    destinations: list[tuple[str, int]] = []
    for entry in _items(text):
        destination = _destination(entry)
        if destination not in destinations:
            destinations.append(destination)
    # Empty means the default destination, as when the key is not set at all.
    return {"addrlist": tuple(destinations)} if destinations else {}


def _proc_entry(entry: str) -> tuple[str, str]:
    """Validate one ``name[:instance]``; return (name, canonical entry)."""
    name, colon, instance = (part.strip() for part in entry.partition(":"))
    name = name.lower()
    if not name or (colon and not instance):
        raise ValueError(f"{entry!r} is not name[:instance]")
    if name not in BUILTIN and name not in REFERENCE_PROCS:
        known = sorted({*BUILTIN, *REFERENCE_PROCS})
        hint = _closest(name, known)
        raise ValueError(
            f"unknown processor {name!r}"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; known: {', '.join(known)}"
        )
    return name, f"{name}:{instance}" if colon else name


def _parse_procs(text: str) -> Parsed:
    """etcd always stores; ``procs`` names what runs beside it (README: Configuration).

    ``etcd`` may be listed (it is the default) and ``show`` adds logging; the
    reference's ``cf`` and ``db`` are accepted and replaced (`REFERENCE_PROCS`), each
    with one note at start.
    """
    procs: list[str] = [ETCD_PROC]
    replaced: list[str] = []
    etcd_listed = 0
    for entry in _items(text):
        name, canonical = _proc_entry(entry)
        if name == ETCD_PROC:
            etcd_listed += 1
            if etcd_listed > 1:
                raise ValueError("etcd is listed twice (it is always the store)")
        elif name in REFERENCE_PROCS:
            replaced.append(canonical)
        elif canonical in procs:
            raise ValueError(f"{canonical!r} is listed twice")
        else:
            procs.append(canonical)
    return {"procs": tuple(procs), "replaced_procs": tuple(replaced)}


def _loglevel(text: str) -> str:
    number = logging.getLevelNamesMapping().get(text.upper(), logging.NOTSET)
    if number == logging.NOTSET:
        raise ValueError("must be one of DEBUG, INFO, WARN, WARNING, ERROR, CRITICAL")
    return logging.getLevelName(number)


def _bridge_id(text: str) -> str | None:
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in text):
        raise ValueError("must not contain control characters")
    return text or None


def _allow(text: str) -> tuple[Network, ...]:
    networks: list[Network] = []
    for entry in _items(text):
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP network like 10.0.0.0/8") from None
        if ipaddress.ip_interface(entry).ip != network.network_address:
            raise ValueError(f"{entry!r} has host bits set: did you mean {network}?")
        networks.append(network)
    return tuple(networks)


def _endpoint_scheme(entry: str) -> str:
    """Validate one etcd endpoint; return its scheme ("" when bare host:port)."""
    parts = urllib.parse.urlsplit(entry if "://" in entry else "//" + entry)
    try:
        port = parts.port
    except ValueError:
        port = None
    extra = parts.username or parts.path not in ("", "/") or parts.query or parts.fragment
    if parts.scheme not in ("", "http", "https") or extra or not parts.hostname or not port:
        raise ValueError(f"{entry!r} is not host:port, http://host:port or https://host:port")
    _check_host(parts.hostname)
    return parts.scheme


def _endpoints(text: str) -> tuple[str, ...]:
    entries = _items(text)
    schemes = {_endpoint_scheme(entry) for entry in entries}
    if {"http", "https"} <= schemes:
        raise ValueError("mixes http:// and https:// endpoints")
    return tuple(entries)


def _prefix(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError('must start with "/"')
    trimmed = text.rstrip("/") or "/"
    if "//" in trimmed:
        raise ValueError('must not contain an empty segment ("//")')
    return trimmed


def _optional(text: str) -> str | None:
    return text or None


def _data_dir(text: str) -> Parsed:
    # Empty means the default, which depends on the environment (see _build).
    return {"etcd.data_dir": os.path.expanduser(text)} if text else {}


def _existing_file(text: str) -> str | None:
    if not text:
        return None
    path = os.path.expanduser(text)
    if not os.path.isfile(path):
        raise ValueError("no such file")
    if not os.access(path, os.R_OK):
        raise ValueError("file is not readable")
    return path


def _boolean(text: str) -> bool:
    """ConfigParser's booleans, as the reference reads ``[cf]``."""
    value = configparser.ConfigParser.BOOLEAN_STATES.get(text.lower())
    if value is None:
        raise ValueError("must be one of true/false, yes/no, on/off, 1/0")
    return value


def _infotags(text: str) -> tuple[str, ...]:
    # The reference splits on whitespace and strips commas: "archive, archiver".
    tags = [item.strip(", ") for item in text.split()]
    return tuple(dict.fromkeys(tag for tag in tags if tag))


def _env_vars(text: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in _items(text):
        variable, colon, prop = (part.strip() for part in item.partition(":"))
        if not colon or not variable or not prop:
            raise ValueError(f"{item!r} is not VARIABLE:propertyName")
        pairs.append((variable, prop))
    return tuple(pairs)


def _http_bind(text: str) -> Parsed:
    if not text:
        return {"http.bind_port": None}
    if text.lower() == "off":
        return {"http.bind_port": None, "http.off": True}
    host, port = _split_host_port(text)
    if not port:
        raise ValueError("must be host:port (port 0: any free port)")
    return {
        "http.bind_host": _check_host(host) if host else "127.0.0.1",
        "http.bind_port": _port(port, 0),
    }


def _set(attr: str, convert: Callable[[str], Any]) -> Parser:
    """A parser that stores `convert(text)` in `attr` ("group.field" or "field")."""
    return lambda text: {attr: convert(text)}


def _closest(word: str, candidates: list[str]) -> str | None:
    """The candidate most like `word` (case-insensitive), if any is close enough."""
    lowered = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else None
