"""The overview page and /overview.json: the same figures, the page rendered with
them and kept current by bridge/web/static/live.js."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.web.template import Tag, tags

from bridge.directory import views
from bridge.directory.channels import dumps
from bridge.directory.model import State
from bridge.web import html
from bridge.web.pages.common import (
    JSON,
    Args,
    Reply,
    Work,
    cell,
)

if TYPE_CHECKING:
    from bridge.web.pages import Pages


def overview_data(pages: Pages, state: State, status: Mapping[str, str]) -> dict[str, Any]:
    """What the overview shows, as JSON-ready figures and table cells (the page and
    /overview.json render the same data; live.js puts it in place)."""
    now = pages.clock()
    found = views.overview(state)
    figures = {
        "iocs_up": f"{found.iocs_up:,}",
        "iocs_down": f"{found.iocs_down:,}",
        "channels": f"{found.channels:,}",
        "duplicates": f"{found.duplicates:,}",
        "bridges": f"{found.bridges:,}",
        "revision": str(found.revision),
        "updated": time.strftime("%H:%M:%S UTC", time.gmtime(now)),
        **status,
    }
    recent = [
        [
            {"text": r.iocid, "href": html.ioc_href(r.iocid)},
            {"text": r.status, "class": "status " + ("up" if r.up else "down")},
            {"text": r.host},
            {"text": html.when(r.since)},
        ]
        for r in found.recent
    ]
    bridges = [
        [
            {"text": b.bridge_id},
            {"text": f"{b.host}:{b.port}" if b.port else b.host},
            {"text": html.age(b.started, now)},
            {"text": str(b.alive)},
        ]
        for b in views.bridges(state)
    ]
    return {"figures": figures, "tables": {"recent": recent, "bridges": bridges}}


def overview_json(pages: Pages, args: Args) -> Work:
    """``/overview.json``: what live.js puts in place on the overview."""
    state, status = pages.directory.state, dict(pages.status())
    return lambda: Reply(200, dumps(overview_data(pages, state, status)), JSON)


def overview_page(pages: Pages, args: Args) -> Work:
    """``/``: figures, recently changed IOCs, bridges, health; refreshed by live.js."""
    state, status = pages.directory.state, dict(pages.status())

    def work() -> Reply:
        data = overview_data(pages, state, status)
        figures = data["figures"]

        def figure(key: str, label: str, href: str) -> Tag:
            value = tags.span(figures.get(key, ""), class_="value", **{"data-live": key})
            return tags.a(value, tags.span(label, class_="label"), href=href, class_="card")

        cards = tags.div(
            figure("iocs_up", "IOCs up", "/iocs?status=up"),
            figure("iocs_down", "IOCs down", "/iocs?status=down"),
            figure("channels", "PVs", "/pvs"),
            figure("duplicates", "Duplicates", "/duplicates"),
            figure("bridges", "Bridges", "/bridges"),
            class_="cards",
        )
        health = html.pairs(
            (label, tags.span(figures.get(key, ""), **{"data-live": key}))
            for key, label in (
                ("view", "Directory view"),
                ("revision", "etcd revision"),
                ("lag", "Changes waiting"),
                ("etcd", "etcd"),
                ("updated", "Updated"),
            )
        )
        recent = html.table(
            ("IOC", "Status", "Host", "Since"),
            ([cell(c) for c in row] for row in data["tables"]["recent"]),
            ident="recent",
        )
        bridges = html.table(
            ("Bridge", "Address", "Running for", "IOCs alive"),
            ([cell(c) for c in row] for row in data["tables"]["bridges"]),
            ident="bridges",
        )
        body = html.document(
            "Overview",
            "/",
            cards,
            tags.h2("Recently changed IOCs"),
            recent,
            tags.h2("Bridges"),
            bridges,
            tags.h2("Health"),
            health,
            live=True,
        )
        return Reply(200, html.render(body))

    return work
