"""The ``show`` processor: logs what IOCs upload, beside etcd (for debugging).

Everything a peer sent is logged through `bridge.logs.printable`, so a name holding a
newline or an escape sequence can neither forge log lines nor act on a terminal.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from bridge.interfaces import IProcessor
from bridge.logs import printable
from bridge.model import Transaction


@implementer(IProcessor)
class ShowProcessor(Service):
    log = Logger()

    def commit(self, transaction: Transaction) -> None:
        peer = transaction.peer
        if not transaction.connected:
            self.log.info(
                "{peer} connection lost: {reason}",
                peer=peer,
                reason=printable(transaction.reason or ""),
            )
            return
        if transaction.initial:
            for key, value in transaction.client_infos.items():
                self.log.info(
                    "{peer} epicsEnvSet({key}, {value})",
                    peer=peer,
                    key=_quoted(key),
                    value=_quoted(value),
                )
        for record in transaction.records:
            self.log.info(
                "{peer} record({rtype}, {name}) aliases={aliases} infos={infos} desc={desc}",
                peer=peer,
                rtype=printable(record.rtype),
                name=printable(record.name),
                aliases="[" + ", ".join(_quoted(a) for a in record.aliases) + "]",
                infos="{"
                + ", ".join(f"{_quoted(k)}: {_quoted(v)}" for k, v in record.infos.items())
                + "}",
                desc=_quoted(record.desc) if record.desc is not None else "None",
            )
        for name in transaction.removed:
            self.log.info("{peer} removed {name}", peer=peer, name=printable(name))
        if transaction.upload_done:
            self.log.info("{peer} upload done", peer=peer)


def _quoted(text: str) -> str:
    """`text` in double quotes, with what a terminal or a log reader would act on escaped."""
    shown = printable(text)
    return f'"{text}"' if shown == text else shown


def build(config: Any, bridge_id: str, reactor: Any, **_: Any) -> ShowProcessor:
    return ShowProcessor()
