"""Keeps a `Directory` current from etcd: a load at one revision, then a watch.

The one adapter between the directory and today's etcd modules (`bridge.etcdclient`,
pyetcd's range and watch calls); when the etcd layer gains paged reads at one revision
and a resumable watch (`bridge.etcd.store`, `bridge.etcd.watch`), only this module
changes.

A worker thread does every blocking call: it reads the whole prefix in pages, every page
at the revision of the first (so the view is one snapshot), builds a new `State` from
them off the reactor, hands it over, and watches from the next revision. Events are
handed to the reactor thread in batches, one watch response each, at most `MAX_PENDING`
batches waiting (the thread blocks beyond that, so a slow reactor never makes it buffer
without bound). A compacted revision reloads everything; a connection error (a member
killed: the failover client moves to the next endpoint) re-watches from the last
revision applied, with back-off. Nothing is ever written to etcd.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]  # no stubs shipped
from pyetcd.events import DeleteEvent
from pyetcd.exceptions import RevisionCompactedError
from twisted.internet import defer
from twisted.logger import Logger

from bridge.directory.model import Directory, build_state
from bridge.etcdclient import is_retryable

#: Keys per range read while loading.
PAGE = 2000
#: Watch responses waiting for the reactor before the watch thread waits.
MAX_PENDING = 64
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0

Event = tuple[str, bytes | None, int]


def _prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end[: len(end)])
        end.pop()
    return b"\0"


class DirectoryFeed:
    """Feeds `directory` from etcd through `client` (a pyetcd failover client).

    `ready` fires once the first load is in place. `call_in_reactor` is
    ``reactor.callFromThread``. Start with `start`, stop with `stop` (joins the thread).
    """

    log = Logger()

    def __init__(
        self,
        directory: Directory,
        client: Any,
        call_in_reactor: Callable[..., Any],
        *,
        page: int = PAGE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.directory = directory
        self.client = client
        self._call = call_in_reactor
        self._page = page
        self._sleep = sleep
        self._stop = threading.Event()
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._cancel: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()
        #: Revision of the last change applied (or of the load); 0 before the first load.
        self.revision = 0
        #: Loads done (1 after start; more after compactions).
        self.loads = 0
        #: When the last change was applied on the reactor (monotonic), for health pages.
        self.applied_at = 0.0
        #: True while a watch stream is open and has not failed since (health, metrics).
        self.watching = False
        #: When each batch handed to the reactor and not yet applied arrived (monotonic).
        self._received: collections.deque[float] = collections.deque()

    @property
    def prefix(self) -> str:
        return self.directory.keys.everything()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="directory-feed", daemon=True)
        self._thread.start()

    def lag(self) -> float:
        """Seconds the oldest change received from etcd has waited for the reactor
        (0 when the view holds everything the watch delivered)."""
        received = self._received
        return time.monotonic() - received[0] if received else 0.0

    def probe(self) -> dict[str, Any]:
        """(blocking; a worker thread) Ask etcd for its status: version, database size,
        whether it has a leader. Raises what the client raises when etcd is away."""
        status = self.client.status()
        return {
            "version": str(status.version),
            "db_size": int(status.db_size),
            "leader": status.leader is not None,
            "raft_index": int(status.raft_index),
        }

    def fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        """(blocking; a worker thread) The values of `keys` now, None where absent: the
        parts of documents the view does not keep (every info tag of a record)."""
        return [self.client.get(key)[0] for key in keys]

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        cancel = self._cancel
        if cancel is not None:
            cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker thread ------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        revision: int | None = None
        while not self._stop.is_set():
            try:
                if revision is None:
                    revision = self._load()
                for events in self._watch(revision + 1):
                    revision = events[-1][2]
                    backoff = BACKOFF_FIRST_S
                    self._hand_over(events)
            except RevisionCompactedError:
                self.watching = False
                self.log.info("directory: revision {rev} compacted; loading again", rev=revision)
                revision = None
            except Exception as error:
                self.watching = False
                if self._stop.is_set():
                    return
                if not is_retryable(error):
                    self.log.failure("directory feed failed; retrying")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _load(self) -> int:
        first = self._range(self.prefix.encode(), 0)
        revision = int(first.header.revision)
        state = build_state(
            self.directory.shape, self.directory.keys, self._pages(first, revision), revision
        )
        self._pending.acquire()
        self._call(self._install, state)
        return revision

    def _range(self, start: bytes, revision: int) -> Any:
        """One page; pages shrink while a response would pass gRPC's 4 MiB limit
        (records with big info tags)."""
        end = _prefix_end(self.prefix.encode())
        limit = self._page
        while True:
            try:
                return self.client.get_range_response(
                    start, end, limit=limit, revision=revision or None
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or limit == 1:
                    raise
                limit = max(1, limit // 4)

    def _pages(self, response: Any, revision: int) -> Iterator[tuple[str, bytes]]:
        while True:
            for kv in response.kvs:
                yield kv.key.decode("utf-8", "replace"), kv.value
            if not response.more or not response.kvs or self._stop.is_set():
                return
            response = self._page_again(response.kvs[-1].key + b"\0", revision)

    def _page_again(self, start: bytes, revision: int) -> Any:
        """The page from `start`, retried with back-off while etcd is busy or away: a
        load of millions of keys must not start over for one slow page. Errors that are
        not transient (a compacted revision among them) end the load."""
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                return self._range(start, revision)
            except Exception as error:
                if self._stop.is_set() or not is_retryable(error):
                    raise
                self.log.info("directory load: a page failed ({error!r}); retrying", error=error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _watch(self, start_revision: int) -> Iterator[list[Event]]:
        responses, cancel = self.client.watch_prefix_response(
            self.prefix, start_revision=start_revision
        )
        self._cancel = cancel
        self.watching = True
        try:
            for response in responses:
                events: list[Event] = [
                    (
                        event.key.decode("utf-8", "replace"),
                        None if isinstance(event, DeleteEvent) else event.value,
                        int(event.mod_revision),
                    )
                    for event in response.events
                ]
                if events:
                    yield events
        finally:
            self.watching = False
            self._cancel = None
            cancel()

    def _hand_over(self, events: list[Event]) -> None:
        arrived = time.monotonic()
        while not self._pending.acquire(timeout=0.5):
            if self._stop.is_set():
                return
        self._received.append(arrived)
        self._call(self._apply, events)

    # -- the reactor thread -----------------------------------------------------------

    def _install(self, state: Any) -> None:
        self._pending.release()
        self.directory.state = state
        self.revision = state.revision
        self.loads += 1
        self.applied_at = time.monotonic()
        if not self.ready.called:
            self.ready.callback(None)

    def _apply(self, events: list[Event]) -> None:
        self._pending.release()
        if self._received:
            self._received.popleft()
        for key, value, revision in events:
            self.directory.apply(key, value, revision)
        self.revision = events[-1][2]
        self.applied_at = time.monotonic()
