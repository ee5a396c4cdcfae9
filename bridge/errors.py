"""The project's exception taxonomy.

`RemoteProtocolError`: the peer broke the protocol; log once naming the peer and
drop the connection (or skip the message where the protocol says so).
`LocalProtocolError`: we were asked to do something the protocol forbids (a bug).
"""


class BridgeError(Exception):
    """Base of every error this project raises on purpose."""


class RemoteProtocolError(BridgeError, ValueError):
    """The peer sent something the protocol does not allow."""


class LocalProtocolError(BridgeError, ValueError):
    """Our own code tried to break the protocol."""


class ConfigError(BridgeError, ValueError):
    """A configuration value is invalid; the message names the key."""


class StoreError(BridgeError):
    """etcd could not be reached or refused a request after all retries."""
