"""Test, benchmark and demo support: simulated IOCs, bridge processes, etcd rigs.

Never imported by the bridge itself (a test checks it); shipped with the package so
that it works from an installed copy as well as from a checkout.
"""
