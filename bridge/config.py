"""Bridge configuration: one recceiver.conf-style INI file plus environment overrides.

`load_config` is the only reader: it parses once into the frozen dataclasses
`BridgeConfig`, `Limits` and `EtcdConfig`, whose field defaults *are* the defaults.
Nothing else in the bridge reads the file or the ``RECCEIVER_*`` environment.
Key names, defaults and the override scheme follow the reference RecCeiver
(recsync-protocol.md §4.2-4.3), so an existing ``[recceiver]`` section keeps working;
``[etcd]`` and the hostile-input limits are ours.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import logging
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bridge.directory.channels import ChannelShape
from bridge.documents import DEFAULT_PREFIX
from bridge.errors import ConfigError
from bridge.processors import BUILTIN, UNSUPPORTED
from bridge.protocol import wire
from bridge.protocol.names import NameLimits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The reference spells the limited broadcast address this way (Twisted's UDP alias).
BROADCAST_ALIAS = "<broadcast>"
BROADCAST = "255.255.255.255"
#: Environment overrides are RECCEIVER_<SECTION>_<KEY>, as in the reference (§4.2).
ENV_PREFIX = "RECCEIVER_"
#: Below this even ordinary AddInfo messages (a long key plus a DESC) risk rejection.
MIN_BODY_LENGTH = 1024
#: The wire LEN field is a u32 (§2.7); a larger limit could never be reached.
MAX_BODY_LIMIT = 2**32 - 1
#: etcd leases shorter than this expire between keep-alives on a loaded server.
MIN_LEASE_TTL = 2.0
DEFAULT_PROCS = ("etcd",)
#: The session's name limits, whose defaults are the configuration's.
_NAMES = NameLimits()


def default_data_dir(environ: Mapping[str, str] = os.environ) -> str:
    """``$XDG_STATE_HOME/recsync-bridge/etcd``; XDG_STATE_HOME defaults to ``~/.local/state``.

    A relative XDG_STATE_HOME is ignored, as the XDG base-directory spec requires.
    """
    state = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):
        home = environ.get("HOME") or os.path.expanduser("~")
        state = os.path.join(home, ".local", "state")
    return os.path.join(state, "recsync-bridge", "etcd")


@dataclass(frozen=True)
class Limits:
    """Bounds on what peers may make the bridge hold or wait for ([recceiver] keys).

    Attributes:
        max_body_length: largest accepted message body, bytes (``maxBodyLength``).
        max_records: records per upload (``maxRecords``).
        max_infos: client-wide infos, and infos per record (``maxInfos``).
        max_aliases: aliases per record (``maxAliases``).
        max_record_bytes: text of one record, and of the client-wide infos (``maxRecordBytes``).
        max_connections: open IOC connections in total (``maxConnections``).
        max_connections_per_host: open connections from one address (``maxConnectionsPerHost``).
        greeting_timeout: seconds a new connection may take to greet (``greetingTimeout``).
        upload_timeout: seconds an upload may take until UploadDone (``uploadTimeout``).
        allow: networks that may connect; empty allows everyone (``allow``).
        max_hostname_length, max_iocname_length, max_iocid_length: UTF-8 bytes of
            HOSTNAME, of IOCNAME and IOC, and of the iocid (``maxHostnameLength``,
            ``maxIocNameLength``, ``maxIocidLength``); longer closes the connection.
        max_record_name_length, max_record_type_length, max_info_key_length: UTF-8
            bytes of record and alias names, record types and info keys
            (``maxRecordNameLength``, ``maxRecordTypeLength``, ``maxInfoKeyLength``);
            longer is skipped.
        max_active_per_host: upload slots one source address may hold at once; 0 means
            half of ``maxActive``, rounded up (``maxActivePerHost``).
        min_upload_rate, upload_rate_window: bytes per second an upload must bring,
            judged over every window of that many seconds of upload time
            (``minUploadRate``, 0 turns it off; ``uploadRateWindow``).
        max_held_bytes: what every IOC connection together may hold (read and not
            yet stored) before the largest uploads stop reading (``maxHeldBytes``).
    """

    max_body_length: int = wire.MAX_BODY_LENGTH
    max_records: int = 200_000
    max_infos: int = 1000
    max_aliases: int = 1000
    max_record_bytes: int = 1 << 20
    max_connections: int = 5000
    max_connections_per_host: int = 100
    greeting_timeout: float = 20.0
    upload_timeout: float = 600.0
    allow: tuple[Network, ...] = ()
    max_hostname_length: int = _NAMES.hostname
    max_iocname_length: int = _NAMES.iocname
    max_iocid_length: int = _NAMES.iocid
    max_record_name_length: int = _NAMES.record_name
    max_record_type_length: int = _NAMES.record_type
    max_info_key_length: int = _NAMES.info_key
    max_active_per_host: int = 0
    min_upload_rate: float = 1000.0
    upload_rate_window: float = 5.0
    max_held_bytes: int = 64 << 20

    def names(self) -> NameLimits:
        """The name limits as the session takes them."""
        return NameLimits(
            hostname=self.max_hostname_length,
            iocname=self.max_iocname_length,
            iocid=self.max_iocid_length,
            record_name=self.max_record_name_length,
            record_type=self.max_record_type_length,
            info_key=self.max_info_key_length,
        )


@dataclass(frozen=True)
class EtcdConfig:
    """The ``[etcd]`` section. The password never appears in repr/str.

    Attributes:
        endpoints: ``host:port`` or ``http(s)://host:port`` strings; empty = embedded etcd.
        prefix: key prefix, starting with "/" and without a trailing "/" (unless just "/").
        lease_ttl: seconds of the lease that keeps this bridge's IOCs alive.
        timeout: seconds per etcd call.
        data_dir: data directory of the embedded etcd.
        username, password: etcd credentials, both or neither.
        ca, cert, key: TLS files (existing when validated); cert and key both or neither.
        max_outage: seconds etcd may stay unreachable before sessions are closed.
        grace: seconds before a surviving bridge marks a dead bridge's IOCs inactive.
    """

    endpoints: tuple[str, ...] = ()
    prefix: str = DEFAULT_PREFIX
    lease_ttl: float = 10.0
    timeout: float = 2.0
    data_dir: str = field(default_factory=default_data_dir)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    max_outage: float = 60.0
    grace: float = 5.0

    @property
    def embedded(self) -> bool:
        """True when the bridge starts its own etcd (no endpoints configured)."""
        return not self.endpoints


@dataclass(frozen=True)
class HttpConfig:
    """The ``[http]`` section: where the directory's web server listens.

    Attributes:
        bind_host, bind_port: ``bind = host:port``; `bind_port` None (no ``bind``) means
            no web server. Port 0 means any free port (logged at start).
    """

    bind_host: str = "127.0.0.1"
    bind_port: int | None = None

    @property
    def enabled(self) -> bool:
        return self.bind_port is not None


@dataclass(frozen=True)
class BridgeConfig:
    """Everything the bridge is configured with; build it with `load_config`.

    Field names are the snake_case forms of the ``[recceiver]`` keys, except
    ``bind`` (split into `bind_host` and `bind_port`) and ``procs`` (split into the
    processors to run, `procs`, and the reference-only ones dropped, `unsupported_procs`,
    for which the service logs a warning). `ignored_keys` lists ``[recceiver]`` and
    ``[etcd]`` keys that were set but mean nothing to the bridge (e.g. the reference's
    ``metricsPort``), as ``"[section] key"``. `bridge_id` None means
    ``<hostname>:<tcp port>``, filled in once the port is bound.
    """

    bind_host: str = "0.0.0.0"
    bind_port: int = 0
    addrlist: tuple[tuple[str, int], ...] = ((BROADCAST, wire.ANNOUNCE_PORT),)
    announce_interval: float = 15.0
    tcptimeout: float = 15.0
    commit_interval: float = 5.0
    commit_size_limit: int = 0
    max_active: int = 20
    procs: tuple[str, ...] = DEFAULT_PROCS
    unsupported_procs: tuple[str, ...] = ()
    loglevel: str = "WARNING"
    status_interval: float = 60.0
    bridge_id: str | None = None
    limits: Limits = field(default_factory=Limits)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    ignored_keys: tuple[str, ...] = ()
    #: ``[http]``: the directory's web server (ChannelFinder API), off unless bound.
    http: HttpConfig = field(default_factory=HttpConfig)
    #: ``[cf]``: how the directory shapes channels, with the reference's keys.
    cf: ChannelShape = field(default_factory=ChannelShape)

    def replace(self, **changes: Any) -> BridgeConfig:
        """A copy with `changes` applied. Not validated: pass already-parsed values."""
        return dataclasses.replace(self, **changes)


# --- value converters: each raises ValueError(reason); the reason is shown to the user ---

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
    # The reference treats an empty bind as "all interfaces, any port" (§4.3).
    host, port = _split_host_port(text)
    host = _check_host(host) if host else "0.0.0.0"
    return {"bind_host": host, "bind_port": _port(port, 0) if port else 0}


def _destination(entry: str) -> tuple[str, int]:
    host, port = _split_host_port(entry)
    try:
        address = ipaddress.ip_address(BROADCAST if host == BROADCAST_ALIAS else host)
    except ValueError:
        address = None
    # RecCasters listen on IPv4 only (§1.3), and Twisted's UDP write takes no host names.
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
    if name not in BUILTIN and name not in UNSUPPORTED:
        known = ", ".join(sorted(BUILTIN))
        others = " and ".join(sorted(UNSUPPORTED))
        raise ValueError(
            f"unknown processor {name!r}; known: {known} ({others} are accepted and ignored)"
        )
    return name, f"{name}:{instance}" if colon else name


def _parse_procs(text: str) -> Parsed:
    procs: list[str] = []
    unsupported: list[str] = []
    for entry in _items(text):
        name, canonical = _proc_entry(entry)
        if name in UNSUPPORTED:
            unsupported.append(canonical)
        elif canonical in procs:
            raise ValueError(f"{canonical!r} is listed twice")
        else:
            procs.append(canonical)
    if sum(p.partition(":")[0] == "etcd" for p in procs) > 1:
        raise ValueError("at most one etcd processor may be listed")
    return {"procs": tuple(procs) or DEFAULT_PROCS, "unsupported_procs": tuple(unsupported)}


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
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP network like 10.0.0.0/8") from None
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


class _Key(NamedTuple):
    section: str
    name: str  # the documented spelling; lookups are case-insensitive
    parse: Parser
    secret: bool = False  # never echo the value


_positive = _real(0.0, inclusive=False)
_KEYS: tuple[_Key, ...] = (
    _Key("recceiver", "bind", _parse_bind),
    _Key("recceiver", "addrlist", _parse_addrlist),
    _Key("recceiver", "announceInterval", _set("announce_interval", _positive)),
    _Key("recceiver", "tcptimeout", _set("tcptimeout", _positive)),
    _Key("recceiver", "commitInterval", _set("commit_interval", _real(0.0))),
    _Key("recceiver", "commitSizeLimit", _set("commit_size_limit", _integer(0))),
    _Key("recceiver", "maxActive", _set("max_active", _integer(1))),
    _Key("recceiver", "procs", _parse_procs),
    _Key("recceiver", "loglevel", _set("loglevel", _loglevel)),
    _Key("recceiver", "statusInterval", _set("status_interval", _real(0.0))),
    _Key("recceiver", "bridgeId", _set("bridge_id", _bridge_id)),
    _Key(
        "recceiver",
        "maxBodyLength",
        _set("limits.max_body_length", _integer(MIN_BODY_LENGTH, MAX_BODY_LIMIT)),
    ),
    _Key("recceiver", "maxRecords", _set("limits.max_records", _integer(1))),
    _Key("recceiver", "maxInfos", _set("limits.max_infos", _integer(1))),
    _Key("recceiver", "maxAliases", _set("limits.max_aliases", _integer(1))),
    # Below 64 KiB a single legal info value could no longer be stored.
    _Key("recceiver", "maxRecordBytes", _set("limits.max_record_bytes", _integer(1 << 16))),
    _Key("recceiver", "maxConnections", _set("limits.max_connections", _integer(1))),
    _Key(
        "recceiver", "maxConnectionsPerHost", _set("limits.max_connections_per_host", _integer(1))
    ),
    _Key("recceiver", "greetingTimeout", _set("limits.greeting_timeout", _positive)),
    _Key("recceiver", "uploadTimeout", _set("limits.upload_timeout", _positive)),
    _Key("recceiver", "allow", _set("limits.allow", _allow)),
    _Key("recceiver", "maxHostnameLength", _set("limits.max_hostname_length", _integer(1))),
    _Key("recceiver", "maxIocNameLength", _set("limits.max_iocname_length", _integer(1))),
    _Key("recceiver", "maxIocidLength", _set("limits.max_iocid_length", _integer(1))),
    _Key("recceiver", "maxRecordNameLength", _set("limits.max_record_name_length", _integer(1))),
    # The record type and info key fields hold at most 255 bytes.
    _Key(
        "recceiver", "maxRecordTypeLength", _set("limits.max_record_type_length", _integer(1, 255))
    ),
    _Key("recceiver", "maxInfoKeyLength", _set("limits.max_info_key_length", _integer(1, 255))),
    _Key("recceiver", "maxActivePerHost", _set("limits.max_active_per_host", _integer(0))),
    _Key("recceiver", "minUploadRate", _set("limits.min_upload_rate", _real(0.0))),
    _Key("recceiver", "uploadRateWindow", _set("limits.upload_rate_window", _positive)),
    # Below 1 MiB a single batch of 1,000 records would be over it.
    _Key("recceiver", "maxHeldBytes", _set("limits.max_held_bytes", _integer(1 << 20))),
    _Key("etcd", "endpoints", _set("etcd.endpoints", _endpoints)),
    _Key("etcd", "prefix", _set("etcd.prefix", _prefix)),
    _Key("etcd", "lease_ttl", _set("etcd.lease_ttl", _real(MIN_LEASE_TTL))),
    _Key("etcd", "timeout", _set("etcd.timeout", _positive)),
    _Key("etcd", "data_dir", _data_dir),
    _Key("etcd", "username", _set("etcd.username", _optional)),
    _Key("etcd", "password", _set("etcd.password", _optional), secret=True),
    _Key("etcd", "ca", _set("etcd.ca", _existing_file)),
    _Key("etcd", "cert", _set("etcd.cert", _existing_file)),
    _Key("etcd", "key", _set("etcd.key", _existing_file)),
    _Key("etcd", "max_outage", _set("etcd.max_outage", _real(0.0))),
    _Key("etcd", "grace", _set("etcd.grace", _real(0.0))),
    _Key("http", "bind", _http_bind),
    _Key("cf", "alias", _set("cf.alias", _boolean)),
    _Key("cf", "recordType", _set("cf.record_type", _boolean)),
    _Key("cf", "recordDesc", _set("cf.record_desc", _boolean)),
    _Key("cf", "iocConnectionInfo", _set("cf.ioc_connection_info", _boolean)),
    _Key("cf", "infotags", _set("cf.infotags", _infotags)),
    _Key("cf", "environment_vars", _set("cf.env_vars", _env_vars)),
    _Key("cf", "username", _set("cf.username", lambda text: text or "cfstore")),
    _Key("cf", "envOwnerVariable", _set("cf.env_owner_variable", lambda text: text or "ENGINEER")),
    _Key("cf", "timezone", _set("cf.timezone", bool)),
)
_INDEX = {(key.section, key.name.lower()): key for key in _KEYS}
_SECTIONS = frozenset(key.section for key in _KEYS)
#: Sections whose unknown keys are reported. ``[cf]`` is shared with the reference, whose
#: ChannelFinder-writer keys (baseUrl, cleanOnStart, ...) mean nothing here.
_REPORTED_SECTIONS = _SECTIONS - {"cf"}

#: Every key the bridge understands, as (section, documented spelling).
KNOWN_KEYS: tuple[tuple[str, str], ...] = tuple((k.section, k.name) for k in _KEYS)


# --- loading ---


class _Raw(NamedTuple):
    value: str
    source: str  # the file, the environment variable or "command line"
    inherited: bool = False  # came from [DEFAULT], so not worth reporting as unknown


RawValues = dict[tuple[str, str], _Raw]


def load_config(
    path: str | None,
    environ: Mapping[str, str] = os.environ,
    *,
    overrides: Mapping[tuple[str, str], str] | None = None,
) -> BridgeConfig:
    """Read and validate the configuration.

    Only `path` is read: unlike the reference RecCeiver there are no implicit
    ``/etc/recceiver.conf`` or ``~/.recceiver.conf`` lookups. With `path` None the
    defaults apply. Section and key names are case-insensitive; values are not
    interpolated (a ``%`` is literal). Sections other than ``[recceiver]``, ``[etcd]``,
    ``[http]`` and ``[cf]`` are ignored; of ``[cf]`` only the keys that shape channels
    are read. Precedence, highest first: `overrides`
    (``{(section, key): value}``, from the command line), ``RECCEIVER_<SECTION>_<KEY>``
    variables in `environ` (e.g. ``RECCEIVER_ETCD_LEASE_TTL``), the file, the defaults.

    Raises:
        ConfigError: the file is missing or unreadable, or a value is invalid. The
            message names ``[section] key``, the bad value (never a password) and
            where it came from.
    """
    raw: RawValues = _read_file(path) if path is not None else {}
    raw.update(_from_environ(environ))
    raw.update(
        {
            (s.lower(), k.lower()): _Raw(v, "command line")
            for (s, k), v in (overrides or {}).items()
        }
    )
    values, ignored = _parse_all(raw)
    return _build(values, ignored, environ)


def _read_file(path: str) -> RawValues:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as stream:
            parser.read_file(stream, source=path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except configparser.Error as exc:
        raise ConfigError(f"config file {path}: {_describe(exc)}") from None
    return _file_values(parser, path)


def _describe(exc: configparser.Error) -> str:
    # A ParsingError quotes the offending lines, which might hold a password.
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: expected a [section] header first"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors)
        return f"cannot parse line {lines}: expected [section] or key = value"
    return str(exc)


def _file_values(parser: configparser.ConfigParser, source: str) -> RawValues:
    defaults = parser.defaults()
    found: RawValues = {}
    for section in parser.sections():
        for key, value in parser.items(section, raw=True):
            inherited = key in defaults and value == defaults[key]
            found[(section.lower(), key)] = _Raw(value, source, inherited)
    return found


def _from_environ(environ: Mapping[str, str]) -> RawValues:
    found: RawValues = {}
    for name, value in environ.items():
        if name.upper().startswith(ENV_PREFIX):
            section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
            if section and key:
                found[(section, key)] = _Raw(value, name)
    return found


def _parse_all(raw: RawValues) -> tuple[Parsed, list[str]]:
    """Convert every known key; return the field values and the unknown keys."""
    values: Parsed = {}
    ignored: list[str] = []
    for (section, key), item in sorted(raw.items()):
        spec = _INDEX.get((section, key))
        if spec is not None:
            values.update(_apply(spec, item))
        elif section in _REPORTED_SECTIONS and not item.inherited:
            ignored.append(f"[{section}] {key}")
    return values, ignored


def _apply(spec: _Key, item: _Raw) -> Parsed:
    text = item.value if spec.secret else item.value.strip()
    try:
        return spec.parse(text)
    except ValueError as exc:
        shown = "" if spec.secret else f" = {item.value!r}"
        raise ConfigError(
            f"[{spec.section}] {spec.name}{shown} (from {item.source}): {exc}"
        ) from None


def _build(values: Parsed, ignored: list[str], environ: Mapping[str, str]) -> BridgeConfig:
    groups: dict[str, Parsed] = {"": {}, "limits": {}, "etcd": {}, "http": {}, "cf": {}}
    for dotted, value in values.items():
        group, _, attr = dotted.rpartition(".")
        groups[group][attr] = value
    groups["etcd"].setdefault("data_dir", default_data_dir(environ))
    etcd = EtcdConfig(**groups["etcd"])
    _check_etcd(etcd)
    return BridgeConfig(
        **groups[""],
        limits=Limits(**groups["limits"]),
        etcd=etcd,
        ignored_keys=tuple(ignored),
        http=HttpConfig(**groups["http"]),
        cf=ChannelShape(**groups["cf"]),
    )


def _check_etcd(etcd: EtcdConfig) -> None:
    """Rules that involve more than one ``[etcd]`` key."""
    if (etcd.username is None) != (etcd.password is None):
        raise ConfigError("[etcd] username and password must be given together")
    if (etcd.cert is None) != (etcd.key is None):
        raise ConfigError("[etcd] cert and key must be given together")
    if etcd.embedded and (etcd.username or etcd.ca or etcd.cert):
        # The embedded etcd runs without authentication or TLS.
        raise ConfigError(
            "[etcd] username/password and ca/cert/key need [etcd] endpoints; "
            "the embedded etcd uses neither"
        )


_EXAMPLE = """\
# recsync-bridge configuration (recceiver.conf format).
#
# Every key is shown with its default. Keys are case-insensitive; each one can be
# overridden by an environment variable RECCEIVER_<SECTION>_<KEY>, for example
# RECCEIVER_RECCEIVER_MAXACTIVE=50 or RECCEIVER_ETCD_ENDPOINTS=etcd1:2379.
# Only the file given with -f is read (no /etc/recceiver.conf or ~/.recceiver.conf).

[recceiver]
# TCP listen address host:port. Empty: all interfaces, a free port. The UDP
# announcements tell IOCs which port to connect to.
bind =
# Where to send announcements: comma list of IPv4 host[:port] (port 5049 by default).
# <broadcast> means 255.255.255.255; use one directed broadcast per subnet on
# multi-homed hosts, or 127.255.255.255:5049 for local tests.
addrlist = {addrlist}
# Seconds between announcements.
announceInterval = {c.announce_interval}
# Seconds of silence before an IOC is pinged; it is dropped after two.
tcptimeout = {c.tcptimeout}
# Seconds a pending batch may wait before it is written (0: write at once).
commitInterval = {c.commit_interval}
# Records per batch: a batch is written once it holds this many (0: 1000).
commitSizeLimit = {c.commit_size_limit}
# IOCs that may upload at the same time; the others are greeted and wait, unread.
maxActive = {c.max_active}
# Processors, comma list of name[:instance]: etcd (stores PV metadata) and show
# (logs it; with show, unchanged re-uploads are decoded in full). The reference's
# cf and db are accepted but ignored, with a warning.
procs = {procs}
# Log level: DEBUG, INFO, WARN(ING), ERROR or CRITICAL.
loglevel = {c.loglevel}
# Seconds between "connections active / queued" log lines (0: never).
statusInterval = {c.status_interval}
# This bridge's name in etcd. Empty: <hostname>:<tcp port>.
bridgeId =

# Limits against misbehaving or hostile peers.
# Largest message body in bytes (at least 1024; 65798 fits every legal message).
maxBodyLength = {lim.max_body_length}
# Records per upload.
maxRecords = {lim.max_records}
# Client-wide infos, and infos per record.
maxInfos = {lim.max_infos}
# Aliases per record, and bytes of text per record (and of the client-wide infos).
maxAliases = {lim.max_aliases}
maxRecordBytes = {lim.max_record_bytes}
# Open IOC connections, in total and from one address.
maxConnections = {lim.max_connections}
maxConnectionsPerHost = {lim.max_connections_per_host}
# Upload slots (of maxActive) one address may hold at once; waiting IOCs are served
# address by address in turn. 0: half of maxActive, rounded up.
maxActivePerHost = {lim.max_active_per_host}
# Seconds a new connection may take to greet, and an upload to finish.
greetingTimeout = {lim.greeting_timeout}
uploadTimeout = {lim.upload_timeout}
# Minimum upload progress: an upload that brings fewer bytes a second over any
# uploadRateWindow seconds (time the bridge paused reading not counted) is closed,
# so that a slow connection cannot hold an upload slot. 0: no minimum.
minUploadRate = {lim.min_upload_rate}
uploadRateWindow = {lim.upload_rate_window}
# Bytes every IOC connection together may hold (read, not yet stored in etcd); past
# it the largest uploads stop reading and no new one starts until room comes back.
maxHeldBytes = {lim.max_held_bytes}
# Networks that may connect, e.g. 10.0.0.0/8, 2001:db8::/32. Empty: everyone.
allow =
# Longest names, in UTF-8 bytes. A longer HOSTNAME, IOCNAME or IOC, or the iocid
# made of them, closes the connection; a longer record or alias name, record type or
# info key is skipped (a record with its aliases and infos).
maxHostnameLength = {lim.max_hostname_length}
maxIocNameLength = {lim.max_iocname_length}
maxIocidLength = {lim.max_iocid_length}
maxRecordNameLength = {lim.max_record_name_length}
maxRecordTypeLength = {lim.max_record_type_length}
maxInfoKeyLength = {lim.max_info_key_length}

[etcd]
# Comma list of host:port, http://host:port or https://host:port.
# Empty: the bridge starts its own etcd (for a single bridge, or a demo).
endpoints =
# Every key the bridge writes starts with this prefix.
prefix = {e.prefix}
# Seconds of the lease that keeps this bridge's IOCs alive (at least 2).
lease_ttl = {e.lease_ttl}
# Seconds allowed for one etcd call.
timeout = {e.timeout}
# Seconds etcd may stay unreachable before IOC sessions are closed.
max_outage = {e.max_outage}
# Seconds before a surviving bridge marks a dead bridge's IOCs inactive.
grace = {e.grace}
# Data directory of the embedded etcd.
# data_dir = $XDG_STATE_HOME/recsync-bridge/etcd   (default ~/.local/state/...)
# Credentials (both or neither) and TLS files (cert and key both or neither).
# username = bridge
# password = ...
# ca = /etc/recsync-bridge/ca.pem
# cert = /etc/recsync-bridge/client.pem
# key = /etc/recsync-bridge/client-key.pem

[http]
# The directory's web server (a read-only ChannelFinder API) as host:port; port 0 means
# any free port (logged). Empty: no web server.
bind =

[cf]
# How the directory shapes channels, with the reference RecCeiver's [cf] keys; its
# ChannelFinder-writer keys (baseUrl, cleanOnStart, ...) are accepted and ignored.
# One channel per alias, with the property alias=<record name>.
alias = {cf.alias}
# recordType and recordDesc properties.
recordType = {cf.record_type}
recordDesc = {cf.record_desc}
# caPort and pvaPort properties, from RSRV_SERVER_PORT and PVAS_SERVER_PORT.
iocConnectionInfo = {cf.ioc_connection_info}
# Info tags copied as properties, space separated (e.g. archive archiver).
infotags =
# IOC environment variables copied as properties: VARIABLE:propertyName, ...
environment_vars =
# Owner of the properties, and of channels whose IOC sends no owner variable.
username = {cf.username}
envOwnerVariable = {cf.env_owner_variable}
# Anything here: times carry their UTC offset.
timezone =
"""


def example_config() -> str:
    """A commented example file listing every key with its default.

    Loading it gives the same `BridgeConfig` as loading no file at all.
    """
    defaults = BridgeConfig(etcd=EtcdConfig(data_dir=""))
    return _EXAMPLE.format(
        c=defaults,
        lim=defaults.limits,
        e=defaults.etcd,
        cf=defaults.cf,
        addrlist=", ".join(f"{host}:{port}" for host, port in defaults.addrlist),
        procs=", ".join(defaults.procs),
    )
