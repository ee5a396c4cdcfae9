"""twistd glue for ``twistd -n recsync-directory -f FILE``: the directory alone.

Read-only: it loads and watches etcd and serves the ChannelFinder API on ``[http] bind``
(default ``127.0.0.1`` on a free port, logged), and never writes to etcd, so any number
can run against one etcd cluster, apart from the bridges. The same file as the bridge's
works (``[etcd]``, ``[cf]``, ``[http]``). With no ``[etcd] endpoints`` it reads the
embedded etcd of a bridge running on this host with the same ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import os

from twisted.application.service import IService
from twisted.python import usage

from bridge.config import load_config
from bridge.errors import ConfigError

#: Command-line options that override a configuration key: option -> (section, key).
OVERRIDES = {
    "http-bind": ("http", "bind"),
    "etcd-endpoints": ("etcd", "endpoints"),
}


class Options(usage.Options):
    """The plugin's command line. After parsing, ``self["cfg"]`` is the `BridgeConfig`."""

    synopsis = "[-f recceiver.conf] [--http-bind HOST:PORT] [--etcd-endpoints LIST]"
    longdesc = (
        "Serve a read-only ChannelFinder API over the PV directory that recsync-bridge "
        "keeps in etcd. RECCEIVER_<SECTION>_<KEY> environment variables override the file."
    )
    optParameters = [
        ["config", "f", None, "configuration file (recceiver.conf format)"],
        ["http-bind", None, None, "HTTP listen address HOST:PORT (overrides [http] bind)"],
        ["etcd-endpoints", None, None, "comma list of etcd endpoints (overrides [etcd])"],
    ]

    def postOptions(self) -> None:
        overrides = {
            OVERRIDES[option]: self[option] for option in OVERRIDES if self[option] is not None
        }
        try:
            config = load_config(self["config"], os.environ, overrides=overrides)
        except ConfigError as exc:
            # One line and exit status 1: twistd would print the whole usage text first.
            raise SystemExit(f"recsync-directory: {exc}") from None
        if not config.etcd.endpoints:
            from bridge.etcd.datadir import read_endpoint

            found = read_endpoint(config.etcd.data_dir)
            if found is None:
                raise SystemExit(
                    "recsync-directory: no [etcd] endpoints configured and no embedded "
                    f"etcd found in {config.etcd.data_dir}: set [etcd] endpoints, or start "
                    "the bridge first"
                )
            config = config.replace(etcd=dataclasses.replace(config.etcd, endpoints=(found,)))
        if not config.http.enabled:
            config = config.replace(http=dataclasses.replace(config.http, bind_port=0))
        self["cfg"] = config


def makeService(options: usage.Options) -> IService:
    """The directory service; nothing listens until it starts."""
    from twisted.internet import reactor

    from bridge.web.service import DirectoryService

    return DirectoryService(options["cfg"], reactor)
