"""etcd's v3 API messages (protobuf), as the pinned client library ships them.

They are the vocabulary of the store's backend seam (`bridge.etcd.backend.Backend`):
the store builds ``TxnRequest``/``RangeRequest`` messages and reads the responses,
whatever answers them, a real etcd or the in-memory one of the tests
(`bridge.testing.memstore`). Import them from here, never from the client library.
"""

from __future__ import annotations

from pyetcd.etcdrpc import kv_pb2 as kv
from pyetcd.etcdrpc import rpc_pb2 as pb

__all__ = ["kv", "pb"]
