"""The configuration's values: frozen dataclasses whose field defaults *are* the defaults."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.directory.channels import ChannelShape
from bridge.documents import DEFAULT_PREFIX
from bridge.protocol import wire
from bridge.protocol.names import NameLimits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The reference spells the limited broadcast address this way (Twisted's UDP alias).
BROADCAST_ALIAS = "<broadcast>"
BROADCAST = "255.255.255.255"
#: Environment overrides are RECCEIVER_<SECTION>_<KEY>, as in the reference .
ENV_PREFIX = "RECCEIVER_"
#: Below this even ordinary AddInfo messages (a long key plus a DESC) risk rejection.
MIN_BODY_LENGTH = 1024
#: The wire LEN field is a u32 (docs/protocol.md, Framing); a larger limit could never
#: be reached.
MAX_BODY_LIMIT = 2**32 - 1
#: etcd leases shorter than this expire between keep-alives on a loaded server.
MIN_LEASE_TTL = 2.0
#: The session's name limits, whose defaults are the configuration's.
_NAMES = NameLimits()
#: The processor that always runs: etcd is the store whatever ``procs`` says.
ETCD_PROC = "etcd"
DEFAULT_PROCS = (ETCD_PROC,)
#: Seconds the bridge may take at start to reach etcd before it gives up (exit non-zero).
DEFAULT_START_TIMEOUT = 30.0


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
class Note:
    """One line about a setting the bridge does not use, and why.

    A `warning` is probably a mistake (an unknown or misspelled key or section); other
    notes say what the bridge does instead of a reference RecCeiver setting. The text
    never contains a value (it could be a password).
    """

    text: str
    warning: bool = False


@dataclass(frozen=True)
class Limits:
    """Bounds on what peers may make the bridge hold or wait for ([recceiver] keys).

    Attributes:
        max_body_length: largest accepted message body, bytes (``maxBodyLength``).
        max_records: records per upload (``maxRecords``).
        max_infos: client-wide infos, and infos per record (``maxInfos``).
        max_aliases: aliases per record (``maxAliases``).
        max_record_bytes: text of one record (``maxRecordBytes``).
        max_client_info_bytes: what the client-wide infos of one connection may hold
            (``maxClientInfoBytes``).
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
    max_client_info_bytes: int = 16 << 10

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
        start_timeout: seconds the bridge may take at start to reach etcd (and for the
            embedded one, to become healthy) before it exits non-zero.
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
    start_timeout: float = DEFAULT_START_TIMEOUT

    @property
    def embedded(self) -> bool:
        """True when the bridge starts its own etcd (no endpoints configured)."""
        return not self.endpoints


@dataclass(frozen=True)
class HttpConfig:
    """The ``[http]`` section: where the directory's web server listens.

    Attributes:
        bind_host, bind_port: ``bind = host:port``; `bind_port` None (no ``bind``) means
            no web server, except for the embedded quick start (`serves`). Port 0 means
            any free port (logged at start).
        off: ``bind = off``: no web server at all, not even for the quick start.
    """

    bind_host: str = "127.0.0.1"
    bind_port: int | None = None
    off: bool = False

    @property
    def enabled(self) -> bool:
        return self.bind_port is not None

    def local_url(self, port: int | None = None) -> str:
        """``http://host:port`` that reaches this server from its own host: a wildcard
        bind (``0.0.0.0``, ``::``) on loopback; `port` the bound one when `bind_port`
        is 0 (any free port)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
            self.bind_host, self.bind_host
        )
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port or self.bind_port}"

    def serves(self, embedded_etcd: bool) -> HttpConfig | None:
        """Where a bridge serves the directory: `bind` when set; with the embedded etcd
        (the quick start) and no ``bind``, 127.0.0.1 on a free port; else nowhere."""
        if self.enabled:
            return self
        if embedded_etcd and not self.off:
            return HttpConfig("127.0.0.1", 0)
        return None


@dataclass(frozen=True)
class BridgeConfig:
    """Everything the bridge is configured with; build it with `load_config`.

    Field names are the snake_case forms of the ``[recceiver]`` keys, except
    ``bind`` (split into `bind_host` and `bind_port`) and ``procs`` (split into the
    processors to run, `procs`, always ``etcd`` first, and the reference's processors
    that the bridge replaces, `replaced_procs`). `notes` says, one line each, what was
    set but is not used and why (unknown keys and sections with the closest known
    name, the reference's settings the bridge has no use for, replaced processors); the
    service logs them at start. `bridge_id` None means ``<hostname>:<tcp port>``,
    filled in once the port is bound.
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
    replaced_procs: tuple[str, ...] = ()
    loglevel: str = "WARNING"
    status_interval: float = 60.0
    #: ``metricsPort``: a port of its own serving Prometheus metrics on the ``bind``
    #: host at any path, as the reference RecCeiver did (0: none).
    metrics_port: int = 0
    bridge_id: str | None = None
    limits: Limits = field(default_factory=Limits)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    notes: tuple[Note, ...] = ()
    #: ``[http]``: the directory's web server (ChannelFinder API), off unless bound.
    http: HttpConfig = field(default_factory=HttpConfig)
    #: ``[cf]``: how the directory shapes channels, with the reference's keys.
    cf: ChannelShape = field(default_factory=ChannelShape)

    def replace(self, **changes: Any) -> BridgeConfig:
        """A copy with `changes` applied. Not validated: pass already-parsed values."""
        return dataclasses.replace(self, **changes)
