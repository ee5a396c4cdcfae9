"""One memory budget for every IOC connection together (``[recceiver] maxHeldBytes``).

Each connection reports what it holds (`bridge.server.connection.RecSyncProtocol`'s
``bytes_held``: undecoded bytes, the run being compared, the session's records not
yet committed, the names and client infos of its upload, the transactions waiting
for the processors), and `MemoryBudget` keeps the total. Free of Twisted: it calls
back to pause and resume a connection's reading.

Only connections that hold an upload slot are ever paused: they are the ones whose
reading can make them hold more. A connection without a slot is bounded by
construction (the connection reads it in small pieces and passes over large frames
unread), so it never needs pausing, and a new IOC can always greet.

Over the budget, no new upload starts either (`allows_upload`): the transactions of
uploads that have finished reading still wait for etcd, and a new upload would add
its own. New uploads start again once the total is back under the low-water mark, or
as soon as no upload is left (one always may).

The rule for pausing, applied after every change of a connection's holding:

* Over the budget, every reading slot-holder but the one holding the least is paused,
  the largest first — never the last one: one upload always goes on, so that memory
  held in partial frames, runs and batches, which only reading can turn into commits,
  is freed in the end. (A paused connection commits the records it has complete
  meanwhile: `bridge.protocol.session.Session.flush`.)
* At or under the low-water mark (`LOW_WATER` of the budget), the connection paused
  longest is resumed (one per change).
* When no slot-holder is left reading (the last one finished, or was closed), the
  connection paused longest is resumed, whatever the total.

No connection starves: paused connections resume in the order they were paused, and
the one upload always reading ends, at the latest, by its ``uploadTimeout`` or the
minimum upload progress (it is never paused by the budget, so both apply), which
resumes the next. The total can pass the budget by what the readers add in one
read each, what the one upload always reading takes, and the transactions of the
uploads that finished reading while etcd stores them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

#: Paused connections are resumed once the total is back under this share of the budget.
LOW_WATER = 7 / 8


class MemoryBudget(Generic[T]):
    """The total held by every item, kept under `limit` by pausing slot-holders.

    `pause` and `resume` are called with an item to stop and restart its reading.
    """

    def __init__(
        self,
        limit: int,
        pause: Callable[[T], None],
        resume: Callable[[T], None],
        room: Callable[[], None] = lambda: None,
    ) -> None:
        self.limit = limit
        self.low_water = int(limit * LOW_WATER)
        self._pause = pause
        self._resume = resume
        #: Called once uploads may start again after `allows_upload` said no.
        self._room = room
        self._held_back = False
        self.total = 0
        self._held: dict[T, int] = {}
        #: Slot-holders not paused by the budget (in the order they came, which breaks
        #: ties), and those paused (oldest first).
        self._readers: dict[T, None] = {}
        self._paused: collections.OrderedDict[T, None] = collections.OrderedDict()
        #: Pauses so far, for the status line.
        self.pauses = 0

    @property
    def paused(self) -> int:
        """Connections paused by the budget now."""
        return len(self._paused)

    def is_paused(self, item: T) -> bool:
        return item in self._paused

    def allows_upload(self) -> bool:
        """Whether a new upload may start now: the total is within the budget, or no
        upload is under way. If not, the `room` callback says when."""
        if self.total <= self.limit or not (self._readers or self._paused):
            return True
        self._held_back = True
        return False

    def update(self, item: T, held: int, slot: bool) -> None:
        """`item` now holds `held` bytes; `slot` says whether it holds an upload slot
        (and so may be paused)."""
        self.total += held - self._held.get(item, 0)
        self._held[item] = held
        if slot and item not in self._paused:
            self._readers.setdefault(item)
        elif not slot:
            self._readers.pop(item, None)
            if self._paused.pop(item, 0) is None:
                self._resume(item)  # no slot, nothing to hold back
        self._balance()

    def forget(self, item: T) -> None:
        """`item` is gone: what it held is free."""
        self.total -= self._held.pop(item, 0)
        self._readers.pop(item, None)
        self._paused.pop(item, None)
        self._balance()

    def _balance(self) -> None:
        if self.total > self.limit:
            if len(self._readers) > 1:
                # Pausing frees nothing, it only stops growth: every reader but the one
                # holding the least stops, largest first.
                keep = min(self._readers, key=self._held.__getitem__)
                for item in sorted(self._readers, key=self._held.__getitem__, reverse=True):
                    if item is not keep:
                        del self._readers[item]
                        self._paused[item] = None
                        self.pauses += 1
                        self._pause(item)
        elif self._paused and self.total <= self.low_water:
            self._resume_oldest()
        if self._paused and not self._readers:
            self._resume_oldest()
        if self._held_back and (
            self.total <= self.low_water or not (self._readers or self._paused)
        ):
            self._held_back = False
            self._room()

    def _resume_oldest(self) -> None:
        item, _ = self._paused.popitem(last=False)
        self._readers[item] = None
        self._resume(item)
