"""HTML building blocks of the pages: the layout, tables, links and how values show.

Built with `twisted.web.template` tags, whose flattener escapes every text and attribute
value, so a peer-supplied string (a record named ``<script>``, a DESC with quotes) can
only ever show as text. `shown` additionally makes control characters visible
(``\\x01``), so two names that differ by one invisibly are told apart on screen.

`render` flattens synchronously (nothing here is asynchronous), which lets a page be
built and encoded on a query thread, off the reactor.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from twisted.python.failure import Failure
from twisted.web.template import Tag, flatten, tags

#: C0 controls and DEL, shown as ``\\xNN`` text.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
NAV = (
    ("/", "Overview"),
    ("/iocs", "IOCs"),
    ("/pvs", "PVs"),
    ("/duplicates", "Duplicates"),
    ("/bridges", "Bridges"),
)


def shown(value: Any) -> str:
    """`value` as text to show: control characters as ``\\xNN``, unpaired surrogates as
    U+FFFD (they cannot be encoded)."""
    text = "" if value is None else value if isinstance(value, str) else str(value)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text.encode("utf-8", "replace").decode("utf-8")


def render(root: Any) -> bytes:
    """Flatten `root` (tags, strings) to bytes, synchronously; the doctype in front."""
    out: list[bytes] = []
    failures: list[Failure] = []
    flatten(None, root, out.append).addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    return b"<!DOCTYPE html>\n" + b"".join(out)


def href(path: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """`path` with `params` as its query string (UTF-8, percent-encoded)."""
    pairs = [(k, v) for k, v in params if v != ""]
    return path + ("?" + urlencode(pairs) if pairs else "")


def pv_href(name: str) -> str:
    """The PV page of `name`. Names a browser would resolve as path steps (``.``,
    ``..``, empty) go as a parameter instead."""
    if name in ("", ".", ".."):
        return href("/pv", [("name", name)])
    return "/pvs/" + quote(name, safe=":")


def ioc_href(iocid: str) -> str:
    if iocid in ("", ".", ".."):
        return href("/ioc", [("id", iocid)])
    return "/iocs/" + quote(iocid, safe=":")


def link(target: str, text: Any, **attributes: str) -> Tag:
    return tags.a(shown(text), href=target, **attributes)


def when(iso: str) -> str:
    """An ISO-8601 UTC time as ``2026-11-23 21:00:01 UTC`` ("" when unknown)."""
    moment = parse_time(iso)
    if moment is None:
        return shown(iso)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_time(iso: str) -> datetime.datetime | None:
    if not iso:
        return None
    try:
        moment = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def age(iso: str, now: float) -> str:
    """How long ago `iso` was, e.g. ``3 h 12 min`` ("" when unknown)."""
    moment = parse_time(iso)
    if moment is None:
        return ""
    return duration(now - moment.timestamp())


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def status_badge(up: bool, status: str) -> Tag:
    return tags.span(shown(status), class_="status " + ("up" if up else "down"))


def table(
    headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, ident: str = "", empty: str = ""
) -> Tag:
    """A table in a horizontally scrolling box (phones), `empty` shown without rows."""
    body = tags.tbody(*(tags.tr(*(tags.td(cell) for cell in row)) for row in rows))
    if ident:
        body(id=ident)
    out = tags.div(
        tags.table(tags.thead(tags.tr(*(tags.th(h) for h in headers))), body),
        class_="scroll",
    )
    if empty and not body.children:
        return tags.div(out, tags.p(empty, class_="empty"))
    return out


def pairs(items: Iterable[tuple[str, Any]]) -> Tag:
    """A two-column table of names and values."""
    return tags.div(
        tags.table(
            tags.tbody(*(tags.tr(tags.th(name), tags.td(value)) for name, value in items)),
            class_="pairs",
        ),
        class_="scroll",
    )


def document(title: str, active: str, *content: Any, live: bool = False) -> Tag:
    """A whole page: head (phone viewport, the style sheet), navigation, `content`.

    `live` adds the script that refreshes the overview's figures in place.
    """
    nav = tags.nav(
        tags.a("recsync-bridge", href="/", class_="brand"),
        *(tags.a(text, href=path, class_="here" if path == active else "") for path, text in NAV),
        tags.a("API", href="/ChannelFinder", class_=""),
    )
    head = tags.head(
        tags.meta(charset="utf-8"),
        tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
        tags.title(shown(title) + " - recsync-bridge directory"),
        tags.link(rel="stylesheet", href="/static/style.css"),
    )
    body = tags.body(nav, Tag("main")(tags.h1(shown(title)), *content))
    if live:
        body(tags.script(src="/static/live.js", defer="defer"))
    return tags.html(head, body, lang="en")


def search_form(action: str, fields: Sequence[Tag]) -> Tag:
    """A GET form (linkable results) with `fields` and a submit button."""
    return tags.form(*fields, tags.button("Search", type="submit"), action=action, method="get")


def pager(
    path: str, params: list[tuple[str, str]], last: str | None, page: int, more: bool
) -> Tag:
    """Links to the first page and, when `more`, to the page after name `last`."""
    links: list[Any] = []
    if page > 1:
        links.append(link(href(path, params), "First page"))
    if more and last is not None:
        after = [*params, ("after", last), ("page", str(page + 1))]
        links.append(link(href(path, after), "Next page", rel="next"))
    return tags.p(*links, class_="pager")
