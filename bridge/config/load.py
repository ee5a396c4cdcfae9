"""Reading the configuration: the file, the environment, the command line; and the notes
about what was set but is not used."""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from typing import NamedTuple

from bridge.config.keys import _INDEX, _KEYS, _REFERENCE_KEYS, _SECTIONS, _Key
from bridge.config.model import (
    ENV_PREFIX,
    BridgeConfig,
    EtcdConfig,
    HttpConfig,
    Limits,
    Note,
    default_data_dir,
)
from bridge.config.values import Parsed, _closest, _items
from bridge.directory.channels import ChannelShape
from bridge.errors import ConfigError
from bridge.processors import REFERENCE_PROCS

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
    ``[http]`` and ``[cf]`` are not read, nor are unknown keys: each gets a `Note` in
    ``notes`` (with the closest known name, or what the bridge does instead of a
    reference RecCeiver setting). Precedence, highest first: `overrides`
    (``{(section, key): value}``, from the command line), ``RECCEIVER_<SECTION>_<KEY>``
    variables in `environ` (e.g. ``RECCEIVER_ETCD_LEASE_TTL``), the file, the defaults.

    Raises:
        ConfigError: the file is missing or unreadable, or a value is invalid. The
            message names ``[section] key``, the bad value (never a password) and
            where it came from.
    """
    raw = _collect(path, environ, overrides)
    config = _build(_parse_all(raw), environ)
    return config.replace(notes=tuple(_notes(raw, config)))


def _collect(
    path: str | None,
    environ: Mapping[str, str],
    overrides: Mapping[tuple[str, str], str] | None,
) -> RawValues:
    """Every value set, by (section, key) in lower case, with where it came from."""
    raw: RawValues = _read_file(path) if path is not None else {}
    raw.update(_from_environ(environ))
    raw.update(
        {
            (s.lower(), k.lower()): _Raw(v, "command line")
            for (s, k), v in (overrides or {}).items()
        }
    )
    return raw


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


def _parse_all(raw: RawValues) -> Parsed:
    """Convert every known key into field values (unknown keys are left to `_notes`)."""
    values: Parsed = {}
    for (section, key), item in sorted(raw.items()):
        spec = _INDEX.get((section, key))
        if spec is not None:
            values.update(_apply(spec, item))
    return values


def _apply(spec: _Key, item: _Raw) -> Parsed:
    text = item.value if spec.secret else item.value.strip()
    try:
        return spec.parse(text)
    except ValueError as exc:
        shown = "" if spec.secret else f" = {item.value!r}"
        raise ConfigError(
            f"[{spec.section}] {spec.name}{shown} (from {item.source}): {exc}"
        ) from None


def _build(values: Parsed, environ: Mapping[str, str]) -> BridgeConfig:
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
    plain = [e for e in etcd.endpoints if e.lower().startswith("http://")]
    if plain and (etcd.ca or etcd.cert):
        # An explicit scheme and the TLS settings must never disagree silently.
        raise ConfigError(
            f"[etcd] endpoints {plain[0]} says http:// (no TLS) but [etcd] ca/cert/key "
            "are set: use https:// endpoints for TLS, or remove ca, cert and key"
        )


# --- notes: what was set but is not used, and why ---


def _notes(raw: RawValues, config: BridgeConfig) -> list[Note]:
    """One `Note` per unknown key, unknown section, unused reference key, replaced proc."""
    notes = [_proc_note(entry, config) for entry in config.replaced_procs]
    proc_sections = _proc_sections(raw)
    reported: set[str] = set()
    for (section, key), item in sorted(raw.items()):
        if (section, key) in _INDEX or item.inherited:
            continue
        where = _where(item)
        reason = _REFERENCE_KEYS.get((section, key))
        if reason is not None:
            notes.append(Note(f"[{section}] {key}{where} is not used: {reason}"))
        elif section in _SECTIONS:
            hint = _closest_key(section, key)
            notes.append(
                Note(f"[{section}] {key}{where} is not a known key and is ignored{hint}", True)
            )
        elif section not in reported:
            reported.add(section)
            notes.append(_section_note(section, where, proc_sections.get(section)))
    return notes


def _where(item: _Raw) -> str:
    return f" (from {item.source})"


def _proc_sections(raw: RawValues) -> dict[str, str]:
    """Section name -> processor, for the sections the reference reads for ``procs``
    entries (an entry ``name:instance`` reads ``[instance]``, a bare name ``[name]``)."""
    item = raw.get(("recceiver", "procs"))
    sections: dict[str, str] = {}
    for entry in _items(item.value if item is not None else ""):
        name, _, instance = (part.strip() for part in entry.partition(":"))
        sections[(instance or name).lower()] = name.lower()
    return sections


def _section_note(section: str, where: str, proc: str | None) -> Note:
    if proc in REFERENCE_PROCS:
        return Note(
            f"[{section}]{where} holds settings of {REFERENCE_PROCS[proc]} "
            f"(procs = {proc}), which the bridge replaces: not used"
        )
    if proc is not None:
        return Note(f"[{section}]{where}: the {proc} processor has no settings; not used")
    hint = _closest(section, sorted(_SECTIONS))
    suggestion = f"; did you mean [{hint}]?" if hint else ""
    return Note(f"[{section}]{where} is not a known section and is ignored{suggestion}", True)


def _proc_note(entry: str, config: BridgeConfig) -> Note:
    name = entry.partition(":")[0]
    if name == "cf":
        http = config.http
        if http.enabled:
            where = f"it is served at http://{_host_port(http.bind_host, http.bind_port)}"
        else:
            where = "set [http] bind = host:port to serve it"
        return Note(
            f"procs: {entry} ({REFERENCE_PROCS[name]}) is replaced: PV metadata is stored "
            "in etcd, and the bridge's ChannelFinder-compatible API serves it with the "
            f"[cf] section's properties; {where}"
        )
    return Note(
        f"procs: {entry} ({REFERENCE_PROCS[name]}) is replaced: etcd stores the PV "
        "metadata (README: 'The data model')"
    )


def _host_port(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _closest_key(section: str, key: str) -> str:
    """``"; did you mean [section] key?"`` for the known key most like `key`, looking in
    `section` first, then in the other sections; "" when none is close."""
    same = _closest(key, [k.name for k in _KEYS if k.section == section])
    if same is not None:
        return f"; did you mean {same}?"
    elsewhere = {k.name: k.section for k in _KEYS if k.section != section}
    found = _closest(key, list(elsewhere))
    return f"; did you mean [{elsewhere[found]}] {found}?" if found else ""
