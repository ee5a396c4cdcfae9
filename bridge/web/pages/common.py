"""What every page shares: replies, parameters, cells, small widgets, error pages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.web.template import Tag, tags

from bridge.web import html

HTML = b"text/html; charset=utf-8"
JSON = b"application/json"
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

Args = Mapping[str, Sequence[str]]
#: Builds a page's answer from a snapshot (runs on a query thread).
Work = Callable[[], "Reply"]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = HTML


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def arg(args: Args, name: str, default: str = "") -> str:
    values = args.get(name)
    return values[0] if values else default


def page_size(args: Args) -> int:
    try:
        size = int(arg(args, "size", str(PAGE_SIZE)))
    except ValueError:
        raise PageError(400, "size must be a whole number") from None
    return min(max(size, 1), MAX_PAGE_SIZE)


def page_number(args: Args) -> int:
    try:
        return max(1, int(arg(args, "page", "1")))
    except ValueError:
        return 1


def cell(cell: Mapping[str, str]) -> Any:
    text = cell.get("text", "")
    if cell.get("href"):
        return html.link(cell["href"], text)
    if cell.get("class"):
        return tags.span(html.shown(text), class_=cell["class"])
    return html.shown(text)


def infos_text(infos: Any) -> str:
    if not isinstance(infos, Mapping):
        return ""
    return ", ".join(f"{k}={v}" for k, v in sorted(infos.items()))


def ioc_links(iocids: Sequence[str]) -> list[Any]:
    out: list[Any] = []
    for i, iocid in enumerate(iocids):
        if i:
            out.append(", ")
        out.append(html.link(html.ioc_href(iocid), iocid))
    return out


def select(name: str, value: str, options: Sequence[tuple[str, str]]) -> Tag:
    choices = []
    for key, label in options:
        option = tags.option(label, value=key)
        if key == value:
            option(selected="selected")
        choices.append(option)
    return tags.select(*choices, name=name)


def checkbox(name: str, checked: bool) -> Tag:
    box = tags.input(type="checkbox", name=name, value="1")
    if checked:
        box(checked="checked")
    return box


def not_found(kind: str, name: str) -> Reply:
    return error_page(404, f"No {kind} named {html.shown(name)!r} in the directory.")


def error_page(status: int, message: str) -> Reply:
    body = html.document("Not found" if status == 404 else "Error", "", tags.p(message))
    return Reply(status, html.render(body))
