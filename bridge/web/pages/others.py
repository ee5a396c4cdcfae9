"""The duplicates report and the bridges."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.web.template import tags

from bridge.directory import views
from bridge.web import html
from bridge.web.pages.common import (
    Args,
    Reply,
    Work,
    arg,
    ioc_links,
    page_number,
    page_size,
)

if TYPE_CHECKING:
    from bridge.web.pages import Pages


def duplicates_page(pages: Pages, args: Args) -> Work:
    """``/duplicates``: names more than one IOC claims, in name order, ?after= paged."""
    state = pages.directory.state
    size, page = page_size(args), page_number(args)
    after = arg(args, "after") or None

    def work() -> Reply:
        rows, total = views.duplicates(state, after=after, size=size)
        table = html.table(
            ("PV", "Owner", "Claimed by", "IOCs"),
            (
                (
                    html.link(html.pv_href(r.name), r.name),
                    html.link(html.ioc_href(r.owner), r.owner),
                    ioc_links(r.claims),
                    str(len(r.claims)),
                )
                for r in rows
            ),
            empty="No name is claimed by more than one IOC.",
        )
        last = rows[-1].name if rows else None
        more = (page - 1) * size + len(rows) < total
        body = html.document(
            "Duplicates",
            "/duplicates",
            tags.p(
                f"{total:,} names are claimed by more than one IOC. The owner, whose "
                "record the directory serves for the name, is the live IOC that last "
                "uploaded it new or changed (or, when none is live, the IOC that did).",
                class_="count",
            ),
            table,
            html.pager("/duplicates", [], last, page, more),
        )
        return Reply(200, html.render(body))

    return work


def bridges_page(pages: Pages, args: Args) -> Work:
    """``/bridges``: the bridge documents in etcd, with their IOCs alive."""
    state = pages.directory.state

    def work() -> Reply:
        now = pages.clock()
        rows = views.bridges(state)
        table = html.table(
            ("Bridge", "Host", "Port", "Version", "Started", "Running for", "IOCs alive"),
            (
                (
                    html.shown(r.bridge_id),
                    html.shown(r.host),
                    str(r.port) if r.port else "",
                    html.shown(r.version),
                    html.when(r.started),
                    html.age(r.started, now),
                    html.link(html.href("/iocs", [("q", "")]), str(r.alive)),
                )
                for r in rows
            ),
            empty="No bridge is registered in etcd.",
        )
        body = html.document(
            "Bridges",
            "/bridges",
            tags.p(
                "Bridges registered in etcd now (a bridge's document lives on its lease).",
                class_="count",
            ),
            table,
        )
        return Reply(200, html.render(body))

    return work
