"""zope.interface contracts between the server and the processors."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class IProcessor(IService):
    """Receives every session's transactions.

    The bridge hands a processor the transactions of one session strictly in
    order and never hands it the next one of that session before the Deferred
    of the previous one has fired. Transactions of different sessions may
    interleave. A failed Deferred aborts the session: the IOC connection is
    closed so that it re-uploads later.
    """

    def commit(transaction: Any) -> Any:
        """Store or act on one `bridge.model.Transaction`; return a Deferred[None]."""


class IUnchangedRuns(Interface):
    """A processor that can take unchanged runs of records without the records.

    A re-upload is cut into runs of records (`bridge.protocol.runs.RunDecoder`).
    When the processor given to the server provides this interface (a
    `bridge.processors.ProcessorChain` does when all its processors do), the server
    asks it, once every transaction of the session so far has been committed (at
    least the first, which names the IOC), which run digests it holds for the IOC.
    Runs whose digest matches then arrive as `bridge.model.KeptRun` values in
    ``Transaction.kept`` instead of as records; every run's digest arrives in
    ``Transaction.digests``. Without this interface the server sends records only.
    """

    def known_runs(session_id: int) -> Any:
        """The digests (a sequence of str) stored for this session's IOC, or None."""


class IProcessorFactory(Interface):
    """Builds a processor by name, as listed in ``[recceiver] procs``."""

    name = Attribute("The name used in the procs list, e.g. 'etcd'.")

    def build(instance: str, config: Any, reactor: Any, **context: Any) -> IProcessor:
        """Return a new processor for ``procs`` entry `instance` (``name[:instance]``).

        `context` carries what the service knows at build time: ``bridge_id``, and
        ``endpoints_ready`` for processors that need etcd.
        """


class IStoreHealth(Interface):
    """A processor that holds the bridge's etcd lease and can say whether it can store.

    The health probe (bridge/web/health.py) and the metrics read it; nothing here
    touches etcd.
    """

    lease = Attribute("The lease held now (with an ``id``), None before one is granted.")
    last_contact = Attribute("When etcd last answered the lease refresh (reactor seconds).")
    lease_refreshes = Attribute("Lease refreshes etcd answered so far.")
    lease_renewals = Attribute("New leases taken after etcd lost one.")

    def can_store() -> bool:
        """True while the lease is held and etcd answered within the lease TTL."""
