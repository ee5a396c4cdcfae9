"""bridge.config: defaults, parsing of every key, overrides and error messages."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from bridge.config import (
    KNOWN_KEYS,
    BridgeConfig,
    EtcdConfig,
    Limits,
    default_data_dir,
    effective_config,
    example_config,
    load_config,
)
from bridge.errors import ConfigError
from bridge.protocol.names import NameLimits
from bridge.server.admission import DEFAULT_MAX_HELD_BYTES, default_share
from bridge.service import session_limits

SECRET = "s3cr%t-Pa55"


def load(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> BridgeConfig:
    path = tmp_path / "recceiver.conf"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(str(path), {} if environ is None else environ)


def load_error(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    return str(info.value)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_text("-----BEGIN NOTHING-----\n")
        files[name] = str(path)
    return files


# --- defaults ---


def test_no_file_gives_the_documented_defaults() -> None:
    cfg = load_config(None, {"HOME": "/home/op"})
    assert (cfg.bind_host, cfg.bind_port) == ("0.0.0.0", 0)
    assert cfg.addrlist == (("255.255.255.255", 5049),)
    assert (cfg.announce_interval, cfg.tcptimeout, cfg.commit_interval) == (15.0, 15.0, 5.0)
    assert (cfg.commit_size_limit, cfg.max_active) == (0, 20)
    assert (cfg.procs, cfg.replaced_procs) == (("etcd",), ())
    assert (cfg.loglevel, cfg.status_interval, cfg.bridge_id) == ("WARNING", 60.0, None)
    assert cfg.limits == Limits(65798, 200000, 1000, 1000, 1 << 20, 5000, 100, 20.0, 600.0, ())
    assert cfg.etcd == EtcdConfig(
        endpoints=(),
        prefix="/recsync",
        lease_ttl=10.0,
        timeout=2.0,
        data_dir="/home/op/.local/state/recsync-bridge/etcd",
        max_outage=60.0,
        grace=5.0,
        start_timeout=30.0,
    )
    assert cfg.etcd.embedded
    assert cfg.notes == ()


def test_dataclass_defaults_equal_loaded_defaults() -> None:
    environ = {"XDG_STATE_HOME": "/state"}
    expected = BridgeConfig(etcd=EtcdConfig(data_dir=default_data_dir(environ)))
    assert load_config(None, environ) == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"XDG_STATE_HOME": "/var/state", "HOME": "/h"}, "/var/state/recsync-bridge/etcd"),
        ({"HOME": "/h"}, "/h/.local/state/recsync-bridge/etcd"),
        ({"XDG_STATE_HOME": "relative", "HOME": "/h"}, "/h/.local/state/recsync-bridge/etcd"),
        ({"XDG_STATE_HOME": "", "HOME": "/h"}, "/h/.local/state/recsync-bridge/etcd"),
    ],
)
def test_data_dir_default_follows_xdg_state_home(environ: dict[str, str], expected: str) -> None:
    assert load_config(None, environ).etcd.data_dir == expected


def test_config_objects_are_frozen() -> None:
    cfg = load_config(None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_active = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.etcd.prefix = "/x"  # type: ignore[misc]


def test_replace_returns_a_changed_copy() -> None:
    cfg = load_config(None, {})
    changed = cfg.replace(max_active=3)
    assert (changed.max_active, cfg.max_active) == (3, 20)
    assert changed.etcd is cfg.etcd


# --- every key ---


def test_every_key_is_parsed(tmp_path: Path, tls_files: dict[str, str]) -> None:
    cfg = load(
        tmp_path,
        f"""
        [recceiver]
        bind = 127.0.0.1:5050
        addrlist = 10.0.0.255, <broadcast>:6000
        announceInterval = 2.5
        tcptimeout = 7
        commitInterval = 0
        commitSizeLimit = 5000
        maxActive = 3
        procs = etcd, show:debug
        loglevel = debug
        statusInterval = 0
        bridgeId = bridge-a
        maxBodyLength = 1024
        maxRecords = 10
        maxInfos = 11
        maxAliases = 7
        maxRecordBytes = 70000
        maxConnections = 12
        maxConnectionsPerHost = 13
        greetingTimeout = 1.5
        uploadTimeout = 30
        allow = 10.0.0.0/8, 2001:db8::/32
        [etcd]
        endpoints = etcd1:2379, https://[2001:db8::1]:2379
        prefix = /site/recsync/
        lease_ttl = 2
        timeout = 0.5
        data_dir = /srv/etcd
        username = bridge
        password = {SECRET}
        ca = {tls_files["ca"]}
        cert = {tls_files["cert"]}
        key = {tls_files["key"]}
        max_outage = 0
        grace = 1.25
        start_timeout = 4
    """,
    )
    assert (cfg.bind_host, cfg.bind_port) == ("127.0.0.1", 5050)
    assert cfg.addrlist == (("10.0.0.255", 5049), ("255.255.255.255", 6000))
    assert (cfg.announce_interval, cfg.tcptimeout, cfg.commit_interval) == (2.5, 7.0, 0.0)
    assert (cfg.commit_size_limit, cfg.max_active) == (5000, 3)
    assert (cfg.procs, cfg.replaced_procs) == (("etcd", "show:debug"), ())
    assert (cfg.loglevel, cfg.status_interval, cfg.bridge_id) == ("DEBUG", 0.0, "bridge-a")
    assert cfg.limits == Limits(
        1024,
        10,
        11,
        7,
        70000,
        12,
        13,
        1.5,
        30.0,
        (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
    )
    assert cfg.etcd == EtcdConfig(
        endpoints=("etcd1:2379", "https://[2001:db8::1]:2379"),
        prefix="/site/recsync",
        lease_ttl=2.0,
        timeout=0.5,
        data_dir="/srv/etcd",
        username="bridge",
        password=SECRET,
        ca=tls_files["ca"],
        cert=tls_files["cert"],
        key=tls_files["key"],
        max_outage=0.0,
        grace=1.25,
        start_timeout=4.0,
    )
    assert not cfg.etcd.embedded
    assert cfg.notes == ()


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("", "0.0.0.0", 0),
        (":5050", "0.0.0.0", 5050),
        ("10.0.0.1", "10.0.0.1", 0),
        ("localhost:0", "localhost", 0),
        ("[::1]:5050", "::1", 5050),
        ("[::]", "::", 0),
        ("::", "::", 0),
    ],
)
def test_bind_forms(tmp_path: Path, value: str, host: str, port: int) -> None:
    cfg = load(tmp_path, f"[recceiver]\nbind = {value}\n")
    assert (cfg.bind_host, cfg.bind_port) == (host, port)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<broadcast>", (("255.255.255.255", 5049),)),
        ("", (("255.255.255.255", 5049),)),
        ("127.255.255.255:5049, 127.255.255.255", (("127.255.255.255", 5049),)),
        ("10.0.0.255:1, ,10.1.255.255:65535", (("10.0.0.255", 1), ("10.1.255.255", 65535))),
    ],
)
def test_addrlist_forms(tmp_path: Path, value: str, expected: object) -> None:
    assert load(tmp_path, f"[recceiver]\naddrlist = {value}\n").addrlist == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/recsync", "/recsync"), ("/a/b///", "/a/b"), ("/", "/"), ("///", "/")],
)
def test_prefix_trailing_slashes_are_removed(tmp_path: Path, value: str, expected: str) -> None:
    assert load(tmp_path, f"[etcd]\nprefix = {value}\n").etcd.prefix == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("WARN", "WARNING"),
        ("warning", "WARNING"),
        ("Info", "INFO"),
        ("error", "ERROR"),
        ("CRITICAL", "CRITICAL"),
        ("fatal", "CRITICAL"),
    ],
)
def test_loglevel_is_canonical_python_name(tmp_path: Path, value: str, expected: str) -> None:
    assert load(tmp_path, f"[recceiver]\nloglevel = {value}\n").loglevel == expected


def test_endpoint_host_names_may_contain_underscores(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[etcd]\nendpoints = demo_etcd_1:2379, http://etcd-2.lan:2379\n")
    assert cfg.etcd.endpoints == ("demo_etcd_1:2379", "http://etcd-2.lan:2379")


def test_data_dir_expands_home(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[etcd]\ndata_dir = ~/etcd-data\n")
    assert cfg.etcd.data_dir == os.path.expanduser("~/etcd-data")


def test_percent_signs_are_literal(tmp_path: Path) -> None:
    cfg = load(tmp_path, f"[etcd]\nendpoints = e:2379\nusername = u\npassword = {SECRET}\n")
    assert cfg.etcd.password == SECRET


# --- processors ---


def test_etcd_always_stores_and_procs_name_what_runs_beside_it(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[recceiver]\nprocs = show, cf\n")
    assert (cfg.procs, cfg.replaced_procs) == (("etcd", "show"), ("cf",))


@pytest.mark.parametrize("value", ["cf", "cf, db:lite", "db", "", "etcd"])
def test_etcd_is_the_only_processor_when_no_other_is_named(tmp_path: Path, value: str) -> None:
    cfg = load(tmp_path, f"[recceiver]\nprocs = {value}\n")
    assert cfg.procs == ("etcd",)
    assert cfg.replaced_procs == tuple(
        p.strip() for p in value.split(",") if p.strip() and p.strip() != "etcd"
    )


def test_proc_names_are_case_insensitive(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[recceiver]\nprocs = ETCD, Show:Inst\n")
    assert cfg.procs == ("etcd", "show:Inst")


def test_replaced_procs_get_one_note_each_saying_what_replaces_them(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[recceiver]\nprocs = cf, db\n")
    cf, db = (note.text for note in cfg.notes)
    assert "procs: cf" in cf and "ChannelFinder-compatible API" in cf and "[http] bind" in cf
    assert "procs: db" in db and "etcd stores" in db
    assert not any(note.warning for note in cfg.notes)
    served = load(tmp_path, "[recceiver]\nprocs = cf\n[http]\nbind = 127.0.0.1:8080\n")
    assert "served at http://127.0.0.1:8080" in served.notes[0].text


def test_an_unknown_proc_is_refused_with_the_closest_name(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[recceiver]\nprocs = shwo\n")
    assert "unknown processor 'shwo' (did you mean 'show'?)" in message


# --- precedence and case ---


def test_environment_beats_file(tmp_path: Path) -> None:
    environ = {
        "RECCEIVER_RECCEIVER_MAXACTIVE": "7",
        "RECCEIVER_ETCD_ENDPOINTS": "etcd9:2379",
        "RECCEIVER_ETCD_LEASE_TTL": "30",
    }
    cfg = load(tmp_path, "[recceiver]\nmaxActive = 3\n[etcd]\nendpoints = etcd1:2379\n", environ)
    assert (cfg.max_active, cfg.etcd.endpoints, cfg.etcd.lease_ttl) == (7, ("etcd9:2379",), 30.0)


def test_environment_names_are_case_insensitive() -> None:
    cfg = load_config(None, {"recceiver_Recceiver_maxActive": "4", "RECCEIVER_ETCD_Prefix": "/p"})
    assert (cfg.max_active, cfg.etcd.prefix) == (4, "/p")


def test_environment_for_other_sections_is_not_used() -> None:
    cfg = load_config(None, {"RECCEIVER_CF_BASEURL": "http://cf", "RECCEIVER_X": "1"})
    assert cfg.replace(notes=()) == load_config(None, {})
    assert [note.text.split(" (")[0] for note in cfg.notes] == ["[cf] baseurl"]


def test_overrides_beat_environment(tmp_path: Path) -> None:
    path = tmp_path / "r.conf"
    path.write_text("[recceiver]\nbind = :1\n")
    cfg = load_config(
        str(path), {"RECCEIVER_RECCEIVER_BIND": ":2"}, overrides={("RECCEIVER", "Bind"): ":3"}
    )
    assert cfg.bind_port == 3


def test_section_and_key_names_are_case_insensitive(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[RECCEIVER]\nMAXACTIVE = 5\n[Etcd]\nLease_TTL = 3\n")
    assert (cfg.max_active, cfg.etcd.lease_ttl) == (5, 3.0)


def test_default_section_applies_to_both_sections(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[DEFAULT]\ntimeout = 3\n[recceiver]\n[etcd]\n")
    assert cfg.etcd.timeout == 3.0
    assert cfg.notes == ()


def test_every_unused_key_and_section_gets_one_note(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "[recceiver]\nlogformat = %(message)s\nmaxactive = 3\nmaxActiv = 4\n"
        "[etcd]\nendpoint = x:1\n[cf]\nbaseurl = http://cf\ncfPassword = s3cret\n"
        "[ectd]\nendpoints = y:1\nother = 1\n[lite]\ndbname = x\n",
        {"RECCEIVER_RECCEIVER_ENDPOINTS": "z:1", "RECCEIVER_RECCEIVER_PROCS": "db:lite"},
    )
    texts = {note.text: note.warning for note in cfg.notes}
    conf = str(tmp_path / "recceiver.conf")
    expected = {
        "procs: db:lite (the reference's SQL database writer) is replaced: etcd stores "
        "the PV metadata (README: 'The data model')": False,
        f"[cf] baseurl (from {conf}) is not used: a setting of the reference's "
        "ChannelFinder writer; the bridge serves a ChannelFinder-compatible API from etcd "
        "itself ([http] bind)": False,
        f"[cf] cfpassword (from {conf}) is not used: a setting of the reference's "
        "ChannelFinder writer; the bridge serves a ChannelFinder-compatible API from etcd "
        "itself ([http] bind)": False,
        f"[ectd] (from {conf}) is not a known section and is ignored; did you mean [etcd]?": True,
        f"[etcd] endpoint (from {conf}) is not a known key and is ignored; did you mean "
        "endpoints?": True,
        f"[lite] (from {conf}) holds settings of the reference's SQL database writer "
        "(procs = db), which the bridge replaces: not used": False,
        "[recceiver] endpoints (from RECCEIVER_RECCEIVER_ENDPOINTS) is not a known key "
        "and is ignored; did you mean [etcd] endpoints?": True,
        f"[recceiver] logformat (from {conf}) is not used: the bridge logs in twistd's "
        "format": False,
        f"[recceiver] maxactiv (from {conf}) is not a known key and is ignored; did you "
        "mean maxActive?": True,
    }
    assert texts == expected
    assert "s3cret" not in repr(cfg.notes)


def test_values_inherited_from_default_are_not_reported(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[DEFAULT]\ntimeout = 3\n[recceiver]\n[etcd]\n[cf]\n")
    assert cfg.notes == ()


# --- the effective configuration ---


def test_effective_config_says_where_each_value_comes_from(tmp_path: Path) -> None:
    path = tmp_path / "r.conf"
    path.write_text("[recceiver]\nmaxActive = 7\n[etcd]\nendpoints = e:1\nusername = u\n")
    environ = {"HOME": "/home/op", "RECCEIVER_ETCD_PASSWORD": SECRET, "RECCEIVER_X_Y": "1"}
    text = effective_config(str(path), environ, overrides={("recceiver", "bind"): ":5"})
    lines = text.splitlines()

    def source(key: str) -> str:
        return lines[lines.index(key) - 1]

    assert source("maxActive = 7") == f"# from {path}"
    assert source("password = ********") == "# from RECCEIVER_ETCD_PASSWORD"
    assert source("bind = :5") == "# from command line"
    assert source("lease_ttl = 10.0") == "# default"
    assert source("data_dir = /home/op/.local/state/recsync-bridge/etcd") == "# default"
    assert "# [x] (from RECCEIVER_X_Y) is not a known section and is ignored" in lines
    assert SECRET not in text
    # Apart from the masked password, it loads back to the same configuration.
    again = tmp_path / "again.conf"
    again.write_text(text)
    reloaded = load_config(str(again), {"HOME": "/home/op", "RECCEIVER_ETCD_PASSWORD": SECRET})
    original = load_config(str(path), environ, overrides={("recceiver", "bind"): ":5"})
    assert reloaded.replace(notes=()) == original.replace(notes=())


# --- errors ---


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigError, match=re.escape(missing)):
        load_config(missing, {})


def test_unparsable_file_is_a_config_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, f"[etcd]\n{SECRET}\n")
    assert "line 2" in message
    assert SECRET not in message


def test_file_without_section_is_a_config_error(tmp_path: Path) -> None:
    assert "line 1" in load_error(tmp_path, "maxActive = 3\n")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("recceiver", "bind", "10.0.0.1:99999"),
        ("recceiver", "bind", "host name:1"),
        ("recceiver", "bind", "[::1"),
        ("recceiver", "bind", "1234"),
        ("recceiver", "addrlist", "10.0.0.255:0"),
        ("recceiver", "addrlist", "10.0.0.255:x"),
        ("recceiver", "addrlist", "[ff02::1]:5049"),
        ("recceiver", "addrlist", "iocs.example.org"),
        ("recceiver", "announceInterval", "0"),
        ("recceiver", "announceInterval", "inf"),
        ("recceiver", "tcptimeout", "-1"),
        ("recceiver", "tcptimeout", "soon"),
        ("recceiver", "commitInterval", "-0.5"),
        ("recceiver", "commitSizeLimit", "-1"),
        ("recceiver", "commitSizeLimit", "1.5"),
        ("recceiver", "maxActive", "0"),
        ("recceiver", "procs", "etcd, frob"),
        ("recceiver", "procs", "show, show"),
        ("recceiver", "procs", "etcd, etcd:other"),
        ("recceiver", "procs", "show:"),
        ("recceiver", "loglevel", "LOUD"),
        ("recceiver", "loglevel", "NOTSET"),
        ("recceiver", "statusInterval", "nan"),
        ("recceiver", "bridgeId", "a\x01b"),
        ("recceiver", "maxBodyLength", "1023"),
        ("recceiver", "maxBodyLength", str(2**32)),
        ("recceiver", "maxRecords", "0"),
        ("recceiver", "maxInfos", "0"),
        ("recceiver", "maxConnections", "0"),
        ("recceiver", "maxConnectionsPerHost", "zero"),
        ("recceiver", "greetingTimeout", "0"),
        ("recceiver", "uploadTimeout", "-5"),
        ("recceiver", "allow", "10.0.0.0/33"),
        ("recceiver", "allow", "10.1.0.1/16"),
        ("etcd", "start_timeout", "0"),
        ("etcd", "endpoints", "etcd1"),
        ("etcd", "endpoints", "ftp://etcd1:2379"),
        ("etcd", "endpoints", "http://etcd1:2379/v3"),
        ("etcd", "endpoints", "http://a:1, https://b:2"),
        ("etcd", "endpoints", "etcd1:99999"),
        ("etcd", "prefix", "recsync"),
        ("etcd", "prefix", "/a//b"),
        ("etcd", "lease_ttl", "1.5"),
        ("etcd", "timeout", "0"),
        ("etcd", "ca", "/nonexistent/ca.pem"),
        ("etcd", "max_outage", "-1"),
        ("etcd", "grace", "later"),
    ],
)
def test_invalid_value_names_key_and_value(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    message = load_error(tmp_path, "", {f"RECCEIVER_{section}_{key}".upper(): value})
    assert f"[{section}] {key}" in message
    assert repr(value) in message
    assert f"RECCEIVER_{section}_{key}".upper() in message


def test_invalid_value_in_file_names_the_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[recceiver]\nmaxactive = many\n")
    assert "[recceiver] maxActive = 'many'" in message
    assert "recceiver.conf" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[etcd]\nendpoints = e:1\nusername = u\n", "username and password"),
        (f"[etcd]\nendpoints = e:1\npassword = {SECRET}\n", "username and password"),
        ("[etcd]\nendpoints = e:1\ncert = {cert}\n", "cert and key"),
        ("[etcd]\nendpoints = e:1\nkey = {key}\n", "cert and key"),
        (f"[etcd]\nusername = u\npassword = {SECRET}\n", "need [etcd] endpoints"),
        ("[etcd]\nca = {ca}\n", "need [etcd] endpoints"),
        ("[etcd]\nendpoints = http://e:1\nca = {ca}\n", "says http:// (no TLS)"),
        (
            "[etcd]\nendpoints = HTTP://e:1\ncert = {cert}\nkey = {key}\n",
            "use https:// endpoints for TLS",
        ),
    ],
)
def test_etcd_pairs_are_checked(
    tmp_path: Path, tls_files: dict[str, str], text: str, fragment: str
) -> None:
    message = load_error(
        tmp_path,
        text.replace("{cert}", tls_files["cert"])
        .replace("{key}", tls_files["key"])
        .replace("{ca}", tls_files["ca"]),
    )
    assert fragment in message
    assert SECRET not in message


def test_password_never_in_repr_or_str(tmp_path: Path) -> None:
    cfg = load(tmp_path, f"[etcd]\nendpoints = e:1\nusername = u\npassword = {SECRET}\n")
    assert cfg.etcd.password == SECRET
    for text in (repr(cfg), str(cfg), repr(cfg.etcd), str(cfg.etcd)):
        assert SECRET not in text
        assert "password" not in text


def test_password_value_is_never_echoed_in_errors(tmp_path: Path) -> None:
    # No password value is invalid on its own; the pairing rule must not echo it either.
    message = load_error(tmp_path, "", {"RECCEIVER_ETCD_PASSWORD": SECRET})
    assert "[etcd] username and password" in message
    assert SECRET not in message


# --- the example file ---


def test_example_config_loads_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "example.conf"
    path.write_text(example_config(), encoding="utf-8")
    environ = {"HOME": "/home/op"}
    assert load_config(str(path), environ) == load_config(None, environ)


def test_example_config_mentions_every_key() -> None:
    text = example_config()
    for section, key in KNOWN_KEYS:
        assert f"[{section}]" in text
        assert re.search(rf"^(# )?{key} =", text, re.MULTILINE), key


def test_alias_and_record_size_limits_are_configurable(tmp_path: Path) -> None:
    conf = tmp_path / "limits.conf"
    conf.write_text("[recceiver]\nmaxAliases = 5\nmaxRecordBytes = 100000\n")
    limits = load_config(str(conf), environ={}).limits
    assert (limits.max_aliases, limits.max_record_bytes) == (5, 100000)
    conf.write_text("[recceiver]\nmaxRecordBytes = 100\n")
    with pytest.raises(ConfigError, match=r"\[recceiver\] maxRecordBytes"):
        load_config(str(conf), environ={})


def test_name_limits_are_configurable_and_reach_the_session(tmp_path: Path) -> None:
    conf = tmp_path / "names.conf"
    conf.write_text(
        "[recceiver]\nmaxHostnameLength = 64\nmaxIocNameLength = 40\nmaxIocidLength = 100\n"
        "maxRecordNameLength = 60\nmaxRecordTypeLength = 20\nmaxInfoKeyLength = 30\n"
    )
    config = load_config(str(conf), environ={})
    assert session_limits(config).names == NameLimits(64, 40, 100, 60, 20, 30)
    assert session_limits(load_config(None, environ={})).names == NameLimits()
    for key in ("maxRecordTypeLength", "maxInfoKeyLength"):  # u8 fields on the wire
        conf.write_text(f"[recceiver]\n{key} = 256\n")
        with pytest.raises(ConfigError, match=rf"\[recceiver\] {key}"):
            load_config(str(conf), environ={})
    conf.write_text("[recceiver]\nmaxRecordNameLength = 0\n")
    with pytest.raises(ConfigError, match=r"\[recceiver\] maxRecordNameLength"):
        load_config(str(conf), environ={})


def test_max_active_per_host_defaults_to_half_of_max_active(tmp_path: Path) -> None:
    assert load_config(None, environ={}).limits.max_active_per_host == 0
    assert default_share(20) == 10 and default_share(1) == 1 and default_share(5) == 3
    conf = tmp_path / "share.conf"
    conf.write_text("[recceiver]\nmaxActive = 40\nmaxActivePerHost = 40\n")
    config = load_config(str(conf), environ={})
    assert (config.max_active, config.limits.max_active_per_host) == (40, 40)


def test_minimum_upload_progress_is_configurable(tmp_path: Path) -> None:
    default = session_limits(load_config(None, environ={}))
    assert (default.min_upload_rate, default.upload_rate_window) == (1000.0, 5.0)
    conf = tmp_path / "rate.conf"
    conf.write_text("[recceiver]\nminUploadRate = 0\nuploadRateWindow = 30\n")
    limits = session_limits(load_config(str(conf), environ={}))
    assert (limits.min_upload_rate, limits.upload_rate_window) == (0.0, 30.0)
    conf.write_text("[recceiver]\nuploadRateWindow = 0\n")
    with pytest.raises(ConfigError, match=r"\[recceiver\] uploadRateWindow"):
        load_config(str(conf), environ={})


def test_the_memory_budget_is_configurable(tmp_path: Path) -> None:
    assert load_config(None, environ={}).limits.max_held_bytes == DEFAULT_MAX_HELD_BYTES
    conf = tmp_path / "held.conf"
    conf.write_text("[recceiver]\nmaxHeldBytes = 200000000\n")
    assert load_config(str(conf), environ={}).limits.max_held_bytes == 200_000_000
    conf.write_text("[recceiver]\nmaxHeldBytes = 1000\n")
    with pytest.raises(ConfigError, match=r"\[recceiver\] maxHeldBytes"):
        load_config(str(conf), environ={})
