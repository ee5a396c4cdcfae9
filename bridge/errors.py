"""The project's exception taxonomy.

`RemoteProtocolError`: the peer broke the protocol; log once naming the peer and
drop the connection (or skip the message where the protocol says so).
`LocalProtocolError`: we were asked to do something the protocol forbids (a bug).
`StartupError`: the bridge cannot start (a port in use, etcd unreachable, ...).
`StoreError` and its subclasses: etcd could not be reached or refused a request
(`bridge.etcd` raises them whatever the backend, so callers never see gRPC errors).
"""


class BridgeError(Exception):
    """Base of every error this project raises on purpose."""


class RemoteProtocolError(BridgeError, ValueError):
    """The peer sent something the protocol does not allow."""


class LocalProtocolError(BridgeError, ValueError):
    """Our own code tried to break the protocol."""


class ConfigError(BridgeError, ValueError):
    """A configuration value is invalid; the message names the key."""


class StartupError(BridgeError):
    """The bridge cannot start; the message is one line saying why and what to do.

    Raised while the service starts (`bridge.service.BridgeService`), where twistd turns
    it into a non-zero exit status.
    """


class StoreError(BridgeError):
    """etcd could not be reached or refused a request after all retries."""


class EtcdUnavailable(StoreError):
    """One attempt found no etcd member able to answer (down, hung, electing a leader).

    Transient: the store retries it within its outage bound, and what ends the
    retries is a plain `StoreError`.
    """


class EtcdOutage(StoreError):
    """etcd stayed unreachable past the call's outage bound (``[etcd] max_outage``): the
    call gave up. The outage itself is reported once (`bridge.etcd.monitor`), not per
    call that gives up. `reason` is the most telling error seen, in a few words."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class EtcdRefused(StoreError):
    """etcd refused the request as such: sending it again cannot succeed."""


class TooManyOperations(EtcdRefused):
    """A transaction with more compares or operations than etcd allows (128 by default)."""


class RequestTooLarge(EtcdRefused):
    """A request over etcd's request size limit (1.5 MiB by default)."""


class DuplicateKey(EtcdRefused):
    """A transaction branch that writes or deletes one key twice."""


class LeaseNotFound(EtcdRefused):
    """A write attached to a lease etcd does not know (expired or revoked)."""


class NoSpace(EtcdRefused):
    """etcd's database is over its space quota (the NOSPACE alarm): every write is
    refused until it is compacted, defragmented and the alarm disarmed."""


class MessageTooLarge(StoreError):
    """A gRPC message over the size limit: a response over the client's 4 MiB."""


class Compacted(StoreError):
    """A read or watch at a revision etcd has compacted away: read a snapshot again.

    `compact_revision` is the oldest revision still readable when etcd says so
    (0 when it does not).
    """

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
