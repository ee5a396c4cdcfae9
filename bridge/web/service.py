"""The directory as a Twisted service: its etcd feed and its web server.

Runs alone (``twistd recsync-directory -f FILE``, read-only: it never writes to etcd)
or inside a bridge process when ``[http] bind`` is set. Pages, metrics and health (issue
14) mount on `DirectoryService.root` next to ``/ChannelFinder``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from bridge.config import BridgeConfig
from bridge.directory.model import Directory
from bridge.logs import STARTUP_NAMESPACE
from bridge.web.cf import SERVICE_ROOT, ChannelFinderAPI, QueryRunner

_startup_log = Logger(namespace=STARTUP_NAMESPACE)


class DirectoryService(Service):
    """Loads the directory from etcd, keeps it current, serves it over HTTP.

    `endpoints` gives the etcd endpoints once known (the embedded etcd's come late);
    without it ``[etcd] endpoints`` are used. `ready` fires with the URL of the
    ChannelFinder API once the first load is in place and the port listens.
    """

    log = Logger()

    def __init__(
        self,
        config: BridgeConfig,
        reactor: Any,
        endpoints: Callable[[], defer.Deferred[Sequence[str]]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._endpoints = endpoints
        self.directory = Directory(config.cf, config.etcd.prefix)
        self.runner = QueryRunner(reactor)
        self.root = Resource()
        api = ChannelFinderAPI(self.directory, self.runner, "/ChannelFinder/resources/scroll")
        self.root.putChild(SERVICE_ROOT, api.resource())
        self.feed: Any = None
        self.store: Any = None
        self.port: IListeningPort | None = None
        self.url: str | None = None
        self.ready: defer.Deferred[str] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        self.runner.start()
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self._failed)

    async def _start(self) -> str:
        from bridge.directory.feed import DirectoryFeed
        from bridge.etcd.backend import open_store

        etcd = self.config.etcd
        endpoints = list(await self._endpoints()) if self._endpoints else list(etcd.endpoints)
        self.store = await deferToThread(
            open_store,
            endpoints,
            timeout=etcd.timeout,
            deadline_s=etcd.max_outage,
            username=etcd.username,
            password=etcd.password,
            ca=etcd.ca,
            cert=etcd.cert,
            key=etcd.key,
        )
        self.feed = DirectoryFeed(self.directory, self.store, self.reactor.callFromThread)
        self.feed.start()
        await self.feed.ready
        http = self.config.http
        host = http.bind_host
        endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        endpoint = endpoint_type(self.reactor, http.bind_port or 0, interface=host)
        self.port = await endpoint.listen(Site(self.root))
        bound: int = self.port.getHost().port  # type: ignore[union-attr]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/ChannelFinder"
        _startup_log.info(
            "directory: {channels} channels at etcd revision {rev}; ChannelFinder API at {url}",
            channels=self.directory.state.count(),
            rev=self.directory.state.revision,
            url=self.url,
        )
        return self.url

    def _failed(self, failure: Any) -> None:
        self.log.failure("directory could not start", failure)
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
        if self.feed is not None:
            await deferToThread(self.feed.stop)
        self.runner.stop()
        if self.store is not None:
            self.store.close()
