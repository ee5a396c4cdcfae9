"""Prometheus metrics: the reference RecCeiver's names, then the bridge's and the
directory's own.

The reference's seven names keep their meaning, so dashboards built for it keep
working (what each counts here is in `BridgeCollector` and `BridgeMetrics`):

    recceiver_connections_active    connections holding an upload slot
    recceiver_connections_waiting   connections that greeted and wait for a slot
    recceiver_connections_limit     maxActive
    recceiver_known_iocs            IOC sessions of this bridge past their greeting
    recceiver_tracked_channels      records of those sessions' current uploads
    recceiver_cf_commits_total{result="success"|"failure"}   transactions committed
    recceiver_cf_commit_duration_seconds                     to etcd, and how long

Gauges are read from live state when Prometheus scrapes (collectors, not a periodic
update), and are never negative. Counters the bridge keeps itself (`BridgeFactory`
limit counters, the announcer's) are exported as they are; the rest are counted here,
where a transaction passes from the server to the processors (`BridgeMetrics.commit`).

Each process has its own registry (`CollectorRegistry`), never the library's global one,
so several bridges in one test process do not mix. The etcd request hook
(`bridge.etcd.client.request_observer`) is process-wide: the last bridge started owns it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from bridge.interfaces import IStoreHealth
from bridge.model import Transaction

#: Commit duration buckets: the reference's (0.1 s to 60 s) with finer ones below,
#: because a commit to etcd usually takes milliseconds.
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ETCD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class MetricsResource(Resource):
    """``/metrics``: the registry in Prometheus' text format (or OpenMetrics when the
    scraper asks for it). Rendered on the reactor thread, so collectors read the
    bridge's state where it changes, never half-way through a change."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode())
        return encoder(self.registry)


def metrics_resource(registry: CollectorRegistry) -> Resource:
    """The ``/metrics`` resource."""
    return MetricsResource(registry)


class _Everywhere(Resource):
    """``metricsPort``: the metrics at every path, as the reference's site answered."""

    def __init__(self, metrics: Resource) -> None:
        super().__init__()
        self.metrics = metrics

    def getChild(self, path: bytes, request: Any) -> Resource:  # noqa: N802
        return self.metrics

    def render(self, request: Any) -> Any:
        return self.metrics.render(request)


def metrics_site(registry: CollectorRegistry) -> Site:
    """The site of ``metricsPort``."""
    return Site(_Everywhere(metrics_resource(registry)))


class BridgeMetrics:
    """What the bridge counts itself: commits and what they carried, etcd requests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.commits = Counter(
            "recceiver_cf_commits",
            "Transactions committed to etcd (here: to the processors), by result",
            ["result"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.commits.labels(result)
        self.commit_seconds = Histogram(
            "recceiver_cf_commit_duration_seconds",
            "Time to commit one transaction to etcd (here: to the processors)",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.uploads = Counter(
            "recsync_uploads", "Uploads completed (UploadDone committed)", registry=registry
        )
        self.received = Counter(
            "recsync_records_received",
            "Records that arrived decoded in transactions",
            registry=registry,
        )
        self.kept = Counter(
            "recsync_records_kept_unchanged",
            "Records of unchanged runs: neither decoded nor written",
            registry=registry,
        )
        self.stored = Counter(
            "recsync_records_committed",
            "Records of transactions the processors committed (written, or found unchanged)",
            registry=registry,
        )
        self.removed = Counter(
            "recsync_records_removed",
            "Records withdrawn with DelRecord",
            registry=registry,
        )
        self.etcd_seconds = Histogram(
            "recsync_etcd_request_duration_seconds",
            "Time of each etcd request attempt of the etcd processor",
            buckets=ETCD_BUCKETS,
            registry=registry,
        )
        self.etcd_errors = Counter(
            "recsync_etcd_request_errors",
            "etcd request attempts that failed, by error type",
            ["error"],
            registry=registry,
        )

    def commit(self, transaction: Transaction, committing: Deferred[Any]) -> Deferred[Any]:
        """Count `transaction` and time `committing` (its commit), passing its result on."""
        began = time.perf_counter()

        def done(result: Any) -> Any:
            self.commit_seconds.observe(time.perf_counter() - began)
            ok = not isinstance(result, Failure)
            self.commits.labels("success" if ok else "failure").inc()
            received = len(transaction.records)
            kept = sum(len(run.names) for run in transaction.kept)
            self.received.inc(received)
            self.kept.inc(kept)
            self.removed.inc(len(transaction.removed))
            if ok:
                self.stored.inc(received + kept)
                if transaction.upload_done:
                    self.uploads.inc()
            return result

        return committing.addBoth(done)

    def etcd_request(self, seconds: float, error: BaseException | None) -> None:
        """`bridge.etcd.client.request_observer` (worker threads; never raises)."""
        try:
            self.etcd_seconds.observe(seconds)
            if error is not None:
                self.etcd_errors.labels(type(error).__name__).inc()
        except Exception:  # noqa: S110  # metrics must never break a request
            pass


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=max(0.0, float(value)))


class BridgeCollector(Collector):
    """Gauges and counters read from the running bridge at scrape time.

    `service` is the `bridge.service.BridgeService`; before its parts exist the gauges
    are 0 (never negative, never missing, so alerts on absence stay quiet).
    """

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        factory = self.service.factory
        connections = list(factory.connections) if factory is not None else []
        queued = len(factory.queue) if factory is not None else 0
        active = factory.active if factory is not None else 0
        limit = factory.max_active if factory is not None else self.service.config.max_active
        yield _gauge("recceiver_connections_active", "Connections holding an upload slot", active)
        yield _gauge(
            "recceiver_connections_waiting", "Connections waiting for an upload slot", queued
        )
        yield _gauge("recceiver_connections_limit", "Upload slots (maxActive)", limit)
        named = [p for p in connections if p.session.state.value != "greeting"]
        yield _gauge("recceiver_known_iocs", "IOC sessions past their greeting", len(named))
        yield _gauge(
            "recceiver_tracked_channels",
            "Records of the current uploads of connected IOCs",
            sum(p.session.records_total for p in named),
        )
        yield self._sessions(connections, factory)
        yield _gauge("recsync_connections", "Open IOC connections (any state)", len(connections))
        yield _gauge(
            "recsync_sessions_reading_paused",
            "Sessions whose reading is paused because their commits are behind",
            sum(1 for p in connections if p.reading_paused),
        )
        pauses = CounterMetricFamily(
            "recsync_backpressure_pauses",
            "Times a session stopped reading because its commits were behind",
            value=factory.backpressure_pauses if factory is not None else 0,
        )
        yield pauses
        limits = CounterMetricFamily(
            "recsync_limit_hits",
            "Connections refused or closed, and records refused, by the limit hit",
            labels=["limit"],
        )
        for name, count in sorted((factory.counters if factory is not None else {}).items()):
            limits.add_metric([name], count)
        yield limits
        yield from self._announcer()
        yield from self._lease()

    def _sessions(self, connections: list[Any], factory: Any) -> GaugeMetricFamily:
        family = GaugeMetricFamily("recsync_sessions", "IOC sessions by state", labels=["state"])
        waiting = set(factory.queue) if factory is not None else set()
        counts = dict.fromkeys(("greeting", "waiting", "uploading", "live"), 0)
        for protocol in connections:
            state = "waiting" if protocol in waiting else protocol.session.state.value
            if state in counts:
                counts[state] += 1
        for state, count in counts.items():
            family.add_metric([state], count)
        return family

    def _announcer(self) -> Iterator[Metric]:
        announcer = self.service.announcer
        sent = announcer.announcer.sent if announcer is not None else 0
        yield CounterMetricFamily(
            "recsync_announcements_sent", "UDP announcements sent", value=sent
        )
        held = 1 if announcer is not None and announcer.holding else 0
        yield _gauge(
            "recsync_announcements_held",
            "1 while announcements are held back because etcd cannot store",
            held,
        )

    def _lease(self) -> Iterator[Metric]:
        chain = self.service.processor
        holders = [p for p in (chain.processors if chain else ()) if IStoreHealth.providedBy(p)]
        refreshes = sum(p.lease_refreshes for p in holders)
        renewals = sum(p.lease_renewals for p in holders)
        yield CounterMetricFamily(
            "recsync_lease_refreshes",
            "Lease grants and keep-alives etcd answered",
            value=refreshes,
        )
        yield CounterMetricFamily(
            "recsync_lease_renewals",
            "New leases taken because etcd lost the previous one",
            value=renewals,
        )
        yield _gauge(
            "recsync_can_store",
            "1 while the bridge holds its lease and etcd answered within the lease TTL",
            1 if holders and all(p.can_store() for p in holders) else 0,
        )


class DirectoryCollector(Collector):
    """The directory view's size and currency, read at scrape time.

    `service` is the `bridge.web.service.DirectoryService`.
    """

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        from bridge.directory import views

        state = self.service.directory.state
        feed = self.service.feed
        up = sum(1 for e in list(state.iocs) if views.is_up(e.doc))
        documented = sum(1 for e in list(state.iocs) if e.doc is not None)
        iocs = GaugeMetricFamily("recsync_directory_iocs", "IOCs in the view", labels=["status"])
        iocs.add_metric(["up"], up)
        iocs.add_metric(["down"], max(0, documented - up))
        yield iocs
        yield _gauge("recsync_directory_channels", "Channels in the view", state.count())
        yield _gauge("recsync_directory_revision", "etcd revision of the view", state.revision)
        yield _gauge(
            "recsync_directory_lag_seconds",
            "Age of the oldest change received from etcd and not yet in the view",
            feed.lag() if feed is not None else 0.0,
        )
        yield _gauge(
            "recsync_directory_watching",
            "1 while the view's etcd watch is established",
            1 if feed is not None and feed.watching else 0,
        )
        yield CounterMetricFamily(
            "recsync_directory_loads",
            "Full loads of the view (1 at start, then one per compaction resync)",
            value=feed.loads if feed is not None else 0,
        )
        runner = self.service.runner
        yield _gauge(
            "recsync_directory_queries_waiting",
            "HTTP queries waiting for a query thread",
            runner.waiting,
        )
