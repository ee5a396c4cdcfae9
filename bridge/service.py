"""The bridge as a Twisted service: etcd, processors, TCP listener and announcer.

Start-up order matters and is kept here in one place:

1. the embedded etcd, when no ``[etcd] endpoints`` are configured;
2. the TCP listener (so the bound port and the default bridge id are known);
3. the processors, and wait until the etcd processor holds its lease;
4. only then the UDP announcer, so IOCs never connect to a bridge that cannot store;
   for the same reason it holds back while etcd is unreachable (`bridge.server.announce`).

Shutdown runs the other way: stop announcing, stop listening, let the processors
prepare (the etcd processor decides whether this bridge hands its IOCs over to the
other bridges or marks them inactive), close every IOC session and let its final
transaction commit (bounded wait), stop the processors, stop the embedded etcd.
"""

from __future__ import annotations

import gc
import os
import socket
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.config import BridgeConfig
from bridge.errors import ConfigError, StoreError
from bridge.logs import STARTUP_NAMESPACE, apply_log_level
from bridge.processors import BUILTIN, UNSUPPORTED, ProcessorChain
from bridge.protocol.session import DEFAULT_BATCH_RECORDS, SessionLimits
from bridge.server.admission import BridgeFactory
from bridge.server.announce import AnnounceService

# Module level on purpose: a Logger class attribute takes its class's namespace.
_startup_log = Logger(namespace=STARTUP_NAMESPACE)

#: Upper bound of the TCP accept queue (the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 4096

#: How long shutdown waits for the final commits of closing sessions.
SHUTDOWN_COMMIT_WAIT = 10.0


#: Allocations between young collections (Python's default is 700), and the usual
#: generation ratios, tightened for the oldest. An upload allocates a few objects per
#: message, so the default collects young objects thousands of times per second;
#: bench/scale.py measured 18.4 -> 14.7 bridge CPU-seconds (13,700 -> 16,400
#: records/s) for 1,000 IOCs x 300 records with these (one run each, on a machine
#: whose speed varies by up to a third; other thresholds tried did no better).
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect less often, and never scan what was allocated before serving started."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class BridgeService(MultiService):
    """Everything one bridge process runs. Nothing happens before `startService`."""

    log = Logger()

    def __init__(self, config: BridgeConfig, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.reactor = reactor
        self.embedded: Any = None
        self.processor: ProcessorChain | None = None
        self.factory: BridgeFactory | None = None
        self.port: IListeningPort | None = None
        self.announcer: AnnounceService | None = None
        self.bridge_id: str | None = None
        self._status: LoopingCall | None = None
        #: The directory (ChannelFinder API), when ``[http] bind`` is set.
        self.directory: Any = None
        #: Fires with this service once it announces; errbacks if start-up failed.
        self.ready: defer.Deferred[BridgeService] = defer.Deferred()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        # gRPC's C core would print its own lines for every failed TLS handshake or
        # reconnect attempt; the bridge reports those errors itself. Must be set before
        # the etcd processor imports gRPC; GRPC_VERBOSITY=ERROR brings them back.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        tune_gc()
        apply_log_level(self.config.loglevel)
        for name in self.config.unsupported_procs:
            self.log.warn(
                "procs: {name!r} ({what}) is not supported by recsync-bridge; PV metadata goes "
                "to etcd instead (README: 'Moving from recceiver')",
                name=name,
                what=UNSUPPORTED.get(name.partition(":")[0], "unknown"),
            )
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self._start_failed)

    async def _start(self) -> BridgeService:
        endpoints_ready = None
        if self.config.etcd.embedded:
            endpoints_ready = self._start_embedded()
        self.factory = BridgeFactory(
            None,  # refuses connections until the processors exist (they need the port)
            self.reactor,
            session_limits(self.config),
            max_active=self.config.max_active,
            max_active_per_host=self.config.limits.max_active_per_host,
            max_body_length=self.config.limits.max_body_length,
            max_connections=self.config.limits.max_connections,
            max_connections_per_host=self.config.limits.max_connections_per_host,
            allow=self.config.limits.allow,
            max_held_bytes=self.config.limits.max_held_bytes,
        )
        self.port = await self._listen()
        tcp_port: int = self.port.getHost().port  # type: ignore[attr-defined]
        self.bridge_id = self.config.bridge_id or f"{socket.gethostname()}:{tcp_port}"
        self.processor = self._build_processors(endpoints_ready, tcp_port)
        self.processor.startService()  # type: ignore[no-untyped-call]
        self.factory.processor = self.processor
        for child in self.processor.processors:
            when_ready = getattr(child, "whenReady", None)
            if when_ready is not None:
                await when_ready()
        _startup_log.info(
            "recsync-bridge {id} listening on TCP port {port}, etcd {etcd}",
            id=self.bridge_id,
            port=tcp_port,
            etcd=self._etcd_description(),
        )
        self.announcer = AnnounceService(
            self.reactor,
            tcp_port,
            self.config.addrlist,
            self.config.announce_interval,
            bind_host=self.config.bind_host,
            ready=self._can_store,
        )
        self.announcer.startService()
        self._start_status()
        self._start_directory(endpoints_ready)
        return self

    def _start_directory(self, endpoints_ready: Any) -> None:
        """The read-only directory beside the bridge, when ``[http] bind`` is set; it
        starts after the bridge announces and its failures never stop the bridge."""
        if not self.config.http.enabled:
            return
        from bridge.web.service import DirectoryService

        self.directory = DirectoryService(self.config, self.reactor, endpoints_ready)
        self.directory.startService()

    def _can_store(self) -> bool:
        return self.processor is not None and self.processor.can_store()

    def _etcd_description(self) -> str:
        if self.embedded is not None:
            return "embedded at " + ", ".join(self.embedded.endpoints)
        return ", ".join(self.config.etcd.endpoints)

    def _start_embedded(self) -> Any:
        from bridge.etcd.embedded import EmbeddedEtcdService

        self.embedded = EmbeddedEtcdService(self.config.etcd.data_dir, self.reactor)
        self.embedded.startService()
        return self.embedded.whenReady

    async def _listen(self) -> IListeningPort:
        assert self.factory is not None
        host = self.config.bind_host or "0.0.0.0"
        endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        # After a restart every IOC reconnects at once; Twisted's default backlog of 50
        # made the kernel drop SYNs (measured with bench/scale.py: 3,102 overflows).
        backlog = min(self.config.limits.max_connections, LISTEN_BACKLOG)
        endpoint = endpoint_type(
            self.reactor, self.config.bind_port, backlog=backlog, interface=host
        )
        port: IListeningPort = await endpoint.listen(self.factory)  # type: ignore[no-untyped-call]
        return port

    def _build_processors(self, endpoints_ready: Any, tcp_port: int) -> ProcessorChain:
        processors = []
        for entry in self.config.procs:
            factory = BUILTIN[entry.partition(":")[0]]
            processor = factory.build(
                entry,
                self.config,
                self.reactor,
                bridge_id=self.bridge_id,
                endpoints_ready=endpoints_ready,
            )
            if hasattr(processor, "tcp_port"):
                processor.tcp_port = tcp_port
            processors.append(processor)
        return ProcessorChain(processors)

    def _start_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, ConfigError | StoreError):
            # A setting, credentials, certificates, or etcd unreachable: say which, in
            # one line; a traceback would only hide it.
            _startup_log.critical(
                "recsync-bridge could not start: {error}", error=failure.getErrorMessage()
            )
        else:
            self.log.failure("recsync-bridge could not start", failure)
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)  # reported above, once
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    def _start_status(self) -> None:
        if self.config.status_interval <= 0:
            return
        self._status = LoopingCall(self._log_status)
        self._status.clock = self.reactor
        self._status.start(self.config.status_interval, now=False)

    def _log_status(self) -> None:
        if self.factory is not None:
            status = self.factory.status()
            text = ", ".join(f"{k}={v}" for k, v in status.items())
            self.log.info("status: {text}", text=text, **status)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._status is not None and self._status.running:
            self._status.stop()
        if self.directory is not None:
            await defer.maybeDeferred(self.directory.stopService)
        if self.announcer is not None:
            await defer.maybeDeferred(self.announcer.stopService)
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
        await self._prepare_processors_stop()
        await self._close_sessions()
        if self.processor is not None:
            await defer.maybeDeferred(self.processor.stopService)
        if self.embedded is not None:
            await defer.maybeDeferred(self.embedded.stopService)

    async def _prepare_processors_stop(self) -> None:
        """Let processors decide what closing the sessions means (etcd: handover or not)."""
        if self.processor is None:
            return
        for child in self.processor.processors:
            prepare = getattr(child, "prepare_stop", None)
            if prepare is not None:
                await prepare()

    async def _close_sessions(self) -> None:
        if self.factory is None:
            return
        for protocol in list(self.factory.connections):
            protocol.shutdown()
        waited = 0.0
        while self.factory.connections_or_commits() and waited < SHUTDOWN_COMMIT_WAIT:
            await deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05


def session_limits(config: BridgeConfig) -> SessionLimits:
    """Per-session limits and timers from the configuration."""
    batch = config.commit_size_limit or DEFAULT_BATCH_RECORDS
    return SessionLimits(
        tcptimeout=config.tcptimeout,
        greeting_timeout=config.limits.greeting_timeout,
        upload_timeout=config.limits.upload_timeout,
        min_upload_rate=config.limits.min_upload_rate,
        upload_rate_window=config.limits.upload_rate_window,
        batch_records=batch,
        commit_interval=config.commit_interval,
        max_records=config.limits.max_records,
        max_infos=config.limits.max_infos,
        max_aliases=config.limits.max_aliases,
        max_record_bytes=config.limits.max_record_bytes,
        names=config.limits.names(),
    )
