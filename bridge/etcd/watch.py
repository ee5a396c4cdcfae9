"""One resumable watch on an etcd prefix, for every reader: the bridge, `recsync`, the API.

`Watch` is the blocking form: iterate it (in a thread of its own) and it yields the
events under a prefix in revision order, as lists (one per etcd response), until
`Watch.stop`. Its contract:

* it starts at `start_revision`; without one it first calls `reload` (see below);
* after a connection error it watches again from the last revision it delivered + 1,
  with back-off, so nothing is missed or delivered twice;
* when that revision has been compacted, the history is gone: it calls ``reload()``,
  which must read a snapshot (``Store.scan(prefix)``, which reads at one revision R)
  and return R; the watch goes on from R + 1;
* it follows the client when it fails over: a watch stream on a hung member gets no
  error, only silence. Every `probe_interval` seconds it sends one cheap read through
  the client (`Store.probe`); a hung member makes it time out and the client moves to
  another member, and when the member the client uses is no longer the stream's, the
  watch is moved there (old stream cancelled first: no stream is left behind).

`ReactorWatch` runs a `Watch` for Twisted code: a service whose thread delivers each
list of events on the reactor thread (``callFromThread``); ``reload`` still runs in
the watch's thread, so it may block (it reads etcd).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.errors import Compacted, StoreError
from bridge.etcd.backend import WatchStream
from bridge.etcd.ops import Event, key_bytes, prefix_end
from bridge.etcd.store import Store

#: Seconds between probes of the client's member (module docstring).
PROBE_INTERVAL_S = 3.0
#: Back-off between attempts to watch again after an error: first, then doubling to max.
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0

#: Reads a snapshot of the prefix (blocking) and returns the revision it was read at.
Reload = Callable[[], int]


class Watch:
    """Events under `prefix` in revision order, resumed across errors; see the module.

    Args:
        store: reads, probes and opens the streams.
        prefix: the key prefix watched.
        reload: called when there is no revision to go on from (see the module).
        start_revision: the first revision to deliver; None to `reload` first.
        prev_kv: events carry the key as it was before (`Event.prev`).
        probe_interval: seconds between probes of the client's member.
    """

    log = Logger()

    def __init__(
        self,
        store: Store,
        prefix: str,
        *,
        reload: Reload,
        start_revision: int | None = None,
        prev_kv: bool = False,
        probe_interval: float = PROBE_INTERVAL_S,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self._key = key_bytes(prefix)
        self._reload = reload
        self._start = start_revision
        self._prev_kv = prev_kv
        self.probe_interval = probe_interval
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        #: True while a stream is open and confirmed by etcd.
        self.established = False
        #: How often a stream was lost (error, compaction, client failover) and replaced.
        self.rewatches = 0
        #: The last revision delivered or reloaded; 0 before either.
        self.revision = 0
        #: The member the current stream is on.
        self.endpoint: str | None = None

    def stop(self) -> None:
        """End the iteration (from any thread): the stream is cancelled, nothing more comes."""
        self._stopped.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def __iter__(self) -> Iterator[list[Event]]:
        following = self._start
        delay = BACKOFF_FIRST_S
        while not self._stopped.is_set():
            stream: WatchStream | None = None
            try:
                if following is None:
                    self.revision = self._reload()
                    following = self.revision + 1
                stream = self._open(following)
                for events in self._follow(stream):
                    self.revision = events[-1].revision
                    following = self.revision + 1
                    delay = BACKOFF_FIRST_S
                    yield events
            except Compacted:
                self.log.info(
                    "watch on {prefix}: revision {revision} is compacted; reading it again",
                    prefix=self.prefix,
                    revision=following,
                )
                following = None
            except StoreError as exc:
                self.log.info(
                    "watch on {prefix} lost ({error}); watching again from revision {revision}",
                    prefix=self.prefix,
                    error=exc,
                    revision=following,
                )
                self._stopped.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            finally:
                self._close(stream)

    def _open(self, revision: int) -> WatchStream:
        stream = self.store.backend.watch(
            self._key, prefix_end(self._key), revision, self._prev_kv
        )
        with self._lock:
            self._stream = stream
        if self._stopped.is_set():  # stop() ran before the stream was known
            stream.cancel()
        self.endpoint = stream.endpoint
        self.established = True
        return stream

    def _close(self, stream: WatchStream | None) -> None:
        with self._lock:
            self._stream = None
        if stream is not None:
            stream.cancel()
        if self.established and not self._stopped.is_set():
            self.rewatches += 1
        self.established = False

    def _follow(self, stream: WatchStream) -> Iterator[list[Event]]:
        """The stream's events until it fails (raises), the client moves, or `stop`."""
        next_probe = time.monotonic() + self.probe_interval
        while not self._stopped.is_set():
            events = stream.next(max(0.0, next_probe - time.monotonic()))
            if events:
                yield events
            if time.monotonic() >= next_probe and not self._stopped.is_set():
                if self._moved(stream):
                    return
                next_probe = time.monotonic() + self.probe_interval

    def _moved(self, stream: WatchStream) -> bool:
        """Probe the client's member; True when the client now uses another than `stream`."""
        if not self.store.probe(self.prefix):
            # The client marks a member that timed out as failed, but chooses another
            # only for its next request: make that one now.
            self.store.probe(self.prefix)
        current = self.store.endpoint
        if current is None or stream.endpoint is None or current == stream.endpoint:
            return False
        self.log.info(
            "etcd client moved from {old} to {new}; moving the watch on {prefix}",
            old=stream.endpoint,
            new=current,
            prefix=self.prefix,
        )
        return True


class ReactorWatch(Service):
    """Runs `watch` in a thread of its own and calls ``on_events(events)`` on the reactor.

    `stopService` stops the watch; its Deferred fires once the thread has ended. Events
    that arrive after `stopService` are dropped.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, watch: Watch, on_events: Callable[[list[Event]], None]
    ) -> None:
        self.reactor = reactor
        self.watch = watch
        self.on_events = on_events
        self._thread: threading.Thread | None = None
        self._ended: Deferred[None] = Deferred()

    @property
    def established(self) -> bool:
        return self.watch.established

    @property
    def rewatches(self) -> int:
        return self.watch.rewatches

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(
            target=self._run, name=f"recsync-watch {self.watch.prefix}", daemon=True
        )
        self._thread.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self.watch.stop()
        if self._thread is None:
            self._ended.callback(None)
        return self._ended

    def _run(self) -> None:
        call = self.reactor.callFromThread
        try:
            for events in self.watch:
                call(self._deliver, events)
        except Exception:  # a bug in reload: say so on the reactor, where logs go
            failure = Failure()  # type: ignore[no-untyped-call]
            call(self.log.failure, "watch on {prefix} failed", failure, prefix=self.watch.prefix)
        finally:
            call(self._ended.callback, None)

    def _deliver(self, events: list[Event]) -> None:
        if self.running:
            self.on_events(events)
