"""``recsync``: look at what the bridges stored in etcd.

    recsync iocs                 one line per IOC: iocid, status, host, records, since
    recsync pv NAME...           who serves a PV: owner, record, type, status, claims
    recsync records IOCID        the records of one IOC
    recsync watch [--all]        the current state, then every change as it happens

Every command takes ``--json``: one JSON object per line instead of a table. It reads
the same configuration as the bridge (``-f FILE`` and the ``RECCEIVER_*`` environment
variables), so it finds the same etcd, including the bridge's embedded one (while that
bridge runs). An etcd that does not answer is named within about 3 s. Reads are paged
(`bridge.etcd.store.Store.scan`), so any number of IOCs or records works; strings from
IOCs are shown with control characters escaped, and an unknown IOC id gets the closest
known ones suggested.

Data model v2 stores no name index: who owns a PV is derived from every record that
has the name (bridge/rules/ownership.py). So ``recsync pv`` asks the directory's HTTP
API (``/pv.json``) of the bridge or ``recsync-directory`` this configuration serves
(``[http] bind``, or where the quick start's bridge recorded it in its data directory),
and only when there is none, or it does not answer, scans every record document in etcd,
saying so in one line: slow with many records.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from bridge import __version__
from bridge import documents as docs
from bridge.config import BridgeConfig, EtcdConfig, load_config
from bridge.directory import lookup
from bridge.directory import records as record_docs
from bridge.errors import BridgeError, Compacted, StoreError
from bridge.etcd import datadir
from bridge.etcd.backend import open_store
from bridge.etcd.client import parse_endpoint
from bridge.etcd.diagnose import explain
from bridge.etcd.ops import Entry
from bridge.etcd.store import SCAN_PAGE as STORE_PAGE
from bridge.etcd.store import Store
from bridge.etcd.watch import Watch

#: How long a command keeps retrying an etcd that stopped answering mid-way.
DEADLINE_S = 10.0
#: How long the first request may take: an etcd that does not answer is named by then.
FIRST_ANSWER_S = 2.5
#: Of that, how long a refused or failing first request is retried.
FIRST_RETRIES_S = 0.5
#: How long `recsync pv` waits for a directory's answer before scanning etcd instead.
DIRECTORY_TIMEOUT_S = 3.0
#: Keys per range read of `recsync pv`'s scan: see bridge/directory/feed.py, `PAGE`.
SCAN_PAGE = 16_000
#: Data model v1's shared marks (``P/shared/``), hidden by `recsync watch` unless
#: ``--all``: a v2 bridge deletes them when it migrates a v1 store.
SHARED = "shared"


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


def _entries(store: Store, prefix: str, page: int = STORE_PAGE) -> Iterable[Entry]:
    for found in store.scan(prefix, page=page):
        yield from found.entries


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
    """(no directory to ask) Scan every record document for the names."""
    return _print_pvs(scan_pvs(store, k, args.names), args, out)


def scan_pvs(store: Store, k: docs.Keys, names: Sequence[str]) -> list[dict[str, Any]]:
    """The names as the record documents in etcd say (`bridge.directory.lookup`): one
    paged read of every record document, then the claimants' IOC documents."""
    scan = lookup.Scan(names)
    for entry in _entries(store, k.everything() + docs.RECORDS + "/", page=SCAN_PAGE):
        parts = k.split(entry.key)
        if len(parts) == 3:
            scan.record(parts[1], parts[2], entry.value, entry.mod_revision)
    claimants = sorted(scan.claimants())
    found = store.get_many(k.ioc(iocid) for iocid in claimants)
    statuses = {}
    for iocid in claimants:
        raw = found.get(k.ioc(iocid))
        doc = docs.load_object(raw.value) if raw is not None else None
        status = doc.get("status") if doc is not None else None
        statuses[iocid] = status if isinstance(status, str) else None
    return [scan.result(name, statuses) for name in names]


#: Asks the directory itself: never through a proxy named in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DirectoryUnavailable(Exception):
    """The directory's HTTP API gave no usable answer; the message says why."""


def directory_url(config: BridgeConfig, endpoints_given: bool) -> tuple[str | None, str]:
    """The directory serving this configuration's etcd, as ``http://host:port``, or
    None and why there is none: ``[http] bind`` (a fixed port), else the address a
    running quick-start bridge recorded in its data directory. Not when ``--endpoints``
    names another etcd than the configuration's."""
    if endpoints_given:
        return None, "no directory to ask about the etcd --endpoints names"
    http = config.http
    if http.enabled and http.bind_port:
        return http.local_url(), ""
    data_dir = config.etcd.data_dir
    if config.etcd.embedded and datadir.holder(data_dir) is not None:
        found = datadir.read_directory_url(data_dir)
        if found is not None:
            return found, ""
        return None, f"the bridge running on {data_dir} serves no directory ([http] bind = off)"
    return None, "no directory to ask ([http] bind is not set)"


def ask_directory(url: str, names: Sequence[str], prefix: str) -> list[dict[str, Any]]:
    """The names as the directory at `url` says (``/pv.json``), in order.

    Raises:
        DirectoryUnavailable: no answer, an error, or an answer about another prefix.
    """
    found: list[dict[str, Any]] = []
    for first in range(0, len(names), lookup.MAX_NAMES):
        part = names[first : first + lookup.MAX_NAMES]
        query = urllib.parse.urlencode([("name", name) for name in part])
        try:
            with _DIRECT.open(f"{url}/pv.json?{query}", timeout=DIRECTORY_TIMEOUT_S) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            reason = "is still loading" if exc.code == 503 else f"answered HTTP {exc.code}"
            raise DirectoryUnavailable(reason) from None
        except (OSError, ValueError) as exc:
            cause = getattr(exc, "reason", None) or exc
            raise DirectoryUnavailable(f"did not answer ({cause})") from None
        pvs = answer.get("pvs") if isinstance(answer, dict) else None
        if not isinstance(pvs, list) or not all(isinstance(p, dict) for p in pvs):
            raise DirectoryUnavailable("answered something else than /pv.json")
        if [p.get("pv") for p in pvs] != list(part):
            raise DirectoryUnavailable("answered something else than /pv.json")
        if answer.get("prefix") != prefix.rstrip("/"):
            raise DirectoryUnavailable(f"serves the prefix {answer.get('prefix')!r}")
        found += pvs
    return found


def _print_pvs(found: Sequence[Mapping[str, Any]], args: argparse.Namespace, out: TextIO) -> int:
    """The table (or JSON lines) of `recsync pv`; 1 when some name is unknown."""
    rows: list[Sequence[object]] = [("PV", "OWNER", "RECORD", "TYPE", "STATUS", "CLAIMS")]
    missing = 0
    for pv in found:
        missing += "owner" not in pv
        if args.json:
            _json_line(pv, out)
        elif "owner" not in pv:
            rows.append((pv.get("pv"), None, None, None, pv.get("status"), None))
        else:
            claims = ",".join(str(c) for c in pv.get("claims") or ())
            row = (pv["pv"], pv["owner"], pv.get("record"), pv.get("type"), pv.get("status"))
            rows.append((*row, claims))
    if not args.json:
        _table(rows, out)
    return 1 if missing else 0


def run_pv(config: BridgeConfig, args: argparse.Namespace, out: TextIO) -> int:
    """`recsync pv`: the directory's answer, else a scan of etcd (module docstring)."""
    url, why = directory_url(config, args.endpoints is not None)
    if url is not None:
        try:
            return _print_pvs(ask_directory(url, args.names, config.etcd.prefix), args, out)
        except DirectoryUnavailable as exc:
            why = f"the directory at {url} {exc}"
    store = connect(config.etcd, sys.stderr)
    try:
        sys.stderr.write(
            f"recsync: {terminal_safe(why)}: scanning every record in etcd instead "
            "(slow with many records)\n"
        )
        return cmd_pv(store, docs.Keys(config.etcd.prefix), args, out)
    finally:
        store.close()


def cmd_records(store: Store, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    rows: list[Sequence[object]] = [("RECORD", "TYPE", "ALIASES", "DESC", "INFOS")]
    count = 0
    for entry in _entries(store, k.records_prefix(args.iocid)):
        doc = record_docs.parse_record(entry.value)  # v1 or v2; the name is the key's
        if doc is None:
            continue
        count += 1
        name = k.split(entry.key)[-1]
        infos = {str(key): record_docs.text(value) for key, value in doc.infos.items()}
        if args.json:
            record = {"name": name, "type": doc.rtype, "iocid": args.iocid, "desc": doc.desc}
            _json_line({**record, "aliases": list(doc.aliases), "infos": infos}, out)
            continue
        shown = ",".join(f"{key}={value}" for key, value in sorted(infos.items()))
        rows.append((name, doc.rtype, ",".join(doc.aliases), doc.desc, shown))
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
        if parts[0] == SHARED and not self.everything:
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
    if parts[0] == docs.RECORDS and isinstance(value, dict) and len(parts) == 3:
        return f"{_stamp()} record {parts[1]} {parts[2]} ({value.get('type')})"
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
        config = load_config(
            args.config,
            os.environ if environ is None else environ,
            overrides={k: v for k, v in overrides.items() if v is not None},
        )
        if args.command == "pv":
            return run_pv(config, args, out)
        etcd = config.etcd
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
