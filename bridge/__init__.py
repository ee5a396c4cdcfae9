"""recsync-bridge: a RecCeiver-compatible server that stores EPICS PV metadata in etcd.

Importing this package must never import the Twisted reactor.
"""

__version__ = "0.1.0"
