"""Test doubles and waits shared by several test modules."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from zope.interface import implementer

from bridge.interfaces import IUnchangedRuns
from bridge.model import Transaction
from bridge.protocol import runs


class RecordingProcessor:
    """Stands in for the processors (`bridge.server.admission.Committer`): keeps them all.

    Commits complete at once, or, with ``manual``, when the test fires `pending`.
    """

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self.transactions: list[Transaction] = []
        self.pending: list[Deferred[None]] = []

    def commit(self, transaction: Transaction) -> Deferred[None]:
        self.transactions.append(transaction)
        if not self.manual:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def of(self, session_id: int) -> list[Transaction]:
        return [t for t in self.transactions if t.session_id == session_id]


@implementer(IUnchangedRuns)
class RunsProcessor(RecordingProcessor):
    """A `RecordingProcessor` that takes unchanged runs and holds the digests `stored`.

    `asked` lists (session id, number of transactions committed by then) per question.
    """

    def __init__(self, stored: list[str] | None = None, manual: bool = False) -> None:
        super().__init__(manual)
        self.stored = stored
        self.asked: list[tuple[int, int]] = []

    def known_runs(self, session_id: int) -> list[str] | None:
        self.asked.append((session_id, len(self.of(session_id))))
        return self.stored


def answer_runs(
    decoder: runs.RunDecoder, expected: Sequence[str] | None, first_run: bool = False
) -> list[runs.RunDecoded]:
    """While `decoder` waits (`runs.RunDecoder.start_runs`), answer it as the server does:
    with `expected`, or with `first_run` first wait for the first run to end when it
    stops in front of the first record. Returns what it decodes meanwhile."""
    out: list[runs.RunDecoded] = []
    while decoder.awaiting:
        if first_run and decoder.before_records:
            decoder.wait_for_first_run()
        else:
            decoder.expect(expected)
        out += decoder.feed(b"")
    return out


def poll(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Return the first truthy result of `condition`, polled every 50 ms until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def until(
    condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition"
) -> None:
    """`poll` for trial tests: waits without blocking the reactor."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)
