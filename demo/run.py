"""Demo: a bridge on its embedded etcd, a few simulated IOCs, and what landed.

    python demo/run.py [--iocs N] [--records N] [--keep] [--open] [--wait] [--no-pyreccaster]

Starts ``twistd -n recsync-bridge`` with no etcd configured (so it runs its own
etcd on loopback, and serves the directory's pages on a loopback port), prints the
pages' address first, starts N fake C-style IOCs and one pyreccaster IOC that find
the bridge through UDP announcements on 127.0.0.1, waits until every IOC is
active, prints ``recsync iocs``, a ``recsync pv`` lookup and one IOC's records,
then disconnects one IOC to show it turn inactive (the overview page follows it),
and stops everything (the etcd data and logs are deleted unless ``--keep``).
``--open`` opens the pages in a browser; ``--wait`` keeps everything running until
Enter is pressed; ``--no-pyreccaster`` leaves out the Rust IOC (it needs UDP port 5049
of its own). Nothing is sent outside 127.0.0.1. ``RECCEIVER_*`` variables in the
caller's environment are ignored: the demo brings its own configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge import cli  # noqa: E402
from bridge.etcd.process import free_port  # noqa: E402
from bridge.testing.fakeioc import FakeIOC, find_bridge, make_ioc  # noqa: E402
from bridge.testing.harness import BridgeProcess, clean_environ  # noqa: E402

PYRECCASTER_PORT = 5049  # fixed in pyreccaster


def recsync(config: Path, *args: str) -> str:
    """`recsync -f CONFIG ARGS` as the demo bridge sees it: the caller's own
    ``RECCEIVER_*`` variables are not the demo's configuration."""
    out = io.StringIO()
    cli.main(["-f", str(config), *args], out=out, environ=clean_environ())
    return out.getvalue()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def start_pyreccaster(stop: threading.Event) -> threading.Thread | None:
    try:
        import pyreccaster
    except ImportError:
        print("(pyreccaster not installed: skipping the Rust IOC)")
        return None

    async def run() -> None:
        records = [
            pyreccaster.PyRecord("DEMO:RUST:TEMP", "ai", "DEMO:RUST:T", {"archive": "Monitor"}),
            pyreccaster.PyRecord("DEMO:RUST:ONOFF", "bo", None, {}),
        ]
        caster = await pyreccaster.PyReccaster.setup(
            records, {"IOCNAME": "RUST-IOC", "HOSTNAME": "demo-host"}
        )
        task = asyncio.ensure_future(caster.run())
        while not stop.is_set():
            await asyncio.sleep(0.1)
        task.cancel()

    def main() -> None:
        try:
            asyncio.run(run())
        except (asyncio.CancelledError, RuntimeError) as error:
            if not isinstance(error, asyncio.CancelledError):
                print(f"(pyreccaster could not start: {error})")

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread


def pages_address(bridge: BridgeProcess, timeout: float) -> str:
    """The directory's address, from the bridge's log line announcing it."""
    found: list[str] = []

    def logged() -> bool:
        match = re.search(r"pages at (http://\S+/),", bridge.log_text())
        if match:
            found.append(match.group(1))
        return bool(match)

    wait_for(logged, timeout, "the directory's pages")
    return found[0]


def statuses(config: Path) -> dict[str, str]:
    lines = recsync(config, "iocs").splitlines()[1:]
    return {line.split()[0]: line.split()[1] for line in lines if line.strip()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iocs", type=int, default=3)
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the etcd data and logs")
    parser.add_argument(
        "--no-pyreccaster",
        action="store_true",
        help="leave out the pyreccaster IOC (it needs UDP port 5049 of its own)",
    )
    parser.add_argument("--open", action="store_true", help="open the pages in a browser")
    parser.add_argument("--wait", action="store_true", help="keep running until Enter")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="recsync-demo-"))
    udp_port = free_port()
    bridge = BridgeProcess(
        workdir,
        endpoints=None,
        announce_to=[f"127.0.0.1:{udp_port}", f"127.0.0.1:{PYRECCASTER_PORT}"],
        recceiver={"announceInterval": 1.0},
        name="demo-bridge",
    )
    print(f"starting the bridge with an embedded etcd (state in {workdir}) ...")
    bridge.start()
    stop = threading.Event()
    iocs: list[FakeIOC] = []
    try:
        try:
            bridge.wait_ready(60)
            url = pages_address(bridge, 60)
        except (RuntimeError, TimeoutError) as error:
            raise SystemExit(f"demo: the bridge did not start: {error}") from None
        print(f"\n    the directory: {url}\n")
        if args.open:
            import webbrowser

            webbrowser.open(url)
        try:
            host, port, key = find_bridge(udp_port, timeout=10)
        except TimeoutError:
            raise SystemExit("demo: no announcement from the bridge within 10 s") from None
        print(f"heard the announcement: bridge at {host}:{port}")
        for i in range(args.iocs):
            ioc = FakeIOC(make_ioc(f"DEMO-IOC-{i + 1}", args.records, hostname="demo-host"))
            ioc.connect(host, port, key)
            iocs.append(ioc)
        rust = None if args.no_pyreccaster else start_pyreccaster(stop)
        expected = args.iocs + (1 if rust is not None else 0)
        wait_for(
            lambda: list(statuses(bridge.config).values()).count("active") >= expected,
            60,
            "every IOC to be active",
        )
        print("\n$ recsync iocs\n" + recsync(bridge.config, "iocs"))
        names = ["DEMO-IOC-1:PV000000", "DEMO-IOC-1:PV000000:ALIAS", "DEMO:RUST:T"]
        print("$ recsync pv " + " ".join(names) + "\n" + recsync(bridge.config, "pv", *names))
        print("$ recsync records demo-host:DEMO-IOC-1 (first lines)")
        records = recsync(bridge.config, "records", "demo-host:DEMO-IOC-1")
        print("\n".join(records.splitlines()[:5]))
        print("\ndisconnecting DEMO-IOC-1 ...")
        iocs[0].close()
        wait_for(
            lambda: statuses(bridge.config).get("demo-host:DEMO-IOC-1") == "inactive",
            30,
            "DEMO-IOC-1 to turn inactive",
        )
        print("$ recsync iocs\n" + recsync(bridge.config, "iocs"))
        print(f"the directory: {url}")
        if args.wait:
            input("press Enter to stop the demo ")
        return 0
    finally:
        stop.set()
        for ioc in iocs:
            ioc.close()
        bridge.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
