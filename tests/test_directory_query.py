"""ChannelFinder's query rules, one table per rule, over a small known directory.

Each table row is (query parameters as a client sends them, expected channel names in
name order). Every table also runs in the shapes real clients send: pyCFClient (a
``name='a,b'`` becomes repeated ``~name``), Phoebus (always a ``~name``, empty when the
user typed only properties) and pvinfo (bare input wrapped as ``*input*``).
"""

from __future__ import annotations

import pytest

from bridge.directory import search
from bridge.directory.model import Directory
from bridge.directory.query import (
    DEFAULT_SIZE,
    MAX_WINDOW,
    Glob,
    QueryError,
    parse_query,
    split_alternatives,
)
from tests.directory_data import ALL, directory

Params = list[tuple[str, str]]
#: IOC A's channels: A is live, so it owns SR:C01:BPM2, which the inactive B claims too.
ACTIVE = ["SR:C01:BPM1", "SR:C01:BPM1:X", "SR:C01:BPM2", "sr:c02:bpm3"]


@pytest.fixture(scope="module", params=["watch", "bulk", "v1-watch", "v1-bulk"])
def cf(request: pytest.FixtureRequest) -> Directory:
    """The fleet applied document by document, and loaded at once, from v2 documents
    and from what a v1 bridge stored: same answers."""
    form = "v1" if request.param.startswith("v1") else "v2"
    return directory(bulk=request.param.endswith("bulk"), form=form)


def names(cf: Directory, params: Params) -> list[str]:
    state = cf.state
    selection = search.select(state, parse_query(params), exact_count=True)
    found = [state.names[s] for s in selection.slots]
    assert selection.count == search.count(state, parse_query(params)) >= len(found)
    assert search.select(state, parse_query(params), exact_count=False).slots == selection.slots
    return found


NAME_GLOBS = [
    ([("~name", "*")], ALL),
    ([("~name", "SR*")], ["SR:C01:BPM1", "SR:C01:BPM1:X", "SR:C01:BPM2", "sr:c02:bpm3"]),
    ([("~name", "sr:c0?:*")], ["SR:C01:BPM1", "SR:C01:BPM1:X", "SR:C01:BPM2", "sr:c02:bpm3"]),
    ([("~name", "*bpm1")], ["SR:C01:BPM1"]),
    ([("~name", "*BPM?")], ["SR:C01:BPM1", "SR:C01:BPM2", "sr:c02:bpm3"]),
    ([("~name", "SR:C01:BPM1")], ["SR:C01:BPM1"]),
    ([("~name", "sr:C01:bpm1")], ["SR:C01:BPM1"]),
    ([("~name", "BR:Q\\*2")], ["BR:Q*2"]),
    ([("~name", "BR:Q*2")], ["BR:Q*2"]),
    ([("~name", "*:*:*:*")], ["SR:C01:BPM1:X"]),
    ([("~name", "nothing*")], []),
]

ALTERNATIVES = [
    ([("~name", "BR:Q1|sr:c02:bpm3")], ["BR:Q1", "sr:c02:bpm3"]),
    ([("~name", "BR:Q1,sr:c02:bpm3")], ["BR:Q1", "sr:c02:bpm3"]),
    ([("~name", "BR:Q1;sr:c02:bpm3")], ["BR:Q1", "sr:c02:bpm3"]),
    ([("~name", " BR:Q1 | sr:c02:bpm3 ")], ["BR:Q1", "sr:c02:bpm3"]),
    ([("~name", "BR:Q1|")], ["BR:Q1"]),
    (
        [("iocName", "IOCA|nothing")],
        ["SR:C01:BPM1", "SR:C01:BPM1:X", "SR:C01:BPM2", "sr:c02:bpm3"],
    ),
]

REPEATED_NAME_ANDED = [
    ([("~name", "SR*"), ("~name", "*BPM1")], ["SR:C01:BPM1"]),
    ([("~name", "SR*"), ("~name", "BR*")], []),
    ([("~name!", "SR*"), ("~name", "*2")], ["SR:C01:BPM2"]),
]

PROPERTIES = [
    ([("pvStatus", "Active")], ACTIVE),
    ([("pvstatus", "ACTIVE")], ACTIVE),
    ([("iocName", "IOCA"), ("iocName", "IOCB")], ALL),
    ([("pvStatus", "Inactive"), ("recordType", "ai")], ["BR:Q1"]),
    ([("host*", "hostB")], ["BR:Q*2", "BR:Q1"]),
    ([("recordType", "a?")], ["BR:Q1", "SR:C01:BPM1", "SR:C01:BPM1:X", "SR:C01:BPM2"]),
    ([("recordDesc", "beam*")], ["SR:C01:BPM1", "SR:C01:BPM1:X", "SR:C01:BPM2"]),
    ([("recordDesc", "Quad, one")], []),
    ([("archive", "*")], ["SR:C01:BPM1", "SR:C01:BPM1:X", "sr:c02:bpm3"]),
    ([("alias", "SR:C01:BPM1")], ["SR:C01:BPM1:X"]),
    ([("duplicateCount", "2")], ["SR:C01:BPM2"]),
    ([("pvaPort", "5075")], ACTIVE),
    ([("~foo", "*")], []),
    ([("noSuchProperty", "*")], []),
]

NEGATION = [
    ([("pvStatus!", "Active")], ["BR:Q*2", "BR:Q1"]),
    ([("alias!", "*")], [n for n in ALL if n != "SR:C01:BPM1:X"]),
    ([("recordDesc!", "*")], ["BR:Q*2", "sr:c02:bpm3"]),
    ([("archive!", "Monitor")], ["sr:c02:bpm3"]),
    ([("archive!", "*|Monitor")], [n for n in ALL if n not in ("SR:C01:BPM1", "SR:C01:BPM1:X")]),
    ([("~tag!", "anything")], ALL),
    ([("~tag", "*")], []),
    ([("~name!", "BR*")], ["BR:Q*2", "BR:Q1"]),
]

PAGING = [
    ([("~size", "2")], ALL[:2]),
    ([("~size", "2"), ("~from", "3")], ALL[3:5]),
    ([("~size", "1"), ("~size", "3")], ALL[:3]),
    ([("~size", "0")], []),
    ([("~search_after", "BR:Q1")], ALL[2:]),
    ([("~search_after", "BR:Q1"), ("~size", "1")], ALL[2:3]),
    ([("~search_after", "zzz")], []),
    ([("~name", "*"), ("~track_total_hits", "TRUE")], ALL),
]

EMPTY_NAME = [
    # A ChannelFinder turns an empty ~name into a wildcard query for the empty name,
    # which no channel has; Phoebus sends one whenever only properties were typed.
    ([("~name", "")], []),
    ([("pvStatus", "Active"), ("~name", "")], []),
]

TABLES = {
    "name globs": NAME_GLOBS,
    "alternatives": ALTERNATIVES,
    "repeated ~name ANDed": REPEATED_NAME_ANDED,
    "properties": PROPERTIES,
    "negation": NEGATION,
    "paging": PAGING,
    "empty ~name": EMPTY_NAME,
}
ROWS = [(table, params, want) for table, rows in TABLES.items() for params, want in rows]


@pytest.mark.parametrize(("table", "params", "want"), ROWS, ids=lambda v: str(v)[:40])
def test_rule(cf: Directory, table: str, params: Params, want: list[str]) -> None:
    assert names(cf, params) == want, table


def pycfclient(params: Params) -> Params:
    """pyCFClient's ``find(name='a,b')``: one ``~name`` per comma-separated pattern."""
    out: Params = []
    for key, value in params:
        if key == "~name":
            out += [("~name", part.strip()) for part in value.split(",")]
        else:
            out.append((key, value))
    return out


def phoebus(params: Params) -> Params:
    """Phoebus's ``buildSearchMap``: ``~name`` always present (empty when none typed)."""
    if any(key == "~name" for key, _ in params):
        return params
    return [*params, ("~name", "")]


@pytest.mark.parametrize(("table", "params", "want"), ROWS, ids=lambda v: str(v)[:40])
def test_rule_as_pycfclient_sends_it(
    cf: Directory, table: str, params: Params, want: list[str]
) -> None:
    """Splitting a name on commas into repeated ``~name`` ANDs instead of ORs."""
    split = pycfclient(params)
    expected = want
    name_values = [v for k, v in params if k == "~name"]
    if any("," in v for v in name_values):
        parts = [p.strip() for v in name_values for p in v.split(",")]
        expected = [n for n in want if all(any(_glob(p, n) for p in [x]) for x in parts)]
    assert names(cf, split) == expected, table


def _glob(pattern: str, name: str) -> bool:
    return any(Glob.compile(p.strip()).matches(name) for p in split_alternatives(pattern))


@pytest.mark.parametrize(("table", "params", "want"), ROWS, ids=lambda v: str(v)[:40])
def test_rule_as_phoebus_sends_it(
    cf: Directory, table: str, params: Params, want: list[str]
) -> None:
    """Property-only queries from Phoebus carry an empty ``~name``, which matches nothing."""
    has_name = any(key == "~name" for key, _ in params)
    assert names(cf, phoebus(params)) == (want if has_name else []), table


PVINFO = [
    ("BPM1", ["SR:C01:BPM1", "SR:C01:BPM1:X"]),
    ("c02", ["sr:c02:bpm3"]),
    ("=BR:Q1", ["BR:Q1"]),
    ("*Q1", ["BR:Q1"]),
    ("Quad,one", []),
]


@pytest.mark.parametrize(("typed", "want"), PVINFO)
def test_pvinfo_wrapping(cf: Directory, typed: str, want: list[str]) -> None:
    """pvinfo wraps bare input as ``*input*`` (not after ``=``), commas become ``?``."""
    if typed.startswith("="):
        pattern = typed[1:]
    elif not typed.startswith("*") and not typed.endswith("*"):
        pattern = f"*{typed}*"
    else:
        pattern = typed
    assert names(cf, [("~name", pattern.replace(",", "?"))]) == want


def test_defaults() -> None:
    query = parse_query([])
    assert (query.size, query.offset, query.search_after) == (DEFAULT_SIZE, 0, None)
    assert not query.track_total_hits


@pytest.mark.parametrize(
    "params",
    [
        [("~size", "10001")],
        [("~size", "5000"), ("~from", "5001")],
        [("~from", "1")],
    ],
)
def test_window_refused_past_the_limit(params: Params) -> None:
    with pytest.raises(QueryError, match="scroll"):
        parse_query(params).check_window()
    parse_query([("~size", str(MAX_WINDOW))]).check_window()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("~size", "ten")], "not a whole number"),
        ([("~size", "-1")], "from 0"),
        ([("~from", "1.5")], "not a whole number"),
        ([("~name", "|")], "only separators"),
        ([("pvStatus", ",;")], "only separators"),
    ],
)
def test_malformed_is_a_clear_400(params: Params, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(params)


def test_java_split_edge_cases() -> None:
    assert split_alternatives("") == [""]
    assert split_alternatives("a") == ["a"]
    assert split_alternatives("|a") == ["", "a"]
    assert split_alternatives("a||b|") == ["a", "", "b"]
    assert split_alternatives("|||") == []
