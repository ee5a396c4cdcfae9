"""The store's backend seam, and the real backend: etcd over gRPC through a pyetcd client.

`Backend` and `WatchStream` are what `bridge.etcd.store.Store` needs from etcd; requests
and responses are etcd's own protobuf messages (`bridge.etcd.rpc`), so another backend
(the tests' in-memory etcd, `bridge.testing.memstore`) answers what etcd answers.

`GrpcBackend` implements them on a pyetcd failover client. Requests go straight to the
client's gRPC stubs as protobuf messages (`bridge.etcd.rpc`), so the store's hot
paths pay for no per-operation wrapper objects (the library's own wrappers cost about
four times as much per operation). Every gRPC error first goes through
the client's own handler, exactly as the library's methods do (it marks the member
failed so the next call goes to another one, and renews a forgotten auth token),
then comes out as one of the project's classes (`bridge.etcd.client.rpc_error`).

Watch streams are opened here too, one gRPC stream per watch, each read by a thread of
its own into a small bounded queue, so that a consumer can wait with a timeout and
`cancel` ends the stream and its thread for good (the library's shared watcher keeps
streams of abandoned members running).

`open_store` builds the whole stack: client, backend, `Store`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped,unused-ignore]  # no stubs shipped
from pyetcd import etcdrpc

from bridge.errors import Compacted, EtcdRefused, EtcdUnavailable, StoreError
from bridge.etcd.client import (
    AUTH_DEADLINE_S,
    TokenRenewed,
    is_retryable,
    make_client,
    rpc_error,
)
from bridge.etcd.ops import Entry, Event, Lease, MemberStatus, key_text
from bridge.etcd.rpc import kv, pb
from bridge.etcd.store import Store

#: Responses a watch stream holds for its consumer before the stream waits (gRPC's
#: flow control then holds etcd back).
WATCH_QUEUE = 64
#: How often a full queue is tried again, so that `cancel` is noticed.
_PUT_RETRY_S = 0.1
#: Put in the queue by `GrpcWatch.cancel`, so that a consumer waiting returns at once.
_CANCELLED: list[Event] = []


class WatchStream(Protocol):
    """One open watch from a `Backend`: responses in revision order, then `cancel`."""

    #: The member (``host:port``) the stream was opened on, if known.
    endpoint: str | None

    def next(self, timeout: float) -> list[Event] | None:
        """The events of the next response, or None when none came within `timeout`.

        Raises `Compacted` when the watch's start revision is compacted,
        `EtcdUnavailable` when the stream broke, `EtcdRefused` when etcd ended it.
        """

    def cancel(self) -> None:
        """End the stream and free what it holds (idempotent)."""


class Backend(Protocol):
    """What the store needs from etcd; requests and responses are etcd's own protobuf
    messages (`bridge.etcd.rpc`). Errors are `bridge.errors` classes, transient ones
    `EtcdUnavailable`; each method is one attempt (the store retries)."""

    def txn(self, request: Any) -> Any:
        """A ``TxnRequest``; returns the ``TxnResponse``."""

    def range(self, request: Any) -> Any:
        """A ``RangeRequest``; returns the ``RangeResponse``."""

    def grant(self, ttl: int) -> Lease:
        """A new lease of `ttl` seconds."""

    def keepalive(self, lease_id: int) -> int:
        """Refresh the lease; its TTL in seconds, <= 0 when etcd no longer has it."""

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys (`LeaseNotFound` if it is gone)."""

    def status(self) -> MemberStatus:
        """The status of the member in use."""

    def watch(
        self, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool
    ) -> WatchStream:
        """Watch keys in [key, range_end) from `start_revision`, once etcd confirmed it."""

    def endpoint(self) -> str | None:
        """The member (``host:port``) requests go to now; it changes when the client
        fails over."""

    def close(self) -> None:
        """Release the connection and every open watch stream."""


class GrpcBackend:
    """`Backend` on a pyetcd ``MultiEndpointEtcd3Client``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._watches: set[GrpcWatch] = set()

    # -- unary requests --------------------------------------------------------------------

    def txn(self, request: Any) -> Any:
        try:
            client = self.client
            return client.kvstub.Txn(
                request,
                client.timeout,
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
        except Exception as exc:
            raise self.error(exc) from exc

    def range(self, request: Any) -> Any:
        try:
            client = self.client
            return client.kvstub.Range(
                request,
                client.timeout,
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
        except Exception as exc:
            raise self.error(exc) from exc

    def grant(self, ttl: int) -> Lease:
        try:
            client = self.client
            response = client.leasestub.LeaseGrant(
                pb.LeaseGrantRequest(TTL=ttl),
                client.timeout,
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
        except Exception as exc:
            raise self.error(exc) from exc
        return Lease(int(response.ID), int(response.TTL))

    def keepalive(self, lease_id: int) -> int:
        try:
            client = self.client
            responses = client.leasestub.LeaseKeepAlive(
                iter([pb.LeaseKeepAliveRequest(ID=lease_id)]),
                client.timeout,
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
            for response in responses:
                return int(response.TTL)
            return 0
        except Exception as exc:
            raise self.error(exc) from exc

    def revoke(self, lease_id: int) -> None:
        try:
            client = self.client
            client.leasestub.LeaseRevoke(
                pb.LeaseRevokeRequest(ID=lease_id),
                client.timeout,
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
        except Exception as exc:
            raise self.error(exc) from exc

    def status(self) -> MemberStatus:
        try:
            client = self.client
            stub = client.maintenancestub
            options = {"credentials": client.call_credentials, "metadata": client.metadata}
            status = stub.Status(pb.StatusRequest(), client.timeout, **options)
            alarms = stub.Alarm(
                pb.AlarmRequest(action=pb.AlarmRequest.GET), client.timeout, **options
            )
        except Exception as exc:
            raise self.error(exc) from exc
        return MemberStatus(
            endpoint=self.endpoint(),
            version=str(status.version),
            db_size=int(status.dbSize),
            member_id=int(status.header.member_id),
            leader=int(status.leader),
            raft_term=int(status.raftTerm),
            revision=int(status.header.revision),
            errors=tuple(pb.AlarmType.Name(a.alarm) for a in alarms.alarms),
        )

    def endpoint(self) -> str | None:
        """``host:port`` of the member the client sends to now."""
        endpoint = getattr(self.client, "endpoint_in_use", None)
        netloc = getattr(endpoint, "netloc", None)
        return netloc if isinstance(netloc, str) else None

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.cancel()
        self.client.close()

    def error(self, exc: Exception) -> Exception:
        """The project's error for `exc`, after the client's own bookkeeping.

        Call it while handling `exc` (in its ``except`` clause): the client's handler
        re-raises the error being handled. That handler is private to the library;
        pyetcd is pinned exactly (pyproject.toml), which keeps it stable.
        """
        if isinstance(exc, grpc.RpcError):
            try:
                self.client._manage_grpc_errors(exc)  # fails the member over; always raises
            except TokenRenewed:
                return EtcdUnavailable("etcd had forgotten the auth token; authenticated again")
            except Exception:  # noqa: BLE001 - the library's own class for the same error
                pass
            self._move_on()
            return rpc_error(exc)
        if is_retryable(exc):
            return EtcdUnavailable(f"etcd unavailable ({exc!r})")
        return exc

    def fail_endpoint(self) -> None:
        """Treat the member in use as failed, as the client does after a timeout."""
        endpoint = getattr(self.client, "endpoint_in_use", None)
        if endpoint is not None:
            endpoint.fail()
            self.client._clear_old_stubs()
        self._move_on()

    def _move_on(self) -> None:
        """Choose another member now if the one in use was marked failed.

        The client moves only when it next needs a channel, and a failed mark lasts
        `ENDPOINT_TIME_RETRY_S`: a caller that backs off that long (a watch after a few
        errors) would find the dead member "not failed" again and stay on it forever.
        """
        try:
            self.client.channel  # noqa: B018 - the property fails over to a live member
        except Exception:  # noqa: BLE001 - every member failed: the next call retries
            pass

    # -- watches ---------------------------------------------------------------------------

    def watch(self, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool) -> GrpcWatch:
        """Open a watch stream on the member in use (see `WatchStream`).

        Returns once etcd confirmed the watch. Raises `Compacted` when
        `start_revision` is compacted, and `EtcdUnavailable` when the member does not
        confirm within the client timeout (it is then treated as failed).
        """
        create = pb.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision, prev_kv=prev_kv
        )
        try:
            stream = GrpcWatch(self, pb.WatchRequest(create_request=create))
        except Exception as exc:
            raise self.error(exc) from exc
        try:
            stream.wait_created(self.client.timeout)
        except EtcdUnavailable:
            stream.cancel()
            self.fail_endpoint()
            raise
        except BaseException:
            stream.cancel()
            raise
        return stream

    @property
    def open_watches(self) -> int:
        """Watch streams whose reader thread still runs (leak checks)."""
        with self._lock:
            return len(self._watches)

    def _opened(self, watch: GrpcWatch) -> None:
        with self._lock:
            self._watches.add(watch)

    def _closed(self, watch: GrpcWatch) -> None:
        with self._lock:
            self._watches.discard(watch)


class GrpcWatch:
    """One gRPC watch stream and the thread that reads it; see `GrpcBackend.watch`."""

    def __init__(self, backend: GrpcBackend, request: Any) -> None:
        client = backend.client
        self._backend = backend
        self.endpoint = backend.endpoint()
        self._queue: queue.Queue[list[Event] | StoreError] = queue.Queue(WATCH_QUEUE)
        self._cancelled = threading.Event()
        self._created = threading.Event()
        self._failure: StoreError | None = None
        stub = etcdrpc.WatchStub(client.channel)
        # One request: the stream stays open after the client's side is done sending.
        self._call = stub.Watch(
            iter([request]), credentials=client.call_credentials, metadata=client.metadata
        )
        backend._opened(self)
        self._thread = threading.Thread(target=self._read, name="recsync-etcd-watch", daemon=True)
        self._thread.start()

    def wait_created(self, timeout: float) -> None:
        """Block until etcd confirmed the watch; raise what it said instead, if anything."""
        if not self._created.wait(timeout):
            raise EtcdUnavailable(
                f"etcd member {self.endpoint} did not confirm a watch within {timeout:.1f} s"
            )
        if self._failure is not None:
            raise self._failure

    def next(self, timeout: float) -> list[Event] | None:
        """The next response's events, or None when nothing came within `timeout`."""
        if self._cancelled.is_set():
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, StoreError):
            raise item
        return None if item is _CANCELLED else item

    def cancel(self) -> None:
        """End the stream (idempotent); its reader thread ends with it."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._call.cancel()
            try:
                self._queue.put_nowait(_CANCELLED)
            except queue.Full:
                pass  # a waiting consumer finds items at once anyway

    def _read(self) -> None:
        try:
            for response in self._call:
                outcome = self._response(response)
                if outcome is not None:
                    self._give(outcome)
                if isinstance(outcome, StoreError):
                    return
            self._give(EtcdUnavailable(f"etcd member {self.endpoint} ended the watch stream"))
        except grpc.RpcError as exc:
            if not self._cancelled.is_set():
                error = self._backend.error(exc)
                self._give(error if isinstance(error, StoreError) else EtcdRefused(str(error)))
        finally:
            self._created.set()  # a creation that failed is not waited for any longer
            self._call.cancel()
            self._backend._closed(self)

    def _response(self, response: Any) -> list[Event] | StoreError | None:
        if response.compact_revision:
            return Compacted(
                f"watch from a compacted revision (oldest kept: {response.compact_revision})",
                int(response.compact_revision),
            )
        if response.canceled:
            return EtcdRefused(f"etcd cancelled the watch: {response.cancel_reason}")
        if response.created:
            self._created.set()
        return [_event(event) for event in response.events] or None

    def _give(self, item: list[Event] | StoreError) -> None:
        if isinstance(item, StoreError) and not self._created.is_set():
            self._failure = item
            self._created.set()
            return
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=_PUT_RETRY_S)
                return
            except queue.Full:
                continue


def _entry(value: Any) -> Entry:
    return Entry(
        key_text(value.key),
        value.value,
        value.mod_revision,
        value.lease,
        value.create_revision,
        value.version,
    )


def _event(event: Any) -> Event:
    item = event.kv
    prev = _entry(event.prev_kv) if event.HasField("prev_kv") else None
    if event.type == kv.Event.DELETE:
        return Event("delete", key_text(item.key), b"", int(item.mod_revision), 0, prev)
    return Event(
        "put", key_text(item.key), item.value, int(item.mod_revision), int(item.lease), prev
    )


def open_store(
    endpoints: Sequence[str],
    *,
    timeout: float,
    deadline_s: float,
    username: str | None = None,
    password: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    auth_deadline_s: float | None = None,
) -> Store:
    """A `Store` on a new failover client (`make_client`: same arguments and errors).

    Logging in is retried for `auth_deadline_s`, by default `deadline_s` but at most
    `AUTH_DEADLINE_S`.
    """
    client = make_client(
        endpoints,
        timeout=timeout,
        username=username,
        password=password,
        ca=ca,
        cert=cert,
        key=key,
        auth_deadline_s=min(deadline_s, AUTH_DEADLINE_S)
        if auth_deadline_s is None
        else auth_deadline_s,
    )
    return Store(GrpcBackend(client), deadline_s)
