"""Health probes: ``/healthz`` (the process answers) and ``/readyz`` (it can do its job).

`Health` holds named checks, each a function returning a `Check`; the process registers
the ones that mean "ready" for it: a bridge, that it holds its etcd lease and etcd
answered its lease refresh within the lease TTL (`bridge_checks`); the read-only
directory, that its view is loaded and current (`bridge.web.service`). A check can be
shown without deciding readiness (`Check.required` False), e.g. the directory's view
inside a bridge process.

Both answers are plain text, one line per check, for people and for probes alike:
``/readyz`` is 200 when every required check passes and 503 otherwise, the failing
check's reason on its line. Neither ever touches etcd itself: checks read state the
process keeps (the last lease refresh, the last etcd probe), so a probe costs nothing
and cannot hang when etcd does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from bridge.interfaces import IStoreHealth

TEXT = b"text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness condition: its name, whether it holds, and why (either way)."""

    name: str
    ok: bool
    detail: str
    required: bool = True


class Health:
    """The checks of one process."""

    def __init__(self) -> None:
        self._checks: list[Callable[[], Check]] = []

    def add(self, check: Callable[[], Check]) -> None:
        self._checks.append(check)

    def report(self) -> list[Check]:
        """Every check, evaluated now; a check that raises fails with the error."""
        out = []
        for check in self._checks:
            try:
                out.append(check())
            except Exception as error:  # a probe must answer, whatever breaks
                name = getattr(check, "__name__", "check")
                out.append(Check(name, False, f"check failed: {error!r}"))
        return out

    def ready(self) -> tuple[bool, list[Check]]:
        checks = self.report()
        return all(c.ok for c in checks if c.required), checks


def _lines(checks: list[Check]) -> bytes:
    lines = []
    for check in checks:
        state = "ok" if check.ok else "FAIL"
        note = "" if check.required else " (informational)"
        lines.append(f"{check.name}: {state}: {check.detail}{note}")
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")


class Alive(Resource):
    """``/healthz``: 200 whenever the reactor answers."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", TEXT)
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"

    render_HEAD = render_GET


class Ready(Resource):
    """``/readyz``: 200 when every required check passes, else 503; one line each."""

    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def render_GET(self, request: Request) -> bytes:
        ready, checks = self.health.ready()
        request.setResponseCode(200 if ready else 503)
        request.setHeader(b"content-type", TEXT)
        request.setHeader(b"cache-control", b"no-store")
        head = b"ready\n" if ready else b"not ready\n"
        return head + _lines(checks)

    render_HEAD = render_GET


def bridge_checks(service: Any, clock: Callable[[], float]) -> list[Callable[[], Check]]:
    """A bridge is ready when its etcd processor holds a lease and etcd answered the
    lease refresh within the lease TTL (what also lets it announce, `bridge.server.announce`).

    `service` is the `bridge.service.BridgeService`; `clock` the reactor's seconds.
    """

    def lease() -> Check:
        processor = _etcd_processor(service)
        if processor is None:
            if service.processor is None:
                return Check("lease", False, "the processors are not running yet")
            return Check("lease", True, "no etcd processor configured (procs)")
        if processor.lease is None:
            return Check("lease", False, "no etcd lease yet (is etcd reachable?)")
        return Check("lease", True, f"holds etcd lease {processor.lease.id:x}")

    def etcd() -> Check:
        processor = _etcd_processor(service)
        if processor is None:
            return Check("etcd", service.processor is not None, "no etcd processor")
        contact = processor.last_contact
        ttl = float(processor.config.lease_ttl)
        if contact is None:
            return Check("etcd", False, "etcd has not answered yet")
        age = max(0.0, clock() - contact)
        if not processor.can_store():
            return Check(
                "etcd",
                False,
                f"etcd last answered the lease refresh {age:.1f} s ago (lease TTL {ttl:g} s)",
            )
        return Check("etcd", True, f"etcd answered the lease refresh {age:.1f} s ago")

    return [lease, etcd]


def _etcd_processor(service: Any) -> Any:
    """The bridge's processor that holds the etcd lease (`IStoreHealth`), or None."""
    chain = service.processor
    for processor in chain.processors if chain is not None else ():
        if IStoreHealth.providedBy(processor):
            return processor
    return None
