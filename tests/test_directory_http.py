"""The ChannelFinder API end to end: a real etcd, a real bridge process fed by fake
IOCs, and a real ``twistd recsync-directory`` process, asked over HTTP exactly as
pyCFClient, Phoebus and pvinfo ask (request shapes from their sources)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import cli
from bridge.etcd.process import free_port
from bridge.testing.cluster import EtcdCluster
from bridge.testing.fakeioc import FakeIOC, IOCSpec, RecordSpec, find_bridge
from bridge.testing.harness import BridgeProcess, child_env, write_config
from tests.helpers import poll

pytestmark = pytest.mark.etcd

ENV = (
    ("EPICS_VERSION", "EPICS 7.0.8"),
    ("HOSTNAME", "vm"),
    ("IOCNAME", "IOC1"),
    ("ENGINEER", "jdoe"),
    ("RSRV_SERVER_PORT", "5064"),
)
HOSTILE = '<script>alert("x")</script>\x01 \xe9'
SPEC = IOCSpec(
    ENV,
    (
        RecordSpec("SR:C01:BPM1", "ai", ("SR:C01:BPM1:ALIAS",), (("archive", "Monitor"),), "X"),
        RecordSpec("SR:C01:BPM2", "ao", (), (), "Y position"),
        RecordSpec("BR:Q1", "calc", (), (("archive", "Scan"),), None),
        RecordSpec(HOSTILE, "ai", (), (), HOSTILE),
    ),
)
CF = {"alias": "true", "recordType": "true", "recordDesc": "true", "infotags": "archive"}


class DirectoryProcess:
    """``twistd -n recsync-directory -f FILE`` in its own process."""

    def __init__(self, workdir: Path, endpoints: list[str], prefix: str) -> None:
        self.port = free_port()
        self.config = write_config(
            workdir / "directory.conf",
            {
                "etcd": {"endpoints": ", ".join(endpoints), "prefix": prefix},
                "http": {"bind": f"127.0.0.1:{self.port}"},
                "cf": CF,
            },
        )
        self.log = workdir / "directory.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/ChannelFinder"

    def start(self) -> DirectoryProcess:
        env = child_env()
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        command += ["-n", "--pidfile=", "recsync-directory", "-f", str(self.config)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        poll(lambda: "ChannelFinder API at" in self.log.read_text(), 30, "directory ready")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    """(status, headers, decoded JSON or None)."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            body = response.read()
            status, got = response.status, response.headers
    except urllib.error.HTTPError as error:
        body, status, got = error.read(), error.code, error.headers
    return status, got, json.loads(body) if body else None


def pycfclient_find(base: str, **kwds: Any) -> Any:
    """pyCFClient's ``find``: ``name`` split on commas into repeated ``~name``; the
    parameters urlencoded by requests; JSON headers; 404 gives None."""
    args: list[tuple[str, str]] = []
    for key, value in kwds.items():
        if key == "name":
            args += [("~name", p.strip()) for p in value.split(",")]
        elif key == "property":
            args += [(p, v.strip()) for p, values in value for v in values.split(",")]
        elif key == "size":
            args.append(("~size", str(int(value))))
    url = f"{base}/resources/channels?{urllib.parse.urlencode(args)}"
    headers = {"content-type": "application/json", "accept": "application/json"}
    status, _, body = get(url, headers)
    return None if status == 404 else body


def phoebus_find(base: str, search: dict[str, list[str]]) -> Any:
    """Phoebus's ``FindByMap``: values URL-encoded and joined with commas per key."""
    query = "&".join(
        f"{k}=" + ",".join(urllib.parse.quote_plus(v) for v in vs) for k, vs in search.items()
    )
    status, _, body = get(
        f"{base}/resources/channels?{query}", {"Content-Type": "application/json"}
    )
    assert status == 200
    return body


def pvinfo_query(base: str, typed: str, extra: str = "") -> tuple[int, Any, Any]:
    """pvinfo's ``queryChannelFinder``: bare input wrapped as ``*input*``, from a page."""
    pattern = typed if typed.startswith("*") or typed.endswith("*") else f"*{typed}*"
    url = f"{base}/resources/channels?~name={urllib.parse.quote(pattern, safe='')}{extra}"
    return get(url, {"Origin": "http://pvinfo.example"})


def values(channel: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in channel["properties"]}


@pytest.fixture
def fleet(tmp_path: Path, etcd_server: EtcdCluster, prefix: str) -> Iterator[tuple[str, FakeIOC]]:
    udp_port = free_port()
    bridge = BridgeProcess(
        tmp_path / "bridge",
        endpoints=etcd_server.endpoints,
        prefix=prefix,
        announce_to=[f"127.0.0.1:{udp_port}"],
        recceiver={"announceInterval": 0.5, "tcptimeout": 2.0},
    )
    directory = DirectoryProcess(tmp_path, etcd_server.endpoints, prefix)
    ioc = FakeIOC(SPEC)
    try:
        bridge.start().wait_ready()
        host, port, key = find_bridge(udp_port, timeout=10)
        directory.start()
        ioc.connect(host, port, key)
        yield directory.base, ioc
    finally:
        ioc.close()
        directory.stop()
        bridge.stop()


def test_clients_read_uploads_through_the_api(fleet: tuple[str, FakeIOC]) -> None:
    base, ioc = fleet
    found = poll(lambda: pycfclient_find(base, name="SR:*"), what="channels in the API")
    poll(lambda: len(pycfclient_find(base, name="*")) == 5, what="all channels")

    # pyCFClient: name='SR*,*BPM1' is two ~name parameters, ANDed.
    found = pycfclient_find(base, name="SR*,*BPM1")
    assert [c["name"] for c in found] == ["SR:C01:BPM1"]
    channel = found[0]
    assert list(channel) == ["name", "owner", "properties", "tags"]
    assert channel["owner"] == "jdoe" and channel["tags"] == []
    got = values(channel)
    assert (got["iocid"], got["hostName"], got["iocName"]) == ("vm:IOC1", "vm", "IOC1")
    assert (got["pvStatus"], got["recordType"], got["recordDesc"]) == ("Active", "ai", "X")
    assert (got["archive"], got["caPort"], got["recceiverID"]) == ("Monitor", "5064", "bridge")
    assert [c["name"] for c in pycfclient_find(base, property=[("archive", "scan,monitor")])] == [
        "BR:Q1",
        "SR:C01:BPM1",
        "SR:C01:BPM1:ALIAS",
    ]
    assert values(pycfclient_find(base, name="*ALIAS")[0])["alias"] == "SR:C01:BPM1"

    # Phoebus: ~name always sent; property-only search gives ChannelFinder's empty answer.
    assert [c["name"] for c in phoebus_find(base, {"~name": ["SR*"], "pvStatus": ["Active"]})]
    assert phoebus_find(base, {"pvStatus": ["Active"], "~name": [""]}) == []

    # pvinfo, from a browser page: CORS, count, root, exact PV page.
    status, headers, body = pvinfo_query(base, "BPM", "&pvStatus=Active&~size=100")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert [c["name"] for c in body] == ["SR:C01:BPM1", "SR:C01:BPM1:ALIAS", "SR:C01:BPM2"]
    status, _, count = get(f"{base}/resources/channels/count?~name=*BPM*")
    assert (status, count) == (200, 3)
    status, _, info = get(base)
    assert info["name"] == "ChannelFinder Service"
    status, _, combined = get(f"{base}/resources/channels/combined?~name=*&~size=2")
    assert (len(combined["channels"]), combined["count"]) == (2, 2)
    _, _, combined = get(f"{base}/resources/channels/combined?~size=2&~track_total_hits=true")
    assert combined["count"] == 5


def test_exact_lookup_properties_tags_scroll_and_errors(fleet: tuple[str, FakeIOC]) -> None:
    base, _ = fleet
    poll(lambda: len(pycfclient_find(base, name="*") or []) == 5, what="all channels")
    status, _, channel = get(f"{base}/resources/channels/SR:C01:BPM1")
    assert status == 200 and channel["name"] == "SR:C01:BPM1"
    assert get(f"{base}/resources/channels/sr:c01:bpm1")[0] == 404
    assert get(f"{base}/resources/channels/NOPE")[0] == 404
    quoted = urllib.parse.quote(HOSTILE, safe="")
    status, _, channel = get(f"{base}/resources/channels/{quoted}")
    assert status == 200 and channel["name"] == HOSTILE
    assert values(channel)["recordDesc"] == HOSTILE

    _, _, properties = get(f"{base}/resources/properties")
    names = [p["name"] for p in properties]
    assert names == sorted(names) and {"hostName", "pvStatus", "archive", "alias"} <= set(names)
    assert all(p["value"] is None and p["channels"] == [] for p in properties)
    status, _, prop = get(f"{base}/resources/properties/archive")
    assert [c["name"] for c in prop["channels"]] == ["BR:Q1", "SR:C01:BPM1", "SR:C01:BPM1:ALIAS"]
    _, _, prop = get(f"{base}/resources/properties/archive?withChannels=false")
    assert prop["channels"] == []
    assert get(f"{base}/resources/properties/nope")[0] == 404
    assert get(f"{base}/resources/tags")[2] == []
    assert get(f"{base}/resources/tags/golden")[0] == 404

    _, _, page = get(f"{base}/resources/scroll?~name=*:*&~size=2")
    assert [c["name"] for c in page["channels"]] == ["BR:Q1", "SR:C01:BPM1"]
    _, _, page = get(f"{base}/resources/scroll/{page['id']}?~name=*:*&~size=2")
    assert [c["name"] for c in page["channels"]] == ["SR:C01:BPM1:ALIAS", "SR:C01:BPM2"]

    status, _, error = get(f"{base}/resources/channels?~size=20000")
    assert status == 400 and "scroll" in error["message"]
    assert get(f"{base}/resources/channels?~size=x")[0] == 400
    status, headers, error = get(f"{base}/resources/channels/X", method="PUT")
    assert status == 401 and "read-only" in error["message"]
    status, headers, _ = get(
        f"{base}/resources/channels",
        {
            "Origin": "http://pvinfo.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "content-type",
        },
        method="OPTIONS",
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Headers"] == "content-type"


def test_status_follows_the_ioc(fleet: tuple[str, FakeIOC]) -> None:
    base, ioc = fleet
    poll(lambda: pycfclient_find(base, name="BR:Q1"), what="channel")
    ioc.close()
    poll(
        lambda: values(pycfclient_find(base, name="BR:Q1")[0])["pvStatus"] == "Inactive",
        what="Inactive after the IOC left",
    )


def test_bridge_serves_the_api_itself_when_http_bind_is_set(
    tmp_path: Path, etcd_server: EtcdCluster, prefix: str
) -> None:
    udp_port, http_port = free_port(), free_port()
    bridge = BridgeProcess(
        tmp_path,
        endpoints=etcd_server.endpoints,
        prefix=prefix,
        announce_to=[f"127.0.0.1:{udp_port}"],
        recceiver={"announceInterval": 0.5},
    )
    with open(bridge.config, "a") as config:
        config.write(f"[http]\nbind = 127.0.0.1:{http_port}\n[cf]\nalias = on\n")
    base = f"http://127.0.0.1:{http_port}/ChannelFinder"
    ioc = FakeIOC(SPEC)
    try:
        bridge.start().wait_ready()
        poll(lambda: f"ChannelFinder API at {base}" in bridge.log_text(), 30, "the API")
        ioc.connect(*find_bridge(udp_port, timeout=10))
        found = poll(lambda: pycfclient_find(base, name="*ALIAS"), what="the alias channel")
        assert values(found[0])["alias"] == "SR:C01:BPM1"
    finally:
        ioc.close()
        bridge.stop()


def recsync(*argv: str) -> tuple[int, str, str]:
    """`recsync ARGV` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(list(argv), out=out, environ={})
    return code, out.getvalue(), err.getvalue()


def test_recsync_pv_asks_the_directory_and_a_scan_agrees(
    fleet: tuple[str, FakeIOC], tmp_path: Path, etcd_server: EtcdCluster
) -> None:
    """With the directory's configuration (``[http] bind``) `recsync pv` asks its
    ``/pv.json``; with ``--endpoints`` it scans etcd; both print the same."""
    base, _ = fleet
    poll(lambda: len(pycfclient_find(base, name="*") or []) == 5, what="all channels")
    conf = str(tmp_path / "directory.conf")
    names = ["SR:C01:BPM1:ALIAS", "BR:Q1", HOSTILE, "NOPE"]
    for form in ((), ("--json",)):
        code, asked, said = recsync("-f", conf, "pv", *names, *form)
        assert (code, said) == (1, "")  # NOPE is unknown; nothing said about a scan
        endpoint = etcd_server.endpoints[0]
        code, scanned, said = recsync("-f", conf, "--endpoints", endpoint, "pv", *names, *form)
        assert code == 1 and said.count("\n") == 1 and "scanning every record in etcd" in said
        assert asked == scanned
    first, *_, last = [json.loads(line) for line in asked.splitlines()]
    assert first == {
        "pv": "SR:C01:BPM1:ALIAS",
        "owner": "vm:IOC1",
        "record": "SR:C01:BPM1",
        "type": "ai",
        "alias": True,
        "status": "active",
        "claims": ["vm:IOC1"],
    }
    assert last == {"pv": "NOPE", "status": "unknown"}
