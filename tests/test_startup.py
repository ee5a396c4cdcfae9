"""A real `twistd recsync-bridge` starting, failing to start, and stopping, as an operator
runs it: exit status, the one line it prints, what it leaves behind (issue 12).

Each failure to start must end twistd with exit status 1 and one line saying what to do,
in the foreground and daemonised, with no etcd process, pid file or endpoint file left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bridge.etcd import datadir
from bridge.etcd.process import find_etcd_binary, free_port
from bridge.etcd.store import Store
from bridge.testing.checks import content_problems, spec_iocid
from bridge.testing.cluster import EtcdCluster
from bridge.testing.fakeioc import FakeIOC, make_ioc
from bridge.testing.harness import BridgeProcess, child_env, write_config
from tests.helpers import poll

pytestmark = pytest.mark.etcd

#: The line every failed start logs (bridge.service).
FAILED = "[bridge.startup#critical] recsync-bridge could not start: "


def twistd(*args: str, setup: str = "") -> list[str]:
    """The command running twistd with `args`, after the Python statements `setup`."""
    code = f"{setup}\nfrom twisted.scripts.twistd import run; run()"
    return [sys.executable, "-c", code, *args]


def run(
    command: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def etcd_processes(data_dir: Path) -> list[int]:
    """PIDs of etcd processes whose command line names `data_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and str(data_dir).encode() in argv and any(b"etcd" in a for a in argv):
            found.append(int(entry.name))
    return found


def one_failure_line(output: str) -> str:
    """The one line of a failed start; asserts there is exactly one and no traceback."""
    assert "Traceback" not in output and "Unhandled" not in output, output
    lines = [line for line in output.splitlines() if FAILED in line]
    assert len(lines) == 1, output
    return lines[0].split(FAILED, 1)[1]


def conf(tmp_path: Path, name: str = "bridge.conf", **sections: dict[str, object]) -> Path:
    recceiver = {"bind": f"127.0.0.1:{free_port()}", "addrlist": "127.0.0.1:9"}
    recceiver.update(sections.pop("recceiver", {}))
    etcd = {"data_dir": str(tmp_path / "etcd")}
    etcd.update(sections.pop("etcd", {}))
    return write_config(tmp_path / name, {"recceiver": recceiver, "etcd": etcd, **sections})


@pytest.fixture
def port_taken() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- failures to start, in the foreground ----------------------------------------------------


def test_port_in_use(tmp_path: Path, port_taken: int) -> None:
    path = conf(tmp_path, recceiver={"bind": f"127.0.0.1:{port_taken}"})
    result = run(twistd("-n", "--pidfile=", "recsync-bridge", "-f", str(path)), tmp_path)
    assert result.returncode == 1
    assert one_failure_line(result.stdout) == (
        f"cannot listen on TCP 127.0.0.1:{port_taken}: Address already in use (another "
        "bridge or RecCeiver?): stop it, or choose another [recceiver] bind"
    )
    assert result.stderr == ""  # the log line went to the terminal already
    assert not etcd_processes(tmp_path / "etcd")


def test_port_in_use_with_a_log_file_says_it_on_stderr_too(
    tmp_path: Path, port_taken: int
) -> None:
    path = conf(tmp_path, recceiver={"bind": f"127.0.0.1:{port_taken}"})
    log = tmp_path / "bridge.log"
    command = twistd("-n", "--pidfile=", f"--logfile={log}", "recsync-bridge", "-f", str(path))
    result = run(command, tmp_path)
    assert result.returncode == 1
    line = one_failure_line(log.read_text())
    assert result.stderr == f"recsync-bridge: {line}\n"


def test_etcd_binary_missing(tmp_path: Path) -> None:
    setup = "import bridge.etcd.process as p; p.DEBIAN_ETCD = '/nonexistent/etcd'"
    env = {**child_env(), "PATH": str(tmp_path)}
    path = conf(tmp_path)
    command = twistd("-n", "--pidfile=", "recsync-bridge", "-f", str(path), setup=setup)
    result = run(command, tmp_path, env)
    assert result.returncode == 1
    assert one_failure_line(result.stdout) == (
        "etcd binary not found on PATH or at /usr/bin/etcd: install Debian's etcd-server "
        "package (apt-get install etcd-server) or set [etcd] endpoints"
    )


def test_embedded_etcd_that_cannot_start(tmp_path: Path) -> None:
    data = tmp_path / "etcd"
    data.mkdir()
    (data / "member").write_text("not a directory")  # etcd cannot use this
    path = conf(tmp_path)
    result = run(twistd("-n", "--pidfile=", "recsync-bridge", "-f", str(path)), tmp_path)
    assert result.returncode == 1
    line = one_failure_line(result.stdout)
    assert line.startswith("the embedded etcd on 127.0.0.1:") and " exited at start: " in line
    assert line.endswith(f"(its log: {data}/etcd.log)")
    assert not etcd_processes(data)
    assert datadir.read_endpoint(str(data)) is None and datadir.holder(str(data)) is None


def test_etcd_unreachable_for_longer_than_the_start_timeout(tmp_path: Path) -> None:
    port = free_port()
    path = conf(tmp_path, etcd={"endpoints": f"127.0.0.1:{port}", "start_timeout": 2})
    start = time.monotonic()
    result = run(twistd("-n", "--pidfile=", "recsync-bridge", "-f", str(path)), tmp_path)
    took = time.monotonic() - start
    assert result.returncode == 1
    assert one_failure_line(result.stdout) == (
        f"etcd at 127.0.0.1:{port} did not answer within 2 s ([etcd] start_timeout): "
        "Connection refused; check that etcd runs and that [etcd] endpoints names its "
        "client URLs"
    )
    assert f"etcd at 127.0.0.1:{port} does not answer yet (Connection refused)" in result.stdout
    assert took < 15


# -- the data directory of another bridge -------------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[BridgeProcess]:
    """A bridge on its embedded etcd in ``tmp_path/first/etcd``."""
    process = BridgeProcess(tmp_path / "first", endpoints=None, name="first")
    process.start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_data_directory_in_use_names_the_other_bridge(
    tmp_path: Path, running: BridgeProcess
) -> None:
    data = tmp_path / "first" / "etcd"
    endpoint = datadir.read_endpoint(str(data))
    path = conf(tmp_path, etcd={"data_dir": str(data)})
    result = run(twistd("-n", "--pidfile=", "recsync-bridge", "-f", str(path)), tmp_path)
    assert result.returncode == 1
    assert one_failure_line(result.stdout) == (
        f"the embedded etcd's data directory {data} is in use by another bridge "
        f"(PID {running.pid}): stop that bridge, or give this one another [etcd] data_dir"
    )
    # The first bridge is untouched: recsync still finds its etcd.
    assert datadir.read_endpoint(str(data)) == endpoint
    assert datadir.holder(str(data)) == running.pid and running.running()


def test_daemonised_failure_exits_1_and_leaves_no_pid_file(
    tmp_path: Path, running: BridgeProcess
) -> None:
    data = tmp_path / "first" / "etcd"
    path = conf(tmp_path, etcd={"data_dir": str(data)})
    pidfile, log = tmp_path / "bridge.pid", tmp_path / "bridge.log"
    command = twistd(f"--pidfile={pidfile}", f"--logfile={log}", "recsync-bridge", "-f", str(path))
    result = run(command, tmp_path)
    assert result.returncode == 1
    line = one_failure_line(log.read_text())
    assert line.startswith(f"the embedded etcd's data directory {data} is in use")
    # twistd's waiting parent prints the start of that line, then exits 1.
    assert result.stderr.startswith(f'An error has occurred: b"{line[:60]}')
    assert not pidfile.exists()


def test_daemonised_bridge_runs_and_stops(tmp_path: Path, etcd_server: EtcdCluster) -> None:
    path = conf(tmp_path, etcd={"endpoints": etcd_server.endpoints[0], "prefix": "/daemon"})
    pidfile, log = tmp_path / "bridge.pid", tmp_path / "bridge.log"
    command = twistd(f"--pidfile={pidfile}", f"--logfile={log}", "recsync-bridge", "-f", str(path))
    result = run(command, tmp_path)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        poll(lambda: "listening on TCP port" in log.read_text(), what="the daemon announcing")
    finally:
        os.kill(pid, signal.SIGTERM)
    poll(lambda: not pidfile.exists(), what="the pid file removed at stop")


# -- after start -----------------------------------------------------------------------------


def test_a_bridge_whose_embedded_etcd_keeps_dying_exits_1(tmp_path: Path) -> None:
    setup = "import bridge.etcd.embedded as e; e.MAX_RESTARTS = 1"
    path = conf(tmp_path)
    log = tmp_path / "bridge.log"
    command = twistd("-n", "--pidfile=", "recsync-bridge", "-f", str(path), setup=setup)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=child_env(), stdout=out, stderr=subprocess.STDOUT
        )
    data = tmp_path / "etcd"
    try:
        poll(lambda: "listening on TCP port" in log.read_text(), what="the bridge ready")
        for _ in range(2):  # restarted once, then given up
            poll(lambda: etcd_processes(data), what="an etcd running")
            (pid,) = etcd_processes(data)
            os.kill(pid, signal.SIGKILL)
            poll(lambda pid=pid: pid not in etcd_processes(data), what="etcd gone")
        assert process.wait(30) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "Traceback" not in text
    (line,) = [x for x in text.splitlines() if "recsync-bridge stops: " in x]
    assert "the embedded etcd exited 2 times within 60 s" in line
    assert not etcd_processes(data)


def test_systemd_hears_ready_once_the_bridge_announces_and_stopping_at_stop(
    tmp_path: Path, etcd_server: EtcdCluster
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        process = BridgeProcess(tmp_path, endpoints=etcd_server.endpoints, prefix="/notify")
        env = {**child_env(), "NOTIFY_SOCKET": str(tmp_path / "notify")}
        with open(process.log_path, "ab") as log:
            process.process = subprocess.Popen(
                process.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
            )
        try:
            ready = notify.recv(4096).decode()
            assert ready.splitlines()[0] == "READY=1"
            assert "announcing TCP port" in process.log_text()
            process.signal(signal.SIGTERM)
            assert notify.recv(4096).decode() == "STOPPING=1"
        finally:
            process.stop()


def test_a_second_ctrl_c_while_stopping_is_one_line(
    tmp_path: Path, etcd_server: EtcdCluster
) -> None:
    """etcd is stopped (SIGSTOP), so the bridge's shutdown waits for it."""
    cluster = EtcdCluster(1, tmp_path / "own-etcd", binary=find_etcd_binary())
    with cluster:
        process = BridgeProcess(tmp_path, endpoints=cluster.endpoints)
        process.start().wait_ready()
        try:
            os.kill(cluster.members[0].pid, signal.SIGSTOP)
            process.signal(signal.SIGINT)
            poll(lambda: "Received SIGINT" in process.log_text(), what="the first Ctrl-C")
            process.signal(signal.SIGINT)
            poll(lambda: "already stopping" in process.log_text(), what="the second Ctrl-C")
            os.kill(cluster.members[0].pid, signal.SIGCONT)
            process.wait(30)  # the first Ctrl-C's stop, to its end
        finally:
            os.kill(cluster.members[0].pid, signal.SIGCONT)
            process.stop()
    text = process.log_text()
    assert "Traceback" not in text and "Unhandled" not in text, text
    assert text.count("already stopping") == 1
    assert "Server Shut Down." in text


# -- a reference recceiver.conf --------------------------------------------------------------

REFERENCE = """\
# The usual production file of the reference RecCeiver.
[recceiver]
# where IOCs connect
bind = 127.0.0.1:{port}
addrlist = 127.0.0.1:9
# ChannelFinder, with a log of every upload
procs = show, cf
loglevel = INFO
statusInterval = 1

[cf]
# what the ChannelFinder entries carry
alias = on
recordType = on
recordDesc = on
infotags = archive
environment_vars = ENGINEER:Engineer
baseUrl = http://channelfinder.example.org:8080/ChannelFinder
cleanOnStart = True

[etcd]
endpoints = {endpoints}
prefix = {prefix}
"""


def test_a_reference_file_with_show_and_cf_stores_in_etcd(
    tmp_path: Path, etcd_server: EtcdCluster, etcd_store: Store, prefix: str
) -> None:
    port = free_port()
    path = tmp_path / "recceiver.conf"
    path.write_text(REFERENCE.format(port=port, endpoints=etcd_server.endpoints[0], prefix=prefix))
    process = BridgeProcess(tmp_path, endpoints=etcd_server.endpoints, prefix=prefix)
    process.config = path
    process.port = port
    spec = make_ioc("REF-IOC", 12, hostname="ref")
    ioc = FakeIOC(spec)
    try:
        process.start().wait_ready()
        ioc.connect("127.0.0.1", port)
        poll(
            lambda: (
                not content_problems(
                    etcd_store,
                    prefix,
                    {spec_iocid(spec): spec},
                    {f"{socket.gethostname()}:{port}"},
                )
            ),
            what="the upload stored in etcd",
        )
        poll(lambda: "active_iocs=1" in process.log_text(), what="a status line")
    finally:
        ioc.close()
        process.stop()
    lines = process.log_text().splitlines()
    notes = [line.split("configuration: ", 1)[1] for line in lines if "configuration: " in line]
    assert notes[0].startswith("procs: cf (the reference's ChannelFinder writer) is replaced")
    assert sorted(n.split(" (")[0] for n in notes[1:]) == ["[cf] baseurl", "[cf] cleanonstart"]
    assert any("record(" in line and "REF-IOC:PV000000" in line for line in lines)  # show
    status = [line for line in lines if "status: " in line][-1]
    assert "uploading=0" in status


def test_the_status_line_counts_an_active_ioc_as_active(
    tmp_path: Path, etcd_server: EtcdCluster, prefix: str
) -> None:
    process = BridgeProcess(
        tmp_path, endpoints=etcd_server.endpoints, prefix=prefix, recceiver={"statusInterval": 0.5}
    )
    ioc = FakeIOC(make_ioc("STATUS-IOC", 3))
    try:
        process.start().wait_ready()
        ioc.connect("127.0.0.1", process.port)
        line = poll(
            lambda: [x for x in process.log_text().splitlines() if "active_iocs=1" in x],
            what="the IOC counted as active",
        )[-1]
        fields = dict(item.split("=") for item in line.split("status: ", 1)[1].split(", "))
        assert fields["connections"] == "1" and fields["uploading"] == "0"
    finally:
        ioc.close()
        process.stop()


def test_show_escapes_what_peers_send(
    tmp_path: Path, etcd_server: EtcdCluster, prefix: str
) -> None:
    from bridge.testing.fakeioc import IOCSpec, RecordSpec

    evil = "EVIL\x1b[2J\nFAKE LINE"
    spec = IOCSpec(
        (("HOSTNAME", "h"), ("IOCNAME", "SHOW-IOC"), ("X", "v\x07\r")),
        (RecordSpec(evil, "ai", (evil + ":A",), (("k", "\x00v"),), "d\x1b"),),
    )
    process = BridgeProcess(
        tmp_path, endpoints=etcd_server.endpoints, prefix=prefix, recceiver={"procs": "show"}
    )
    ioc = FakeIOC(spec)
    try:
        process.start().wait_ready()
        ioc.connect("127.0.0.1", process.port)
        poll(lambda: "upload done" in process.log_text(), what="the upload shown")
    finally:
        ioc.close()
        process.stop()
    text = process.log_text()
    assert not any(ch in text for ch in "\x1b\x07\r\x00")
    assert "FAKE LINE" not in [line.split("] ", 1)[-1] for line in text.splitlines()]
    assert json.dumps(evil)[1:-1].replace('"', "") in text or "\\x1b[2J\\nFAKE LINE" in text
