"""What went wrong with etcd, in a few words an operator can act on.

`explain` turns the errors of a failed call (a project error chained to what gRPC or
the client library raised) into a short reason such as "Connection refused";
`answers_tls` tells whether an endpoint given as plaintext is really a TLS server,
which gRPC itself only reports as "unavailable".
"""

from __future__ import annotations

import socket
import ssl

import grpc  # type: ignore[import-untyped,unused-ignore]  # no stubs shipped
from pyetcd import exceptions as etcd_exc

from bridge.errors import EtcdOutage

#: What gRPC's "last error" texts mean, lower case -> words for the log.
_PLAIN_WORDS = (
    ("socket closed", "the connection was closed by the other side"),
    ("connection reset", "the connection was reset"),
    ("deadline exceeded", "no answer in time"),
    ("settings frame", "connected, but no answer in time"),
    ("timeout occurred", "no answer in time"),
    ("name resolution", "the host name does not resolve"),
    ("dns resolution failed", "the host name does not resolve"),
    ("domain name not found", "the host name does not resolve"),
)


def explain(exc: BaseException) -> str | None:
    """A short reason for `exc` (or the gRPC error behind it); None when the error says
    nothing useful (the client library's "no endpoint available", which only means every
    member failed a moment ago)."""
    if isinstance(exc, EtcdOutage) and exc.reason:
        return exc.reason
    for error in _chain(exc):
        if isinstance(error, etcd_exc.NoServerAvailableError):
            return None
        if isinstance(error, grpc.RpcError):
            return _rpc_reason(error)
    return str(exc) or type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _rpc_reason(error: grpc.RpcError) -> str:
    code = getattr(error, "code", lambda: None)()
    details = str(getattr(error, "details", lambda: "")() or "")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    lowered = details.lower()
    for words, meaning in _PLAIN_WORDS:
        if words in lowered:
            return meaning
    if "last error:" in details:
        # "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1:
        # Failed to connect to remote host: Connection refused" -> "Connection refused"
        return details.rsplit(": ", 1)[-1].strip() or details
    name = getattr(code, "name", "UNKNOWN")
    return f"{name}: {details}" if details else name


def answers_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when ``host:port`` answers a TLS handshake (certificates are not checked).

    A server that demands a client certificate may end the handshake with an alert:
    that, too, is a TLS server. A plaintext gRPC server answers garbage or closes.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except ssl.SSLError as exc:
        return "alert" in str(exc).lower()
    except OSError:
        return False
