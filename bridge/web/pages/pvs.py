"""The PV search and one PV's page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.web.template import Tag, tags

from bridge import documents as docs
from bridge.directory import lookup, search, views
from bridge.directory.channels import dumps
from bridge.directory.model import State
from bridge.directory.query import QueryError, parse_query
from bridge.web import html
from bridge.web.pages.common import (
    JSON,
    PAGE_SIZE,
    Args,
    PageError,
    Reply,
    Work,
    arg,
    checkbox,
    infos_text,
    not_found,
    page_number,
    page_size,
)

if TYPE_CHECKING:
    from bridge.web.pages import Pages

#: Claimants whose full record documents the PV page reads from etcd.
MAX_FETCHED = 20
#: The page's own parameters; the rest of ``/pvs``'s are ChannelFinder's.
_OWN = frozenset({"q", "active", "size", "after", "page"})


def pvs_page(pages: Pages, args: Args) -> Work:
    """``/pvs``: the search (module docstring of bridge.web.pages), paged by name."""
    state = pages.directory.state
    text = arg(args, "q")
    active = arg(args, "active") == "1"
    size, page = page_size(args), page_number(args)
    after = arg(args, "after") or None
    extra = [(k, v) for k, vs in args.items() if k not in _OWN for v in vs]
    params = views.search_parameters(text) + extra
    if active:
        params.append(("pvStatus", "Active"))
    try:
        query = parse_query([*params, ("~size", str(size))])
    except QueryError as error:
        raise PageError(400, str(error)) from None

    def work() -> Reply:
        found = search.select(state, query, exact_count=False, after=after)
        total = search.count(state, query)
        rows = views.pv_rows(state, found.slots)
        table = html.table(
            ("PV", "IOC", "Host", "Status", "Type", "DESC", "Alias of"),
            (
                (
                    html.link(html.pv_href(r.name), r.name),
                    html.link(html.ioc_href(r.iocid), r.iocname or r.iocid),
                    html.shown(r.host),
                    html.status_badge(r.up, r.status),
                    html.shown(r.rtype or ""),
                    html.shown(r.desc or ""),
                    html.link(html.pv_href(r.alias_of), r.alias_of) if r.alias_of else "",
                )
                for r in rows
            ),
            ident="results",
            empty="No PV matches.",
        )
        keep = [("q", text), ("active", "1" if active else ""), *extra]
        if size != PAGE_SIZE:
            keep.append(("size", str(size)))
        form = html.search_form(
            "/pvs",
            [
                tags.input(
                    type="search",
                    name="q",
                    value=text,
                    placeholder="SR*:BPM* pvStatus=Active recordType=ai",
                    autofocus="autofocus",
                ),
                tags.label(checkbox("active", active), " Active only"),
                *(tags.input(type="hidden", name=k, value=v) for k, v in extra),
            ],
        )
        first = (page - 1) * size + 1 if rows else 0
        count = tags.p(
            f"{total:,} PVs match",
            f"; page {page} ({first:,} to {first + len(rows) - 1:,})" if rows else "",
            class_="count",
            id="count",
        )
        last = rows[-1].name if rows else None
        more = first + len(rows) - 1 < total
        api = html.href("/ChannelFinder/resources/channels", params)
        body = html.document(
            "PVs",
            "/pvs",
            form,
            tags.details(
                tags.summary("Search syntax"),
                tags.p(
                    "Words are ANDed. A word with * or ? is a name glob (case-insensitive); "
                    "a word without them matches anywhere in the name; =NAME is that exact "
                    "name. key=value filters on a property (key!=value: not that value, "
                    "key!=*: without it), as ChannelFinder's API does; values may list "
                    "alternatives separated by | or ,."
                ),
            ),
            count,
            table,
            html.pager("/pvs", keep, last, page, more),
            tags.p(html.link(api, "These results as JSON (ChannelFinder API)"), class_="api"),
        )
        return Reply(200, html.render(body))

    return work


def pv_json(pages: Pages, args: Args) -> Work:
    """``/pv.json?name=NAME`` (``name`` repeated for more): each name as ``recsync pv``
    shows it (`bridge.directory.lookup`), with the view's key prefix and etcd revision:
    ``{"prefix": P, "revision": R, "pvs": [...]}``. 503 while the view is not loaded
    (revision 0), so that nobody takes an empty view's "unknown" for an answer."""
    names = list(args.get("name", ()))
    if not names:
        raise PageError(400, "name the PVs: /pv.json?name=NAME (repeat name for more)")
    if len(names) > lookup.MAX_NAMES:
        raise PageError(400, f"at most {lookup.MAX_NAMES} names per request")
    directory = pages.directory
    state = directory.state
    if state.revision == 0:
        raise PageError(503, "the directory is still loading from etcd")

    def work() -> Reply:
        found = [lookup.from_state(state, name) for name in names]
        answer = {"prefix": directory.keys.prefix, "revision": state.revision, "pvs": found}
        return Reply(200, dumps(answer), JSON)

    return work


def pv_page(pages: Pages, name: str) -> Work:
    """``/pvs/<name>``: one name, every IOC claiming it with its record from etcd."""
    state = pages.directory.state

    def work() -> Reply:
        found = views.pv(state, name)
        if found is None:
            return not_found("PV", name)
        records = _records(pages, found)
        return Reply(200, html.render(_pv(pages, state, found, records)))

    return work


def _records(pages: Pages, found: views.PVView) -> dict[str, Mapping[str, Any]]:
    """The record documents through which the claimants claim the name, read from etcd
    (the view keeps only the configured info tags), by IOC id; empty without etcd or
    when it does not answer."""
    if pages.fetch is None:
        return {}
    layout = pages.directory.keys
    claimants = found.claimants[:MAX_FETCHED]
    try:
        values = pages.fetch([layout.record(c.iocid, c.record) for c in claimants])
    except Exception:
        return {}
    out = {}
    for iocid, value in zip((c.iocid for c in claimants), values, strict=False):
        try:
            doc = docs.loads(value) if value is not None else None
        except ValueError:
            doc = None
        if isinstance(doc, Mapping):
            out[iocid] = doc
    return out


def _pv(
    pages: Pages, state: State, found: views.PVView, records: Mapping[str, Mapping[str, Any]]
) -> Tag:
    owner = records.get(found.owner or "", {})
    infos = owner.get("infos")
    info_rows = sorted(infos.items()) if isinstance(infos, Mapping) else found.infos
    summary = html.pairs(
        [
            ("Name", html.shown(found.name)),
            ("Alias of", html.link(html.pv_href(found.record), found.record))
            if found.alias
            else ("Record", "this name"),
            ("Record type", html.shown(found.rtype or "")),
            ("DESC", html.shown(found.desc or "")),
            ("Owner IOC", html.link(html.ioc_href(found.owner or ""), found.owner or "")),
            ("Status", html.status_badge(found.claimants[0].up, found.claimants[0].status)),
            ("Claimed by", f"{len(found.claimants)} IOC(s)"),
        ]
    )
    claimants = html.table(
        ("IOC", "Status", "Host", "Owns the name", "Its record", "Type", "DESC", "Info tags"),
        (
            (
                html.link(html.ioc_href(c.iocid), c.iocid),
                html.status_badge(c.up, c.status),
                html.shown(c.host),
                "yes" if c.owner else "no",
                "this name" if c.record == found.name else html.shown(f"{c.record} (alias)"),
                html.shown(views.text(records.get(c.iocid, {}).get("type", c.rtype))),
                html.shown(views.text(records.get(c.iocid, {}).get("desc", c.desc))),
                html.shown(infos_text(records.get(c.iocid, {}).get("infos"))),
            )
            for c in found.claimants
        ),
    )
    aliases = owner.get("aliases")
    alias_names = (
        [str(a) for a in aliases] if isinstance(aliases, list) and aliases else found.aliases
    )
    slot = state.slot(found.name)
    properties = views.channel_properties(state, slot) if slot is not None else []
    return html.document(
        found.name,
        "/pvs",
        summary,
        tags.h2("Info tags"),
        html.table(
            ("Info tag", "Value"),
            ((html.shown(k), html.shown(v)) for k, v in info_rows),
            empty="No info tags.",
        ),
        tags.h2("Aliases"),
        tags.ul(*(tags.li(html.link(html.pv_href(a), a)) for a in alias_names))
        if alias_names
        else tags.p("No aliases.", class_="empty"),
        tags.h2("IOCs that claim this name"),
        tags.p(
            "The owner is the live IOC that last uploaded the name new or changed (or, "
            "when none is live, the IOC that did); the others follow in the order they "
            "would own it.",
            class_="count",
        ),
        claimants,
        tags.h2("Where it lived before"),
        tags.p(
            "Earlier owners are not recorded yet: the data model keeps only the IOCs "
            "that claim the name now (above).",
            class_="later",
            id="history",
        ),
        tags.h2("Channel properties"),
        tags.p("As the ChannelFinder API sends them:", class_="count"),
        html.table(
            ("Property", "Value"),
            ((html.shown(k), html.shown(v)) for k, v in properties),
            empty="Not a channel with the [cf] settings in use.",
        ),
        tags.p(
            html.link(
                "/ChannelFinder/resources/channels/" + quote(found.name, safe=""),
                "As JSON (ChannelFinder API)",
            ),
            class_="api",
        ),
    )
