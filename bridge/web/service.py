"""The directory as a Twisted service: its etcd feed and its web server.

Runs alone (``twistd recsync-directory -f FILE``, read-only: it never writes to etcd)
or inside a bridge process (``[http] bind``, or the embedded quick start). One port
serves everything: the pages (bridge/web/pages.py), ``/ChannelFinder`` (bridge/web/cf.py),
``/metrics`` (bridge/web/metrics.py), ``/healthz`` and ``/readyz`` (bridge/web/health.py).

The port listens before the view is loaded, so ``/readyz`` can say "loading" (503) while
a big directory loads; the log line with the URLs comes once the view is in place.

Ready, for the directory, means its view is loaded and current: the watch is
established, no change from etcd has waited for the reactor longer than `MAX_LAG_S`, and
etcd answered the last status probe (every `PROBE_INTERVAL_S`) within `PROBE_STALE_S`.
Inside a bridge these checks are shown on ``/readyz`` but do not decide it: there the
bridge's own (lease and etcd) do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from bridge.config import BridgeConfig, HttpConfig
from bridge.directory.model import Directory
from bridge.etcd import datadir
from bridge.logs import STARTUP_NAMESPACE
from bridge.web import metrics
from bridge.web.cf import SERVICE_ROOT, ChannelFinderAPI, QueryRunner
from bridge.web.health import Alive, Check, Health, Ready
from bridge.web.pages import Pages

_startup_log = Logger(namespace=STARTUP_NAMESPACE)

#: Seconds between etcd status probes (cheap: one small request).
PROBE_INTERVAL_S = 5.0
#: The view is not current when etcd has not answered a probe for this long.
PROBE_STALE_S = 3 * PROBE_INTERVAL_S
#: ... or when a change received from etcd has waited this long for the reactor.
MAX_LAG_S = 5.0


class DirectoryService(Service):
    """Loads the directory from etcd, keeps it current, serves it over HTTP.

    `endpoints` gives the etcd endpoints once known (the embedded etcd's come late);
    without it ``[etcd] endpoints`` are used. `http` says where to listen (default the
    configuration's ``[http]``). Inside a bridge, `registry` and `health` are the
    bridge's, so one ``/metrics`` and one ``/readyz`` cover both. `ready` fires with the
    URL of the ChannelFinder API once the first load is in place and the port listens.
    With `record_in` (the embedded etcd's data directory) the address is written there
    while the port listens, for ``recsync pv`` (bridge/etcd/datadir.py).
    """

    log = Logger()

    def __init__(
        self,
        config: BridgeConfig,
        reactor: Any,
        endpoints: Callable[[], defer.Deferred[Sequence[str]]] | None = None,
        *,
        http: HttpConfig | None = None,
        registry: Any = None,
        health: Health | None = None,
        record_in: str | None = None,
    ) -> None:
        super().__init__()
        self.record_in = record_in
        self.config = config
        self.reactor = reactor
        self.http = http or config.http
        self._endpoints = endpoints
        self.directory = Directory(config.cf, config.etcd.prefix)
        self.runner = QueryRunner(reactor)
        self.feed: Any = None
        self.store: Any = None
        self.port: IListeningPort | None = None
        self.url: str | None = None
        self.ready: defer.Deferred[str] = defer.Deferred()
        #: The last etcd status probe: its answer, when it came (monotonic), or the error.
        self.etcd_status: Mapping[str, Any] | None = None
        self.etcd_answered: float | None = None
        self.etcd_error: str | None = None
        self._probe: LoopingCall | None = None
        inside_bridge = health is not None
        self.registry = registry if registry is not None else metrics.new_registry()
        self.registry.register(metrics.DirectoryCollector(self))
        self.health = health if health is not None else Health()
        for check in (self._loaded, self._current):
            self.health.add(self._informational(check) if inside_bridge else check)
        self.root = Resource()
        api = ChannelFinderAPI(self.directory, self.runner, "/ChannelFinder/resources/scroll")
        self.root.putChild(SERVICE_ROOT, api.resource())
        self.pages = Pages(self.directory, self.runner, status=self.status, fetch=self._fetch)
        self.pages.mount(self.root)
        self.root.putChild(b"metrics", metrics.metrics_resource(self.registry))
        self.root.putChild(b"healthz", Alive())
        self.root.putChild(b"readyz", Ready(self.health))

    def startService(self) -> None:
        super().startService()
        self.runner.start()
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self._failed)

    async def _start(self) -> str:
        from bridge.directory.feed import DirectoryFeed
        from bridge.etcd.backend import open_store

        await self._listen()
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
        self._probe = LoopingCall(self._probe_etcd)
        self._probe.clock = self.reactor
        self._probe.start(PROBE_INTERVAL_S, now=True)
        await self.feed.ready
        assert self.url is not None
        _startup_log.info(
            "directory: {channels} channels at etcd revision {rev}; pages at {base}/, "
            "ChannelFinder API at {url}",
            channels=self.directory.state.count(),
            rev=self.directory.state.revision,
            base=self.url.removesuffix("/ChannelFinder"),
            url=self.url,
        )
        return self.url

    async def _listen(self) -> None:
        host = self.http.bind_host
        endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        endpoint = endpoint_type(self.reactor, self.http.bind_port or 0, interface=host)
        self.port = await endpoint.listen(Site(self.root))
        bound: int = self.port.getHost().port  # type: ignore[union-attr]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/ChannelFinder"
        if self.record_in is not None:
            datadir.write_directory_url(self.record_in, self.http.local_url(bound))

    def _failed(self, failure: Any) -> None:
        self.log.failure("directory could not start", failure)
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        if self.record_in is not None:
            datadir.remove_directory_url(self.record_in)
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
        if self.feed is not None:
            await deferToThread(self.feed.stop)
        self.runner.stop()
        if self.store is not None:
            self.store.close()

    # -- etcd probe, health and status ---------------------------------------------------

    def _probe_etcd(self) -> defer.Deferred[None]:
        feed = self.feed

        def answered(status: Mapping[str, Any]) -> None:
            self.etcd_status, self.etcd_answered, self.etcd_error = status, time.monotonic(), None

        def failed(failure: Any) -> None:
            self.etcd_error = failure.getErrorMessage() or failure.type.__name__

        d: defer.Deferred[None] = deferToThread(feed.probe)
        return d.addCallbacks(answered, failed)

    def _fetch(self, keys: Sequence[str]) -> Sequence[bytes | None]:
        """(query thread) Values of `keys` from etcd, for the PV page."""
        if self.feed is None:
            return [None] * len(keys)
        result: Sequence[bytes | None] = self.feed.fetch(keys)
        return result

    def _loaded(self) -> Check:
        feed = self.feed
        if feed is None or feed.loads < 1:
            return Check("directory view", False, "loading from etcd")
        state = self.directory.state
        return Check(
            "directory view", True, f"{state.count()} channels at revision {state.revision}"
        )

    def _current(self) -> Check:
        feed = self.feed
        if feed is None or feed.loads < 1:
            return Check("directory current", False, "not loaded yet")
        if not feed.watching:
            return Check("directory current", False, "the etcd watch is not established")
        lag = feed.lag()
        if lag > MAX_LAG_S:
            return Check("directory current", False, f"changes have waited {lag:.1f} s")
        answered = self.etcd_answered
        if answered is None or time.monotonic() - answered > PROBE_STALE_S:
            why = self.etcd_error or "no answer yet"
            return Check("directory current", False, f"etcd does not answer: {why}")
        return Check("directory current", True, f"watching; changes waiting {lag:.1f} s")

    @staticmethod
    def _informational(check: Callable[[], Check]) -> Callable[[], Check]:
        def shown() -> Check:
            found = check()
            return Check(found.name, found.ok, found.detail, required=False)

        return shown

    def status(self) -> dict[str, str]:
        """The overview's health lines (reactor thread; reads state only)."""
        loaded, current = self._loaded(), self._current()
        view = loaded.detail if not loaded.ok else "current" if current.ok else current.detail
        feed = self.feed
        lag = feed.lag() if feed is not None else 0.0
        status = self.etcd_status
        if self.etcd_answered is None:
            etcd = f"no answer yet{': ' + self.etcd_error if self.etcd_error else ''}"
        else:
            ago = time.monotonic() - self.etcd_answered
            etcd = f"answered {ago:.0f} s ago"
            if status is not None:
                leader = "has a leader" if status.get("leader") else "NO LEADER"
                size = status.get("db_size", 0)
                shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
                etcd += f" (etcd {status.get('version')}, {leader}, database {shown})"
            if self.etcd_error and ago > PROBE_INTERVAL_S:
                etcd += f"; since then: {self.etcd_error}"
        return {"view": view, "lag": f"{lag:.1f} s", "etcd": etcd}
