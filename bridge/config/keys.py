"""Every key the bridge reads: section, documented spelling, converter; and the reference
RecCeiver's keys it has no use for, with the reason."""

from __future__ import annotations

from typing import NamedTuple

from bridge.config.model import MAX_BODY_LIMIT, MIN_BODY_LENGTH, MIN_LEASE_TTL
from bridge.config.values import (
    Parser,
    _allow,
    _boolean,
    _bridge_id,
    _data_dir,
    _endpoints,
    _env_vars,
    _existing_file,
    _http_bind,
    _infotags,
    _integer,
    _loglevel,
    _optional,
    _parse_addrlist,
    _parse_bind,
    _parse_procs,
    _port,
    _prefix,
    _real,
    _set,
)


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
    _Key("recceiver", "metricsPort", _set("metrics_port", lambda text: _port(text or "0", 0))),
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
    _Key("recceiver", "maxClientInfoBytes", _set("limits.max_client_info_bytes", _integer(1024))),
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
    _Key("etcd", "start_timeout", _set("etcd.start_timeout", _positive)),
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

#: Keys of the reference RecCeiver that the bridge reads no value from, and why.
_CF_WRITER = (
    "a setting of the reference's ChannelFinder writer; the bridge serves a "
    "ChannelFinder-compatible API from etcd itself ([http] bind)"
)
_REFERENCE_KEYS: dict[tuple[str, str], str] = {
    ("recceiver", "logformat"): "the bridge logs in twistd's format",
    **{
        ("cf", key.lower()): _CF_WRITER
        for key in (
            "cleanOnStart",
            "cleanOnStop",
            "recceiverId",
            "findSizeLimit",
            "baseUrl",
            "cfUsername",
            "cfPassword",
            "verifySSL",
            "pushMaxRetries",
            "pushAlwaysRetry",
            "statusInterval",
        )
    },
}

#: Every key the bridge understands, as (section, documented spelling).
KNOWN_KEYS: tuple[tuple[str, str], ...] = tuple((k.section, k.name) for k in _KEYS)
