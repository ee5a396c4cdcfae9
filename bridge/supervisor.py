"""What the bridge tells whoever supervises it: twistd, systemd, the shell.

* `notify`: systemd's readiness protocol (``Type=notify``): one datagram to the socket
  named by ``$NOTIFY_SOCKET``, e.g. ``READY=1`` once the bridge announces and
  ``STOPPING=1`` when it stops. Without that variable it does nothing.
* `StartFailure`: a failed start (raised from ``privilegedStartService``) ends twistd with
  exit status 1 and one line: in the foreground on stderr instead of a traceback
  (`one_line_excepthook`); daemonised, in the status pipe that twistd's waiting parent
  prints before it exits 1 (the pid file is removed by twistd either way).
* `exit_status`: a bridge that stops because it cannot do its job any more (the
  embedded etcd keeps dying, etcd refused it after start) exits with this status once
  twistd has finished (pid file removed, log closed). twistd itself has no way to set
  the status, so it is set at interpreter exit (`atexit`).
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from bridge.errors import StartupError

#: Prefix of the line a failed start prints.
PROGRAM = "recsync-bridge"


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=..."``) to systemd.

    Returns True when a notification socket was named and the datagram went out; never
    raises (a supervisor that went away must not stop the bridge).
    """
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(state.encode("utf-8", "replace"))
    except OSError:
        return False
    return True


class StartFailure(StartupError):
    """A `StartupError` already reported to the log and to twistd's waiting parent."""


def fail_start(message: str, twistd_config: Mapping[str, Any] | None) -> StartFailure:
    """Prepare twistd to end a failed start with one line; return the error to raise.

    Daemonised (twistd's config holds a ``statusPipe``), the message goes into that pipe
    now, as twistd would write the error's class name and message, and the pipe is taken
    from twistd so it does not write again. In the foreground the line goes to stderr,
    unless the log already goes there (``-n`` without ``--logfile`` logs to stdout, which
    is the same terminal or journal), so that an operator sees it exactly once.
    """
    config: Any = twistd_config if twistd_config is not None else {}
    pipe = config.get("statusPipe")
    if pipe is not None:
        try:
            os.write(pipe, b"1 " + message.encode("ascii", "backslashreplace")[:98])
            os.close(pipe)
        except OSError:
            pass
        config["statusPipe"] = None
    logs_to_terminal = bool(config.get("nodaemon")) and config.get("logfile") in (None, "", "-")
    logs_to_terminal = logs_to_terminal and not config.get("syslog")
    sys.excepthook = one_line_excepthook(print_line=pipe is None and not logs_to_terminal)
    return StartFailure(message)


def one_line_excepthook(*, print_line: bool) -> Any:
    """An excepthook that ends a `StartFailure` with at most one line on stderr and
    leaves every other exception to the default hook (a bug keeps its traceback)."""
    default = sys.__excepthook__

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, StartFailure):
            # twistd has redirected sys.stderr into its log; this goes to the terminal.
            if print_line and sys.__stderr__ is not None:
                sys.__stderr__.write(f"{PROGRAM}: {value}\n")
                sys.__stderr__.flush()
            return
        default(kind, value, tb)

    return hook


_status: list[int] = []


def exit_status(code: int) -> None:
    """Make the process exit with `code` once it ends normally (see the module docstring).

    The first call decides; later ones change nothing.
    """
    if _status:
        return
    _status.append(code)
    atexit.register(_exit)


def _exit() -> None:
    """(at exit) Flush what is buffered, then end with the recorded status."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_status[0])
