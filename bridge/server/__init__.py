"""The IOC-facing Twisted server: moves bytes, admits connections, announces.

`connection` carries one IOC connection's bytes between its transport, the decoder
and its session (`bridge.protocol`), and carries out the session's effects;
`admission` decides which connections are taken and when they may upload, and
counts what limits did, with the bookkeeping of upload slots in `slots` (a share
per source address, waiters served address by address) and of memory in `budget`
(one total for every connection); `announce` sends the UDP announcements IOCs find
the bridge by.
"""
