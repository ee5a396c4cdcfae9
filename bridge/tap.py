"""twistd glue for the ``recsync-bridge`` plugin (``twistd -n recsync-bridge -f FILE``).

`Options` parses the command line and loads the configuration once; a bad value
ends the program with one line (no usage text), ``--print-config`` prints the
effective configuration and ``--version`` the bridge's version. `makeService` builds
the service tree and is the only place in the project that takes the global reactor.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import NoReturn

from twisted.application.service import IService
from twisted.python import usage

import bridge
from bridge.config import effective_config, load_config
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

    synopsis = (
        "[-f recceiver.conf] [--bind HOST:PORT] [--etcd-endpoints LIST] "
        "[--print-config] [--version]"
    )
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
    optFlags = [
        [
            "print-config",
            None,
            "print the effective configuration, with where each value comes from, and exit",
        ],
    ]

    def opt_version(self) -> NoReturn:
        """Print the bridge's version (and Twisted's and Python's) and exit."""
        print(version_line())
        raise SystemExit(0)

    def postOptions(self) -> None:
        """Load and validate the configuration into ``self["cfg"]``.

        A configuration error ends the program with one line on stderr and exit status
        1; twistd's own handling of a `usage.UsageError` would print the whole usage
        text before it. With ``--print-config`` the configuration is printed instead,
        then the program exits.
        """
        overrides = {
            OVERRIDES[option]: self[option] for option in OVERRIDES if self[option] is not None
        }
        try:
            if self["print-config"]:
                sys.stdout.write(effective_config(self["config"], os.environ, overrides=overrides))
                raise SystemExit(0)
            self["cfg"] = load_config(self["config"], os.environ, overrides=overrides)
        except ConfigError as exc:
            raise SystemExit(f"recsync-bridge: {exc}") from None


def version_line() -> str:
    """``recsync-bridge X.Y.Z (Twisted A.B.C, Python D.E.F)``."""
    import twisted

    return (
        f"recsync-bridge {bridge.__version__} (Twisted {twisted.__version__}, "
        f"Python {platform.python_version()})"
    )


def makeService(options: usage.Options) -> IService:
    """The bridge service for parsed `options`; nothing listens until it starts."""
    # Both imports are deferred: twistd imports this module for --help and before it
    # installs the reactor chosen with --reactor, so nothing here may import it early.
    from twisted.internet import reactor

    from bridge.service import BridgeService

    # twistd's own options (the parent of the plugin's): a failed start reports through
    # them (bridge.supervisor).
    return BridgeService(options["cfg"], reactor, getattr(options, "parent", None))
