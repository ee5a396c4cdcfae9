"""Dead-bridge sweep (data model § Liveness): IOCs whose bridge died turn inactive.

When a bridge dies its lease expires and its alive keys vanish, but its IOC documents
still say ``active`` or ``uploading``. A surviving bridge marks such an IOC inactive,
in a transaction that holds only if the alive key is still absent and the IOC document
is unchanged since it was read, so a bridge that took the IOC over meanwhile (or
another sweeping bridge) always wins. Then the name index is handed over as on a
clean disconnect.

Synchronous and blocking (worker threads only); the processor decides when to call.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from bridge import documents as docs
from bridge.documents import parse_ioc
from bridge.etcd.ops import Compare, Delete, Put
from bridge.etcd.store import Store
from bridge.logs import printable
from bridge.model import iso_time
from bridge.processors.nameindex import NameIndex


class Sweeper:
    """Marks IOCs inactive whose alive key is gone.

    Args:
        store, keys, index: etcd access for the configured prefix.
        now: seconds since the epoch.
        is_local: True for iocids this process serves itself; never swept (if our own
            lease lapsed, the writer puts the alive keys back).
    """

    log = Logger()

    def __init__(
        self,
        store: Store,
        keys: docs.Keys,
        index: NameIndex,
        now: Callable[[], float],
        is_local: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.keys = keys
        self.index = index
        self._now = now
        self._is_local = is_local

    def mark_dead(self, iocid: str) -> bool:
        """Mark `iocid` inactive if it has no alive key and still claims to be live.

        Returns True if this call changed it.
        """
        if self._is_local(iocid):
            return False
        ioc_key, alive_key = self.keys.ioc(iocid), self.keys.alive(iocid)
        found = self.store.get_many([alive_key, ioc_key])
        raw = found.get(ioc_key)
        if alive_key in found or raw is None:
            return False
        doc = parse_ioc(raw.value)
        if doc is None or not doc.live:
            return False
        inactive = docs.dumps(doc.inactive(iso_time(self._now())))
        ok = self.store.txn(
            [Compare.absent(alive_key), Compare.unmodified(ioc_key, raw.mod_revision)],
            [Put(ioc_key, inactive)],
        ).succeeded
        if ok:
            self.log.info(
                "IOC {iocid} inactive: its bridge {bridge} is gone",
                iocid=printable(iocid),
                bridge=doc.bridge,
            )
            self.index.hand_over(iocid)
        return ok

    def live_bridges(self) -> dict[str, int]:
        """bridge id -> lease of every registered bridge (its document lives on its lease)."""
        return {
            self.keys.split(raw.key)[-1]: raw.lease
            for page in self.store.scan(self.keys.bridges_prefix())
            for raw in page.entries
        }

    def sweep_orphans(self, own_lease: int) -> int:
        """Mark inactive the IOCs whose alive key is on no registered bridge's lease.

        Run by the last bridge to stop: bridges that stopped before it handed their
        IOCs over (see `EtcdWriter.handing_over`) and unregistered, counting on a
        survivor; there is none now. Each IOC is changed only if its alive key and
        document are still as read. Returns how many were marked inactive.
        """
        leases = {*self.live_bridges().values(), own_lease}
        orphans = [
            raw
            for page in self.store.scan(self.keys.alive_prefix())
            for raw in page.entries
            if raw.lease not in leases
        ]
        swept = 0
        for alive in orphans:
            iocid = self.keys.split(alive.key)[-1]
            ioc_key = self.keys.ioc(iocid)
            raw = self.store.get(ioc_key)
            doc = parse_ioc(raw.value) if raw is not None else None
            if raw is None or doc is None or not doc.live:
                continue
            inactive = docs.dumps(doc.inactive(iso_time(self._now())))
            ok = self.store.txn(
                [
                    Compare.unmodified(alive.key, alive.mod_revision),
                    Compare.unmodified(ioc_key, raw.mod_revision),
                ],
                [Delete(alive.key), Put(ioc_key, inactive)],
            ).succeeded
            if ok:
                swept += 1
                self.log.info(
                    "IOC {iocid} inactive: its bridge {bridge} stopped and no "
                    "bridge is left to take it over",
                    iocid=printable(iocid),
                    bridge=doc.bridge,
                )
                self.index.hand_over(iocid)
        return swept

    def resync(self) -> int:
        """Sweep every live-looking IOC without an alive key.

        Returns the store revision at which the alive keys were listed: a watch on
        them from that revision + 1 misses nothing that this sweep did not see.
        """
        alive: set[str] = set()
        revision = 0
        for page in self.store.scan(self.keys.alive_prefix(), keys_only=True):
            revision = revision or page.revision
            alive.update(self.keys.split(raw.key)[-1] for raw in page.entries)
        suspects = []
        for page in self.store.scan(self.keys.iocs_prefix()):
            for raw in page.entries:
                iocid = self.keys.split(raw.key)[-1]
                doc = parse_ioc(raw.value)
                if iocid not in alive and doc is not None and doc.live:
                    suspects.append(iocid)
        swept = sum(self.mark_dead(iocid) for iocid in suspects)
        if swept:
            self.log.info("resync: {n} IOCs of dead bridges marked inactive", n=swept)
        return revision
