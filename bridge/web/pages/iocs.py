"""The IOC list and one IOC's page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from twisted.web.template import Tag, tags

from bridge.directory import views
from bridge.directory.model import State
from bridge.web import html
from bridge.web.pages.common import (
    Args,
    Reply,
    Work,
    arg,
    not_found,
    page_number,
    page_size,
    select,
)

if TYPE_CHECKING:
    from bridge.web.pages import Pages


def iocs_page(pages: Pages, args: Args) -> Work:
    """``/iocs``: ?q= filter (IOC id, host, IOC name, engineer), ?status=up|down,
    ?sort= one of `views.IOC_SORTS` and ?desc=1, ?page= of ?size= rows."""
    state = pages.directory.state
    pattern, status = arg(args, "q"), arg(args, "status")
    sort = arg(args, "sort", "iocid")
    sort = sort if sort in views.IOC_SORTS else "iocid"
    descending = arg(args, "desc") == "1"
    size, page = page_size(args), page_number(args)

    def work() -> Reply:
        rows = views.ioc_rows(
            state, pattern=pattern, status=status, sort=sort, descending=descending
        )
        shown = rows[(page - 1) * size : page * size]
        keep = [("q", pattern), ("status", status)]

        def header(key: str, label: str) -> Tag:
            flip = "0" if key == sort and descending else "1" if key == sort else "0"
            mark = (" \u25bc" if descending else " \u25b2") if key == sort else ""
            target = html.href("/iocs", [*keep, ("sort", key), ("desc", flip)])
            return html.link(target, label + mark)

        heads = [
            header(k, t)
            for k, t in (
                ("iocid", "IOC"),
                ("status", "Status"),
                ("host", "Host"),
                ("name", "IOC name"),
                ("engineer", "Engineer"),
                ("records", "Records"),
                ("pvs", "PVs owned"),
                ("bridge", "Bridge"),
                ("since", "Since"),
            )
        ]
        table = html.table(
            heads,
            (
                (
                    html.link(html.ioc_href(r.iocid), r.iocid),
                    html.status_badge(r.up, r.status),
                    html.shown(r.host),
                    html.shown(r.name),
                    html.shown(r.engineer),
                    str(r.records),
                    str(r.pvs),
                    html.shown(r.bridge),
                    html.when(r.since),
                )
                for r in shown
            ),
            empty="No IOC matches.",
        )
        form = html.search_form(
            "/iocs",
            [
                tags.input(
                    type="search", name="q", value=pattern, placeholder="IOC, host, engineer"
                ),
                select("status", status, (("", "up and down"), ("up", "up"), ("down", "down"))),
                tags.input(type="hidden", name="sort", value=sort),
                tags.input(type="hidden", name="desc", value="1" if descending else "0"),
            ],
        )
        more = page * size < len(rows)
        paging = [*keep, ("sort", sort), ("desc", "1" if descending else "0")]
        links = []
        if page > 1:
            links.append(
                html.link(html.href("/iocs", [*paging, ("page", str(page - 1))]), "Previous page")
            )
        if more:
            links.append(
                html.link(html.href("/iocs", [*paging, ("page", str(page + 1))]), "Next page")
            )
        count = tags.p(f"{len(rows):,} IOCs", class_="count")
        body = html.document("IOCs", "/iocs", form, count, table, tags.p(*links, class_="pager"))
        return Reply(200, html.render(body))

    return work


def ioc_page(pages: Pages, iocid: str, args: Args) -> Work:
    """``/iocs/<iocid>``: the IOC document, and its records (?q= filter, ?after= page)."""
    state = pages.directory.state
    pattern, after = arg(args, "q"), arg(args, "after") or None
    size, page = page_size(args), page_number(args)

    def work() -> Reply:
        row = views.ioc(state, iocid)
        if row is None:
            return not_found("IOC", iocid)
        return Reply(200, html.render(_ioc(pages, state, row, pattern, after, size, page)))

    return work


def _ioc(
    pages: Pages,
    state: State,
    row: views.IOCRow,
    pattern: str,
    after: str | None,
    size: int,
    page: int,
) -> Tag:
    doc, now = row.doc, pages.clock()
    text = views.text
    identity = html.pairs(
        [
            ("IOC id", html.shown(row.iocid)),
            ("Host", html.shown(row.host)),
            ("IOC name", html.shown(row.name)),
            ("Address", html.shown(f"{text(doc.get('ip'))}:{text(doc.get('port'))}")),
            ("Engineer", html.shown(row.engineer)),
            ("Location", html.shown(text(doc.get("location")))),
            ("EPICS version", html.shown(text(doc.get("epics_version")))),
            ("CA port", html.shown(text(doc.get("ca_port")))),
            ("PVA port", html.shown(text(doc.get("pva_port")))),
            ("Bridge", html.link("/bridges", row.bridge)),
        ]
    )
    up_for = html.age(text(doc.get("connected")), now) if row.up else ""
    status = html.pairs(
        [
            ("Status", html.status_badge(row.up, row.status)),
            ("Connected", html.when(text(doc.get("connected")))),
            ("Uploaded", html.when(text(doc.get("uploaded")))),
            ("Disconnected", html.when(text(doc.get("disconnected")))),
            ("Up for", up_for),
            ("Records / aliases uploaded", f"{row.records:,} / {row.aliases:,}"),
            ("PVs owned (of them claimed by others too)", f"{row.pvs:,} ({row.shared:,})"),
        ]
    )
    env = doc.get("env")
    env_rows = sorted(env.items()) if isinstance(env, Mapping) else []
    environment = html.table(
        ("Variable", "Value"),
        ((html.shown(k), html.shown(v)) for k, v in env_rows),
        empty="The IOC sent no environment.",
    )
    records, total = views.ioc_records(state, row.iocid, pattern=pattern, after=after, size=size)
    path = html.ioc_href(row.iocid)
    form = html.search_form(
        path, [tags.input(type="search", name="q", value=pattern, placeholder="record name")]
    )
    record_table = html.table(
        ("Record", "Type", "DESC", "Name owned by"),
        (
            (
                html.link(html.pv_href(r.name), r.name),
                html.shown(r.rtype or ""),
                html.shown(r.desc or ""),
                "this IOC"
                if r.owner == row.iocid
                else html.link(html.ioc_href(r.owner), r.owner)
                if r.owner
                else "nobody",
            )
            for r in records
        ),
        empty="No record matches.",
    )
    last = records[-1].name if records else None
    more = (page - 1) * size + len(records) < total
    channels = html.href("/ChannelFinder/resources/channels", [("iocid", row.iocid)])
    return html.document(
        row.iocid,
        "/iocs",
        tags.h2("Identity"),
        identity,
        tags.h2("Status"),
        status,
        tags.h2("Connection history"),
        tags.p(
            "Earlier sessions are not recorded yet: the data model keeps only the "
            "current session's times (above). ",
            class_="later",
            id="history",
        ),
        tags.h2("Environment"),
        environment,
        tags.h2("Records"),
        form,
        tags.p(
            f"{total:,} records",
            " \u00b7 ",
            html.link(html.href("/pvs", [("iocid", row.iocid)]), "its PVs in the search"),
            " \u00b7 ",
            html.link(channels, "as JSON (ChannelFinder API)"),
            class_="count",
        ),
        record_table,
        html.pager(path, [("q", pattern)], last, page, more),
    )
