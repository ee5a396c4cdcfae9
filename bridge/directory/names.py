"""Channel names in name order, in chunks, searchable by glob (pure).

The directory gives every name a *slot* (an index into its columns) for life; this
module keeps the slots sorted by name in chunks of a few thousand, like a B-tree of one
level. A chunk is replaced, never changed, when a name is inserted, so a query running in
another thread over a snapshot of the chunk list sees each chunk whole. Each chunk builds,
on first use, one folded search text of its names (``"\\n" + "\\n".join(...) + "\\n"``,
a newline inside a name stored as NUL) and the start of each name in it, so a glob is
answered by a fast literal search over the text rather than a regex per name.

Order is Python's string order (code points), which is the order of UTF-8 bytes: the
order of a ChannelFinder's ``sort=name`` on a keyword field.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bridge.directory.query import ANY_ONE, ANY_RUN, Glob, fold

#: Names per chunk after a split; a chunk splits when it holds twice as many.
CHUNK = 2048

Slots = npt.NDArray[np.int32]
Indices = npt.NDArray[np.intp]


class Chunk:
    """Slots in name order; `first` is the first name. Immutable once published."""

    __slots__ = ("slots", "first", "_text", "_starts")

    def __init__(self, slots: Slots, first: str) -> None:
        self.slots = slots
        self.first = first
        self._text: str | None = None
        self._starts: npt.NDArray[np.int32] | None = None

    def text(self, names: Sequence[str]) -> tuple[str, npt.NDArray[np.int32]]:
        """The folded search text and each name's start in it (built once)."""
        if self._text is None or self._starts is None:
            folded = [fold(names[s]).replace("\n", "\0") for s in self.slots.tolist()]
            lengths = np.fromiter((len(n) + 1 for n in folded), np.int32, len(folded))
            starts = np.empty(len(folded), np.int32)
            if len(folded):
                starts[0] = 1
                np.cumsum(lengths[:-1], out=starts[1:])
                starts[1:] += 1
            self._starts = starts
            self._text = "\n" + "\n".join(folded) + "\n"
        return self._text, self._starts

    def matching(self, glob: Glob, names: Sequence[str]) -> Indices:
        """Positions (sorted) in this chunk of the names `glob` matches."""
        if glob.matches_everything:
            return np.arange(len(self.slots))
        needle, implied = search_plan(glob)
        if needle is None:
            return self.verify(np.arange(len(self.slots)), glob, names)
        text, starts = self.text(names)
        shift = 1 if needle.startswith("\n") else 0
        hits = [m.start() + shift for m in re.finditer(re.escape(needle), text)]
        if not hits:
            return np.arange(0)
        found = np.unique(np.searchsorted(starts, np.array(hits), side="right") - 1)
        return found if implied else self.verify(found, glob, names)

    def verify(self, positions: Indices, glob: Glob, names: Sequence[str]) -> Indices:
        """The `positions` whose names `glob` matches."""
        slots = self.slots
        keep = [p for p in positions.tolist() if glob.matches(names[slots[p]])]
        return np.array(keep, dtype=np.intp)


def search_plan(glob: Glob) -> tuple[str | None, bool]:
    """A literal to look for in a search text, and whether finding it is enough.

    Anchors use the newlines around names: ``SR*`` looks for ``"\\nsr"``, ``*:VAL`` for
    ``":val\\n"``. (None, False): no literal; every name must be checked.
    """
    tokens = glob.tokens
    lits = [t[1:].replace("\n", "\0") for t in tokens if t[0] == "\0"]
    if not tokens:
        return "\n\n", True
    if ANY_ONE not in tokens:
        shape = tuple("L" if t[0] == "\0" else t for t in tokens)
        simple = {
            ("L",): ("\n{0}\n", True),
            ("L", ANY_RUN): ("\n{0}", True),
            (ANY_RUN, "L"): ("{0}\n", True),
            (ANY_RUN, "L", ANY_RUN): ("{0}", True),
        }
        if shape in simple:
            form, implied = simple[shape]
            return form.format(lits[0]), implied
    candidates = list(lits)
    if tokens[0][0] == "\0":
        candidates.append("\n" + lits[0])
    if tokens[-1][0] == "\0":
        candidates.append(lits[-1] + "\n")
    if not candidates:
        return None, False
    return max(candidates, key=len), False


class SortedNames:
    """Slots of `names` (the directory's slot -> name list) kept in name order."""

    def __init__(self, names: Sequence[str]) -> None:
        self._names = names
        self.chunks: list[Chunk] = []
        self._firsts: list[str] = []

    def build(self, ordered: Slots) -> None:
        """Start over with `ordered`: every slot, already in name order."""
        self.chunks = [
            Chunk(ordered[i : i + CHUNK].copy(), self._names[ordered[i]])
            for i in range(0, len(ordered), CHUNK)
        ]
        self._firsts = [c.first for c in self.chunks]

    def __len__(self) -> int:
        return sum(len(c.slots) for c in self.chunks)

    def _locate(self, name: str) -> tuple[int, int]:
        """(chunk index, position) where `name` is or would be inserted."""
        index = max(bisect_right(self._firsts, name) - 1, 0)
        chunk = self.chunks[index].slots
        return index, bisect_left(chunk, name, key=self._names.__getitem__)

    def find(self, name: str) -> int | None:
        """The slot holding exactly `name`, or None."""
        if not self.chunks:
            return None
        index, pos = self._locate(name)
        chunk = self.chunks[index].slots
        if pos < len(chunk) and self._names[chunk[pos]] == name:
            return int(chunk[pos])
        return None

    def insert(self, slot: int) -> None:
        """Add `slot` (whose name is not in yet) at its place."""
        name = self._names[slot]
        if not self.chunks:
            self.chunks = [Chunk(np.array([slot], np.int32), name)]
            self._firsts = [name]
            return
        index, pos = self._locate(name)
        slots = np.insert(self.chunks[index].slots, pos, slot)
        first = name if pos == 0 else self.chunks[index].first
        if len(slots) < 2 * CHUNK:
            self.chunks[index] = Chunk(slots, first)
            self._firsts[index] = first
            return
        half = len(slots) // 2
        right = Chunk(slots[half:].copy(), self._names[slots[half]])
        self.chunks[index : index + 1] = [Chunk(slots[:half].copy(), first), right]
        self._firsts[index : index + 1] = [first, right.first]

    def after(self, name: str) -> tuple[int, int]:
        """(chunk index, position) of the first name greater than `name`."""
        if not self.chunks:
            return 0, 0
        index = max(bisect_right(self._firsts, name) - 1, 0)
        chunk = self.chunks[index].slots
        return index, bisect_right(chunk, name, key=self._names.__getitem__)


class BulkIndex:
    """Name -> slot while a bulk load creates slots, before they are sorted.

    An open-addressing table of slots (int32, at most half full) probed with the names'
    own (cached) hashes. A dict would hold an int object per name, made between the
    names' and DESCs' own objects; freed at the end of the load, their memory would
    stay with the process (pymalloc keeps an arena while any object in it lives).
    """

    def __init__(self, names: Sequence[str]) -> None:
        self._names = names
        self._table = np.full(1 << 12, -1, np.int32)
        self._count = 0

    def find(self, name: str) -> int | None:
        table, names = self._table, self._names
        mask = len(table) - 1
        index = hash(name) & mask
        while True:
            slot = int(table[index])
            if slot < 0:
                return None
            if names[slot] == name:
                return slot
            index = (index + 1) & mask

    def add(self, slot: int) -> None:
        """Index `slot`, whose name (``names[slot]``) is not indexed yet."""
        if 2 * (self._count + 1) > len(self._table):
            bigger = np.full(2 * len(self._table), -1, np.int32)
            for known in self._table[self._table >= 0].tolist():
                self._place(bigger, known)
            self._table = bigger
        self._place(self._table, slot)
        self._count += 1

    def _place(self, table: npt.NDArray[np.int32], slot: int) -> None:
        mask = len(table) - 1
        index = hash(self._names[slot]) & mask
        while table[index] >= 0:
            index = (index + 1) & mask
        table[index] = slot
