"""twistd plugin shim for ``twistd -n recsync-directory -f recceiver.conf``.

One lazy line, as for the bridge: the module is named as a string, so ``twistd --help``
lists the plugin without importing the application.
"""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(  # type: ignore[no-untyped-call]
    "recsync-directory",
    "bridge.web.tap",
    "Read-only ChannelFinder API over the PV directory recsync-bridge keeps in etcd",
    "recsync-directory",
)
