"""The configuration as text: the commented example file, and the effective configuration
with where each value comes from."""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping

import bridge
from bridge.config.keys import _KEYS
from bridge.config.load import _collect, load_config
from bridge.config.model import BridgeConfig, EtcdConfig, default_data_dir

_EXAMPLE = """\
# recsync-bridge configuration (recceiver.conf format).
#
# Every key is shown with its default. Keys are case-insensitive; each one can be
# overridden by an environment variable RECCEIVER_<SECTION>_<KEY>, for example
# RECCEIVER_RECCEIVER_MAXACTIVE=50 or RECCEIVER_ETCD_ENDPOINTS=etcd1:2379.
# Only the file given with -f is read (no /etc/recceiver.conf or ~/.recceiver.conf).
# A key or section the bridge does not use gets one line at start saying so (with the
# closest known name); twistd recsync-bridge -f FILE --print-config shows the
# configuration in effect and where each value comes from.

[recceiver]
# TCP listen address host:port. Empty: all interfaces, a free port; [::]:port
# listens on IPv6 and IPv4. The UDP announcements tell IOCs which port to connect to.
bind =
# Where to send announcements: comma list of IPv4 host[:port] (port 5049 by default).
# <broadcast> means 255.255.255.255; use one directed broadcast per subnet on
# multi-homed hosts, or 127.255.255.255:5049 for local tests.
addrlist = {addrlist}
# Seconds between announcements.
announceInterval = {c.announce_interval}
# Seconds of silence before an IOC is pinged; it is dropped after two.
tcptimeout = {c.tcptimeout}
# Seconds after which a batch is cut at the next record (or at the end of the upload);
# there is no timer: a batch in progress is written when one of those arrives.
commitInterval = {c.commit_interval}
# Records per batch: a batch is written once it holds this many (0: 1000).
commitSizeLimit = {c.commit_size_limit}
# IOCs that may upload at the same time; the others are greeted and wait, unread.
maxActive = {c.max_active}
# What runs beside etcd, which always stores the PV metadata: comma list of
# name[:instance]. show logs every upload (unchanged re-uploads are then decoded in
# full). The reference's cf and db are accepted and replaced, with one line each: cf
# by the bridge's ChannelFinder-compatible API ([http] and [cf]), db by etcd.
procs = {procs}
# Log level: DEBUG, INFO, WARN(ING), ERROR or CRITICAL.
loglevel = {c.loglevel}
# Seconds between status lines at INFO: connections, active IOCs, uploads and their
# queue, limits hit (0: never).
statusInterval = {c.status_interval}
# A port of its own for Prometheus metrics (any path), on the bind host, as the
# reference RecCeiver's metricsPort (0: none; [http] bind serves /metrics too).
metricsPort = {c.metrics_port}
# This bridge's name in etcd. Empty: <hostname>:<tcp port>.
bridgeId =

# Limits against misbehaving or hostile peers.
# Largest message body in bytes (at least 1024; 65798 fits every legal message).
maxBodyLength = {lim.max_body_length}
# Records per upload.
maxRecords = {lim.max_records}
# Client-wide infos, and infos per record.
maxInfos = {lim.max_infos}
# Aliases per record, and bytes of text per record.
maxAliases = {lim.max_aliases}
maxRecordBytes = {lim.max_record_bytes}
# Bytes the client-wide infos (the IOC's environment) of one connection may hold: keys
# and values, plus 110 for each info. Held while the IOC stays connected; more skipped.
maxClientInfoBytes = {lim.max_client_info_bytes}
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
# Networks that may connect, e.g. 10.0.0.0/8, 2001:db8::/32 (IPv4 networks match IPv4
# peers of a [::] listener too). Empty: everyone.
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
# Seconds the bridge may take at start to reach etcd (the embedded one: to become
# healthy); after that it exits non-zero with one line saying why.
start_timeout = {e.start_timeout}
# Data directory of the embedded etcd.
# data_dir = $XDG_STATE_HOME/recsync-bridge/etcd   (default ~/.local/state/...)
# Credentials (both or neither) and TLS files (cert and key both or neither).
# username = bridge
# password = ...
# ca = /etc/recsync-bridge/ca.pem
# cert = /etc/recsync-bridge/client.pem
# key = /etc/recsync-bridge/client-key.pem

[http]
# The directory's web server as host:port: pages, a read-only ChannelFinder API,
# /metrics, /healthz and /readyz; port 0 means any free port (logged). Empty: no web
# server, except with the embedded etcd (no [etcd] endpoints), which serves it on
# 127.0.0.1 at a free port unless this is set to "off".
bind =

[cf]
# How the directory shapes channels, with the reference RecCeiver's [cf] keys; its
# ChannelFinder-writer keys (baseUrl, cleanOnStart, ...) are accepted, each with one
# line at start saying it is not used.
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


def effective_config(
    path: str | None,
    environ: Mapping[str, str] = os.environ,
    *,
    overrides: Mapping[tuple[str, str], str] | None = None,
) -> str:
    """The configuration the bridge would run with, as a file that loads to the same.

    Every key, with a comment line above it saying where its value comes from (the
    file, an environment variable, the command line, or the default); secrets are
    masked (such a line does not load back to the same password). The notes
    (`load_config`) follow as comments. Raises `ConfigError` as `load_config` does.
    """
    config = load_config(path, environ, overrides=overrides)
    raw = _collect(path, environ, overrides)
    defaults = _default_texts(environ)
    lines = [
        f"# recsync-bridge {bridge.__version__}: the effective configuration"
        + (f" of {path}" if path else " (no file)"),
        "# Above each key: where its value comes from.",
    ]
    for section in ("recceiver", "etcd", "http", "cf"):
        lines += ["", f"[{section}]"]
        for spec in (k for k in _KEYS if k.section == section):
            item = raw.get((section, spec.name.lower()))
            if item is None:
                source, value = "default", defaults.get((section, spec.name.lower()), "")
            else:
                source, value = f"from {item.source}", " ".join(item.value.split())
            if spec.secret and value:
                value = "********"
            lines += [f"# {source}", f"{spec.name} = {value}".rstrip()]
    if config.notes:
        lines += ["", "# Notes:"]
        lines += [f"# {note.text}" for note in config.notes]
    return "\n".join(lines) + "\n"


def _default_texts(environ: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """(section, key in lower case) -> the default value as the example file spells it."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(example_config())
    texts = {
        (section, key): value
        for section in parser.sections()
        for key, value in parser.items(section, raw=True)
    }
    texts[("etcd", "data_dir")] = default_data_dir(environ)
    return texts
