"""The directory's pages: server-rendered HTML on the same port as the API.

    /                      overview: IOCs up and down, PVs, duplicates, bridges, health;
                           refreshes itself from /overview.json (bridge/web/static/live.js)
    /iocs                  IOC list: filter (?q= ?status=up|down), sort (?sort= ?desc=1)
    /iocs/<iocid>          one IOC: identity, status times, environment, records (paged)
    /pvs?q=                PV search: the ChannelFinder grammar (views.search_parameters),
                           ?active=1 for Active only, paged past 10,000 (?after=<name>)
    /pvs/<name>            one PV: type, DESC, info tags, aliases, every claiming IOC
    /pv.json?name=         PVs as `recsync pv` shows them (its JSON, one object a name)
    /duplicates            names more than one IOC claims
    /bridges               registered bridges

Every page is computed on the query threads (`QueryRunner`), never on the reactor, from
one snapshot of the read model the ChannelFinder API uses (`bridge.directory.views`).
Query parameters of ``/pvs`` other than the page's own (``q``, ``active``, ``size``,
``after``, ``page``) are passed to the query as ChannelFinder parameters, so
``/pvs?iocid=X`` or ``/pvs?~name=SR*&pvStatus=Active`` are linkable searches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from bridge.directory.model import Directory
from bridge.web.cf import HTTPError, QueryRunner
from bridge.web.pages import iocs, others, overview, pvs
from bridge.web.pages.common import Args, PageError, Reply, Work, arg, error_page

#: The overview's health figures, computed on the reactor (cheap reads).
StatusSource = Callable[[], Mapping[str, str]]
Fetch = Callable[[Sequence[str]], Sequence[bytes | None]]


class Pages:
    """The page resources over `directory`, run on `runner`'s threads.

    `status` gives the overview's health figures (the service's view and etcd probe);
    `fetch` reads documents from etcd (the PV page's full records), None without etcd.
    """

    def __init__(
        self,
        directory: Directory,
        runner: QueryRunner,
        *,
        status: StatusSource | None = None,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = Logger()
        self.directory = directory
        self.runner = runner
        self.status = status or (lambda: {})
        self.fetch = fetch
        self.clock = clock

    def mount(self, root: Resource) -> None:
        """Put every page (and the static files) under `root`."""

        def page(build: Callable[[Pages, Args], Work]) -> Callable[[Args], Work]:
            return lambda args: build(self, args)

        root.putChild(b"", PageResource(self, page(overview.overview_page)))
        root.putChild(b"overview.json", PageResource(self, page(overview.overview_json)))
        root.putChild(b"iocs", PageResource(self, page(iocs.iocs_page), self.ioc_resource))
        root.putChild(b"ioc", PageResource(self, lambda a: iocs.ioc_page(self, arg(a, "id"), a)))
        root.putChild(b"pvs", PageResource(self, page(pvs.pvs_page), self.pv_resource))
        root.putChild(b"pv", PageResource(self, lambda a: pvs.pv_page(self, arg(a, "name"))))
        root.putChild(b"pv.json", PageResource(self, page(pvs.pv_json)))
        root.putChild(b"duplicates", PageResource(self, page(others.duplicates_page)))
        root.putChild(b"bridges", PageResource(self, page(others.bridges_page)))
        static = Resource()
        for name, kind in (("style.css", b"text/css"), ("live.js", b"text/javascript")):
            static.putChild(name.encode(), Static(_static(name), kind))
        root.putChild(b"static", static)

    def ioc_resource(self, iocid: str) -> Resource:
        return PageResource(self, lambda args: iocs.ioc_page(self, iocid, args))

    def pv_resource(self, name: str) -> Resource:
        return PageResource(self, lambda args: pvs.pv_page(self, name))

    # -- answers -------------------------------------------------------------------------

    def send(self, reply: Reply, request: Request) -> None:
        if request.finished or request.channel is None:
            return
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", reply.content_type)
        request.setHeader(b"cache-control", b"no-store")
        request.write(reply.body)
        request.finish()

    def failed(self, failure: Failure, request: Request) -> None:
        error = failure.value
        if isinstance(error, PageError | HTTPError):
            reply = error_page(error.status, str(error))
        else:
            self.log.failure("page {path} failed", failure, path=request.uri)
            reply = Reply(500, b"An unexpected error occurred\n", b"text/plain; charset=utf-8")
        self.send(reply, request)


def _static(name: str) -> bytes:
    return resources.files("bridge.web").joinpath("static", name).read_bytes()


class Static(Resource):
    """A file shipped with the package, served from memory."""

    isLeaf = True

    def __init__(self, body: bytes, kind: bytes) -> None:
        super().__init__()
        self.body = body
        self.kind = kind

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.kind)
        request.setHeader(b"cache-control", b"max-age=300")
        return self.body


class PageResource(Resource):
    """One page: parses the request on the reactor, builds the page on a query thread.

    `other` makes it a directory of pages too: any name below it (the rest of the
    path, slashes included) goes to ``other(name)``.
    """

    def __init__(
        self,
        pages: Pages,
        build: Callable[[Args], Work],
        other: Callable[[str], Resource] | None = None,
    ) -> None:
        super().__init__()
        self.pages = pages
        self.build = build
        self.other = other

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: N802
        if path == b"" and not request.postpath:
            return self
        if self.other is None:
            return PageResource(self.pages, lambda args: lambda: error_page(404, "No such page"))
        name = b"/".join([path, *(request.postpath or [])])
        request.postpath = []
        return self.other(name.decode("utf-8", "replace"))

    def render_GET(self, request: Request) -> Any:
        args = {
            k.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in vs]
            for k, vs in (request.args or {}).items()
        }
        try:
            work = self.build(args)
        except PageError as error:
            self.pages.send(error_page(error.status, str(error)), request)
            return NOT_DONE_YET
        d = self.pages.runner.run(work)
        d.addCallback(self.pages.send, request)
        d.addErrback(self.pages.failed, request)
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> Any:
        return self.render_GET(request)
