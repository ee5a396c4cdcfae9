"""Unchanged runs: finding the records an IOC sent exactly as last time, undecoded.

An IOC that reconnects re-sends its whole database, almost always unchanged. A
`RunDecoder` cuts the record frames of an upload into runs and digests each from
its bytes; a run whose digest equals the one stored for the same position comes
out as one `UnchangedRun` instead of its messages, so its AddInfo frames are never
decoded and its records never built. Everything else comes out as the plain
`bridge.protocol.wire.Decoder` would give it, in the same order per record.

This module is the optimisation and nothing else: the plain decoder carries no run
state, the session (`bridge.protocol.session`) turns an `UnchangedRun` into a
`bridge.model.KeptRun`, and the server (`bridge.server.connection`) uses a
`RunDecoder` only when the processors take unchanged runs
(`bridge.interfaces.IUnchangedRuns`). A run holds at most about `RUN_HOLD_LIMIT`
bytes.
"""

from __future__ import annotations

import hashlib
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.protocol import wire
from bridge.protocol.wire import (
    ATYPE_ALIAS,
    ATYPE_RECORD,
    HEADER_SIZE,
    MAX_BODY_LENGTH,
    MSG_ADD_INFO,
    MSG_ADD_RECORD,
    MSG_DEL_RECORD,
    MSG_UPLOAD_DONE,
    PROTO_ID,
    AddInfo,
    Decoded,
    Decoder,
    Skipped,
    decode_at,
    decode_record,
    decode_text,
    longer_than,
)

# The layouts, bound by assignment: CPython 3.11 compiles a method call on a name bound
# by an import (``ADD_INFO.unpack_from(...)``) to an attribute load that builds a bound
# method at every call, which costs the hot loop below about 3 % (measured with
# callgrind); on these names it is a plain method call.
_HEADER = wire.HEADER
_ADD_INFO = wire.ADD_INFO
_ADD_RECORD = wire.ADD_RECORD
_U32 = wire.U32

#: Records per run: the unit in which an upload is compared with the previous one.
RUN_RECORDS = 1000
#: A run also ends, at the next record, once its frames add up to this many bytes.
RUN_BYTES = 1 << 20
#: A run holding more than this (huge info tags) is decoded as it arrives, uncompared.
RUN_HOLD_LIMIT = 4 << 20
#: Bytes a decoded name of a compared run costs beyond its frame (str header, list
#: slots, the record id), for `RunDecoder.held`.
NAME_COST = 120


@dataclass(slots=True)
class UnchangedRun:
    """A run of record frames whose digest matched the expected one (`RunDecoder`).

    Not a wire message: its AddRecord and AddInfo frames were checked, not decoded.
    It carries what the session and the store still need: the id, name and type of
    each record, in order, and the alias names (each record's own name and repeats
    left out) with their records.
    """

    index: int
    digest: str
    rids: list[int]
    names: list[str]
    rtypes: list[str]
    aliases: list[str]
    #: For each alias, the position of its record in `names`.
    alias_of: list[int]


@dataclass(slots=True)
class RunEnd:
    """The frames of run `index` were decoded (delivered just before this); its digest.

    ``digest`` is empty for a run that cannot be compared (`RunDecoder.start_runs`).
    """

    index: int
    digest: str


#: What `RunDecoder.feed` returns: the plain decoder's output, and the runs.
RunDecoded = Decoded | UnchangedRun | RunEnd


class RunDecoder:
    """A `Decoder` for an upload that can also cut its record frames into runs.

    Until `start_runs` (and again after the upload's DelRecord or UploadDone) it is
    exactly the plain decoder it wraps: same output, same bounds, same
    `FramingError`. Its buffer is the plain decoder's, so ``buffered`` is bounded
    the same way; the run in progress holds at most about `RUN_HOLD_LIMIT` bytes
    more (``held``).
    """

    def __init__(self, max_body_length: int = MAX_BODY_LENGTH) -> None:
        self._plain = Decoder(max_body_length)
        #: The run in progress (None: runs are off), its position, what is expected.
        self._run: _Run | None = None
        self._run_index = 0
        self._expected: Sequence[str] | None | _Pending = None
        self._seed = b""
        self._max_aliases = 0
        self._max_name = self._max_type = self._name_sure = self._type_sure = 0

    @property
    def max_body_length(self) -> int:
        """The plain decoder's `Decoder.max_body_length`."""
        return self._plain.max_body_length

    def set_body_limit(self, max_body_length: int, name: str = wire.MAX_BODY_LENGTH_LIMIT) -> None:
        """`Decoder.set_body_limit`."""
        self._plain.set_body_limit(max_body_length, name)

    @property
    def buffered(self) -> int:
        """Bytes not decoded yet (`Decoder.buffered`), also while `awaiting`, which
        callers bound by not reading more meanwhile."""
        return len(self._plain._buffer)

    @property
    def held(self) -> int:
        """Bytes of record frames held by the run in progress (≤ about `RUN_HOLD_LIMIT`)."""
        return len(self._run.data) if self._run is not None else 0

    @property
    def held_cost(self) -> int:
        """An upper-bound estimate of what the run in progress holds: its frames
        (`held`) and the names of a compared run, decoded for its `UnchangedRun`."""
        run = self._run
        if run is None:
            return 0
        return len(run.data) + NAME_COST * (len(run.names) + len(run.aliases))

    def hold(self, data: bytes) -> None:
        """Keep bytes undecoded until the next `feed` (`Decoder.hold`)."""
        self._plain.hold(data)

    def feed(self, data: bytes, stop_after: type | None = None) -> list[RunDecoded]:
        """Decode what `data` completes, as `Decoder.feed` does; while runs are on,
        cut them as `start_runs` says (`stop_after` then does not apply)."""
        if self._run is None:
            return typing.cast("list[RunDecoded]", self._plain.feed(data, stop_after))
        return self._feed_runs(self._plain._take(data))

    def start_runs(
        self,
        seed: bytes,
        max_aliases: int = 1000,
        max_name_length: int = 0xFFFF,
        max_type_length: int = 0xFF,
    ) -> None:
        """Cut the record frames of the upload into runs and digest each, from now on.

        A run is `RUN_RECORDS` records (fewer once it holds `RUN_BYTES`), each record
        with the alias and info frames that follow it. Its digest is BLAKE2b-128 over
        `seed` and the run's frames with their record ids blanked: the C RecCaster
        numbers records afresh on every connection (docs/protocol.md, Real clients
        and their quirks), so only the ids' pattern counts. That pattern must be the
        regular one, every alias and info naming the record just begun; a run with
        any other frame, or over `RUN_HOLD_LIMIT`, gets the empty digest, which never
        matches.

        What to compare with comes later, from `expect`. The decoder stops in front of
        the first record (`awaiting` turns True) and decodes nothing more until the
        caller either calls `expect` or, when the client-wide infos so far do not name
        the IOC (pyreccaster sends them after each record), `wait_for_first_run`:
        then the first run is held and the decoder stops again at its end.

        A run whose digest equals the expected one at its index comes out as one
        `UnchangedRun`, and its AddInfo frames are never decoded. Any other run comes
        out as its decoded messages followed by a `RunEnd` with its digest. Other
        frames come out at once, so a client-wide info or a Pong may overtake held
        record frames; DelRecord and UploadDone end the run first and switch runs off.

        A record with more than `max_aliases` alias frames (the session's limit), or a
        record or alias name over `max_name_length` or a type over `max_type_length`
        UTF-8 bytes (the session's `NameLimits`), makes its run one that cannot be
        compared, so that the session applies the limit.
        """
        self._expected = PENDING
        self._seed = seed
        self._max_aliases = max_aliases
        self._max_name, self._max_type = max_name_length, max_type_length
        # Up to this many characters a name fits whatever it holds (4 bytes a character).
        self._name_sure, self._type_sure = max_name_length // 4, max_type_length // 4
        self._run_index = 0
        self._run = self._new_run()

    @property
    def awaiting(self) -> bool:
        """Stopped in front of the first record or at the end of the first run, until
        `expect` (or, in front of the first record, `wait_for_first_run`)."""
        run = self._run
        return self._expected is PENDING and run is not None and (run.ended or run.waiting)

    @property
    def before_records(self) -> bool:
        """`awaiting` in front of the first record (not at the end of the first run)."""
        return self.awaiting and self._run is not None and self._run.waiting

    def expect(self, expected: Sequence[str] | None) -> None:
        """The digests the runs of this upload are compared with (None: nothing is)."""
        self._expected = expected
        if self._run is not None:
            self._run.waiting = False
            if expected is None and not self._run.size:
                self._run = self._new_run()  # nothing held yet: decode as it comes

    def wait_for_first_run(self) -> None:
        """Go on from the first record: hold the first run and stop at its end."""
        assert self._run is not None
        self._run.waiting = False
        self._run.waited = True

    def _feed_runs(self, buf: bytearray) -> list[RunDecoded]:
        # The hot loop of an unchanged re-upload: per frame only the header, the record
        # id and, for AddRecord, the name are looked at. Record frames are left in
        # place with their ids blanked, and added to the run a stretch at a time
        # (``buf[seg:offset]``, `_Run.add`). The current record's raw id and the run's
        # flags live in locals, written back before anything else looks at the run.
        out: list[RunDecoded] = []
        run = self._run
        assert run is not None
        current, through, regular = run.current, run.through, run.regular
        offset = seg = 0
        end = len(buf)
        unpack_header = _HEADER.unpack_from
        while end - offset >= HEADER_SIZE:
            magic, msgid, length = unpack_header(buf, offset)
            if magic != PROTO_ID:
                run.current = current
                run.add(buf, seg, offset)
                self._plain._broken(out, magic)
            start = offset + HEADER_SIZE
            if length > self.max_body_length:
                # Passed over unread (`Decoder.oversize`); a run with a frame left out
                # is not compared, so that what is stored never depends on the limit.
                run.current = current
                run.add(buf, seg, offset)
                if regular:
                    run.irregular(0)
                    regular = False
                skipped, offset = self._plain.oversize(msgid, length, start, end)
                out.append(skipped)
                seg = offset
                continue
            frame_end = start + length
            if frame_end > end:
                break
            if msgid == MSG_ADD_INFO and length >= 8:
                rid = buf[start : start + 4]
                if rid == current:  # the common case: an info of the record just begun
                    if through:  # `_decode_record`, inline
                        rid_n, keylen, valen = _ADD_INFO.unpack_from(buf, start)
                        value_at = start + 8 + keylen
                        info: RunDecoded | None = None
                        if keylen and value_at + valen <= frame_end:
                            try:
                                info = AddInfo(
                                    rid_n,
                                    buf[start + 8 : value_at].decode(),
                                    buf[value_at : value_at + valen].decode(),
                                )
                            except UnicodeDecodeError:
                                pass
                        out.append(
                            info if info is not None else decode_at(msgid, buf, start, frame_end)
                        )
                    if regular:
                        buf[start : start + 4] = _NO_RID
                    offset = frame_end
                    continue
                if rid == _NO_RID:  # client-wide: not part of the run
                    run.add(buf, seg, offset)
                    out.append(decode_at(msgid, buf, start, frame_end))
                    offset = seg = frame_end
                    continue
                linked = False
            elif msgid == MSG_ADD_RECORD and length >= 8:
                rid_n, atype, rtlen, rnlen = _ADD_RECORD.unpack_from(buf, start)
                name_at = start + 8 + rtlen
                whole = rnlen > 0 and name_at + rnlen <= frame_end
                # A record with id 0 breaks the pattern: its infos would be client-wide.
                if atype == ATYPE_RECORD and rtlen and whole and rid_n:
                    if not run.waited and self._expected is PENDING:
                        run.waiting = run.waited = True
                        break  # in front of it; what came before is added below
                    size = run.size + offset - seg
                    if size and (run.records >= RUN_RECORDS or size >= RUN_BYTES):
                        run.current = current
                        run.add(buf, seg, offset)
                        seg = offset
                        if self._must_wait(run):
                            break
                        run = self._end_run(out)
                        through, regular = run.through, True
                    run.records += 1
                    run.alias_frames = 0
                    current = bytes(buf[start : start + 4])
                    linked = True
                    if not through:
                        name = decode_text(buf[name_at : name_at + rnlen])
                        rtype = sys.intern(decode_text(buf[start + 8 : name_at]))
                        run.begin_record(rid_n, name, rtype)
                        # A name the session skips: decode the run, so that it does.
                        if len(name) > self._name_sure or len(rtype) > self._type_sure:
                            linked = not (
                                longer_than(name, self._max_name)
                                or longer_than(rtype, self._max_type)
                            )
                elif atype == ATYPE_ALIAS and whole and buf[start : start + 4] == current:
                    # More aliases than the session takes: the run must be decoded.
                    run.alias_frames += 1
                    linked = run.alias_frames <= self._max_aliases
                    if linked and not through:
                        alias = decode_text(buf[name_at : name_at + rnlen])
                        linked = len(alias) <= self._name_sure or not longer_than(
                            alias, self._max_name
                        )
                        if linked:
                            run.add_alias(alias)
                else:
                    linked = False
            elif (msgid == MSG_DEL_RECORD or msgid == MSG_UPLOAD_DONE) and length:
                # Runs end here: a DelRecord makes digests meaningless, and after
                # UploadDone no records are taken.
                run.current = current
                run.add(buf, seg, offset)
                seg = offset
                if msgid == MSG_DEL_RECORD and self._expected is PENDING:
                    self._expected = None  # nothing to compare: decode what is held
                elif self._must_wait(run):
                    break
                self._end_run(out)
                self._run = None
                out.append(decode_at(msgid, buf, start, frame_end))
                del buf[:frame_end]
                return out + self.feed(b"")
            else:
                run.add(buf, seg, offset)
                out.append(
                    decode_at(msgid, buf, start, frame_end)
                    if length
                    else Skipped(msgid, 0, "empty body")
                )
                offset = seg = frame_end
                continue
            # Any other frame of the run.
            if through:
                out.append(decode_record(msgid, buf, start, frame_end))
            if regular:
                if linked:
                    buf[start : start + 4] = _NO_RID
                else:
                    run.irregular(offset - seg)
                    regular = False
            offset = frame_end
        run.current = current
        run.add(buf, seg, offset)
        if run.size > RUN_HOLD_LIMIT:
            if not run.through:
                out.extend(self._decode_held(run))
            run.go_through()
        if offset:
            del buf[:offset]
        return out

    def _must_wait(self, run: _Run) -> bool:
        """At the end of `run`: True if it must wait for `expect` (see `start_runs`)."""
        if self._expected is not PENDING or run.through or not run.size:
            return False
        run.ended = True
        return True

    def _new_run(self) -> _Run:
        index, expected = self._run_index, self._expected
        compare = expected is PENDING or (isinstance(expected, Sequence) and index < len(expected))
        return _Run(index, hashlib.blake2b(self._seed, digest_size=16), through=not compare)

    def _end_run(self, out: list[RunDecoded]) -> _Run:
        """End the run in progress (if it has any frames); returns the next one."""
        run = self._run
        assert run is not None
        if not run.size:
            return run
        self._run_index += 1
        self._run = following = self._new_run()
        digest = ""
        if run.regular:
            if not run.through:
                run.hasher.update(run.data)
            digest = run.hasher.hexdigest()
        if not run.through:
            expected = self._expected
            if (
                digest
                and isinstance(expected, Sequence)
                and run.index < len(expected)
                and expected[run.index] == digest
            ):
                out.append(
                    UnchangedRun(
                        run.index,
                        digest,
                        run.rids,
                        run.names,
                        run.rtypes,
                        run.aliases,
                        run.alias_of,
                    )
                )
                return following
            out.extend(self._decode_held(run))
        out.append(RunEnd(run.index, digest))
        return following

    def _decode_held(self, run: _Run) -> list[RunDecoded]:
        """The held frames decoded, with their record ids put back."""
        data = run.data
        out: list[RunDecoded] = []
        rids = iter(run.rids)
        rid = 0
        pos = 0
        end = len(data)
        normalized = end if run.normalized is None else run.normalized
        while pos < end:
            _, msgid, length = _HEADER.unpack_from(data, pos)
            body = pos + HEADER_SIZE
            if pos < normalized:
                if msgid == MSG_ADD_RECORD and data[body + 4] == ATYPE_RECORD:
                    rid = next(rids)
                _U32.pack_into(data, body, rid)
            pos = body + length
            # Only AddRecord and AddInfo frames of 8 bytes or more are ever held.
            out.append(decode_record(msgid, data, body, pos))
        return out


_NO_RID = bytes(4)


class _Pending:
    """`RunDecoder.start_runs` was called, `RunDecoder.expect` not yet."""


PENDING = _Pending()


class _Run:
    """The run in progress (`RunDecoder.start_runs`).

    A run that is compared holds its frames, record ids blanked, until it ends; one
    that cannot be (``through``: nothing is expected of it) is decoded as it arrives
    and only hashed.
    """

    __slots__ = (
        "alias_frames",
        "alias_of",
        "aliases",
        "current",
        "current_aliases",
        "current_name",
        "data",
        "ended",
        "hasher",
        "index",
        "names",
        "normalized",
        "records",
        "regular",
        "rids",
        "rtypes",
        "size",
        "through",
        "waited",
        "waiting",
    )

    def __init__(self, index: int, hasher: typing.Any, through: bool) -> None:
        self.index = index
        self.hasher = hasher
        self.through = through
        #: Held frames; their record ids are blanked up to ``normalized`` (None: all).
        self.data = bytearray()
        self.normalized: int | None = None
        #: Every frame so far began a record or named the record just begun.
        self.regular = True
        #: Bytes of record frames in this run, and records begun.
        self.size = 0
        self.records = 0
        #: Stopped in front of the first record (``waiting``; ``waited`` once it did),
        #: or complete (``ended``), until `RunDecoder.expect`.
        self.waiting = False
        self.waited = index > 0
        self.ended = False
        #: Raw id of the record in progress, and alias frames sent for it.
        self.current = b""
        self.alias_frames = 0
        #: Compared runs only: ids, names and types of its records, its aliases with
        #: the position of their record, and the name and aliases of the record in
        #: progress.
        self.rids: list[int] = []
        self.names: list[str] = []
        self.rtypes: list[str] = []
        self.aliases: list[str] = []
        self.alias_of: list[int] = []
        self.current_name = ""
        self.current_aliases: list[str] = []

    def begin_record(self, rid: int, name: str, rtype: str) -> None:
        self.rids.append(rid)
        self.names.append(name)
        self.rtypes.append(rtype)
        self.current_name = name
        self.current_aliases = []

    def add_alias(self, alias: str) -> None:
        # As `Record.add_alias` does: the record's own name and repeats are no aliases.
        if alias != self.current_name and alias not in self.current_aliases:
            self.current_aliases.append(alias)
            self.aliases.append(alias)
            self.alias_of.append(len(self.names) - 1)

    def add(self, buf: bytearray, start: int, end: int) -> None:
        """Take the record frames ``buf[start:end]`` (ids already blanked)."""
        if start < end:
            self.size += end - start
            if not self.through:
                self.data += buf[start:end]
            elif self.regular:
                self.hasher.update(buf[start:end])

    def irregular(self, at: int) -> None:
        """The frame at `at` (from the stretch not yet added) breaks the pattern."""
        self.regular = False
        self.normalized = len(self.data) + at

    def go_through(self) -> None:
        """Over RUN_HOLD_LIMIT: hold nothing more (what was held has been decoded), and
        give this run no digest."""
        self.through = True
        self.regular = False
        self.data = bytearray()
        # Only an `UnchangedRun` needs them, and this run can no longer be one.
        self.rids, self.names, self.rtypes = [], [], []
        self.aliases, self.alias_of, self.current_aliases = [], [], []
