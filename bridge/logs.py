"""Log level filtering for the bridge's Twisted log output."""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_PYTHON_TO_TWISTED = {
    "DEBUG": LogLevel.debug,
    "INFO": LogLevel.info,
    "WARN": LogLevel.warn,
    "WARNING": LogLevel.warn,
    "ERROR": LogLevel.error,
    "CRITICAL": LogLevel.critical,
}


def printable(text: str, limit: int = 200) -> str:
    """Peer-supplied text (an IOC id, a record name) for a log line.

    Returned as is when printable and short; otherwise as its repr, so a newline or
    an escape sequence in a name can never forge or garble log lines, cut to `limit`.
    """
    if len(text) <= limit and text.isprintable():
        return text
    shown = repr(text)
    if len(shown) <= limit:
        return shown
    return f"{shown[: limit - 4]}...{shown[-1]} ({len(text)} chars)"


_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
#: Start-up and shutdown lines are shown whatever the configured level.
STARTUP_NAMESPACE = "bridge.startup"
_predicate.setLogLevelForNamespace(STARTUP_NAMESPACE, LogLevel.info)
_wrapped: set[int] = set()


def apply_log_level(name: str) -> None:
    """Drop the bridge's events below ``[recceiver] loglevel`` (a Python level name).

    Only the ``bridge`` namespaces are filtered; Twisted's own lines stay as twistd
    configured them.

    twistd has already attached its observers to the global publisher when a
    service starts; each is wrapped once in a level filter. The publisher keeps
    them in a private list, which is the only way to reach them.
    """
    _predicate.setLogLevelForNamespace(
        "bridge", _PYTHON_TO_TWISTED.get(name.upper(), LogLevel.warn)
    )
    observers: list[ILogObserver] = list(getattr(globalLogPublisher, "_observers", []))
    for observer in observers:
        if id(observer) in _wrapped or isinstance(observer, FilteringLogObserver):
            continue
        filtered = FilteringLogObserver(observer, [_predicate])
        _wrapped.add(id(filtered))
        globalLogPublisher.removeObserver(observer)
        globalLogPublisher.addObserver(filtered)
