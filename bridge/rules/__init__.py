"""The bridge's rules as pure code: decisions over stored documents and revisions.

A *rule* here is a function that takes what was read from etcd (values with their
mod_revisions, as `bridge.etcd.ops.Entry`), what the session knows, and the time as
text, and returns what to write and the compares that must hold for the write to be
right, in the etcd layer's own values (`bridge.etcd.ops`): `Guarded` for name-index
entries, and for the rest a `bridge.rules.txn.Txn` of `Compare`, `Put`, `Delete` and
`Get`. The documents they decide on are read with the data model's parsers
(`bridge.documents`). Rules never read, write, sleep or look at a clock; no Twisted,
no etcd client. An *applier* (the etcd processor) reads, asks a rule, sends what it
returns, and on a failed compare reads again and asks again: a rule only ever writes
what differs from the state it wants, so asking again after a lost answer is safe.

* `names`: name claims and ownership, successors, hand-over, shared marks;
* `uploads`: what a re-upload changes, record fitting, the unchanged-run fast path;
* `liveness`: who holds an IOC, a session's end, the dead-bridge and orphan sweeps,
  the shutdown hand-over;
* `txn`: one transaction as a rule returns it, and how a rule reads its answer.

Each rule has a table test (tests/test_rules_*.py) that reads as its specification;
tests/test_rules_sim.py runs them together, under hypothesis, on a model of etcd, and
tests/test_rules_findings.py keeps minimal examples of what they do not survive yet.
"""
