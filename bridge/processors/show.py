"""The ``show`` processor: logs what IOCs upload, stores nothing (for debugging)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from bridge.interfaces import IProcessor
from bridge.model import Transaction


@implementer(IProcessor)
class ShowProcessor(Service):
    log = Logger()

    def commit(self, transaction: Transaction) -> None:
        peer = transaction.peer
        if not transaction.connected:
            self.log.info("{peer} connection lost: {reason}", peer=peer, reason=transaction.reason)
            return
        if transaction.initial:
            for key, value in transaction.client_infos.items():
                self.log.info(
                    '{peer} epicsEnvSet("{key}", "{value}")', peer=peer, key=key, value=value
                )
        for record in transaction.records:
            self.log.info(
                "{peer} record({rtype}, {name}) aliases={aliases} infos={infos} desc={desc!r}",
                peer=peer,
                rtype=record.rtype,
                name=record.name,
                aliases=record.aliases,
                infos=record.infos,
                desc=record.desc,
            )
        for name in transaction.removed:
            self.log.info("{peer} removed {name}", peer=peer, name=name)
        if transaction.upload_done:
            self.log.info("{peer} upload done", peer=peer)


def build(config: Any, bridge_id: str, reactor: Any, **_: Any) -> ShowProcessor:
    return ShowProcessor()
