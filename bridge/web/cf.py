"""ChannelFinder's read API over the directory (twisted.web resources).

Paths, parameters, JSON and status codes are a ChannelFinder's (``/ChannelFinder``, then
``resources/channels[/{name}|/count|/combined]``, ``resources/properties[/{name}]``,
``resources/tags[/{name}]``, ``resources/scroll[/{id}]``), so Phoebus, pvinfo, pyCFClient
and cfNameserver work unchanged. Differences, on purpose:

- writes (``PUT``/``POST``/``DELETE``) are refused with 401 and a message saying the
  directory is fed by IOCs, as a ChannelFinder refuses a write without credentials (no
  credentials would help here);
- a malformed ``~size``/``~from`` is a 400 saying why (a ChannelFinder answers 500);
- error bodies are Spring Boot's usual ``{"timestamp","status","error","message","path"}``.

CORS: every answer to a request with an ``Origin`` allows any origin (``*``), as
ChannelFinder's controllers did with ``@CrossOrigin``; a preflight ``OPTIONS`` is answered
with the methods and headers asked for.

Threads: a query runs on `QueryRunner`'s own small thread pool, never on the reactor, so
a slow query cannot delay IOC sessions in the same process; at most `MAX_WAITING`
requests wait for it, beyond that the answer is 503 at once.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from bridge import __version__
from bridge.directory import search
from bridge.directory.channels import definition_json, dumps
from bridge.directory.model import Directory, State
from bridge.directory.query import Query, QueryError, parse_query

SERVICE_ROOT = b"ChannelFinder"
JSON = b"application/json"
#: Requests allowed to wait for a query thread before the answer is 503.
MAX_WAITING = 64
READ_ONLY = (
    "this ChannelFinder API is read-only: recsync-bridge's directory is fed by the IOCs "
    "themselves (through etcd); channels, properties and tags cannot be written here"
)
_ALLOWED = "GET,POST,PUT,DELETE,PATCH,OPTIONS"
T = TypeVar("T")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class QueryRunner:
    """Runs query work on a private thread pool; bounded waiting (see module doc)."""

    def __init__(self, reactor: Any, threads: int = 2) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(0, threads, name="directory-queries")
        self.waiting = 0

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()

    def run(self, work: Callable[[], T]) -> defer.Deferred[T]:
        if self.waiting >= MAX_WAITING:
            return defer.fail(HTTPError(503, "too many queries waiting; try again"))
        self.waiting += 1

        def done(result: Any) -> Any:
            self.waiting -= 1
            return result

        d: defer.Deferred[T] = deferToThreadPool(self.reactor, self.pool, work)
        d.addBoth(done)
        return d


def cors(request: Request) -> None:
    """ChannelFinder's CORS headers, when the request comes from a page."""
    if request.getHeader(b"origin") is not None:
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(
            b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        )


def error_body(request: Request, status: int, message: str) -> bytes:
    """Spring Boot's usual error document."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    return dumps(
        {
            "timestamp": now.replace("+00:00", "Z"),
            "status": status,
            "error": http.RESPONSES.get(status, b"Error").decode(),
            "message": message,
            "path": request.path.decode("utf-8", "replace"),
        }
    )


def _params(request: Request) -> list[tuple[str, str]]:
    args: dict[bytes, list[bytes]] = request.args or {}
    return [
        (key.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
        for key, values in args.items()
        for value in values
    ]


class Endpoint(Resource):
    """A leaf: GET computes JSON (maybe on the query pool); writes are refused."""

    isLeaf = True

    def __init__(self, app: ChannelFinderAPI, answer: Callable[[Request], Any]) -> None:
        super().__init__()
        self.app = app
        self.answer = answer

    def render_GET(self, request: Request) -> Any:
        cors(request)
        try:
            result = self.answer(request)
        except HTTPError as error:
            return self.app.fail(request, error.status, str(error))
        except QueryError as error:
            return self.app.fail(request, 400, str(error))
        if isinstance(result, bytes):
            request.setHeader(b"content-type", JSON)
            return result
        result.addCallbacks(self.app.send, self.app.failed, (request,), None, (request,))
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> Any:
        return self.render_GET(request)

    def render_OPTIONS(self, request: Request) -> bytes:
        cors(request)
        if request.getHeader(b"access-control-request-method") is not None:
            request.setHeader(b"access-control-allow-methods", _ALLOWED.encode())
            wanted = request.getHeader(b"access-control-request-headers")
            if wanted:
                request.setHeader(b"access-control-allow-headers", wanted)
            request.setHeader(b"access-control-max-age", b"1800")
        request.setHeader(b"allow", b"GET,HEAD,OPTIONS")
        return b""

    def _refuse(self, request: Request) -> bytes:
        cors(request)
        request.setHeader(b"www-authenticate", b'Basic realm="Realm"')
        return self.app.fail(request, 401, READ_ONLY)

    render_PUT = render_POST = render_DELETE = render_PATCH = _refuse


class Node(Resource):
    """An inner path segment: its own `leaf`, fixed children, and `other` for any other
    name (the rest of the path, slashes included), else `missing`."""

    def __init__(
        self, leaf: Endpoint, missing: Endpoint, other: Callable[[str], Resource] | None = None
    ) -> None:
        super().__init__()
        self.leaf = leaf
        self.missing = missing
        self.other = other

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: N802
        if path == b"" and not request.postpath:
            return self.leaf
        if self.other is None:
            return self.missing
        rest: list[bytes] = list(request.postpath or [])
        name = b"/".join([path, *rest])
        request.postpath = []
        return self.other(name.decode("utf-8", "replace"))

    def render(self, request: Request) -> Any:
        return self.leaf.render(request)


class ChannelFinderAPI:
    """The resource tree of ``/ChannelFinder`` over `directory`."""

    def __init__(self, directory: Directory, runner: QueryRunner, scroll_path: str) -> None:
        self.directory = directory
        self.runner = runner
        self.scroll_path = scroll_path

    # -- responses --------------------------------------------------------------------

    def send(self, body: bytes, request: Request) -> None:
        if request.finished or request.channel is None:
            return
        request.setHeader(b"content-type", JSON)
        request.write(body)
        request.finish()

    def failed(self, failure: Failure, request: Request) -> None:
        if request.finished or request.channel is None:
            return
        error = failure.value
        if isinstance(error, HTTPError):
            body = self.fail(request, error.status, str(error))
        elif isinstance(error, QueryError):
            body = self.fail(request, 400, str(error))
        else:
            body = self.fail(request, 500, "An unexpected error occurred")
        request.write(body)
        request.finish()

    def fail(self, request: Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", JSON)
        return error_body(request, status, message)

    # -- the tree ---------------------------------------------------------------------

    def resource(self) -> Resource:
        """``/ChannelFinder`` and everything under it."""
        missing = self.endpoint(self.not_found)
        resources = Node(missing, missing)
        channels = Node(self.endpoint(self.channels), missing, self.channel)
        channels.putChild(b"count", self.endpoint(self.count))
        channels.putChild(b"combined", self.endpoint(self.combined))
        resources.putChild(b"channels", channels)
        resources.putChild(
            b"properties", Node(self.endpoint(self.properties), missing, self.property)
        )
        resources.putChild(b"tags", Node(self.endpoint(self.tags), missing, self.tag))
        resources.putChild(b"scroll", Node(self.endpoint(self.scroll), missing, self.scroll_page))
        root = Node(self.endpoint(self.info), missing)
        root.putChild(b"resources", resources)
        return root

    def not_found(self, request: Request) -> bytes:
        raise HTTPError(404, "No such resource")

    def endpoint(self, answer: Callable[[Request], Any]) -> Endpoint:
        return Endpoint(self, answer)

    def _query(self, request: Request, work: Callable[[State, Query], bytes]) -> Any:
        query = parse_query(_params(request))
        state = self.directory.state
        return self.runner.run(lambda: work(state, query))

    def info(self, request: Request) -> bytes:
        state = self.directory.state
        return dumps(
            {
                "name": "ChannelFinder Service",
                "version": f"recsync-bridge {__version__}",
                "elastic": {
                    "status": "Connected",
                    "clusterName": "recsync-bridge directory (no Elasticsearch)",
                    "revision": str(state.revision),
                    "channels": str(state.count()),
                },
            }
        )

    def channels(self, request: Request) -> Any:
        def work(state: State, query: Query) -> bytes:
            query.check_window(self.scroll_path)
            selection = search.select(state, query, exact_count=False)
            return _array(state, selection.slots)

        return self._query(request, work)

    def combined(self, request: Request) -> Any:
        def work(state: State, query: Query) -> bytes:
            query.check_window(self.scroll_path)
            selection = search.select(state, query, exact_count=query.track_total_hits)
            return (
                b'{"channels":'
                + _array(state, selection.slots)
                + b',"count":%d}' % (selection.count)
            )

        return self._query(request, work)

    def count(self, request: Request) -> Any:
        return self._query(request, lambda state, query: b"%d" % search.count(state, query))

    def scroll(self, request: Request, after: str | None = None) -> Any:
        def work(state: State, query: Query) -> bytes:
            selection = search.select(state, query, exact_count=False, after=after or None)
            last = state.names[selection.slots[-1]] if selection.slots else None
            return (
                b'{"id":' + dumps(last) + b',"channels":' + _array(state, selection.slots) + b"}"
            )

        return self._query(request, work)

    def scroll_page(self, scroll_id: str) -> Resource:
        return self.endpoint(lambda request: self.scroll(request, scroll_id))

    def channel(self, name: str) -> Resource:
        def answer(request: Request) -> bytes:
            state = self.directory.state
            slot = state.slot(name)
            if slot is None or not state.visible()[slot]:
                raise HTTPError(404, f"Channel not found: {name}")
            return state.encode(slot)

        return self.endpoint(answer)

    def properties(self, request: Request) -> bytes:
        shape = self.directory.shape
        return _list([definition_json(n, shape.username) for n in shape.property_names()])

    def property(self, name: str) -> Resource:
        def answer(request: Request) -> Any:
            shape = self.directory.shape
            if name not in shape.property_names():
                raise HTTPError(404, f"Property not found: {name}")
            with_channels = _boolean(request, b"withChannels", True)
            if not with_channels:
                return definition_json(name, shape.username)
            escaped = "".join("\\" + c if c in "\\*?" else c for c in name)
            query = parse_query([(escaped, "*")])
            state = self.directory.state

            def work() -> bytes:
                slots = search.select(state, query, exact_count=False).slots
                return definition_json(name, shape.username, [state.encode(s) for s in slots])

            return self.runner.run(work)

        return self.endpoint(answer)

    def tags(self, request: Request) -> bytes:
        return b"[]"

    def tag(self, name: str) -> Resource:
        def answer(request: Request) -> bytes:
            raise HTTPError(404, f"Tag not found: {name}")

        return self.endpoint(answer)


def _array(state: State, slots: list[int]) -> bytes:
    return b"[" + b",".join(state.encode(s) for s in slots) + b"]"


def _list(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _boolean(request: Request, name: bytes, default: bool) -> bool:
    """Spring's boolean request parameter: true/false, on/off, yes/no, 1/0."""
    values = (request.args or {}).get(name)
    if not values:
        return default
    text = values[0].decode("utf-8", "replace").strip().lower()
    if text in ("true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "0"):
        return False
    raise HTTPError(400, f"{name.decode()}={text!r} is not a boolean")


def channel_url(base: str, name: str) -> str:
    """The URL of channel `name` under `base` (``.../ChannelFinder``), for docs and logs."""
    return f"{base}/resources/channels/{quote(name, safe='')}"
