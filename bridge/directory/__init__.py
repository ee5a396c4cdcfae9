"""The directory: an in-memory read model of the etcd data model, queried with
ChannelFinder's grammar (`bridge.directory.query`), shaped as the reference RecCeiver's
``cf`` processor shaped channels (`bridge.directory.channels`), kept current from etcd by
`bridge.directory.feed`. Everything here except the feed is pure: no Twisted, no etcd.
"""
