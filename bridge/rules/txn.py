"""One etcd transaction as a rule returns it, and how a rule reads its answer.

The compares and operations are the etcd layer's own values (`bridge.etcd.ops`), so an
applier sends a `Txn` as it is: ``store.txn(t.compares, t.success, t.failure)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.etcd.ops import Compare, Op, TxnResult


@dataclass(frozen=True, slots=True)
class Txn:
    """`success` if every compare holds, else `failure`.

    The answers a rule interprets are those of the `Get` operations of the branch that
    ran, in order (`found`).
    """

    compares: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...] = ()


def found(result: TxnResult, index: int) -> bytes | None:
    """The value the `index`-th operation of the branch that ran read (None: absent)."""
    entries = result.results[index]
    return entries[0].value if entries else None
