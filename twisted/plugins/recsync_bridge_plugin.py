"""twistd plugin shim for ``twistd -n recsync-bridge -f recceiver.conf``.

Deliberately one lazy line: `ServiceMaker` names the module as a string, so
``twistd --help`` lists the plugin without importing the application, and a
broken import shows a traceback instead of making the plugin vanish (style.md (c)5).
There is no ``__init__.py`` here or in ``twisted/`` on purpose (style.md (c)1).
"""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(  # type: ignore[no-untyped-call]
    "recsync-bridge",
    "bridge.tap",
    "RecCaster receiver (RecCeiver drop-in) that stores EPICS PV metadata in etcd",
    "recsync-bridge",
)
