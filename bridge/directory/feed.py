"""Keeps a `Directory` current from etcd: a load at one revision, then a watch.

The one adapter between the directory and the etcd layer. A worker thread runs a
resumable `bridge.etcd.watch.Watch` on the prefix: its ``reload`` reads the whole prefix
in pages at one revision (`Store.scan`, a consistent snapshot), builds a new `State`
from them off the reactor and hands it over; the watch then delivers every change from
the next revision, resumes after connection errors, reloads after a compaction and
follows the client when it fails over. Events are handed to the reactor thread in
batches, one watch response each, at most `MAX_PENDING` batches waiting (the thread
blocks beyond that, so a slow reactor never makes it buffer without bound). Nothing is
ever written to etcd.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from bridge.directory.model import Directory, Item, build_state
from bridge.etcd.ops import Event
from bridge.etcd.store import Store
from bridge.etcd.watch import PROBE_INTERVAL_S, Watch

#: Keys per range read while loading. Large, because etcd (3.4) counts every key left
#: in the range to answer each page, so a load's cost grows with the square of the keys
#: over the page size (300,000 keys: 10 s in pages of 1,000, 1.7 s in pages of 16,000);
#: a page that would pass gRPC's 4 MiB is cut by the store.
PAGE = 16_000
#: Watch responses waiting for the reactor before the watch thread waits.
MAX_PENDING = 64


class DirectoryFeed:
    """Feeds `directory` from etcd through `store` (read-only).

    `ready` fires once the first load is in place. `call_in_reactor` is
    ``reactor.callFromThread``. Start with `start`, stop with `stop` (joins the thread).
    With `start_revision` the feed resumes watching from there instead of loading first
    (it loads when that revision is compacted).
    """

    log = Logger()

    def __init__(
        self,
        directory: Directory,
        store: Store,
        call_in_reactor: Callable[..., Any],
        *,
        page: int = PAGE,
        start_revision: int | None = None,
        probe_interval: float = PROBE_INTERVAL_S,
    ) -> None:
        self.directory = directory
        self.store = store
        self._call = call_in_reactor
        self._page = page
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._thread: threading.Thread | None = None
        self.watch = Watch(
            store,
            self.prefix,
            reload=self._load,
            start_revision=start_revision,
            probe_interval=probe_interval,
        )
        self.ready: defer.Deferred[None] = defer.Deferred()
        #: Revision of the last change applied (or of the load); 0 before the first load.
        self.revision = 0
        #: Loads done (1 after start; more after compactions).
        self.loads = 0
        #: When the last change was applied on the reactor (monotonic), for health pages.
        self.applied_at = 0.0
        #: When each batch handed to the reactor and not yet applied arrived (monotonic).
        self._received: collections.deque[float] = collections.deque()

    @property
    def prefix(self) -> str:
        return self.directory.keys.everything()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="directory-feed", daemon=True)
        self._thread.start()

    @property
    def watching(self) -> bool:
        """True while the watch stream is established (health, metrics)."""
        return bool(self.watch.established)

    def lag(self) -> float:
        """Seconds the oldest change received from etcd has waited for the reactor
        (0 when the view holds everything the watch delivered)."""
        received = self._received
        return time.monotonic() - received[0] if received else 0.0

    def probe(self) -> dict[str, Any]:
        """(blocking; a worker thread) Ask etcd for its status: version, database size,
        whether it has a leader. Raises what the store raises when etcd is away."""
        status = self.store.status()
        return {
            "version": str(status.version),
            "db_size": int(status.db_size),
            "leader": bool(status.leader),
            "revision": int(status.revision),
        }

    def fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        """(blocking; a worker thread) The values of `keys` now, None where absent: the
        parts of documents the view does not keep (every info tag of a record)."""
        found = self.store.get_many(keys)
        return [found[key].value if key in found else None for key in keys]

    def stop(self, timeout: float = 5.0) -> None:
        self.watch.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker thread ------------------------------------------------------------

    def _run(self) -> None:
        for events in self.watch:
            self._hand_over(events)

    def _load(self) -> int:
        """(watch thread) Read the prefix at one revision into a new state; its revision."""
        pages = self.store.scan(self.prefix, page=self._page)
        first = next(pages, None)
        revision = first.revision if first is not None else self.store.revision()
        state = build_state(
            self.directory.shape, self.directory.keys, self._items(first, pages), revision
        )
        self._wait_for_room()
        self._call(self._install, state)
        return revision

    @staticmethod
    def _items(first: Any, pages: Iterator[Any]) -> Iterator[Item]:
        if first is None:
            return
        for entry in first.entries:
            yield entry.key, entry.value, entry.mod_revision
        for page in pages:
            for entry in page.entries:
                yield entry.key, entry.value, entry.mod_revision

    def _wait_for_room(self) -> None:
        while not self._pending.acquire(timeout=0.5):
            if self.watch.stopped:
                return

    def _hand_over(self, events: list[Event]) -> None:
        arrived = time.monotonic()
        self._wait_for_room()
        if not self.watch.stopped:
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
        for event in events:
            self.directory.apply(
                event.key, event.value if event.kind == "put" else None, event.revision
            )
        self.revision = events[-1].revision
        self.applied_at = time.monotonic()
