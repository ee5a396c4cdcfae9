"""The `recsync` command against a real etcd filled by the bridge's own writer."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bridge import cli
from bridge import documents as docs
from bridge.documents import Keys, record_value
from bridge.etcd.process import free_port
from bridge.etcd.store import Store
from bridge.model import Peer, Record, Transaction
from bridge.processors.etcdwriter import EtcdWriter
from bridge.testing.cluster import EtcdCluster
from tests.helpers import poll

pytestmark = pytest.mark.etcd


@pytest.fixture
def filled(etcd_store: Store, prefix: str) -> Iterator[EtcdWriter]:
    """Two IOCs: A (active, 2 records, one alias) and B (inactive, claims A's PV too)."""
    lease = etcd_store.grant(60)
    writer = EtcdWriter(etcd_store, Keys(prefix), "b1", lambda: lease, lambda: 1.8e9)
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
    etcd_store.revoke(lease.id)


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


def test_pv_and_records_read_v2_documents(
    etcd_server: EtcdCluster, etcd_store: Store, prefix: str
) -> None:
    """Lean record documents (data model v2): the name is the key's; the later of two
    live claimants owns a name; an alias names its record."""
    keys = Keys(prefix)
    for iocid in ("h:A", "h:B"):
        etcd_store.put(keys.ioc(iocid), docs.dumps({"iocid": iocid, "status": "active"}))
    etcd_store.put(keys.record("h:A", "X"), b'{"type":"ai","desc":"on A","aliases":["X:AL"]}')
    etcd_store.put(keys.record("h:B", "X"), b'{"type":"bo"}')
    code, text = run(etcd_server, prefix, "pv", "X", "X:AL")
    assert code == 0
    assert rows(text)[1:] == [
        ["X", "h:B", "X", "bo", "active", "h:B,h:A"],
        ["X:AL", "h:A", "X", "ai", "active", "h:A"],
    ]
    code, text = run(etcd_server, prefix, "records", "h:A", "--json")
    assert code == 0
    assert json.loads(text) == {
        "name": "X",
        "type": "ai",
        "iocid": "h:A",
        "desc": "on A",
        "aliases": ["X:AL"],
        "infos": {},
    }


def test_pv_scans_etcd_in_one_line_when_the_directory_does_not_answer(
    filled: EtcdWriter, etcd_server: EtcdCluster, prefix: str, tmp_path: Any
) -> None:
    port = free_port()
    conf = tmp_path / "b.conf"
    endpoint = etcd_server.endpoints[0]
    conf.write_text(f"[etcd]\nendpoints = {endpoint}\nprefix = {prefix}\n"
                    f"[http]\nbind = 0.0.0.0:{port}\n")  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["-f", str(conf), "pv", "SHARED", "--json"], out=out, environ={})
    assert code == 0 and json.loads(out.getvalue())["owner"] == "h:IOC-A"
    assert err.getvalue().startswith(
        f"recsync: the directory at http://127.0.0.1:{port} did not answer ("
    )
    assert err.getvalue().endswith(
        "): scanning every record in etcd instead (slow with many records)\n"
    )
    assert err.getvalue().count("\n") == 1


@contextlib.contextmanager
def answering(body: bytes) -> Iterator[int]:
    """An HTTP server on a loopback port answering every GET with `body` (JSON)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"prefix": "/elsewhere", "pvs": [{"pv": "SHARED"}]}', "serves the prefix '/elsewhere'"),
        (b'{"prefix": "/x", "pvs": [1]}', "answered something else than /pv.json"),
        (b"[]", "answered something else than /pv.json"),
        (b"not json", "did not answer ("),
    ],
)
def test_pv_trusts_no_answer_but_the_directory_of_its_own_prefix(
    filled: EtcdWriter, etcd_server: EtcdCluster, prefix: str, tmp_path: Any, body: bytes,
    reason: str,
) -> None:  # fmt: skip
    with answering(body) as port:
        conf = tmp_path / "b.conf"
        endpoint = etcd_server.endpoints[0]
        conf.write_text(f"[etcd]\nendpoints = {endpoint}\nprefix = {prefix}\n"
                        f"[http]\nbind = 127.0.0.1:{port}\n")  # fmt: skip
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["-f", str(conf), "pv", "SHARED", "--json"], out=out, environ={})
    assert code == 0 and json.loads(out.getvalue())["owner"] == "h:IOC-A"
    assert err.getvalue().startswith(f"recsync: the directory at http://127.0.0.1:{port} {reason}")


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


def run_error(*argv: str) -> tuple[int, str, float]:
    """`recsync ARGV`: exit status, what it wrote to stderr, seconds it took."""
    err = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(err):
        code = cli.main(list(argv), out=io.StringIO(), environ={})
    return code, err.getvalue(), time.monotonic() - start


def test_no_running_bridge_is_one_clear_error(tmp_path: Any) -> None:
    conf = tmp_path / "b.conf"
    conf.write_text(f"[etcd]\ndata_dir = {tmp_path}/none\n")
    code, err, _ = run_error("-f", str(conf), "iocs")
    assert code == 2
    assert err == (
        f"recsync: no [etcd] endpoints configured, and the embedded etcd in {tmp_path}/none "
        "does not run (no bridge runs): is the bridge running? Give recsync the bridge's "
        "configuration file (-f FILE) or --endpoints\n"
    )


def test_an_endpoint_file_left_by_a_crashed_bridge_is_not_used(tmp_path: Any) -> None:
    data = tmp_path / "etcd"
    data.mkdir()
    (data / "client-endpoint").write_text("127.0.0.1:9\n")  # nobody holds the lock
    conf = tmp_path / "b.conf"
    conf.write_text(f"[etcd]\ndata_dir = {data}\n")
    code, err, took = run_error("-f", str(conf), "iocs")
    assert code == 2 and "(no bridge runs)" in err and took < 3


def test_a_refused_endpoint_is_named_at_once() -> None:
    port = free_port()
    code, err, took = run_error("--endpoints", f"127.0.0.1:{port}", "iocs")
    assert code == 2
    assert err == f"recsync: etcd at 127.0.0.1:{port} does not answer: Connection refused\n"
    assert took < 3


@pytest.mark.parametrize("credentials", [False, True])
def test_an_endpoint_that_never_answers_is_named_within_3_s(
    tmp_path: Any, credentials: bool
) -> None:
    conf = tmp_path / "b.conf"
    conf.write_text("[etcd]\nusername = u\npassword = p\n" if credentials else "")
    with socket.socket() as silent:  # accepts TCP (the kernel does), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        code, err, took = run_error("-f", str(conf), "--endpoints", f"127.0.0.1:{port}", "iocs")
    assert code == 2
    assert err.startswith(f"recsync: etcd at 127.0.0.1:{port} does not answer: ")
    assert err.count("\n") == 1
    assert took < 3


def test_an_unknown_iocid_gets_the_closest_known_ones_suggested(
    filled: EtcdWriter, etcd_server: EtcdCluster, prefix: str
) -> None:
    code, text = run(etcd_server, prefix, "records", "IOC-A")
    assert code == 1
    assert text == "no records for IOC 'IOC-A'; did you mean h:IOC-A?\n"
    code, text = run(etcd_server, prefix, "records", "h:IOC-C")
    assert code == 1
    assert text.startswith("no records for IOC 'h:IOC-C'; did you mean h:IOC-")
    assert " or " in text and {"h:IOC-A", "h:IOC-B"} <= set(text.rstrip("?\n").split())


class Interruptible(io.StringIO):
    """Output of a running `recsync watch`: `interrupt` makes its next write a Ctrl-C."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def write(self, text: str) -> int:
        if self.interrupted:
            raise KeyboardInterrupt
        return super().write(text)

    def interrupt(self) -> None:
        self.interrupted = True


class RunningWatch:
    """`recsync watch ARGS` in a thread, ended by a Ctrl-C at the next line it prints."""

    def __init__(self, etcd_server: EtcdCluster, prefix: str, *args: str) -> None:
        self.out = Interruptible()
        self.code: int | None = None
        argv = ["--endpoints", etcd_server.endpoints[0], "--prefix", prefix, "watch", *args]
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self.thread.start()

    def _run(self, argv: list[str]) -> None:
        self.code = cli.main(argv, out=self.out)

    def text(self) -> str:
        return self.out.getvalue()

    def stop(self, store: Store, prefix: str) -> None:
        self.out.interrupt()
        store.put(prefix + "/iocs/zz-wake", b"{}")  # something to print
        self.thread.join(10)
        assert not self.thread.is_alive() and self.code == 130


def test_watch_prints_the_state_first_then_changes(
    etcd_server: EtcdCluster, etcd_store: Store, prefix: str
) -> None:
    keys = Keys(prefix)
    before = {"iocid": "h:OLD", "status": "active", "records": 1}
    etcd_store.put(keys.ioc("h:OLD"), json.dumps(before).encode())
    etcd_store.put(keys.shared("h:OLD"), b'{"name": "X"}')
    watches = {
        "text": RunningWatch(etcd_server, prefix),
        "json": RunningWatch(etcd_server, prefix, "--json"),
        "all": RunningWatch(etcd_server, prefix, "--json", "--all"),
    }
    try:
        poll(
            lambda: all(
                "synced" in w.text() or "changes follow" in w.text() for w in watches.values()
            )
        )
        doc = {"iocid": "h:W", "status": "active", "records": 3}
        etcd_store.put(keys.ioc("h:W"), json.dumps(doc).encode())
        poll(lambda: all("h:W" in w.text() for w in watches.values()), what="the change")
    finally:
        for watch in watches.values():
            watch.stop(etcd_store, prefix)

    text = watches["text"].text().splitlines()
    assert "ioc h:OLD active (1 records)" in text[0]
    assert "changes follow" in text[1]
    assert "ioc h:W active (3 records)" in text[2]
    assert not any("shared" in line for line in text)

    lines = [json.loads(line) for line in watches["json"].text().splitlines()]
    assert (lines[0]["event"], lines[0]["key"], lines[0]["value"]) == (
        "put",
        ["iocs", "h:OLD"],
        before,
    )
    assert lines[1]["event"] == "synced"
    state_revision = lines[1]["revision"]
    assert (lines[2]["event"], lines[2]["key"], lines[2]["value"]) == ("put", ["iocs", "h:W"], doc)
    assert lines[2]["revision"] == state_revision + 1

    shown = [json.loads(line).get("key") for line in watches["all"].text().splitlines()]
    assert ["shared", "h:OLD"] in shown


def test_every_command_has_json_lines(
    filled: EtcdWriter, etcd_server: EtcdCluster, prefix: str
) -> None:
    code, text = run(etcd_server, prefix, "iocs", "--json")
    iocs = [json.loads(line) for line in text.splitlines()]
    assert code == 0
    assert [(d["iocid"], d["status"], d["records"]) for d in iocs] == [
        ("h:IOC-A", "active", 2),
        ("h:IOC-B", "inactive", 1),
    ]
    code, text = run(etcd_server, prefix, "pv", "SHARED", "NOPE", "--json")
    pvs = [json.loads(line) for line in text.splitlines()]
    assert code == 1
    assert pvs[0]["owner"] == "h:IOC-A" and sorted(pvs[0]["claims"]) == ["h:IOC-A", "h:IOC-B"]
    assert pvs[1] == {"pv": "NOPE", "status": "unknown"}
    code, text = run(etcd_server, prefix, "records", "h:IOC-A", "--json")
    records = [json.loads(line) for line in text.splitlines()]
    assert code == 0
    assert records[0] == {
        "name": "A:PV1",
        "type": "ai",
        "iocid": "h:IOC-A",
        "desc": "Current",
        "aliases": ["A:PV1:AL"],
        "infos": {"archive": "x"},
    }


def test_peer_supplied_strings_are_escaped_in_tables(
    etcd_server: EtcdCluster, etcd_store: Store, prefix: str
) -> None:
    keys = Keys(prefix)
    evil = "EVIL\x1b[2J\nFAKE  row\x00"
    record = Record(1, evil, "ai", [], {"k": "v\x07"}, "desc\r")
    etcd_store.put(keys.record("h:X", evil), record_value(record, "h:X"))
    code, text = run(etcd_server, prefix, "records", "h:X")
    assert code == 0
    assert not any(ch in text for ch in "\x1b\x00\x07\r")
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("EVIL\\x1b[2J\\nFAKE  row\\x00")


def test_peer_supplied_strings_are_escaped_in_iocs_and_pv_tables(
    etcd_server: EtcdCluster, etcd_store: Store, prefix: str
) -> None:
    keys = Keys(prefix)
    evil = "h\x1b[2J:IOC\nFAKE ROW\x00"
    doc = {"iocid": evil, "status": "active\r", "hostname": "h\x07", "records": 1}
    etcd_store.put(keys.ioc(evil), docs.dumps(doc))
    # PV is an alias of a record named with an escape sequence.
    etcd_store.put(keys.record(evil, "PV\x1b]0;t\x07"), b'{"type":"ai","aliases":["PV"]}')
    for args in (("iocs",), ("pv", "PV")):
        code, text = run(etcd_server, prefix, *args)
        assert code == 0, args
        assert not any(ch in text for ch in "\x1b\x00\x07\r"), args
        assert len(text.splitlines()) == 2, (args, text)  # no forged rows
        assert "h\\x1b[2J:IOC\\nFAKE ROW\\x00" in text, args


@pytest.mark.slow
def test_records_of_a_65000_record_ioc(
    etcd_server: EtcdCluster, etcd_store: Store, prefix: str
) -> None:
    """Far more than one page, and about 12 MB: more than gRPC's 4 MiB in one response."""
    keys = Keys(prefix)
    n = 65_000
    infos = {"archive": "monitor 1.0", "egu": "mA", "note": "x" * 64}
    etcd_store.write(
        (
            keys.record("h:BIG", name).encode(),
            record_value(Record(i, name, "ai", [name + ":A"], infos, f"record {i}"), "h:BIG"),
        )
        for i in range(n)
        if (name := f"BIG:{i:05d}")
    )
    code, text = run(etcd_server, prefix, "records", "h:BIG")
    assert code == 0
    lines = text.splitlines()
    assert len(lines) == n + 1
    assert lines[1].split()[:3] == ["BIG:00000", "ai", "BIG:00000:A"]
    assert lines[-1].split()[:3] == ["BIG:64999", "ai", "BIG:64999:A"]


def test_iocs_over_4_mib(etcd_server: EtcdCluster, etcd_store: Store, prefix: str) -> None:
    keys = Keys(prefix)
    env = {f"VAR{i}": "v" * 100 for i in range(80)}  # about 8.5 kB per document
    n = 600
    etcd_store.write(
        (keys.ioc(f"h:IOC{i:03d}").encode(), docs.dumps(ioc_doc(f"IOC{i:03d}", env)))
        for i in range(n)
    )
    assert sum(len(e.value) for p in etcd_store.scan(keys.iocs_prefix()) for e in p.entries) > (
        4 * 1024 * 1024
    )
    code, text = run(etcd_server, prefix, "iocs")
    assert code == 0
    rows = [line.split() for line in text.splitlines()[1:]]
    assert [r[0] for r in rows] == [f"h:IOC{i:03d}" for i in range(n)]
    code, text = run(etcd_server, prefix, "iocs", "--json")
    assert len(text.splitlines()) == n


def ioc_doc(name: str, env: dict[str, str]) -> dict[str, Any]:
    return docs.ioc_document(
        iocid=f"h:{name}",
        status="active",
        hostname="h",
        iocname=name,
        ip="127.0.0.1",
        port=1,
        env=env,
        bridge_id="b1",
        connected="2027-01-15T08:00:00.000Z",
        uploaded="2027-01-15T08:00:01.000Z",
        disconnected=None,
        records=1,
        aliases=0,
    )
