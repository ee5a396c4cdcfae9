"""``recsync``: look at what the bridges stored in etcd.

    recsync iocs                 one line per IOC: iocid, status, host, records, since
    recsync pv NAME...           who serves a PV: owner, record, type, status, claims
    recsync records IOCID        the records of one IOC
    recsync watch [--json]       live changes, readable (or one JSON object per line)

It reads the same configuration as the bridge (``-f FILE`` and the
``RECCEIVER_ETCD_*`` environment variables), so it finds the same etcd, including
the bridge's embedded one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from bridge import documents as docs
from bridge.config import EtcdConfig, load_config
from bridge.errors import BridgeError
from bridge.etcd.client import call_with_retry, make_client
from bridge.etcd.embedded import ENDPOINT_FILE


def embedded_endpoint(data_dir: str) -> str | None:
    path = Path(data_dir) / ENDPOINT_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def connect(etcd: EtcdConfig) -> Any:
    endpoints = list(etcd.endpoints)
    if not endpoints:
        found = embedded_endpoint(etcd.data_dir)
        if found is None:
            raise BridgeError(
                f"no [etcd] endpoints configured and no embedded etcd found in {etcd.data_dir}: "
                "is the bridge running?"
            )
        endpoints = [found]
    return make_client(
        endpoints,
        timeout=etcd.timeout,
        username=etcd.username,
        password=etcd.password,
        ca=etcd.ca,
        cert=etcd.cert,
        key=etcd.key,
    )


def _prefix_items(client: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for value, meta in call_with_retry(lambda: list(client.get_prefix(prefix)), deadline_s=10):
        yield meta.key.decode("utf-8", "replace"), docs.loads(value)


def _table(rows: Sequence[Sequence[object]], out: TextIO) -> None:
    texts = [[("-" if cell is None else str(cell)) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in texts) for i in range(len(texts[0]))]
    for row in texts:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def cmd_iocs(client: Any, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    rows: list[Sequence[object]] = [("IOCID", "STATUS", "HOST", "RECORDS", "SINCE")]
    for _, doc in sorted(_prefix_items(client, k.iocs_prefix())):
        status = doc.get("status")
        since = {"active": doc.get("uploaded"), "inactive": doc.get("disconnected")}.get(
            status, doc.get("connected")
        )
        rows.append((doc.get("iocid"), status, doc.get("hostname"), doc.get("records"), since))
    _table(rows, out)
    return 0


def _get(client: Any, key: str) -> Any:
    value, _ = call_with_retry(lambda: client.get(key), deadline_s=10)
    return None if value is None else docs.loads(value)


def cmd_pv(client: Any, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    rows: list[Sequence[object]] = [("PV", "OWNER", "RECORD", "TYPE", "STATUS", "CLAIMS")]
    missing = 0
    for name in args.names:
        entry = _get(client, k.pv(name))
        if entry is None:
            rows.append((name, None, None, None, "unknown", None))
            missing += 1
            continue
        ioc = _get(client, k.ioc(entry["iocid"])) or {}
        rows.append(
            (
                name,
                entry["iocid"],
                entry["record"],
                entry["type"],
                ioc.get("status"),
                ",".join(entry["claims"]),
            )
        )
    _table(rows, out)
    return 1 if missing else 0


def cmd_records(client: Any, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    rows: list[Sequence[object]] = [("RECORD", "TYPE", "ALIASES", "DESC", "INFOS")]
    for _, doc in sorted(_prefix_items(client, k.records_prefix(args.iocid))):
        infos = ",".join(f"{key}={value}" for key, value in sorted(doc["infos"].items()))
        rows.append((doc["name"], doc["type"], ",".join(doc["aliases"]), doc["desc"], infos))
    if len(rows) == 1:
        out.write(f"no records for IOC {args.iocid!r}\n")
        return 1
    _table(rows, out)
    return 0


def cmd_watch(client: Any, k: docs.Keys, args: argparse.Namespace, out: TextIO) -> int:
    from bridge.watching import watch_changes

    # Start at the current revision: only what changes from now on is printed
    # (after a compaction-forced resync, the current values are printed again).
    head = call_with_retry(lambda: client.get_prefix_response(k.everything()), deadline_s=10)
    start = int(head.header.revision) + 1
    for change in watch_changes(client, k.everything(), start_revision=start):
        parts = k.split(change.key)
        if args.json:
            record = {
                "event": change.kind,
                "revision": change.revision,
                "key": list(parts),
                "value": change.value,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            out.write(_describe(change.kind, parts, change.value) + "\n")
        out.flush()
    return 0


def _describe(kind: str, parts: Sequence[str], value: Any) -> str:
    stamp = time.strftime("%H:%M:%S")
    where = "/".join(parts)
    if kind == "resync":
        return f"{stamp} resynchronised from a full read ({where})"
    if kind == "delete":
        return f"{stamp} - {where}"
    if parts[0] == docs.IOCS and isinstance(value, dict):
        return f"{stamp} ioc {parts[1]} {value.get('status')} ({value.get('records')} records)"
    if parts[0] == docs.RECORDS and isinstance(value, dict):
        return f"{stamp} record {parts[1]} {value.get('name')} ({value.get('type')})"
    return f"{stamp} + {where} {json.dumps(value, ensure_ascii=False)}"


COMMANDS = {"iocs": cmd_iocs, "pv": cmd_pv, "records": cmd_records, "watch": cmd_watch}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsync", description=__doc__.split("\n\n")[0])
    p.add_argument("-f", "--config", help="the bridge's configuration file ([etcd] section)")
    p.add_argument("--endpoints", help="etcd endpoints, comma-separated (overrides the file)")
    p.add_argument("--prefix", help="key prefix (overrides the file)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("iocs", help="list IOCs")
    pv = sub.add_parser("pv", help="look PVs up by name")
    pv.add_argument("names", nargs="+")
    records = sub.add_parser("records", help="list one IOC's records")
    records.add_argument("iocid")
    watch = sub.add_parser("watch", help="print changes as they happen")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    try:
        overrides = {("etcd", "endpoints"): args.endpoints, ("etcd", "prefix"): args.prefix}
        etcd = load_config(
            args.config, overrides={k: v for k, v in overrides.items() if v is not None}
        ).etcd
        prefix = etcd.prefix
        client = connect(etcd)
        try:
            return COMMANDS[args.command](client, docs.Keys(prefix), args, out)
        finally:
            client.close()
    except BridgeError as error:
        sys.stderr.write(f"recsync: {error}\n")
        return 2
    except KeyboardInterrupt:
        return 130
