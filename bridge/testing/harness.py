"""Run real bridge processes (``twistd -n recsync-bridge``) for tests, demo and benchmarks.

Every bridge started here listens on 127.0.0.1 and announces only to loopback
addresses that the caller chooses. What etcd holds meanwhile is checked by
`bridge.testing.checks`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from bridge.config import ENV_PREFIX
from bridge.etcd.process import free_port

#: Logged once the bridge listens, holds its lease and announces (bridge.service).
READY_TEXT = "listening on TCP port"


def checkout_root() -> Path | None:
    """The source checkout this package runs from, if it does; None when installed.

    A checkout is recognised by its ``twisted/plugins`` directory next to ``bridge/``.
    """
    root = Path(__file__).resolve().parents[2]
    return root if (root / "twisted" / "plugins").is_dir() else None


def clean_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without ``RECCEIVER_*`` variables.

    They override every configuration key (`bridge.config`), so an operator's own
    settings in the shell must not reach the bridges and tools that tests, the demo and
    the benchmarks run with configurations of their own.
    """
    return {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.upper().startswith(ENV_PREFIX)
    }


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment (default: this process's) for a child that runs the bridge.

    Without ``RECCEIVER_*`` variables (`clean_environ`). From a checkout, its root goes
    first on ``PYTHONPATH``, so that ``twistd`` finds the checkout's plugin and
    ``bridge`` package. Installed, nothing is added: the installed package's plugin is on
    ``sys.path`` already.
    """
    env = clean_environ(base)
    root = checkout_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def write_config(path: Path, sections: Mapping[str, Mapping[str, object]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class BridgeProcess:
    """One bridge in its own process, configured by an INI file written for it."""

    def __init__(
        self,
        workdir: Path,
        *,
        endpoints: list[str] | None,
        prefix: str = "/recsync",
        announce_to: list[str] | None = None,
        recceiver: Mapping[str, object] | None = None,
        etcd: Mapping[str, object] | None = None,
        name: str = "bridge",
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        settings: dict[str, object] = {
            "bind": f"127.0.0.1:{self.port}",
            "addrlist": ", ".join(announce_to or ["127.0.0.1:9"]),
            "announceInterval": 1.0,
            "loglevel": "INFO",
            "bridgeId": name,
            **(recceiver or {}),
        }
        etcd_settings: dict[str, object] = {"prefix": prefix, **(etcd or {})}
        if endpoints:
            etcd_settings["endpoints"] = ", ".join(endpoints)
        else:
            etcd_settings.setdefault("data_dir", str(workdir / "etcd"))
        self.config = write_config(
            workdir / f"{name}.conf", {"recceiver": settings, "etcd": etcd_settings}
        )
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "recsync-bridge",
            "-f",
            str(self.config),
        ]

    def start(self) -> BridgeProcess:
        env = child_env()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 30.0) -> BridgeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_TEXT in self.log_text():
                return self
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"bridge {self.name} did not become ready:\n{self.log_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.wait(10)

    def terminate(self, timeout: float = 20.0) -> int | None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        return self.process.wait(timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def memory(self) -> tuple[int, int]:
        """(current, peak) resident set size in bytes (Linux /proc), (0, 0) if gone."""
        values = {}
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    name, _, rest = line.partition(":")
                    if name in ("VmRSS", "VmHWM"):
                        values[name] = int(rest.split()[0]) * 1024
        except (OSError, ValueError, AssertionError):
            return 0, 0
        return values.get("VmRSS", 0), values.get("VmHWM", 0)

    def stop(self) -> None:
        """Terminate if running; never leaves the process behind."""
        if self.process is not None and self.process.poll() is None:
            self.terminate()
