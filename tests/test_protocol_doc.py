"""docs/protocol.md cannot drift from the code: its examples, tables and titles are checked.

Every fenced block marked ``hex`` in the document is one example: hex bytes (``#``
starts a comment that runs to the end of the line), then one ``=> Name(field=value,
...)`` line per item the bytes decode to, in order. Each example is decoded twice:

* by the bridge's codec (`bridge.protocol.wire`), fed whole and one byte at a time;
* by `parse_as_documented` below, a small parser written from the document's layout
  tables with `struct` alone, so a codec and a document that drift together still fail.

Both must give what the ``=>`` lines say. An example that is the canonical encoding of
its message (no extra body bytes, reserved bytes zero, text in UTF-8) must also be
exactly what the codec's ``encode()`` produces.

The document's top-level titles are fixed (code cites them, e.g. "docs/protocol.md,
Framing"); the message registry table must match the codec's message ids; and every
``| setting | default |`` table must state the defaults `bridge.config` applies.
"""

from __future__ import annotations

import ast
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config
from bridge.protocol import wire
from bridge.service import session_limits

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

SECTIONS = [
    "Discovery (the UDP announcement)",
    "Framing",
    "Messages",
    "A session",
    "Keepalive and timeouts",
    "Limits",
    "Real clients and their quirks",
    "Where the bridge differs from the reference RecCeiver",
]

MESSAGES: dict[str, type[Any]] = {
    "ServerGreet": wire.ServerGreet,
    "Ping": wire.Ping,
    "ClientGreet": wire.ClientGreet,
    "Pong": wire.Pong,
    "AddRecord": wire.AddRecord,
    "DelRecord": wire.DelRecord,
    "UploadDone": wire.UploadDone,
    "AddInfo": wire.AddInfo,
}
#: What an ``=>`` line may name besides the eight messages.
OTHERS = {"Announce", "Skipped", "FramingError"}


# --- reading the document -------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One ``=> Name(field=value, ...)`` line."""

    name: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Example:
    line: int
    data: bytes
    expected: tuple[Expected, ...]

    @property
    def label(self) -> str:
        return f"line{self.line}-" + "+".join(e.name for e in self.expected)


def _expectation(text: str, line: int) -> Expected:
    """Parse ``Name(field=literal, ...)`` without evaluating anything but literals."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as error:
        raise AssertionError(f"docs/protocol.md:{line}: cannot parse {text!r}") from error
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
        raise AssertionError(f"docs/protocol.md:{line}: expected Name(field=value, ...)")
    name = node.func.id
    if name not in MESSAGES and name not in OTHERS:
        raise AssertionError(f"docs/protocol.md:{line}: unknown name {name!r}")
    fields = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    return Expected(name, fields)


def read_examples(text: str) -> list[Example]:
    """Every ``hex`` block of the document, in order."""
    examples: list[Example] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```hex":
            i += 1
            continue
        start = i + 1
        data = bytearray()
        expected: list[Expected] = []
        i += 1
        while lines[i].strip() != "```":
            content = lines[i].split("#", 1)[0].strip()
            if content.startswith("=>"):
                expected.append(_expectation(content[2:].strip(), i + 1))
            elif content:
                assert not expected, f"docs/protocol.md:{i + 1}: bytes after an => line"
                data += bytes.fromhex(content)
            i += 1
        assert data and expected, f"docs/protocol.md:{start}: an example needs bytes and =>"
        examples.append(Example(start, bytes(data), tuple(expected)))
        i += 1
    return examples


def section_titles(text: str, level: str) -> list[str]:
    return [line[len(level) :].strip() for line in text.splitlines() if line.startswith(level)]


def table_rows(text: str, header: str) -> list[list[str]]:
    """Body rows (cells stripped) of every table whose header row starts with `header`."""
    rows: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith(header):
            inside = True
            continue
        if inside and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
            continue
        inside = False
    return rows


TEXT = DOC.read_text(encoding="utf-8")
EXAMPLES = read_examples(TEXT)


# --- the document's own layouts, with struct only ---------------------------------------

MAGIC = 0x5243
HEADER = struct.Struct(">HHI")
#: Largest body the bridge accepts by default (docs/protocol.md, Limits).
DEFAULT_MAX_BODY = 8 + 255 + 65535
#: Message id -> (name, fixed part of the body, its field names; None = reserved).
FIXED: dict[int, tuple[str, str, tuple[str | None, ...]]] = {
    0x8001: ("ServerGreet", ">B", ("version",)),
    0x8002: ("Ping", ">I", ("nonce",)),
    0x0001: ("ClientGreet", ">BBHI", ("version", "client_type", None, "key")),
    0x0002: ("Pong", ">I", ("nonce",)),
    0x0003: ("AddRecord", ">IBBH", ("rid", "atype", "rtlen", "rnlen")),
    0x0004: ("DelRecord", ">I", ("rid",)),
    0x0005: ("UploadDone", ">I", (None,)),
    0x0006: ("AddInfo", ">IBBH", ("rid", "keylen", None, "valen")),
}


@dataclass
class Parsed:
    name: str
    fields: dict[str, Any]
    #: The frame is the message's canonical encoding.
    canonical: bool = True


class DocumentedFramingError(Exception):
    pass


def _text(raw: bytes) -> tuple[str, bool]:
    """Text as the document says it is read: UTF-8, else Latin-1 (and then not canonical)."""
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("latin-1"), False


def _strings(name: str, values: dict[str, Any], rest: bytes) -> Parsed:
    """The string part of AddRecord or AddInfo, or why the message is skipped."""
    first, second = ("rtlen", "rnlen") if name == "AddRecord" else ("keylen", "valen")
    a, b = values.pop(first), values.pop(second)
    if a + b > len(rest):
        return Parsed("Skipped", {}, False)
    if name == "AddRecord":
        kind = values["atype"]
        if b == 0 or kind not in (0, 1) or (kind == 0 and a == 0):
            return Parsed("Skipped", {}, False)
    elif a == 0:
        return Parsed("Skipped", {}, False)
    text_a, utf8_a = _text(rest[:a])
    text_b, utf8_b = _text(rest[a : a + b])
    keys = ("rtype", "name") if name == "AddRecord" else ("key", "value")
    values.update(zip(keys, (text_a, text_b), strict=True))
    return Parsed(name, values, utf8_a and utf8_b and a + b == len(rest))


def _body(msgid: int, body: bytes) -> Parsed:
    if not body or msgid not in FIXED:
        return Parsed("Skipped", {"msgid": msgid, "length": len(body)}, False)
    name, layout, names = FIXED[msgid]
    size = struct.calcsize(layout)
    if len(body) < size:
        return Parsed("Skipped", {"msgid": msgid, "length": len(body)}, False)
    unpacked = struct.unpack_from(layout, body)
    values = {field: value for field, value in zip(names, unpacked, strict=True) if field}
    reserved_zero = all(value == 0 for f, value in zip(names, unpacked, strict=True) if not f)
    if name in ("AddRecord", "AddInfo"):
        parsed = _strings(name, values, body[size:])
        if parsed.name == "Skipped":
            parsed.fields = {"msgid": msgid, "length": len(body)}
        parsed.canonical = parsed.canonical and reserved_zero
        return parsed
    return Parsed(name, values, reserved_zero and len(body) == size)


def parse_as_documented(data: bytes) -> list[Parsed]:
    """Frames as docs/protocol.md describes them, read with struct alone."""
    out: list[Parsed] = []
    pos = 0
    while pos < len(data):
        magic, msgid, length = HEADER.unpack_from(data, pos)
        if magic != MAGIC:
            raise DocumentedFramingError
        if length > DEFAULT_MAX_BODY:
            # Passed over unread as soon as the header is there; the example may end
            # inside the body.
            out.append(Parsed("Skipped", {"msgid": msgid, "length": length}, True))
            pos += HEADER.size + length
            continue
        body = data[pos + HEADER.size : pos + HEADER.size + length]
        assert len(body) == length, "an example ends inside a frame"
        out.append(_body(msgid, body))
        pos += HEADER.size + length
    return out


def parse_announcement(data: bytes) -> Parsed:
    magic, version, reserved, addr, port, reserved2, key = struct.unpack_from(">HBBIHHI", data)
    assert magic == MAGIC and version == 0
    canonical = len(data) == 16 and reserved == reserved2 == 0
    return Parsed("Announce", {"addr": addr, "port": port, "key": key}, canonical)


# --- the checks --------------------------------------------------------------------------


def _matches(item: Any, expected: Expected) -> bool:
    """The codec's `item` is what `expected` says (Skipped: only the fields given)."""
    if type(item).__name__ != expected.name:
        return False
    if expected.name in MESSAGES or expected.name == "Announce":
        return bool(item == type(item)(**expected.fields))
    return all(getattr(item, k) == v for k, v in expected.fields.items())


def _decode(data: bytes, bytewise: bool) -> tuple[list[wire.Decoded], wire.FramingError | None]:
    decoder = wire.Decoder()
    out: list[wire.Decoded] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
    except wire.FramingError as error:
        return out + error.decoded, error
    assert decoder.buffered == 0, "bytes left over: the example ends inside a frame"
    return out, None


def test_the_document_has_examples_of_every_message() -> None:
    named = {e.name for example in EXAMPLES for e in example.expected}
    assert set(MESSAGES) | OTHERS <= named


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.label)
def test_example_decodes_with_the_codec(example: Example) -> None:
    items = list(example.expected)
    if items[-1].name == "Announce":
        (expected,) = items
        decoded = wire.Announce.decode(example.data)
        assert _matches(decoded, expected), f"{decoded} is not {expected}"
        return
    broken = items[-1].name == "FramingError"
    messages = items[:-1] if broken else items
    for bytewise in (False, True):
        out, error = _decode(example.data, bytewise)
        assert (error is not None) == broken, f"framing error: {error}"
        assert len(out) == len(messages), f"decoded {out}"
        for item, expected in zip(out, messages, strict=True):
            assert _matches(item, expected), f"{item} is not {expected}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.label)
def test_example_matches_the_documented_layout(example: Example) -> None:
    *messages, last = example.expected
    if last.name == "Announce":
        parsed = [parse_announcement(example.data)]
        messages.append(last)
    elif last.name == "FramingError":
        with pytest.raises(DocumentedFramingError):
            parse_as_documented(example.data)
        return
    else:
        parsed = parse_as_documented(example.data)
        messages.append(last)
    assert [p.name for p in parsed] == [m.name for m in messages]
    for item, expected in zip(parsed, messages, strict=True):
        for key, value in expected.fields.items():
            if item.name != "Skipped" or key in item.fields:
                assert item.fields[key] == value, f"{key}: {item.fields[key]!r} != {value!r}"


def _canonical_examples() -> list[tuple[Example, Expected]]:
    """Examples of one message or announcement whose bytes are its canonical encoding."""
    found = []
    for example in EXAMPLES:
        if len(example.expected) != 1:
            continue
        expected = example.expected[0]
        if expected.name == "Announce":
            parsed = [parse_announcement(example.data)]
        elif expected.name in MESSAGES:
            try:
                parsed = parse_as_documented(example.data)
            except (AssertionError, DocumentedFramingError, struct.error):
                continue  # a broken example: the other tests say why
        else:
            continue
        if len(parsed) == 1 and parsed[0].canonical:
            found.append((example, expected))
    return found


@pytest.mark.parametrize(
    ("example", "expected"), _canonical_examples(), ids=lambda e: getattr(e, "label", "")
)
def test_canonical_example_is_what_the_codec_encodes(example: Example, expected: Expected) -> None:
    cls = wire.Announce if expected.name == "Announce" else MESSAGES[expected.name]
    assert cls(**expected.fields).encode() == example.data


def test_every_message_has_a_canonical_example() -> None:
    named = {expected.name for _, expected in _canonical_examples()}
    assert named == set(MESSAGES) | {"Announce"}


def test_top_level_sections_are_the_cited_titles() -> None:
    assert section_titles(TEXT, "## ") == SECTIONS


def _anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, "-" for spaces."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_links_within_the_document_lead_to_headings() -> None:
    titles = section_titles(TEXT, "## ") + section_titles(TEXT, "### ")
    anchors = {_anchor(title) for title in titles}
    links = re.findall(r"\]\(#([^)]+)\)", TEXT)
    assert links, "the contents list links to the sections"
    assert set(links) <= anchors


def test_every_message_has_its_subsection() -> None:
    messages = TEXT.split("\n## Messages\n", 1)[1].split("\n## ", 1)[0]
    assert section_titles(messages, "### ") == list(MESSAGES)


def test_registry_table_matches_the_codec() -> None:
    rows = table_rows(TEXT, "| id | message |")
    assert [row[1] for row in rows] == list(MESSAGES)
    for row in rows:
        cls = MESSAGES[row[1]]
        assert int(row[0], 16) == cls.msgid
        assert row[2] == ("server → client" if cls.msgid >= 0x8000 else "client → server")
        fixed = int(row[3])
        assert fixed == struct.calcsize(FIXED[cls.msgid][1])
        # A body one byte short of the fixed part is skipped, as the document says.
        assert isinstance(wire.decode_body(cls.msgid, bytes(fixed - 1)), wire.Skipped)


def test_stated_defaults_are_the_configured_ones(tmp_path: Path) -> None:
    rows = table_rows(TEXT, "| setting | default |")
    keys = {row[0].strip("`"): row[1] for row in rows}
    assert {"maxBodyLength", "tcptimeout", "commitSizeLimit"} <= set(keys)
    path = tmp_path / "doc.conf"
    path.write_text("[recceiver]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
    assert load_config(str(path), environ={}) == load_config(None, environ={})


def test_documented_body_limit_is_the_codec_default() -> None:
    # parse_as_documented breaks the stream where docs/protocol.md, Limits, says.
    assert DEFAULT_MAX_BODY == wire.MAX_BODY_LENGTH


def test_commit_size_limit_zero_means_a_thousand_records() -> None:
    # docs/protocol.md (A session, Limits), the README and example_config() say so.
    assert "`commitSizeLimit` records (0, the default, means 1,000)" in TEXT
    assert session_limits(load_config(None, environ={})).batch_records == 1000
    configured = load_config(None, environ={"RECCEIVER_RECCEIVER_COMMITSIZELIMIT": "50"})
    assert session_limits(configured).batch_records == 50
