"""The etcd layer: the only package that talks to etcd (and imports its client library).

* `ops`: pure values: what reads return, what writes ask for, etcd's limits, chunking.
* `store`: `Store`, typed blocking reads and writes with retries, paged scans at one
  revision, bounded transactions, leases.
* `backend`: `Backend`, the seam the store talks to etcd through; `GrpcBackend`, the
  real one; `open_store`.
* `client`: client creation (endpoints, TLS, auth, failover) and gRPC error handling.
* `watch`: `Watch`, a prefix watch that resumes after errors and compaction and follows
  the client to another member; `ReactorWatch` runs one for Twisted code.
* `embedded`: the etcd server process: how it is run, and the embedded one.
* `rpc`: etcd's protobuf messages, the vocabulary of the backend seam.

Importing the package itself imports nothing else, so `ops` stays pure.
"""
