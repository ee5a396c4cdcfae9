"""The etcd layer: the only package that talks to etcd (and imports its client library).

* `ops`: pure values: what reads return, what writes ask for, etcd's limits, chunking.
* `store`: `Store`, typed blocking reads and writes with retries, paged scans at one
  revision, bounded transactions, leases.
* `backend`: `Backend`, the seam the store talks to etcd through; `GrpcBackend`, the
  real one; `open_store`.
* `client`: client creation (endpoints, TLS, auth, failover) and gRPC error handling.
* `watch`: `Watch`, a prefix watch that resumes after errors and compaction and follows
  the client to another member; `ReactorWatch` runs one for Twisted code.
* `process`: how an etcd server process is found and run on loopback (also by tests).
* `embedded`: the embedded etcd the bridge supervises; `datadir`, the files in its data
  directory (lock, ports, log, endpoint).
* `monitor`: the bridge's start-up probe of etcd, then outage and alarm reports.
* `diagnose`: what went wrong with etcd, in a few words.
* `rpc`: etcd's protobuf messages, the vocabulary of the backend seam.

Importing the package itself imports nothing else, so `ops` stays pure.
"""
