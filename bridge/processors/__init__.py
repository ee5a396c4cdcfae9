"""Processors: what the bridge does with each session's transactions.

`ProcessorChain` fans every transaction out to the configured processors and
fails if any of them fails (the session is then closed so the IOC re-uploads).
Processors are looked up by name in a small built-in registry: ``etcd`` (the
default, `bridge.processors.etcd`) and ``show`` (logs what arrives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.python.failure import Failure
from zope.interface import implementer

from bridge.interfaces import IProcessor
from bridge.model import Transaction

#: name -> "module:factory"; factories are imported only when used.
BUILTIN = {
    "etcd": "bridge.processors.etcd:build",
    "show": "bridge.processors.show:build",
}

#: The reference RecCeiver's processors that a recceiver.conf may name.
UNSUPPORTED = {
    "cf": "ChannelFinder",
    "db": "SQL database",
}


def load_factory(name: str) -> Callable[..., Any]:
    """The build function of a built-in processor; KeyError names the processor."""
    module_name, _, attr = BUILTIN[name].partition(":")
    module = __import__(module_name, fromlist=[attr])
    factory: Callable[..., Any] = getattr(module, attr)
    return factory


@implementer(IProcessor)
class ProcessorChain(MultiService):
    """Commits each transaction to every child processor in parallel."""

    def __init__(self, processors: Sequence[IProcessor]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.processors = list(processors)
        for processor in self.processors:
            self.addService(processor)  # type: ignore[no-untyped-call]

    def commit(self, transaction: Transaction) -> Deferred[None]:
        if len(self.processors) == 1:
            return maybeDeferred(self.processors[0].commit, transaction)
        calls = [maybeDeferred(p.commit, transaction) for p in self.processors]
        done = DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)

        def unwrap(result: object) -> None:
            return None

        def first_error(failure: Failure) -> Failure:
            # DeferredList wraps the first failure in a FirstError.
            inner = getattr(failure.value, "subFailure", None)
            return inner if isinstance(inner, Failure) else failure

        return done.addCallbacks(unwrap, first_error)
