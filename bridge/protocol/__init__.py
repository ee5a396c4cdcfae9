"""The sans-I/O RecSync core: bytes in, messages and effects out.

`wire` is the codec and the plain incremental decoder, `runs` the unchanged-runs
optimisation layered on it, `session` the per-connection state machine, with
`names` for the names a peer sends (their limits) and `effects` for what a session
asks its server to do. Nothing
here imports Twisted, sockets, clocks or randomness: time comes in as arguments and
randomness through an injected source (a test checks this).
"""
