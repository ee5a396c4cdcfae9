"""The etcd layer: the only package that talks to etcd.

`ops` holds the pure values (what reads return, what writes ask for, etcd's limits).
"""
