"""Processors: what the bridge does with each session's transactions.

`ProcessorChain` fans every transaction out to the configured processors and
fails if any of them fails (the session is then closed so the IOC re-uploads).
Processors are looked up by name in a small built-in registry: ``etcd`` (always
run, `bridge.processors.etcd`) and ``show`` (logs what arrives, beside etcd).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer
from zope.interface.verify import verifyObject

from bridge.interfaces import IProcessor, IProcessorFactory, IUnchangedRuns
from bridge.model import Transaction


@implementer(IProcessorFactory)
class ProcessorFactory:
    """Builds one kind of processor; the module is imported only when it is used."""

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.target = target  # "module:function"

    def build(self, instance: str, config: Any, reactor: Any, **context: Any) -> IProcessor:
        module_name, _, attr = self.target.partition(":")
        build: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
        processor = build(config, context.pop("bridge_id"), reactor, **context)
        verifyObject(IProcessor, processor)
        return cast(IProcessor, processor)


#: The processors ``[recceiver] procs`` may name.
BUILTIN = {
    factory.name: factory
    for factory in (
        ProcessorFactory("etcd", "bridge.processors.etcd:build"),
        ProcessorFactory("show", "bridge.processors.show:build"),
    )
}

#: The reference RecCeiver's processors that a recceiver.conf may name, which the bridge
#: accepts and replaces (what each one did): etcd is always the store.
REFERENCE_PROCS = {
    "cf": "the reference's ChannelFinder writer",
    "db": "the reference's SQL database writer",
}


@implementer(IProcessor)
class ProcessorChain(MultiService):
    """Commits each transaction to every child processor in parallel."""

    def __init__(self, processors: Sequence[IProcessor]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.processors = list(processors)
        for processor in self.processors:
            self.addService(processor)  # type: ignore[no-untyped-call]
        if self.processors and all(IUnchangedRuns.providedBy(p) for p in self.processors):
            alsoProvides(self, IUnchangedRuns)

    def can_store(self) -> bool:
        """Every processor that can tell says it can store now (`bridge.server.announce`)."""
        checks = [getattr(p, "can_store", None) for p in self.processors]
        return all(check() for check in checks if check is not None)

    def known_runs(self, session_id: int) -> Sequence[str] | None:
        """The digests every processor holds for the session's IOC, if they agree."""
        answers = [
            p.known_runs(session_id)  # type: ignore[attr-defined]
            for p in self.processors
        ]
        if not answers or any(a is None or a != answers[0] for a in answers):
            return None
        return cast(Sequence[str], answers[0])

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
