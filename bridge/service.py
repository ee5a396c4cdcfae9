"""The bridge as a Twisted service: etcd, processors, TCP listener and announcer.

Start-up happens in two steps, as twistd runs them:

1. ``privilegedStartService`` (after twistd daemonised, before it reports success to
   the waiting parent or to the shell): everything that can fail, synchronously and
   bounded, so that a bridge that cannot work exits non-zero with one line and leaves
   nothing running (`bridge.supervisor`): bind the TCP port (which gives the default
   bridge id), start the embedded etcd when no ``[etcd] endpoints`` are configured and
   wait until it is healthy, then probe etcd as the bridge will use it
   (`bridge.etcd.monitor.EtcdMonitor.check`: TLS, credentials, a role covering the
   prefix, reachable within ``[etcd] start_timeout``).
2. ``startService``: the processors, and once the etcd processor holds its lease, the
   UDP announcer, so IOCs never connect to a bridge that cannot store; for the same
   reason it holds back while etcd is unreachable or refuses writes
   (`bridge.server.announce`). Then systemd hears ``READY=1``.

A bridge that cannot do its job any more (the embedded etcd keeps dying, the
processors fail after start) stops with one critical line and a non-zero exit status.

Shutdown runs the other way: stop announcing, stop listening, let the processors
prepare (the etcd processor decides whether this bridge hands its IOCs over to the
other bridges or marks them inactive), close every IOC session and let its final
transaction commit (bounded wait), stop the processors, stop the embedded etcd.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from bridge import supervisor
from bridge.config import BridgeConfig
from bridge.documents import Keys
from bridge.errors import ConfigError, StartupError, StoreError
from bridge.etcd import datadir
from bridge.interfaces import IUnchangedRuns
from bridge.logs import STARTUP_NAMESPACE, apply_log_level
from bridge.processors import BUILTIN, ProcessorChain
from bridge.protocol.session import DEFAULT_BATCH_RECORDS, SessionLimits
from bridge.server.admission import BridgeFactory
from bridge.server.announce import AnnounceService
from bridge.web import metrics
from bridge.web.health import Check, Health, bridge_checks

# Module level on purpose: a Logger class attribute takes its class's namespace.
_startup_log = Logger(namespace=STARTUP_NAMESPACE)

#: Upper bound of the TCP accept queue (the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 4096

#: How long shutdown waits for the final commits of closing sessions.
SHUTDOWN_COMMIT_WAIT = 10.0

#: Exit status of a bridge that stopped because it could not do its job any more.
EXIT_FAILED = 1

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
    """Everything one bridge process runs (module docstring for the order).

    Args:
        config: the loaded configuration.
        reactor: the reactor (the only place that takes the global one is `bridge.tap`).
        twistd_config: twistd's own options (``nodaemon``, ``logfile``, ``statusPipe``),
            when twistd runs the service: a failed start then reports through them.
    """

    log = Logger()

    def __init__(
        self,
        config: BridgeConfig,
        reactor: Any,
        twistd_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.reactor = reactor
        self.twistd_config = twistd_config
        self.embedded: Any = None
        self.monitor: Any = None
        self.processor: ProcessorChain | None = None
        self.factory: BridgeFactory | None = None
        self.port: IListeningPort | None = None
        self.announcer: AnnounceService | None = None
        self.bridge_id: str | None = None
        self._status: LoopingCall | None = None
        self._prepared = False
        self._stopping = False
        #: The directory (pages, ChannelFinder API), when ``[http] bind`` is set or the
        #: etcd is embedded (the quick start).
        self.directory: Any = None
        #: Metrics and readiness of this process (bridge/web): ``/metrics`` and
        #: ``/readyz`` on the directory's port, and ``metricsPort``.
        self.registry = metrics.new_registry()
        self.metrics = metrics.BridgeMetrics(self.registry)
        self.registry.register(metrics.BridgeCollector(self))
        self.health = Health()
        for check in bridge_checks(self, reactor.seconds):
            self.health.add(check)
        self.health.add(self._writes_check)
        self.metrics_port: IListeningPort | None = None
        #: Fires with this service once it announces; errbacks if start-up failed.
        self.ready: defer.Deferred[BridgeService] = defer.Deferred()

    # -- step 1: what can fail, synchronously ---------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind, start the embedded etcd, probe etcd (module docstring, step 1).

        Raises:
            StartupError: one line; nothing is left running.
        """
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        # gRPC's C core would print its own lines for every failed TLS handshake or
        # reconnect attempt; the bridge reports those errors itself. Must be set before
        # the first gRPC client exists; GRPC_VERBOSITY=ERROR brings them back.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        apply_log_level(self.config.loglevel)
        from bridge.etcd import client as etcdclient  # gRPC: only after GRPC_VERBOSITY

        etcdclient.request_observer = self.metrics.etcd_request  # etcd request metrics
        for note in self.config.notes:
            if note.warning:
                _startup_log.warn("configuration: {text}", text=note.text)
            else:
                _startup_log.info("configuration: {text}", text=note.text)
        try:
            self._prepare()
        except (StartupError, ConfigError) as exc:
            self._abandon()
            message = str(exc)
            _startup_log.critical("recsync-bridge could not start: {error}", error=message)
            raise supervisor.fail_start(message, self.twistd_config) from None
        self._prepared = True

    def _prepare(self) -> None:
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
            store_refusal=self._store_refusal,
            max_held_bytes=self.config.limits.max_held_bytes,
        )
        self.port = self._listen(self.config.bind_port, self.factory, "[recceiver] bind")
        if self.config.metrics_port:
            # metricsPort: Prometheus metrics at any path of a port of their own, on the
            # bind host, as the reference RecCeiver served them.
            site = metrics.metrics_site(self.registry)
            self.metrics_port = self._listen(
                self.config.metrics_port, site, "[recceiver] metricsPort"
            )
        tcp_port: int = self.port.getHost().port  # type: ignore[attr-defined]
        self.bridge_id = self.config.bridge_id or f"{socket.gethostname()}:{tcp_port}"
        etcd = self.config.etcd
        endpoints = list(etcd.endpoints)
        if etcd.embedded:
            from bridge.etcd.embedded import EmbeddedEtcdService

            self.embedded = EmbeddedEtcdService(
                etcd.data_dir, self.reactor, etcd.start_timeout, on_give_up=self.fail
            )
            self.embedded.prepare()
            endpoints = list(self.embedded.endpoints)
            _startup_log.info(
                "embedded etcd on {endpoint}, data in {data_dir} (its log: {log})",
                endpoint=endpoints[0],
                data_dir=etcd.data_dir,
                log=self.embedded.log_path,
            )
        from bridge.etcd.monitor import EtcdMonitor

        self.monitor = EtcdMonitor(
            etcd, endpoints, Keys(etcd.prefix).bridge(self.bridge_id), self.reactor
        )
        self.monitor.check()

    def _listen(self, number: int, factory: Any, key: str) -> IListeningPort:
        """Bind TCP port `number` on the bind host now (blocking), or raise
        `StartupError` saying why not and which configuration `key` to change."""
        host = self.config.bind_host or "0.0.0.0"
        # After a restart every IOC reconnects at once; Twisted's default backlog of 50
        # made the kernel drop SYNs (measured with bench/scale.py: 3,102 overflows).
        backlog = min(self.config.limits.max_connections, LISTEN_BACKLOG)
        try:
            port: IListeningPort = self.reactor.listenTCP(
                number, factory, backlog=backlog, interface=host
            )
        except CannotListenError as exc:
            shown = f"[{host}]" if ":" in host else host
            reason = getattr(exc.socketError, "strerror", None) or str(exc.socketError)
            raise StartupError(
                f"cannot listen on TCP {shown}:{number}: {reason} (another bridge or "
                f"RecCeiver?): stop it, or choose another {key}"
            ) from None
        return port

    def _abandon(self) -> None:
        """Undo a failed step 1: nothing may be left running."""
        if self.monitor is not None and self.monitor.store is not None:
            self.monitor.store.close()
        if self.embedded is not None:
            self.embedded.abort()
        for port in (self.port, self.metrics_port):
            if port is not None:
                port.stopListening()

    # -- step 2 ---------------------------------------------------------------------------

    def startService(self) -> None:
        if not self._prepared:
            self.privilegedStartService()  # not run by twistd (tests): step 1 first
        super().startService()  # type: ignore[no-untyped-call]
        tune_gc()
        if self.embedded is not None:
            self.embedded.startService()
        self.monitor.startService()
        self.reactor.addSystemEventTrigger("before", "shutdown", self._quiet_second_signal)
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self._start_failed)

    async def _start(self) -> BridgeService:
        assert self.factory is not None and self.port is not None
        tcp_port: int = self.port.getHost().port  # type: ignore[attr-defined]
        assert self.bridge_id is not None
        self.processor = self._build_processors(tcp_port)
        self.processor.startService()  # type: ignore[no-untyped-call]
        self.factory.processor = _Metered(self.processor, self.metrics)
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
        if self.metrics_port is not None:
            _startup_log.info(
                "Prometheus metrics on port {port} ({host})",
                port=self.config.metrics_port,
                host=self.config.bind_host or "0.0.0.0",
            )
        self._start_directory()
        supervisor.notify(f"READY=1\nSTATUS=listening on TCP port {tcp_port}")
        return self

    def _start_directory(self) -> None:
        """The read-only directory beside the bridge, when ``[http] bind`` is set or
        the etcd is embedded (`HttpConfig.serves`); it starts after the bridge announces
        and its failures never stop the bridge."""
        http = self.config.http.serves(self.config.etcd.embedded)
        if self.embedded is not None:  # an address a killed bridge left is no answer
            datadir.remove_directory_url(self.config.etcd.data_dir)
        if http is None:
            return
        from bridge.web.service import DirectoryService

        self.directory = DirectoryService(
            self.config,
            self.reactor,
            self._endpoints,
            http=http,
            registry=self.registry,
            health=self.health,
            record_in=self.config.etcd.data_dir if self.embedded is not None else None,
        )
        self.directory.startService()

    def _endpoints(self) -> defer.Deferred[Sequence[str]]:
        """The etcd endpoints, known since step 1 (the embedded etcd's chosen there)."""
        return defer.succeed(list(self.monitor.endpoints))

    def _can_store(self) -> bool:
        return (
            self.processor is not None
            and self.processor.can_store()
            and (self.monitor is None or self.monitor.writable)
        )

    def _writes_check(self) -> Check:
        """Ready only while etcd takes writes (no alarm such as NOSPACE)."""
        refusal = self._store_refusal()
        return Check("writes", refusal is None, refusal or "etcd takes writes")

    def _store_refusal(self) -> str | None:
        """Why new IOC connections are refused now (etcd refuses writes), or None."""
        return self.monitor.refusal if self.monitor is not None else None

    def _etcd_description(self) -> str:
        if self.embedded is not None:
            return "embedded at " + ", ".join(self.embedded.endpoints)
        return ", ".join(self.config.etcd.endpoints)

    def _build_processors(self, tcp_port: int) -> ProcessorChain:
        processors = []
        for entry in self.config.procs:
            factory = BUILTIN[entry.partition(":")[0]]
            processor = factory.build(
                entry,
                self.config,
                self.reactor,
                bridge_id=self.bridge_id,
                endpoints_ready=self._endpoints,
            )
            if hasattr(processor, "tcp_port"):
                processor.tcp_port = tcp_port
            processors.append(processor)
        return ProcessorChain(processors)

    def _start_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, ConfigError | StoreError):
            # Credentials, permissions, etcd gone since the probe: say which, in one line.
            self.fail(f"could not start: {failure.getErrorMessage()}")
        else:
            self.log.failure("recsync-bridge could not start", failure)
            self.fail("could not start (see the traceback above)")
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)  # reported above, once

    def fail(self, reason: str) -> None:
        """The bridge cannot do its job any more: one line, stop, exit non-zero."""
        if self._stopping:
            return
        _startup_log.critical("recsync-bridge stops: {reason}", reason=reason)
        supervisor.exit_status(EXIT_FAILED)
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    # -- status line ----------------------------------------------------------------------

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

    # -- stop -----------------------------------------------------------------------------

    def _quiet_second_signal(self) -> None:
        """While stopping, a second Ctrl-C or SIGTERM gets one line, not a traceback
        (Twisted's own handler would stop the stopped reactor again)."""
        self._stopping = True

        def again(signum: int, frame: object) -> None:
            self.reactor.callFromThread(
                _startup_log.warn,
                "already stopping (it ends by itself once its IOCs are handed over "
                "or marked inactive); kill -9 ends it at once",
            )

        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(signum, again)
            except ValueError:
                pass  # not the main thread (tests running the service elsewhere)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        supervisor.notify("STOPPING=1")
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._status is not None and self._status.running:
            self._status.stop()
        if self.monitor is not None:
            # First: an etcd stopped below, or gone already, is no outage to report.
            await defer.maybeDeferred(self.monitor.stopService)
        if self.directory is not None:
            await defer.maybeDeferred(self.directory.stopService)
        if self.metrics_port is not None:
            await defer.maybeDeferred(self.metrics_port.stopListening)
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


class _Metered:
    """The processor chain as the server sees it, each commit counted and timed
    (`bridge.web.metrics.BridgeMetrics.commit`)."""

    def __init__(self, chain: ProcessorChain, counted: metrics.BridgeMetrics) -> None:
        self.chain = chain
        self.counted = counted
        if IUnchangedRuns.providedBy(chain):
            alsoProvides(self, IUnchangedRuns)

    def commit(self, transaction: Any) -> Any:
        committing = defer.maybeDeferred(self.chain.commit, transaction)
        return self.counted.commit(transaction, committing)

    def known_runs(self, session_id: int) -> Any:
        return self.chain.known_runs(session_id)


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
        max_client_info_bytes=config.limits.max_client_info_bytes,
        names=config.limits.names(),
    )
