"""A watch on an etcd prefix that survives errors and compaction (blocking, for tools).

`watch_changes` yields every change under a prefix. After a connection error it
re-watches from the last revision it delivered + 1, so nothing is missed or
repeated. If that revision has been compacted away, the history is gone: it
reads the whole prefix again, yields one ``resync`` marker followed by the
current value of every key as ``put``, and continues watching from the read's
revision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from pyetcd.events import DeleteEvent
from pyetcd.exceptions import RevisionCompactedError

from bridge import documents as docs
from bridge.etcd.client import is_retryable


@dataclass(frozen=True)
class Change:
    kind: str  # "put", "delete" or "resync"
    key: str
    value: Any
    revision: int


def watch_changes(
    client: Any,
    prefix: str,
    *,
    start_revision: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Change]:
    """Yield changes under `prefix` forever (until `stop()` is true after an event)."""
    next_revision = start_revision
    backoff = 0.05
    while not stop():
        try:
            if next_revision is None:
                next_revision = yield from _resync(client, prefix)
            for change in _watch_once(client, prefix, next_revision):
                next_revision = change.revision + 1
                backoff = 0.05
                yield change
                if stop():
                    return
        except RevisionCompactedError:
            next_revision = None
        except Exception as error:
            if not is_retryable(error):
                raise
            sleep(backoff)
            backoff = min(backoff * 2, 2.0)


def _resync(client: Any, prefix: str) -> Generator[Change, None, int]:
    response = client.get_prefix_response(prefix)
    revision = int(response.header.revision)
    yield Change("resync", prefix, None, revision)
    for kv in response.kvs:
        yield Change("put", kv.key.decode("utf-8", "replace"), _value(kv.value), revision)
    return revision + 1


def _watch_once(client: Any, prefix: str, start_revision: int) -> Iterator[Change]:
    responses, cancel = client.watch_prefix_response(prefix, start_revision=start_revision)
    try:
        for response in responses:
            for event in response.events:
                kind = "delete" if isinstance(event, DeleteEvent) else "put"
                value = None if kind == "delete" else _value(event.value)
                yield Change(
                    kind, event.key.decode("utf-8", "replace"), value, int(event.mod_revision)
                )
    finally:
        cancel()


def _value(raw: bytes) -> Any:
    try:
        return docs.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
