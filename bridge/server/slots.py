"""Upload slots: ``maxActive`` in all, a share per source address, waiters served in turn.

`Slots` is the bookkeeping behind `bridge.server.admission.BridgeFactory`'s upload
slots, free of Twisted so that it can be tested on its own. It holds items (the
factory's connections) by their source address (``host``):

* at most ``total`` items hold a slot at once, and at most ``per_host`` of them
  come from one address, so that connections from one address, however many,
  leave the other ``total - per_host`` slots to everyone else;
* an item that cannot have a slot waits in its address's FIFO queue, and a slot that
  comes free goes to the next address in turn that has a waiter and is under its
  share (round robin over addresses), not to the longest waiter overall: a thousand
  waiters from one address delay a waiter from another by at most one turn.

Invariant: after every `take` or `release`, either every slot is busy or no waiter
may have one (each waiting address is at its share). So an item that greets while
slots are free gets one at once unless its own address is at its share.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Slots(Generic[T]):
    """``total`` slots, ``per_host`` for one address, waiters served address by address."""

    def __init__(self, total: int, per_host: int, host_of: Callable[[T], str]) -> None:
        if total < 1 or per_host < 1:
            raise ValueError("there must be at least one slot, and one per address")
        self.total = total
        self.per_host = min(per_host, total)
        self._host_of = host_of
        #: Slots held, in all and per address (addresses holding none are absent).
        self.active = 0
        self.by_host: collections.Counter[str] = collections.Counter()
        #: Waiters per address, in arrival order; the addresses in the order they are
        #: served (an address served goes to the end).
        self._waiting: collections.OrderedDict[str, collections.deque[T]] = (
            collections.OrderedDict()
        )
        self._count = 0

    # -- queries ------------------------------------------------------------------------

    def free_for(self, host: str) -> bool:
        """True if an item from `host` would get a slot at once."""
        return self.active < self.total and self.by_host[host] < self.per_host

    def __len__(self) -> int:
        """Items waiting."""
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __contains__(self, item: object) -> bool:
        queue = self._waiting.get(self._host_of(item))  # type: ignore[arg-type]
        return queue is not None and item in queue

    def __iter__(self) -> Iterator[T]:
        """The waiting items, address by address."""
        for queue in self._waiting.values():
            yield from queue

    @property
    def waiting_hosts(self) -> int:
        """Addresses with at least one waiter."""
        return len(self._waiting)

    # -- changes ------------------------------------------------------------------------

    def take(self, item: T) -> None:
        """`item` holds a slot (the caller checked `free_for`, or got it from `next`)."""
        self.active += 1
        self.by_host[self._host_of(item)] += 1

    def release(self, item: T) -> None:
        """`item` gives its slot back."""
        host = self._host_of(item)
        assert self.active > 0 and self.by_host[host] > 0, "upload slot released twice"
        self.active -= 1
        self.by_host[host] -= 1
        if not self.by_host[host]:
            del self.by_host[host]

    def wait(self, item: T) -> None:
        """Queue `item` behind the other waiters from its address."""
        host = self._host_of(item)
        queue = self._waiting.get(host)
        if queue is None:
            queue = self._waiting[host] = collections.deque()
        queue.append(item)
        self._count += 1

    def remove(self, item: T) -> None:
        """Take `item` out of the queue, if it waits."""
        host = self._host_of(item)
        queue = self._waiting.get(host)
        if queue is None or item not in queue:
            return
        queue.remove(item)
        self._count -= 1
        if not queue:
            del self._waiting[host]

    def next(self) -> T | None:
        """The waiter that gets a slot that is free now, taken out of the queue (the
        caller then `take`s it), or None if no waiter may have one.

        Addresses are tried in turn from the one served longest ago; the first with a
        waiter and under its share gives its oldest waiter and goes to the end.
        """
        if self.active >= self.total:
            return None
        for host, queue in self._waiting.items():
            if self.by_host[host] < self.per_host:
                item = queue.popleft()
                self._count -= 1
                if queue:
                    self._waiting.move_to_end(host)
                else:
                    del self._waiting[host]
                return item
        return None
