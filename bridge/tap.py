"""twistd glue for the ``recsync-bridge`` plugin (``twistd -n recsync-bridge -f FILE``).

`Options` parses the command line and loads the configuration once; a bad value
becomes a one-line `usage.UsageError`. `makeService` builds the service tree and
is the only place in the project that takes the global reactor (style.md (b)7).
"""

from __future__ import annotations

import os

from twisted.application.service import IService
from twisted.python import usage

from bridge.config import load_config
from bridge.errors import ConfigError

#: Command-line options that override a configuration key: option -> (section, key).
OVERRIDES = {
    "bind": ("recceiver", "bind"),
    "etcd-endpoints": ("etcd", "endpoints"),
}


class Options(usage.Options):
    """The plugin's command line. After parsing, ``self["cfg"]`` is the `BridgeConfig`.

    Precedence, highest first: these options, ``RECCEIVER_<SECTION>_<KEY>``
    environment variables, the ``-f`` file, the built-in defaults.
    """

    synopsis = "[-f recceiver.conf] [--bind HOST:PORT] [--etcd-endpoints LIST]"
    longdesc = (
        "Receive EPICS RecCaster uploads, as the reference RecCeiver does, and store the "
        "PV metadata in etcd. The configuration file uses the recceiver.conf format; "
        "RECCEIVER_<SECTION>_<KEY> environment variables override it."
    )
    optParameters = [
        [
            "config",
            "f",
            None,
            "configuration file (recceiver.conf format); only this file is read",
        ],
        ["bind", None, None, "TCP listen address HOST:PORT (overrides [recceiver] bind)"],
        [
            "etcd-endpoints",
            None,
            None,
            "comma list of etcd host:port or http(s)://host:port (overrides [etcd] "
            "endpoints; empty: start an embedded etcd)",
        ],
    ]

    def postOptions(self) -> None:
        """Load and validate the configuration into ``self["cfg"]``.

        Raises:
            usage.UsageError: the file is missing or a value is invalid.
        """
        overrides = {
            OVERRIDES[option]: self[option] for option in OVERRIDES if self[option] is not None
        }
        try:
            self["cfg"] = load_config(self["config"], os.environ, overrides=overrides)
        except ConfigError as exc:
            # twistd prints a UsageError as one line; no traceback for a typo.
            raise usage.UsageError(str(exc)) from None


def makeService(options: usage.Options) -> IService:
    """The bridge service for parsed `options`; nothing listens until it starts."""
    # Both imports are deferred: twistd imports this module for --help and before it
    # installs the reactor chosen with --reactor, so nothing here may import it early.
    from twisted.internet import reactor

    from bridge.service import BridgeService

    return BridgeService(options["cfg"], reactor)
