"""etcd clusters on loopback for tests, benchmarks and the demo (never product code).

`EtcdMember` is one etcd process, `EtcdCluster` a set of them with free ports and
their own data directories. Nothing here talks to anything but 127.0.0.1 (or the
given host), and nothing here imports the etcd client library: leader discovery uses
etcd's own HTTP gateway (``/v3/maintenance/status``). The command line, free ports and
health checks are the embedded etcd's (`bridge.etcd.embedded`), so tests run etcd the
way the bridge does.

Every process started here is stopped by `EtcdCluster.stop`, by the context
manager, and as a last resort at interpreter exit, so a failing test does not leave
etcd servers behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.etcd.process import (
    check_health,
    etcd_environment,
    find_etcd_binary,
    free_ports,
    member_command,
)

LOG_NAME = "etcd.log"
POLL_INTERVAL_S = 0.05


def member_status(host: str, port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The member's maintenance status via the HTTP gateway, or None if it does not answer."""
    request = urllib.request.Request(
        f"http://{host}:{port}/v3/maintenance/status",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = json.loads(resp.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


class EtcdMember:
    """One etcd process. Not thread-safe; owned by one test or one `EtcdCluster`."""

    def __init__(
        self,
        binary: str,
        name: str,
        data_dir: str | os.PathLike[str],
        client_port: int,
        peer_port: int,
        initial_cluster: str,
        token: str,
        host: str = "127.0.0.1",
        *,
        client_scheme: str = "http",
        extra_flags: Sequence[str] = (),
        health_port: int | None = None,
    ) -> None:
        """`health_port`: where plain-HTTP ``/health`` answers (``--listen-metrics-urls``
        for a TLS member); default the client port."""
        self.name = name
        self.host = host
        self.client_port = client_port
        self.client_scheme = client_scheme
        self.health_port = client_port if health_port is None else health_port
        self.peer_port = peer_port
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir / LOG_NAME
        self.command = member_command(
            binary,
            name,
            str(self.data_dir),
            client_port,
            peer_port,
            initial_cluster,
            token,
            host,
            client_scheme=client_scheme,
            extra_flags=extra_flags,
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client URL (``https://host:port`` for a TLS member)."""
        if self.client_scheme != "http":
            return f"{self.client_scheme}://{self.host}:{self.client_port}"
        return f"{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """The process id while a process was started (even if it has exited since)."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the started process has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Spawn etcd; output is appended to `log_path`. Does not wait for health."""
        if self.is_running():
            raise RuntimeError(f"etcd member {self.name} is already running")
        # etcd 3.4 warns unless its data dir is private.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A new session: a Ctrl-C aimed at pytest must not kill etcd before our
            # own cleanup runs, and signals we send reach only etcd.
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=etcd_environment(),
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll /health until it reports true.

        Raises RuntimeError with the log tail if the process exits or `timeout`
        seconds pass first.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise RuntimeError(f"etcd member {self.name} exited\n{self.log_tail()}")
            if check_health(self.host, self.health_port, timeout=min(1.0, timeout)):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"etcd member {self.name} not healthy after {timeout:.1f} s\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the member's log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, signum: signal.Signals) -> None:
        if self.is_running():
            assert self._proc is not None
            self._proc.send_signal(signum)

    def freeze(self) -> None:
        """SIGSTOP: the member hangs while the kernel still accepts its TCP connections."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT; harmless when not frozen."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap the process."""
        if self._proc is None:
            return
        # SIGKILL also ends a stopped process, but a continued one is reaped at once
        # and this keeps the "always thaw before kill" rule in one place.
        self.thaw()
        self._signal(signal.SIGKILL)
        self._proc.wait()

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait; SIGKILL if it has not exited after `timeout` seconds."""
        if self._proc is None:
            return
        self.thaw()  # SIGTERM stays pending on a stopped process
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = 30.0) -> None:
        """Kill if running, start the same command again and wait until healthy."""
        self.kill()
        self.start()
        self.wait_healthy(timeout)


class EtcdCluster:
    """`size` etcd members on loopback, each with its own free ports and data dir.

    ``EtcdCluster(1, base)`` is a single node. Member i's data (and ``etcd.log``)
    is in ``base_dir/m<i>``; without `base_dir` a temporary directory is used and
    removed by `stop`. As a context manager it starts on entry (waiting until every
    member is healthy) and stops on exit.
    """

    def __init__(
        self,
        size: int = 3,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        binary = binary or find_etcd_binary()
        # Each instance preallocates about 120 MB of WAL, so never default to the cwd.
        self._own_dir = base_dir is None
        base = Path(tempfile.mkdtemp(prefix="etcd-cluster-") if base_dir is None else base_dir)
        self.base_dir = base
        token = f"recsync-{uuid.uuid4().hex}"
        ports = free_ports(2 * size, host)
        names = [f"m{i + 1}" for i in range(size)]
        initial = ",".join(
            f"{name}=http://{host}:{ports[2 * i + 1]}" for i, name in enumerate(names)
        )
        self.members: list[EtcdMember] = [
            EtcdMember(
                binary, name, base / name, ports[2 * i], ports[2 * i + 1], initial, token, host
            )
            for i, name in enumerate(names)
        ]
        # Stops the members even if stop() is never called: on garbage collection, or
        # at interpreter exit (weakref.finalize registers itself with atexit).
        weakref.finalize(self, _cleanup, list(self.members), base if self._own_dir else None)

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` of every member's client URL, in member order."""
        return [member.endpoint for member in self.members]

    def start(self, timeout: float = 60.0) -> None:
        """Start every member, then wait until each is healthy; on failure stop all."""
        try:
            for member in self.members:
                member.start()
            deadline = time.monotonic() + timeout
            for member in self.members:
                member.wait_healthy(max(0.1, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Thaw and terminate every member. Idempotent; never leaves a process behind."""
        _cleanup(self.members, self.base_dir if self._own_dir else None)

    def member(self, endpoint: str) -> EtcdMember:
        """The member whose client endpoint is `endpoint` (``host:port``)."""
        for member in self.members:
            if member.endpoint == endpoint:
                return member
        raise KeyError(endpoint)

    def leader(self, timeout: float = 15.0) -> EtcdMember:
        """The current leader, as agreed by a majority of the members that answer.

        Polls until a majority of all members names the same leader and that
        leader answers for itself; raises RuntimeError after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self._agreed_leader()
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no etcd leader agreed on within {timeout:.1f} s")
            time.sleep(POLL_INTERVAL_S)

    def _agreed_leader(self) -> EtcdMember | None:
        ids: dict[str, EtcdMember] = {}
        votes: Counter[str] = Counter()
        for member in self.members:
            if not member.is_running():
                continue
            status = member_status(member.host, member.client_port, timeout=0.5)
            if status is None:
                continue
            # uint64 ids come as decimal strings from the JSON gateway.
            own = str(status.get("header", {}).get("member_id", ""))
            ids[own] = member
            leader_id = str(status.get("leader", "0"))
            if leader_id != "0":
                votes[leader_id] += 1
        for leader_id, count in votes.most_common(1):
            if count > len(self.members) // 2 and leader_id in ids:
                return ids[leader_id]
        return None

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _cleanup(members: Sequence[EtcdMember], scratch: Path | None) -> None:
    """Terminate every member, continuing past individual failures; remove `scratch`."""
    for member in members:
        try:
            member.terminate()
        except Exception:  # cleanup must reach every member, whatever one raised
            member.kill()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
