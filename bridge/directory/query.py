"""ChannelFinder's channel query grammar, parsed once into a `Query` (pure).

The rules are those of ChannelFinder's ``ChannelRepository.getBuiltQuery`` (read from its
source), so a query string means here what it means to a ChannelFinder:

- ``~name``: a glob on the channel name; ``~tag``: a glob on tag names; ``~size``,
  ``~from`` (the largest of repeated values wins), ``~search_after`` (the first value),
  ``~track_total_hits`` (the first value, ``true`` in any case). Any other key is a
  property filter ``key=glob``; the key itself is a glob on property names.
- Globs: ``*`` any run of characters, ``?`` exactly one, ``\\`` escapes the next
  character; every match is case-insensitive (names, property names, values, tags).
- Within one value, ``|``, ``,`` and ``;`` separate alternatives (ORed), each trimmed of
  leading and trailing whitespace and control characters, with Java's ``String.split``
  edge cases: an empty value is one empty alternative, trailing empty ones are dropped.
- A repeated ``~name`` or ``~tag`` is ANDed; a repeated property key is ORed (all its
  values form one disjunction); different keys are ANDed. A key that differs only in
  surrounding spaces is a different key, as in a ChannelFinder.
- A trailing ``!`` on the key negates: ``prop!=*`` means the property is absent,
  ``prop!=v`` that the channel has the property with a value not matching ``v``;
  ``~tag!=t`` means no tag matches. ``~name!`` is not negated: the ``!`` is dropped.
- The default page is `DEFAULT_SIZE`; `Query.check_window` refuses ``~from + ~size``
  beyond `MAX_WINDOW` for listings (a ChannelFinder answers 400 and points to scroll).

Where a ChannelFinder answers 500 for a malformed query (a ``~size`` that is not a
number, a negative one, a value made only of separators), `QueryError` makes it a 400
with a message saying what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: ChannelFinder's ``elasticsearch.query.size`` default: the page size without ``~size``.
DEFAULT_SIZE = 10_000
#: The largest ``~from + ~size`` a listing accepts (Elasticsearch's result window).
MAX_WINDOW = 10_000
_INT32_MAX = 2**31 - 1
_SEPARATORS = re.compile("[|,;]")
_INTEGER = re.compile(r"[+-]?[0-9]+")

NAME = "~name"
TAG = "~tag"
SIZE = "~size"
FROM = "~from"
SEARCH_AFTER = "~search_after"
TRACK_TOTAL_HITS = "~track_total_hits"


class QueryError(ValueError):
    """A query a client must fix (HTTP 400); the message says what is wrong."""


def fold(text: str) -> str:
    """Lower-case `text` character by character, never changing its length.

    Matching compares folded texts. A character whose lower case is longer than one
    character (e.g. U+0130) is kept as it is, so positions in a folded text are
    positions in the original.
    """
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def java_trim(text: str) -> str:
    """Java's ``String.trim``: strip characters up to U+0020 at both ends."""
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


def split_alternatives(value: str) -> list[str]:
    """Java's ``value.split("[|,;]")``: no separator gives ``[value]`` (so ``""`` gives
    ``[""]``); otherwise trailing empty pieces are dropped (so ``"|"`` gives ``[]``)."""
    if _SEPARATORS.search(value) is None:
        return [value]
    pieces = _SEPARATORS.split(value)
    while pieces and pieces[-1] == "":
        pieces.pop()
    return pieces


#: Glob tokens: a literal run (folded), or one of the two wildcards.
ANY_ONE = "?"
ANY_RUN = "*"


@dataclass(frozen=True, slots=True)
class Glob:
    """One case-insensitive wildcard pattern.

    Attributes:
        pattern: the pattern as given (trimmed).
        tokens: folded literal runs and the wildcards `ANY_ONE`/`ANY_RUN`, in order;
            consecutive `ANY_RUN` collapse into one.
    """

    pattern: str
    tokens: tuple[str, ...]
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str) -> Glob:
        tokens: list[str] = []
        literal: list[str] = []
        i = 0
        while i < len(pattern):
            ch = pattern[i]
            if ch == "\\" and i + 1 < len(pattern):
                literal.append(pattern[i + 1])
                i += 2
                continue
            if ch in "*?":
                if literal:
                    tokens.append("\0" + fold("".join(literal)))
                    literal = []
                if not (ch == ANY_RUN and tokens and tokens[-1] == ANY_RUN):
                    tokens.append(ch)
            else:
                literal.append(ch)
            i += 1
        if literal:
            tokens.append("\0" + fold("".join(literal)))
        parts = [
            ".*" if t == ANY_RUN else "." if t == ANY_ONE else re.escape(t[1:]) for t in tokens
        ]
        return cls(pattern, tuple(tokens), re.compile("".join(parts), re.DOTALL))

    def matches(self, text: str) -> bool:
        """True when the whole of `text` matches, ignoring case."""
        return self.regex.fullmatch(fold(text)) is not None

    @property
    def matches_everything(self) -> bool:
        """True for ``*`` (and ``**``...): every text matches, the empty one too."""
        return self.tokens == (ANY_RUN,)

    @property
    def literal(self) -> str | None:
        """The folded text this glob matches exactly, when it has no wildcard."""
        if not self.tokens:
            return ""
        if len(self.tokens) == 1 and self.tokens[0][0] == "\0":
            return self.tokens[0][1:]
        return None

    @property
    def has_any_one(self) -> bool:
        return ANY_ONE in self.tokens

    def literal_runs(self) -> list[str]:
        """The folded literal runs, in order."""
        return [t[1:] for t in self.tokens if t[0] == "\0"]


def _alternatives(values: Iterable[str], key: str) -> tuple[Glob, ...]:
    globs = tuple(Glob.compile(java_trim(p)) for v in values for p in split_alternatives(v))
    if not globs:
        raise QueryError(f"{key}: no pattern, only separators (| , ;)")
    return globs


@dataclass(frozen=True, slots=True)
class NameTerm:
    """One ``~name`` value: the channel name matches one of `alternatives`."""

    alternatives: tuple[Glob, ...]

    def matches(self, name: str) -> bool:
        return any(g.matches(name) for g in self.alternatives)


@dataclass(frozen=True, slots=True)
class TagTerm:
    """One ``~tag`` value: some tag matches one of `alternatives` (none, if `negated`)."""

    alternatives: tuple[Glob, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class PropertyTerm:
    """Every value of one property key, ORed.

    Not negated: some property whose name matches `key` has a value matching one of
    `alternatives`. Negated: for each alternative, either (pattern exactly ``*``) no
    property name matches `key`, or some property whose name matches `key` has a value
    that does not match it; the term holds when any of those holds.
    """

    key: Glob
    alternatives: tuple[Glob, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed channel query; see the module docstring for the rules."""

    names: tuple[NameTerm, ...] = ()
    tags: tuple[TagTerm, ...] = ()
    properties: tuple[PropertyTerm, ...] = ()
    size: int = DEFAULT_SIZE
    offset: int = 0
    search_after: str | None = None
    track_total_hits: bool = False

    def check_window(self, scroll_path: str = "/ChannelFinder/resources/scroll") -> None:
        """Refuse a listing past the result window, as a ChannelFinder does (HTTP 400)."""
        if self.size + self.offset > MAX_WINDOW:
            raise QueryError(
                f"~from + ~size = {self.offset + self.size} exceeds the maximum of "
                f"{MAX_WINDOW}: use the {scroll_path} api"
            )


def _count(values: list[str], key: str, current: int) -> int:
    """ChannelFinder's ``parseCountParameter``: the largest value."""
    numbers = []
    for value in values:
        if _INTEGER.fullmatch(value) is None:
            raise QueryError(f"{key}={value!r} is not a whole number")
        number = int(value)
        if not 0 <= number <= _INT32_MAX:
            raise QueryError(f"{key}={value!r} must be from 0 to {_INT32_MAX}")
        numbers.append(number)
    return max(numbers) if numbers else current


def group_parameters(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Group query parameters by exact key, keys in order of first appearance
    (Spring's ``MultiValueMap`` of request parameters)."""
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


def parse_query(pairs: Iterable[tuple[str, str]]) -> Query:
    """Parse decoded query parameters (in order, keys repeated) into a `Query`.

    Raises:
        QueryError: a malformed ``~size``/``~from`` or a value of separators only.
    """
    names: list[NameTerm] = []
    tags: list[TagTerm] = []
    properties: list[PropertyTerm] = []
    size, offset = DEFAULT_SIZE, 0
    search_after: str | None = None
    track = False
    for raw_key, values in group_parameters(pairs).items():
        key = java_trim(raw_key)
        negated = key.endswith("!")
        if negated:
            key = key[:-1]
        if key == NAME:
            names += [NameTerm(_alternatives([v], NAME)) for v in values]
        elif key == TAG:
            tags += [TagTerm(_alternatives([v], TAG), negated) for v in values]
        elif key == SIZE:
            size = _count(values, SIZE, size)
        elif key == FROM:
            offset = _count(values, FROM, offset)
        elif key == SEARCH_AFTER:
            search_after = values[0]
        elif key == TRACK_TOTAL_HITS:
            track = values[0].lower() == "true"
        else:
            properties.append(
                PropertyTerm(Glob.compile(key), _alternatives(values, key or "''"), negated)
            )
    return Query(tuple(names), tuple(tags), tuple(properties), size, offset, search_after, track)
