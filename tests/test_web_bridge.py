"""Metrics and health of a real bridge process fed by real uploads, read over HTTP as
Prometheus and a load balancer read them (metrics parsed with prometheus_client's own
parser), and the read-only directory's readiness."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge import cli
from bridge.config import HttpConfig, load_config
from bridge.documents import Keys
from bridge.etcd import datadir
from bridge.etcd.backend import open_store
from bridge.etcd.process import find_etcd_binary, free_port
from bridge.testing.cluster import EtcdCluster
from bridge.testing.harness import BridgeProcess, child_env
from tests.helpers import poll
from tests.test_directory_http import DirectoryProcess
from tests.webfleet import CHANNELS, FIRST, SECOND, SECOND_ID, WebFleet, http_get, web_fleet

pytestmark = pytest.mark.etcd

REFERENCE_NAMES = {
    "recceiver_connections_active",
    "recceiver_connections_waiting",
    "recceiver_connections_limit",
    "recceiver_known_iocs",
    "recceiver_tracked_channels",
    "recceiver_cf_commits",
    "recceiver_cf_commit_duration_seconds",
}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample, by (name, sorted labels), parsed as Prometheus parses it."""
    status, text = http_get(url)
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def fleet(tmp_path: Path, etcd_server: EtcdCluster, prefix: str) -> Iterator[WebFleet]:
    with web_fleet(tmp_path, etcd_server.endpoints, prefix) as running:
        yield running


def test_metrics_keep_the_reference_names_and_count_the_uploads(fleet: WebFleet) -> None:
    records = len(FIRST.records) + len(SECOND.records)

    def counted() -> Samples | None:
        samples = scrape(fleet.base + "/metrics")
        return samples if value(samples, "recsync_uploads_total") >= 2 else None

    samples = poll(counted, what="both uploads counted")
    names = {name for name, _ in samples}
    for reference in REFERENCE_NAMES:
        assert any(n.startswith(reference) for n in names), reference
    assert value(samples, "recceiver_connections_limit") == 20
    assert value(samples, "recceiver_connections_active") == 0  # both uploads are done
    assert value(samples, "recceiver_connections_waiting") == 0
    assert value(samples, "recceiver_known_iocs") == 2
    assert value(samples, "recceiver_tracked_channels") == records
    assert value(samples, "recceiver_cf_commits_total", result="success") >= 2
    assert value(samples, "recceiver_cf_commits_total", result="failure") == 0
    assert value(samples, "recceiver_cf_commit_duration_seconds_count") >= 2
    assert value(samples, "recsync_records_received_total") == records
    assert value(samples, "recsync_records_committed_total") == records
    assert value(samples, "recsync_sessions", state="live") == 2
    assert value(samples, "recsync_directory_channels") == CHANNELS
    assert value(samples, "recsync_directory_iocs", status="up") == 2
    assert value(samples, "recsync_lease_refreshes_total") >= 1
    assert value(samples, "recsync_etcd_request_duration_seconds_count") > 0
    assert value(samples, "recsync_announcements_sent_total") > 0
    assert value(samples, "recsync_can_store") == 1
    gauges = [v for (n, _), v in samples.items() if not n.endswith(("_total", "_created"))]
    assert min(gauges) >= 0

    # metricsPort: the same registry at any path, as the reference served it.
    other = scrape(f"http://127.0.0.1:{fleet.metrics_port}/anything")
    assert value(other, "recceiver_known_iocs") == 2

    fleet.iocs.pop(SECOND_ID).close()
    poll(
        lambda: (
            value(scrape(fleet.base + "/metrics"), "recsync_directory_iocs", status="down") == 1
        ),
        what="the IOC counted down",
    )
    assert value(scrape(fleet.base + "/metrics"), "recceiver_known_iocs") == 1


def test_bridge_health_and_readiness(fleet: WebFleet) -> None:
    assert http_get(fleet.base + "/healthz") == (200, "ok\n")
    status, body = http_get(fleet.base + "/readyz")
    assert status == 200, body
    lines = body.splitlines()
    assert lines[0] == "ready"
    assert any(line.startswith("lease: ok: holds etcd lease") for line in lines)
    assert any(line.startswith("etcd: ok: etcd answered") for line in lines)
    assert any(line.startswith("directory current:") for line in lines)


def test_bridge_not_ready_once_etcd_stops(tmp_path: Path) -> None:
    udp_port, http_port = free_port(), free_port()
    with EtcdCluster(1, tmp_path / "etcd", binary=find_etcd_binary()) as etcd:
        bridge = BridgeProcess(
            tmp_path / "bridge",
            endpoints=etcd.endpoints,
            announce_to=[f"127.0.0.1:{udp_port}"],
            etcd={"lease_ttl": 2, "timeout": 0.5},
        )
        with open(bridge.config, "a") as config:
            config.write(f"[http]\nbind = 127.0.0.1:{http_port}\n")
        base = f"http://127.0.0.1:{http_port}"
        try:
            bridge.start().wait_ready()
            poll(lambda: http_get(base + "/readyz")[0] == 200, what="ready")
            etcd.stop()
            status, body = poll(
                lambda: (r := http_get(base + "/readyz"))[0] == 503 and r, what="not ready"
            )
            assert body.startswith("not ready\n")
            assert "etcd: FAIL: etcd last answered the lease refresh" in body
            assert http_get(base + "/healthz")[0] == 200  # alive all the same
        finally:
            bridge.stop()


def test_directory_process_ready_when_its_view_is_loaded(
    tmp_path: Path, etcd_server: EtcdCluster, prefix: str
) -> None:
    directory = DirectoryProcess(tmp_path, etcd_server.endpoints, prefix)
    try:
        directory.start()
        base = directory.base.removesuffix("/ChannelFinder")
        status, body = poll(lambda: (r := http_get(base + "/readyz"))[0] == 200 and r)
        assert "directory view: ok" in body and "directory current: ok" in body
        samples = scrape(base + "/metrics")
        assert value(samples, "recsync_directory_watching") == 1
        assert not any(n.startswith("recceiver_") for n, _ in samples)  # no bridge here
    finally:
        directory.stop()


def test_directory_process_not_ready_without_etcd(tmp_path: Path) -> None:
    """It listens before its view is loaded, so a probe hears "loading" (503)."""
    directory = DirectoryProcess(tmp_path, [f"127.0.0.1:{free_port()}"], "/nowhere")
    env = child_env()
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    command += ["-n", "--pidfile=", "recsync-directory", "-f", str(directory.config)]
    with open(directory.log, "ab") as log:
        directory.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        base = directory.base.removesuffix("/ChannelFinder")
        status, body = poll(lambda: (r := http_get(base + "/readyz", timeout=2))[0] == 503 and r)
        assert "directory view: FAIL: loading from etcd" in body
        assert http_get(base + "/healthz")[0] == 200
    finally:
        directory.stop()


def test_quick_start_serves_the_directory_on_loopback(tmp_path: Path) -> None:
    """No [http] section and no etcd endpoints (the embedded etcd): the bridge serves
    pages, API and metrics on 127.0.0.1 at a free port, logs the address and records it
    in the data directory, where `recsync pv` finds it while the bridge runs."""
    bridge = BridgeProcess(tmp_path, endpoints=None)
    data_dir = str(tmp_path / "etcd")
    try:
        bridge.start().wait_ready(60)
        match = poll(
            lambda: re.search(r"pages at (http://127\.0\.0\.1:\d+/),", bridge.log_text()),
            30,
            "the logged address",
        )
        base = match.group(1).rstrip("/")
        assert http_get(base + "/")[0] == 200
        status, body = http_get(base + "/ChannelFinder")
        assert status == 200 and "ChannelFinder Service" in body
        assert value(scrape(base + "/metrics"), "recsync_can_store") == 1

        assert datadir.read_directory_url(data_dir) == base
        endpoint = datadir.read_endpoint(data_dir)
        assert endpoint is not None
        store = open_store([endpoint], timeout=5.0, deadline_s=10.0)
        try:
            keys = Keys()
            store.put(keys.ioc("h:QS"), b'{"iocid":"h:QS","status":"active"}')
            store.put(keys.record("h:QS", "QS:PV"), b'{"type":"ai","aliases":["QS:AL"]}')
        finally:
            store.close()
        poll(lambda: '"owner":"h:QS"' in http_get(base + "/pv.json?name=QS:AL")[1])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):
            argv = ["-f", str(bridge.config), "pv", "QS:AL", "--json"]
            code = cli.main(argv, out=out, environ={})
        assert (code, err.getvalue()) == (0, "")  # asked the directory: no scan
        assert json.loads(out.getvalue())["record"] == "QS:PV"
    finally:
        bridge.stop()
    assert datadir.read_directory_url(data_dir) is None


def test_http_serves_only_where_configured() -> None:
    assert HttpConfig().serves(embedded_etcd=True) == HttpConfig("127.0.0.1", 0)
    assert HttpConfig().serves(embedded_etcd=False) is None
    assert HttpConfig(off=True).serves(embedded_etcd=True) is None
    bound = HttpConfig("0.0.0.0", 8080)
    assert bound.serves(embedded_etcd=False) is bound
    # Where recsync asks it from the same host: a wildcard bind on loopback.
    assert bound.local_url() == "http://127.0.0.1:8080"
    assert HttpConfig("::", 8080).local_url() == "http://[::1]:8080"
    assert HttpConfig("10.1.2.3", 0).local_url(4321) == "http://10.1.2.3:4321"
    config = load_config(
        None, {"RECCEIVER_HTTP_BIND": "off", "RECCEIVER_RECCEIVER_METRICSPORT": "9102"}
    )
    assert config.http.serves(embedded_etcd=True) is None
    assert config.metrics_port == 9102
