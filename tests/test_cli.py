"""The `recsync` command against a real etcd filled by the bridge's own writer."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge import cli
from bridge.documents import Keys
from bridge.model import Peer, Record, Transaction
from bridge.processors.etcdwriter import EtcdWriter
from bridge.testing.cluster import EtcdCluster
from bridge.watching import watch_changes

pytestmark = pytest.mark.etcd


@pytest.fixture
def filled(etcd_client: Any, prefix: str) -> Iterator[EtcdWriter]:
    """Two IOCs: A (active, 2 records, one alias) and B (inactive, claims A's PV too)."""
    lease = etcd_client.lease(60)
    writer = EtcdWriter(etcd_client, Keys(prefix), "b1", lambda: lease, lambda: 1.8e9, 10.0)
    for sid, name, records in (
        (
            1,
            "IOC-A",
            [
                Record(1, "A:PV1", "ai", ["A:PV1:AL"], {"archive": "x"}, "Current"),
                Record(2, "SHARED", "bo"),
            ],
        ),
        (2, "IOC-B", [Record(1, "SHARED", "bo")]),
    ):
        infos = {"HOSTNAME": "h", "IOCNAME": name}
        peer = Peer("127.0.0.1", 1000 + sid)
        writer.apply(Transaction(sid, peer, 0, infos, records, upload_done=True))
    writer.apply(Transaction(2, Peer("127.0.0.1", 1002), 1, {}, connected=False, reason="bye"))
    yield writer
    etcd_client.revoke_lease(lease.id)


def run(etcd_server: EtcdCluster, prefix: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["--endpoints", etcd_server.endpoints[0], "--prefix", prefix, *args], out=out)
    return code, out.getvalue()


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_iocs_lists_every_ioc_with_status_and_counts(
    filled: EtcdWriter, etcd_server: EtcdCluster, prefix: str
) -> None:
    code, text = run(etcd_server, prefix, "iocs")
    assert code == 0
    table = rows(text)
    assert table[0] == ["IOCID", "STATUS", "HOST", "RECORDS", "SINCE"]
    assert [r[:4] for r in table[1:]] == [
        ["h:IOC-A", "active", "h", "2"],
        ["h:IOC-B", "inactive", "h", "1"],
    ]
    assert all(r[4].startswith("2027-01-15T08:00:00.000Z") for r in table[1:])


def test_pv_shows_owner_status_and_claims(
    filled: EtcdWriter, etcd_server: EtcdCluster, prefix: str
) -> None:
    code, text = run(etcd_server, prefix, "pv", "A:PV1:AL", "SHARED", "NOPE")
    assert code == 1  # one name is unknown
    table = rows(text)
    assert table[1] == ["A:PV1:AL", "h:IOC-A", "A:PV1", "ai", "active", "h:IOC-A"]
    # B went inactive, so ownership of the duplicate is with the active claimant.
    assert table[2][:5] == ["SHARED", "h:IOC-A", "SHARED", "bo", "active"]
    assert sorted(table[2][5].split(",")) == ["h:IOC-A", "h:IOC-B"]
    assert table[3] == ["NOPE", "-", "-", "-", "unknown", "-"]


def test_records_lists_one_iocs_records(
    filled: EtcdWriter, etcd_server: EtcdCluster, prefix: str
) -> None:
    code, text = run(etcd_server, prefix, "records", "h:IOC-A")
    assert code == 0
    assert rows(text)[1:] == [
        ["A:PV1", "ai", "A:PV1:AL", "Current", "archive=x"],
        ["SHARED", "bo", "-"],
    ]
    assert run(etcd_server, prefix, "records", "nobody")[0] == 1


def test_unreachable_configuration_is_one_clear_error(tmp_path: Any) -> None:
    err = io.StringIO()
    conf = tmp_path / "b.conf"
    conf.write_text(f"[etcd]\ndata_dir = {tmp_path}/none\n")
    with contextlib.redirect_stderr(err):
        assert cli.main(["-f", str(conf), "iocs"], out=io.StringIO()) == 2
    assert "no embedded etcd found" in err.getvalue()


def test_watch_yields_changes_in_order_and_resumes_from_a_revision(
    etcd_client: Any, prefix: str
) -> None:
    head = int(etcd_client.get_prefix_response(prefix + "/").header.revision)
    seen: list[tuple[str, str, Any]] = []
    done = threading.Event()

    def consume() -> None:
        for change in watch_changes(
            etcd_client, prefix + "/", start_revision=head + 1, stop=lambda: len(seen) >= 3
        ):
            seen.append((change.kind, change.key, change.value))
        done.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    etcd_client.put(prefix + "/iocs/x", json.dumps({"status": "active"}))
    etcd_client.put(prefix + "/iocs/x", json.dumps({"status": "inactive"}))
    etcd_client.delete(prefix + "/iocs/x")
    assert done.wait(10)
    assert seen == [
        ("put", prefix + "/iocs/x", {"status": "active"}),
        ("put", prefix + "/iocs/x", {"status": "inactive"}),
        ("delete", prefix + "/iocs/x", None),
    ]


def test_watch_resynchronises_after_compaction(etcd_client: Any, prefix: str) -> None:
    etcd_client.put(prefix + "/iocs/y", json.dumps({"status": "active"}))
    old = int(etcd_client.get_prefix_response(prefix + "/").header.revision)
    etcd_client.put(prefix + "/iocs/y", json.dumps({"status": "inactive"}))
    new = int(etcd_client.get_prefix_response(prefix + "/").header.revision)
    etcd_client.compact(new)
    changes = watch_changes(etcd_client, prefix + "/", start_revision=old)
    first = next(changes)
    assert first.kind == "resync"
    second = next(changes)
    assert (second.kind, second.key, second.value) == (
        "put",
        prefix + "/iocs/y",
        {"status": "inactive"},
    )


def test_watch_command_prints_readable_and_json_lines(
    etcd_server: EtcdCluster, etcd_client: Any, prefix: str
) -> None:
    outputs: dict[str, io.StringIO] = {"text": io.StringIO(), "json": io.StringIO()}
    threads = [
        threading.Thread(
            target=run_watch, args=(etcd_server, prefix, out, mode == "json"), daemon=True
        )
        for mode, out in outputs.items()
    ]
    for thread in threads:
        thread.start()
    doc = {"iocid": "h:W", "status": "active", "records": 3}

    def both_printed() -> bool:
        etcd_client.put(prefix + "/iocs/h:W", json.dumps(doc))
        return all("h:W" in out.getvalue() for out in outputs.values())

    deadline = time.monotonic() + 10
    while not both_printed():
        assert time.monotonic() < deadline, {k: v.getvalue() for k, v in outputs.items()}
        time.sleep(0.1)
    assert "ioc h:W active (3 records)" in outputs["text"].getvalue()
    line = json.loads(outputs["json"].getvalue().splitlines()[0])
    assert (line["event"], line["key"], line["value"]) == ("put", ["iocs", "h:W"], doc)


def run_watch(etcd_server: EtcdCluster, prefix: str, out: io.StringIO, as_json: bool) -> None:
    args = ["watch", "--json"] if as_json else ["watch"]
    run_into(etcd_server, prefix, out, *args)


def run_into(etcd_server: EtcdCluster, prefix: str, out: io.StringIO, *args: str) -> None:
    cli.main(["--endpoints", etcd_server.endpoints[0], "--prefix", prefix, *args], out=out)
