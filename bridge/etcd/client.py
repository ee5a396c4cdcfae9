"""Client creation and error handling for the etcd client library (pyetcd, etcd-sdk-python).

Only `bridge.etcd` imports the library. The client is always a
`MultiEndpointEtcd3Client` with ``failover=True`` (even for one node, to avoid the
300-second "failed node" lock of the plain ``client()`` factory), with a per-call
timeout, gRPC keepalive no more often than etcd allows, and an application retry
loop (`call_with_retry`) because the library itself never retries. `rpc_error` turns
what gRPC raises into the project's `StoreError` classes (`bridge.errors`).

All calls block; run them in a thread pool, never on the reactor thread.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc  # type: ignore[import-untyped,unused-ignore]  # no stubs shipped
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc
from pyetcd.client import EtcdTokenCallCredentials
from twisted.logger import Logger

from bridge.errors import (
    Compacted,
    ConfigError,
    DuplicateKey,
    EtcdOutage,
    EtcdRefused,
    EtcdUnavailable,
    LeaseNotFound,
    MessageTooLarge,
    NoSpace,
    RequestTooLarge,
    StoreError,
    TooManyOperations,
)
from bridge.etcd.diagnose import explain

T = TypeVar("T")

# Seconds an endpoint that failed is skipped before the client tries it again.
ENDPOINT_TIME_RETRY_S = 2.0
# etcd answers pings more frequent than every 5 s with GOAWAY too_many_pings.
# gRPC's reconnect back-off grows to 120 s by default: after a 30-s outage of the
# whole cluster the first call succeeded only 12 s after etcd was healthy again
# (long enough for every lease to expire); capped at 1 s it is immediate.
GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0

#: Told of every attempt `call_with_retry` makes: its duration in seconds, and the
#: error it raised (None when it succeeded). Set by the metrics (bridge/web/metrics.py);
#: called on worker threads, so it must be thread-safe and never raise.
request_observer: Callable[[float, BaseException | None], None] | None = None
# How long make_client keeps trying to authenticate when credentials are given.
AUTH_DEADLINE_S = 10.0


class TokenRenewed(Exception):
    """etcd no longer knew the auth token; the client authenticated again: retry the call."""


# Errors that always mean "this member is unreachable or hung: try again".
RETRYABLE: tuple[type[BaseException], ...] = (
    etcd_exc.ConnectionFailedError,
    etcd_exc.ConnectionTimeoutError,
    etcd_exc.NoServerAvailableError,
    TokenRenewed,
    EtcdUnavailable,
)
_RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# etcd messages that mean a leader election or a stall, retryable whatever the code.
# "context deadline exceeded": etcd's own deadline, e.g. a follower forwarding to a
# leader that was just killed.
_TRANSIENT_DETAILS = (
    "leader changed",
    "no leader",
    "proposal dropped",
    "timed out",
    "context deadline exceeded",
)
_FAILED_NODE_MESSAGE = "Trying to use a failed node"
# How etcd answers a bad user name or password.
_AUTH_REFUSED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)

# How etcd answers a token it does not know: expired (``--auth-token-ttl``, 300 s by
# default, counted from the token's last use) or lost in an etcd restart.
_INVALID_TOKEN = "invalid auth token"
# What gRPC says when TLS fails, lower case: the server's certificate is not trusted,
# or the server refused ours (it then aborts the connection right after the handshake).
_TLS_SERVER_REFUSED = ("certificate_verify_failed", "peer name", "self signed", "self-signed")
_TLS_CLIENT_REFUSED = (
    "tsi_data_corrupted",
    "bad_certificate",
    "certificate_required",
    "unknown_ca",
    "alert",
)
_TLS_OTHER = ("handshake", "ssl", "tsi_", "tls")

_log = Logger()


def parse_endpoint(text: str) -> tuple[str, int, bool]:
    """Parse ``host:port``, ``http://host:port`` or ``https://host:port``.

    Returns ``(host, port, secure)``; IPv6 hosts come back without brackets.
    Raises `ConfigError` naming the bad endpoint.
    """
    raw = text.strip()
    url = raw if "://" in raw else f"http://{raw}"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"[etcd] endpoints: bad endpoint {text!r}: {exc}") from None
    problem = None
    if parts.scheme not in ("http", "https"):
        problem = "scheme must be http or https"
    elif not parts.hostname:
        problem = "host is missing"
    elif port is None or port == 0:
        problem = "port is missing"
    elif parts.username is not None or parts.path not in ("", "/") or parts.query:
        problem = "expected only host and port"
    if problem is not None or parts.hostname is None or port is None:
        raise ConfigError(
            f"[etcd] endpoints: bad endpoint {text!r}: {problem}; "
            "use host:port, http://host:port or https://host:port"
        )
    return parts.hostname, port, parts.scheme == "https"


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"[etcd] cannot read TLS file {path}: {exc.strerror}") from None


def tls_problem(exc: BaseException) -> str | None:
    """What is wrong with TLS, if `exc` (or the gRPC error behind it) is a TLS failure.

    Such errors never heal by retrying, unlike the "unavailable" they come wrapped in.
    """
    error = exc if isinstance(exc, grpc.RpcError) else exc.__context__
    if not isinstance(error, grpc.RpcError):
        return None
    if getattr(error, "code", lambda: None)() != grpc.StatusCode.UNAVAILABLE:
        return None
    details = _last_error(str(getattr(error, "details", lambda: "")() or ""))
    text = details.lower()
    if any(word in text for word in _TLS_SERVER_REFUSED):
        return (
            "etcd's server certificate is not trusted (check [etcd] ca, and that the "
            f"certificate names the endpoint's host): {details}"
        )
    if any(word in text for word in _TLS_CLIENT_REFUSED):
        return (
            "etcd refused the TLS connection, most likely our client certificate "
            f"(check [etcd] cert and key, and etcd's --trusted-ca-file): {details}"
        )
    if any(word in text for word in _TLS_OTHER):
        return f"TLS handshake with etcd failed: {details}"
    return None


def _last_error(details: str) -> str:
    """gRPC's "failed to connect to all addresses; last error: UNKNOWN: ipv4:h:p: WHAT"
    as WHAT (the rest names what the log line names already)."""
    _, found, last = details.rpartition("last error: ")
    if not found:
        return details
    parts = last.split(": ", 2)
    return parts[2] if len(parts) == 3 and parts[1].startswith(("ipv4:", "ipv6:")) else last


def _tls_failed(endpoints: Sequence[str], problem: str) -> NoReturn:
    raise ConfigError(f"[etcd] endpoints {', '.join(endpoints)}: {problem}")


def _credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials:
    if (cert is None) != (key is None):
        raise ConfigError("[etcd] cert and key must be given together")
    # ca None means the system's trusted roots.
    return grpc.ssl_channel_credentials(_read(ca), _read(key), _read(cert))


def _endpoints(
    endpoints: Sequence[str], ca: str | None, cert: str | None, key: str | None
) -> list[pyetcd.Endpoint]:
    if not endpoints:
        raise ConfigError("[etcd] endpoints: at least one endpoint is required")
    parsed = [parse_endpoint(text) for text in endpoints]
    secure = ca is not None or cert is not None or any(tls for _, _, tls in parsed)
    creds = _credentials(ca, cert, key) if secure else None
    return [
        pyetcd.Endpoint(
            f"[{host}]" if ":" in host else host,
            port,
            secure=secure,
            creds=creds,
            time_retry=ENDPOINT_TIME_RETRY_S,
            opts=GRPC_OPTIONS,
        )
        for host, port, _ in parsed
    ]


def make_client(
    endpoints: Sequence[str],
    *,
    timeout: float,
    username: str | None = None,
    password: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    auth_deadline_s: float = AUTH_DEADLINE_S,
) -> pyetcd.MultiEndpointEtcd3Client:
    """A failover client over `endpoints` whose every RPC is bounded by `timeout` seconds.

    Without credentials nothing is sent until the first call (channels are lazy),
    except over TLS: one status request then checks the certificates, so a wrong CA
    or client certificate is a `ConfigError` at start rather than endless retries
    (an etcd that is merely down is not an error here; later calls retry).
    With `username`/`password` the library authenticates in its constructor; that
    is retried (a fresh client per attempt, so another endpoint may be chosen) for
    up to `auth_deadline_s`, then `StoreError`. When etcd later forgets the token
    (it expired, or etcd restarted) the client authenticates again and the call is
    retried (`AuthenticatedClient`). The password is never logged.
    Raises `ConfigError` for bad endpoints, TLS files, half-given credentials,
    refused credentials and TLS failures.
    """
    if (username is None) != (password is None):
        raise ConfigError("[etcd] username and password must be given together")
    if username is None or password is None:
        eps = _endpoints(endpoints, ca, cert, key)
        client = pyetcd.MultiEndpointEtcd3Client(eps, timeout=timeout, failover=True)
        if eps[0].secure:
            _check_tls(client, endpoints)
        return client

    def attempt() -> AuthenticatedClient:
        eps = _endpoints(endpoints, ca, cert, key)
        try:
            return AuthenticatedClient(eps, timeout=timeout, user=username, password=password)
        except BaseException as exc:
            for ep in eps:
                ep.close()
            problem = tls_problem(exc)
            if problem is not None:
                _tls_failed(endpoints, problem)
            raise

    try:
        return call_with_retry(attempt, deadline_s=auth_deadline_s)
    except grpc.RpcError as exc:
        if exc.code() in _AUTH_REFUSED_CODES:
            raise ConfigError(
                f"[etcd] authentication as {username!r} refused by etcd: {exc.details()}"
            ) from None
        raise


def _check_tls(client: pyetcd.MultiEndpointEtcd3Client, endpoints: Sequence[str]) -> None:
    """One status request; a TLS failure becomes `ConfigError`, anything else is ignored."""
    try:
        client.maintenancestub.Status(
            etcdrpc.StatusRequest(),
            client.timeout,
            credentials=client.call_credentials,
            metadata=client.metadata,
        )
    except grpc.RpcError as exc:
        problem = tls_problem(exc)
        if problem is not None:
            client.close()
            _tls_failed(endpoints, problem)


class AuthenticatedClient(pyetcd.MultiEndpointEtcd3Client):  # type: ignore[misc]
    """A failover client with a user name that authenticates again when etcd forgets it.

    pyetcd authenticates once, in the constructor, and keeps the token forever. etcd
    forgets a token when it has not been used for ``--auth-token-ttl`` seconds (300 by
    default) and on every etcd restart; every request then fails with "invalid auth
    token". Here such a failure authenticates again and raises `TokenRenewed`, which
    `call_with_retry` retries with the new token.
    """

    def __init__(
        self, endpoints: list[pyetcd.Endpoint], *, timeout: float, user: str, password: str
    ) -> None:
        super().__init__(endpoints, timeout=timeout, user=user, password=password, failover=True)
        self._login = etcdrpc.AuthenticateRequest(name=user, password=password)
        self._secure = bool(endpoints[0].secure)
        self._auth_lock = threading.Lock()
        #: How often the token was renewed (diagnostics, tests).
        self.renewals = 0
        self._use_token(self.metadata[0][1])

    def _use_token(self, token: str) -> None:
        self.metadata = (("token", token),)
        # gRPC refuses call credentials on a plaintext channel (UNAUTHENTICATED
        # "insufficient security level"); the token also travels as call metadata,
        # which is all etcd reads, so plaintext channels go without.
        self.call_credentials = (
            grpc.metadata_call_credentials(EtcdTokenCallCredentials(token))
            if self._secure
            else None
        )
        watcher: Any = self._stubs.get("watcher")
        if watcher is not None:  # used when its stream is opened again
            watcher._metadata = self.metadata
            watcher._credentials = self.call_credentials

    def authenticate(self) -> None:
        """Get a new token (blocking). Raises the gRPC error if etcd refuses."""
        with self._auth_lock:
            response = self.authstub.Authenticate(self._login, self.timeout)
            self._use_token(response.token)
            self.renewals += 1

    def _manage_grpc_errors(self, exc: grpc.RpcError) -> None:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED and _INVALID_TOKEN in str(
            exc.details() or ""
        ):
            try:
                self.authenticate()
            except grpc.RpcError as again:
                super()._manage_grpc_errors(again)
                raise
            _log.info("etcd had forgotten the bridge's auth token; authenticated again")
            raise TokenRenewed("etcd auth token renewed") from exc
        super()._manage_grpc_errors(exc)


def is_retryable(exc: BaseException) -> bool:
    """True for errors after which the same request may succeed on retry."""
    if isinstance(exc, RETRYABLE):
        return True
    if isinstance(exc, ValueError):
        # A single-endpoint (failover=False) client's 300-s lock; never fatal for us.
        return str(exc) == _FAILED_NODE_MESSAGE
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", lambda: None)()
        details = str(getattr(exc, "details", lambda: "")() or "").lower()
        if code in _RETRYABLE_CODES:
            return True
        return code == grpc.StatusCode.UNKNOWN and any(t in details for t in _TRANSIENT_DETAILS)
    return False


#: How etcd words the refusals that have a class of their own (gRPC details, lower case).
_REFUSALS: tuple[tuple[str, type[EtcdRefused]], ...] = (
    ("too many operations in txn request", TooManyOperations),
    ("request is too large", RequestTooLarge),
    ("duplicate key given in txn request", DuplicateKey),
    ("requested lease not found", LeaseNotFound),
)


def rpc_error(exc: grpc.RpcError) -> StoreError:
    """The project's error for what gRPC raised (`bridge.errors`).

    Transient failures (`is_retryable`, and etcd's "too many requests") become
    `EtcdUnavailable`; a compacted revision `Compacted`; a message over gRPC's size
    limit `MessageTooLarge`; etcd's limits, a lost lease and a full database their own
    `EtcdRefused` classes; anything else a plain `EtcdRefused` naming the gRPC status.
    """
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = str(exc.details() or "") if callable(getattr(exc, "details", None)) else ""
    name = getattr(code, "name", "UNKNOWN")
    text = f"{name}: {details}" if details else name
    if is_retryable(exc):
        return EtcdUnavailable(f"etcd unavailable ({text})")
    lowered = details.lower()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # gRPC's own size limit, or etcd: a full database, or too many requests at once.
        if "larger than max" in lowered:
            return MessageTooLarge(f"message over gRPC's size limit ({text})")
        if "database space exceeded" in lowered:
            return NoSpace(f"etcd: {details} (the NOSPACE alarm: etcd refuses every write)")
        if "too many requests" in lowered:
            return EtcdUnavailable(f"etcd overloaded ({text})")
    if "compacted" in lowered:
        return Compacted(f"etcd: {details}")
    for words, kind in _REFUSALS:
        if words in lowered:
            return kind(f"etcd: {details}")
    return EtcdRefused(f"etcd refused the request ({text})")


def call_with_retry(
    fn: Callable[[], T],
    *,
    deadline_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Logger | None = None,
) -> T:
    """Call `fn` until it returns, retrying retryable errors (`is_retryable`).

    Back-off starts at 50 ms and doubles up to 1 s. No new attempt starts once
    `deadline_s` seconds have passed since the first; then `EtcdOutage` (a
    `StoreError`) is raised, naming the most telling reason seen, chained to the last
    error. Since an attempt itself may take up to the client
    timeout, the total can exceed `deadline_s` by one timeout. Non-retryable errors
    propagate unchanged at once. Blocks: call it from a worker thread.
    """
    log = log or _log
    reason: str | None = None  # the most telling reason seen (`explain`)
    start = clock()
    delay = BACKOFF_FIRST_S
    attempts = 0
    while True:
        attempts += 1
        began = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            if request_observer is not None:
                request_observer(time.perf_counter() - began, exc)
            if not is_retryable(exc):
                raise
            remaining = deadline_s - (clock() - start)
            if remaining <= 0:
                reason = explain(exc) or reason
                raise EtcdOutage(
                    f"etcd did not answer ({reason or 'no member answered'}; {attempts} "
                    f"attempts in {clock() - start:.1f} s)",
                    reason or "",
                ) from exc
            reason = explain(exc) or reason
            log.debug(
                "etcd request failed ({error!r}), retrying in {delay:.2f} s",
                error=exc,
                delay=min(delay, remaining),
            )
            sleep(min(delay, remaining))
            delay = min(delay * 2, BACKOFF_MAX_S)
        else:
            if request_observer is not None:
                request_observer(time.perf_counter() - began, None)
            return result
