"""A bridge process serving pages, API, metrics and health, fed by fake IOCs' real uploads.

Shared by tests/test_web_bridge.py (HTTP) and tests/test_browser.py (a real browser).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bridge.etcd.process import free_port
from bridge.testing.fakeioc import FakeIOC, IOCSpec, RecordSpec, find_bridge, make_ioc
from bridge.testing.harness import BridgeProcess
from tests.helpers import poll

SCRIPT = '<script>alert("x")</script>'
FIRST = IOCSpec(
    (
        ("EPICS_VERSION", "EPICS 7.0.8"),
        ("HOSTNAME", "vm1"),
        ("IOCNAME", "WEB-IOC-1"),
        ("ENGINEER", "jdoe"),
        ("RSRV_SERVER_PORT", "5064"),
    ),
    (
        RecordSpec("SR:C01:BPM1", "ai", ("SR:C01:BPM1:ALIAS",), (("archive", "Monitor"),), "X"),
        RecordSpec("SR:C01:BPM2", "ao", (), (), "Y position"),
        RecordSpec(SCRIPT, "ai", (), (("note", "<b>bold</b>"),), SCRIPT),
    ),
)
SECOND = make_ioc("WEB-IOC-2", 20, hostname="vm2")
FIRST_ID, SECOND_ID = "vm1:WEB-IOC-1", "vm2:WEB-IOC-2"
#: Channels of both (records and aliases; make_ioc gives every 10th record an alias).
CHANNELS = 4 + 20 + 2


@dataclass
class WebFleet:
    """The running bridge (`base` is its web address) and its IOCs, by IOC id."""

    bridge: BridgeProcess
    base: str
    metrics_port: int
    iocs: dict[str, FakeIOC] = field(default_factory=dict)


def http_get(url: str, timeout: float = 20) -> tuple[int, str]:
    """(status, body); (0, reason) when nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError) as error:
        return 0, str(error)


@contextmanager
def web_fleet(workdir: Path, endpoints: list[str], prefix: str) -> Iterator[WebFleet]:
    """A bridge with ``[http] bind`` and ``metricsPort`` on loopback, two fake IOCs
    connected and their uploads visible in the directory; everything stopped after."""
    udp_port, http_port, metrics_port = free_port(), free_port(), free_port()
    bridge = BridgeProcess(
        workdir,
        endpoints=endpoints,
        prefix=prefix,
        announce_to=[f"127.0.0.1:{udp_port}"],
        recceiver={"announceInterval": 0.5, "tcptimeout": 2.0, "metricsPort": metrics_port},
    )
    with open(bridge.config, "a") as config:
        config.write(
            f"[http]\nbind = 127.0.0.1:{http_port}\n"
            "[cf]\nalias = on\nrecordType = on\nrecordDesc = on\ninfotags = archive\n"
        )
    fleet = WebFleet(bridge, f"http://127.0.0.1:{http_port}", metrics_port)
    try:
        bridge.start().wait_ready()
        poll(lambda: "ChannelFinder API at" in bridge.log_text(), 30, "the directory")
        found = find_bridge(udp_port, timeout=10)
        for iocid, spec in ((FIRST_ID, FIRST), (SECOND_ID, SECOND)):
            fleet.iocs[iocid] = FakeIOC(spec)
            fleet.iocs[iocid].connect(*found)
        poll(
            lambda: f'data-live="channels">{CHANNELS}<' in http_get(fleet.base + "/")[1],
            30,
            "every upload in the directory",
        )
        yield fleet
    finally:
        for ioc in fleet.iocs.values():
            ioc.close()
        bridge.stop()
