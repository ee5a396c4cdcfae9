"""The embedded etcd's data directory: who holds it, its ports, its log, its endpoint.

Besides etcd's own ``member/`` directory it holds the bridge's files:

* ``bridge.lock``: locked (``flock``) by the one bridge that runs an etcd on this
  directory, and holding that bridge's PID, so a second bridge started with the same
  ``[etcd] data_dir`` refuses at once, naming the first (`DataDirLock`). The lock goes
  with the process, however it ends.
* ``ports``: the client and peer ports of the last start, used again when they are free,
  so the embedded etcd keeps its address across restarts (`stable_ports`).
* ``etcd.log``: etcd's own output, kept out of the bridge's log; cut to one older
  generation (``etcd.log.1``) at a start once it passes `LOG_ROTATE_BYTES`.
* ``client-endpoint``: ``host:port`` while etcd is healthy, for the ``recsync`` command.
* ``directory-url``: ``http://host:port`` while the bridge serves the directory (the
  quick start does, on loopback), so that ``recsync pv`` asks it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from bridge.errors import StartupError

LOCK_FILE = "bridge.lock"
PORTS_FILE = "ports"
LOG_FILE = "etcd.log"
#: Written while etcd is healthy, so that the `recsync` command finds the embedded etcd.
ENDPOINT_FILE = "client-endpoint"
#: Written while the bridge serves the directory, so that ``recsync pv`` asks it.
DIRECTORY_FILE = "directory-url"
#: At a start, a longer ``etcd.log`` becomes ``etcd.log.1`` (replacing an older one).
LOG_ROTATE_BYTES = 4 << 20
#: How much of the end of ``etcd.log`` is read to say why etcd failed.
LOG_TAIL_BYTES = 16 << 10


class DataDirLock:
    """An exclusive lock on a data directory, naming the PID of the process holding it."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's PID into it.

        Raises:
            StartupError: another process holds it (named by its PID), or the directory
                cannot be used.
        """
        if self._fd is not None:
            return
        try:
            Path(self.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StartupError(
                f"cannot use the embedded etcd's data directory {self.data_dir}: "
                f"{exc.strerror}; set [etcd] data_dir to a directory this user may write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(f"cannot lock {self.path}: {exc.strerror}") from None
            holder = _read_pid(self.path)
            who = f"PID {holder}" if holder else "another process"
            raise StartupError(
                f"the embedded etcd's data directory {self.data_dir} is in use by another "
                f"bridge ({who}): stop that bridge, or give this one another [etcd] data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays; its PID is no longer meaningful)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def holder(data_dir: str) -> int | None:
    """The PID of the live process holding `data_dir`'s lock, or None when nobody does."""
    path = Path(data_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(path) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a listener could bind `port` now (a port in TIME_WAIT counts as free,
    as it does for etcd, which binds with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def stable_ports(data_dir: str, choose: tuple[int, int]) -> tuple[int, int]:
    """The (client, peer) ports of the last start when both are free, else `choose`.

    The ports used are written back, so the next start tries them first.
    """
    path = Path(data_dir) / PORTS_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        client, peer = int(saved["client"]), int(saved["peer"])
    except (OSError, ValueError, KeyError, TypeError):
        client = peer = 0
    if not (0 < client < 65536 and 0 < peer < 65536 and client != peer) or not (
        port_is_free(client) and port_is_free(peer)
    ):
        client, peer = choose
    path.write_text(json.dumps({"client": client, "peer": peer}) + "\n", encoding="utf-8")
    return client, peer


def rotate_log(data_dir: str) -> Path:
    """``etcd.log`` in `data_dir`, after moving a big one aside; returns its path."""
    path = Path(data_dir) / LOG_FILE
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(LOG_FILE + ".1"))
    return path


def last_words(log: Path) -> str:
    """What etcd said last about a failure, as one short line: the message (and error) of
    its last log entry at error level or above; "" when there is none (etcd's warnings
    are routine, and a process that was killed leaves no last words)."""
    try:
        with open(log, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - LOG_TAIL_BYTES))
            lines = stream.read().decode("utf-8", "replace").splitlines()[1:]
    except OSError:
        return ""
    entries = [_entry(line) for line in lines if line.strip()]
    serious = [e for e in entries if e[0] in ("error", "dpanic", "panic", "fatal")]
    return serious[-1][1] if serious else ""


def _entry(line: str) -> tuple[str, str]:
    """(level, "msg: error") of one zap JSON line; ("", line) when it is not JSON."""
    try:
        fields = json.loads(line)
    except ValueError:
        return "", line.strip()[:300]
    if not isinstance(fields, dict):
        return "", line.strip()[:300]
    text = str(fields.get("msg", ""))
    if fields.get("error"):
        text += f": {fields['error']}"
    return str(fields.get("level", "")), text[:300]


def _write(data_dir: str, name: str, text: str) -> None:
    """Atomically write one line (readers never see a partial file)."""
    target = Path(data_dir) / name
    partial = target.with_name(name + ".tmp")
    partial.write_text(text + "\n", encoding="utf-8")
    os.replace(partial, target)


def _read(data_dir: str, name: str) -> str | None:
    try:
        return (Path(data_dir) / name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def write_endpoint(data_dir: str, endpoint: str) -> None:
    """Record the embedded etcd's ``host:port``."""
    _write(data_dir, ENDPOINT_FILE, endpoint)


def read_endpoint(data_dir: str) -> str | None:
    """The endpoint a running bridge's embedded etcd recorded, if any."""
    return _read(data_dir, ENDPOINT_FILE)


def remove_endpoint(data_dir: str) -> None:
    (Path(data_dir) / ENDPOINT_FILE).unlink(missing_ok=True)


def write_directory_url(data_dir: str, url: str) -> None:
    """Record where the bridge serves the directory (``http://host:port``)."""
    _write(data_dir, DIRECTORY_FILE, url)


def read_directory_url(data_dir: str) -> str | None:
    """Where a bridge on this data directory serves the directory, if it recorded it
    (check that the bridge still runs: `holder`)."""
    return _read(data_dir, DIRECTORY_FILE)


def remove_directory_url(data_dir: str) -> None:
    (Path(data_dir) / DIRECTORY_FILE).unlink(missing_ok=True)
