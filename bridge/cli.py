"""``recsync``: look at what the bridges stored in etcd.

    recsync iocs                 one line per IOC: iocid, status, host, records, since
    recsync pv NAME...           who serves a PV: owner, record, type, status, claims
    recsync records IOCID        the records of one IOC
    recsync watch [--all]        the current state, then every change as it happens

Every command takes ``--json``: one JSON object per line instead of a table. It reads
the same configuration as the bridge (``-f FILE`` and the ``RECCEIVER_ETCD_*``
environment variables), so it finds the same etcd, including the bridge's embedded one
(while that bridge runs). An etcd that does not answer is named within about 3 s.
Reads are paged (`bridge.etcd.store.Store.scan`), so any number of IOCs or records
works; strings from IOCs are shown with control characters escaped, and an unknown IOC
id gets the closest known ones suggested.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from bridge import __version__
from bridge import documents as docs
from bridge.config import EtcdConfig, load_config
from bridge.errors import BridgeError, Compacted, StoreError
from bridge.etcd import datadir
from bridge.etcd.backend import open_store
from bridge.etcd.client import parse_endpoint
from bridge.etcd.diagnose import explain
from bridge.etcd.ops import Entry
from bridge.etcd.store import Store
from bridge.etcd.watch import Watch

#: How long a command keeps retrying an etcd that stopped answering mid-way.
DEADLINE_S = 10.0
#: How long the first request may take: an etcd that does not answer is named by then.
FIRST_ANSWER_S = 2.5
#: Of that, how long a refused or failing first request is retried.
FIRST_RETRIES_S = 0.5


def connect(etcd: EtcdConfig, err: TextIO | None = None) -> Store:
    """A store on the configured etcd, or the embedded etcd of a running bridge.

    Fails within about `FIRST_ANSWER_S` seconds, naming the endpoints, when etcd does
    not answer. When it reads an embedded etcd and `err` is a terminal, says so there
    (`recsync` without the bridge's ``-f FILE`` would read another bridge's).

    Raises:
        BridgeError: one line saying what is wrong.
    """
    endpoints = list(etcd.endpoints)
    if not endpoints:
        endpoints = [_embedded_endpoint(etcd.data_dir, err)]
    where = ", ".join(endpoints)
    _some_endpoint_listens(endpoints, where)
    try:
        store = _open(etcd, endpoints)
    except StoreError as exc:  # logging in found nobody to answer
        raise BridgeError(f"etcd at {where} does not answer: {explain(exc) or exc}") from None
    try:
        store.revision()
    except StoreError as exc:
        store.close()
        raise BridgeError(f"etcd at {where} does not answer: {explain(exc) or exc}") from None
    store.deadline_s = DEADLINE_S
    return store


def _open(etcd: EtcdConfig, endpoints: list[str]) -> Store:
    return open_store(
        endpoints,
        timeout=min(etcd.timeout, FIRST_ANSWER_S - FIRST_RETRIES_S),
        deadline_s=FIRST_RETRIES_S,
        username=etcd.username,
        password=etcd.password,
        ca=etcd.ca,
        cert=etcd.cert,
        key=etcd.key,
    )


def _embedded_endpoint(data_dir: str, err: TextIO | None) -> str:
    found = datadir.read_endpoint(data_dir)
    pid = datadir.holder(data_dir)
    if found is None or pid is None:
        state = "no bridge runs" if pid is None else "its bridge is still starting"
        raise BridgeError(
            f"no [etcd] endpoints configured, and the embedded etcd in {data_dir} does not "
            f"run ({state}): is the bridge running? Give recsync the bridge's "
            "configuration file (-f FILE) or --endpoints"
        )
    if err is not None and err.isatty():
        err.write(
            f"recsync: reading the embedded etcd of the bridge with PID {pid} "
            f"(data in {data_dir}) at {found}\n"
        )
    return found


def _some_endpoint_listens(endpoints: Sequence[str], where: str) -> None:
    """Fail at once when no endpoint accepts a TCP connection (gRPC would keep trying)."""
    reasons = []
    for text in endpoints:
        try:
            host, port, _ = parse_endpoint(text)
            with socket.create_connection((host, port), timeout=FIRST_ANSWER_S / 2):
                return
        except OSError as exc:
            reasons.append(exc.strerror or str(exc))
    raise BridgeError(f"etcd at {where} does not answer: {'; '.join(dict.fromkeys(reasons))}")


def terminal_safe(text: str) -> str:
    """`text` with every character a terminal would act on shown as an escape (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _table(rows: Sequence[Sequence[object]], out: TextIO) -> None:
    texts = [[("-" if cell is None else terminal_safe(str(cell))) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in texts) for i in range(len(texts[0]))]
    for row in texts:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _json_line(value: object, out: TextIO) -> None:
    out.write(json.dumps(value) + "\n")


def _entries(store: Store, prefix: str) -> Iterable[Entry]:
    for page in store.scan(prefix):
        yield from page.entries


def cmd_iocs(store: Store, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    rows: list[Sequence[object]] = [("IOCID", "STATUS", "HOST", "RECORDS", "SINCE")]
    for entry in _entries(store, k.iocs_prefix()):
        doc = docs.parse_ioc(entry.value)
        iocid = k.split(entry.key)[-1]
        if args.json:
            _json_line(doc.fields if doc is not None else {"iocid": iocid, "invalid": True}, out)
        elif doc is not None:
            rows.append((doc.iocid or iocid, doc.status, doc.hostname, doc.records, doc.since))
        else:
            rows.append((iocid, "invalid", None, None, None))
    if not args.json:
        _table(rows, out)
    return 0


def cmd_pv(store: Store, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    rows: list[Sequence[object]] = [("PV", "OWNER", "RECORD", "TYPE", "STATUS", "CLAIMS")]
    found = store.get_many(k.pv(name) for name in args.names)
    entries = {
        name: docs.parse_pv(raw.value) if (raw := found.get(k.pv(name))) else None
        for name in args.names
    }
    owners = store.get_many(k.ioc(e.owner) for e in entries.values() if e is not None)
    missing = 0
    for name, entry in entries.items():
        if entry is None:
            missing += 1
            if args.json:
                _json_line({"pv": name, "status": "unknown"}, out)
            else:
                rows.append((name, None, None, None, "unknown", None))
            continue
        raw = owners.get(k.ioc(entry.owner))
        ioc = docs.parse_ioc(raw.value) if raw is not None else None
        status = ioc.status if ioc is not None else None
        if args.json:
            _json_line(
                {
                    "pv": name,
                    "owner": entry.owner,
                    "record": entry.record,
                    "type": entry.rtype,
                    "alias": entry.alias,
                    "status": status,
                    "claims": entry.claims,
                },
                out,
            )
        else:
            row = (name, entry.owner, entry.record, entry.rtype, status, ",".join(entry.claims))
            rows.append(row)
    if not args.json:
        _table(rows, out)
    return 1 if missing else 0


def cmd_records(store: Store, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    rows: list[Sequence[object]] = [("RECORD", "TYPE", "ALIASES", "DESC", "INFOS")]
    count = 0
    for entry in _entries(store, k.records_prefix(args.iocid)):
        doc = docs.parse_record(entry.value)
        if doc is None:
            continue
        count += 1
        if args.json:
            record = {"name": doc.name, "type": doc.rtype, "iocid": doc.iocid, "desc": doc.desc}
            _json_line({**record, "aliases": doc.aliases, "infos": doc.infos}, out)
            continue
        infos = ",".join(f"{key}={value}" for key, value in sorted(doc.infos.items()))
        rows.append((doc.name, doc.rtype, ",".join(doc.aliases), doc.desc, infos))
    if not count:
        message = f"no records for IOC {terminal_safe(repr(args.iocid))}"
        similar = _similar_iocids(store, k, args.iocid)
        if similar:
            message += "; did you mean " + " or ".join(map(terminal_safe, similar)) + "?"
        (sys.stderr if args.json else out).write(message + "\n")
        return 1
    if not args.json:
        _table(rows, out)
    return 0


def _similar_iocids(store: Store, k: docs.Keys, wanted: str, limit: int = 3) -> list[str]:
    """Known IOC ids like `wanted`: those ending in ``:wanted`` (an IOC name given
    without its host), else the closest spellings."""
    known = [k.split(entry.key)[-1] for entry in _entries(store, k.iocs_prefix())]
    lowered = wanted.lower()
    named = [iocid for iocid in known if iocid.lower().endswith(":" + lowered)]
    return named[:limit] or difflib.get_close_matches(wanted, known, n=limit, cutoff=0.6)


def cmd_watch(store: Store, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    """The current state at one revision R first, then every change from R + 1 on."""
    shown = _Shown(k, out, args.json, args.all)
    watch = Watch(store, k.everything(), reload=lambda: _print_state(store, k, shown))
    try:
        for events in watch:
            for event in events:
                shown.event(event.kind, event.key, event.value, event.revision)
            out.flush()
    finally:
        watch.stop()
    return 0


def _print_state(store: Store, k: docs.Keys, shown: _Shown) -> int:
    """(the watch's reload) Print every key at one revision; returns that revision."""
    while True:
        shown.begin()
        try:
            revision = 0
            for page in store.scan(k.everything()):
                revision = page.revision
                for entry in page.entries:
                    shown.event("put", entry.key, entry.value, entry.mod_revision)
        except Compacted:
            continue  # the snapshot's revision went away meanwhile: read it again
        shown.synced(revision)
        return revision


class _Shown:
    """How `recsync watch` prints: readable lines or JSON objects, `shared/` hidden."""

    def __init__(self, k: docs.Keys, out: TextIO, as_json: bool, everything: bool) -> None:
        self.keys = k
        self.out = out
        self.as_json = as_json
        self.everything = everything
        self._loads = 0

    def begin(self) -> None:
        """A snapshot follows: the first one is the state, later ones a resynchronisation."""
        self._loads += 1
        if self._loads > 1:
            if self.as_json:
                _json_line({"event": "resync"}, self.out)
            else:
                self.out.write(f"{_stamp()} history compacted: the whole state again\n")

    def synced(self, revision: int) -> None:
        if self.as_json:
            _json_line({"event": "synced", "revision": revision}, self.out)
        else:
            self.out.write(f"{_stamp()} state above is at revision {revision}; changes follow\n")
        self.out.flush()

    def event(self, kind: str, key: str, raw: bytes, revision: int) -> None:
        try:
            parts = self.keys.split(key)
        except ValueError:
            return
        if parts[0] == docs.SHARED and not self.everything:
            return
        value = _value(raw) if kind == "put" else None
        if self.as_json:
            record = {"event": kind, "revision": revision, "key": list(parts), "value": value}
            _json_line(record, self.out)
        else:
            self.out.write(terminal_safe(_describe(kind, parts, value)) + "\n")


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


def _value(raw: bytes) -> Any:
    try:
        return docs.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _describe(kind: str, parts: Sequence[str], value: Any) -> str:
    where = "/".join(parts)
    if kind == "delete":
        return f"{_stamp()} - {where}"
    if parts[0] == docs.IOCS and isinstance(value, dict):
        return f"{_stamp()} ioc {parts[1]} {value.get('status')} ({value.get('records')} records)"
    if parts[0] == docs.RECORDS and isinstance(value, dict):
        return f"{_stamp()} record {parts[1]} {value.get('name')} ({value.get('type')})"
    return f"{_stamp()} + {where} {json.dumps(value, ensure_ascii=False)}"


Command = Callable[[Store, docs.Keys, argparse.Namespace, TextIO], int]
COMMANDS: dict[str, Command] = {
    "iocs": cmd_iocs,
    "pv": cmd_pv,
    "records": cmd_records,
    "watch": cmd_watch,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsync", description=__doc__.split("\n\n")[0])
    p.add_argument("-f", "--config", help="the bridge's configuration file ([etcd] section)")
    p.add_argument("--endpoints", help="etcd endpoints, comma-separated (overrides the file)")
    p.add_argument("--prefix", help="key prefix (overrides the file)")
    p.add_argument("--version", action="version", version=f"recsync {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    commands = {
        "iocs": sub.add_parser("iocs", help="list IOCs"),
        "pv": sub.add_parser("pv", help="look PVs up by name"),
        "records": sub.add_parser("records", help="list one IOC's records"),
        "watch": sub.add_parser("watch", help="print the state, then changes as they happen"),
    }
    commands["pv"].add_argument("names", nargs="+")
    commands["records"].add_argument("iocid")
    commands["watch"].add_argument(
        "--all", action="store_true", help="also show the internal shared/ marks"
    )
    for command in commands.values():
        command.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def main(
    argv: Sequence[str] | None = None,
    out: TextIO = sys.stdout,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one command; `environ` (default: this process's) holds ``RECCEIVER_*``."""
    args = parser().parse_args(argv)
    try:
        overrides = {("etcd", "endpoints"): args.endpoints, ("etcd", "prefix"): args.prefix}
        etcd = load_config(
            args.config,
            os.environ if environ is None else environ,
            overrides={k: v for k, v in overrides.items() if v is not None},
        ).etcd
        store = connect(etcd, sys.stderr)
        try:
            return COMMANDS[args.command](store, docs.Keys(etcd.prefix), args, out)
        finally:
            store.close()
    except BridgeError as error:
        sys.stderr.write(f"recsync: {error}\n")
        return 2
    except KeyboardInterrupt:
        return 130
