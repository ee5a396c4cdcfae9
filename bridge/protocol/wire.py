"""RecSync wire codec: the UDP announcement and the eight TCP messages.

Pure and I/O free. Layouts follow shared reference recsync-protocol.md §1.1 and
§2.1-2.2; everything is big-endian. Encoding is strict; decoding is liberal
where the protocol says "ignore": unknown message ids are skipped, extra body
bytes are ignored, reserved bytes are never checked, aliases may carry a record
type, and text that is not valid UTF-8 is decoded as Latin-1 instead of failing.

The `Decoder` takes bytes in any chunking and returns whole messages. It checks
each declared body length against a limit *before* buffering the body, so a peer
can never make it hold more than ``8 + max_body_length`` bytes of a partial frame.

For uploads it can also cut the record frames into runs and find the runs that an
IOC sent exactly as last time from a digest of their bytes, without decoding them
(`Decoder.start_runs`); such a run holds at most about `RUN_HOLD_LIMIT` bytes.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from bridge.errors import LocalProtocolError, RemoteProtocolError

PROTO_ID = 0x5243  # "RC"
ANNOUNCE_PORT = 5049
#: SERV ADDR meaning "connect to the UDP source address of this datagram".
ANNOUNCE_ADDR_SOURCE = 0xFFFFFFFF
ANNOUNCE_SIZE = 16

HEADER = struct.Struct(">HHI")
HEADER_SIZE = HEADER.size

#: The longest legitimate body: AddInfo with an 8-byte fixed part, a 255-byte key and
#: a 65535-byte value (§2.7). The reference server had no limit at all.
MAX_BODY_LENGTH = 8 + 255 + 65535

MSG_SERVER_GREET = 0x8001
MSG_PING = 0x8002
MSG_CLIENT_GREET = 0x0001
MSG_PONG = 0x0002
MSG_ADD_RECORD = 0x0003
MSG_DEL_RECORD = 0x0004
MSG_UPLOAD_DONE = 0x0005
MSG_ADD_INFO = 0x0006

ATYPE_RECORD = 0
ATYPE_ALIAS = 1

#: Records per run: the unit in which an upload is compared with the previous one
#: (`Decoder.start_runs`).
RUN_RECORDS = 1000
#: A run also ends, at the next record, once its frames add up to this many bytes.
RUN_BYTES = 1 << 20
#: A run holding more than this (huge info tags) is decoded as it arrives, uncompared.
RUN_HOLD_LIMIT = 4 << 20

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_CLIENT_GREET = struct.Struct(">BBxxI")
_ADD_RECORD = struct.Struct(">IBBH")
_ADD_INFO = struct.Struct(">IBxH")
_ANNOUNCE = struct.Struct(">HBxIHxxI")
assert _ANNOUNCE.size == ANNOUNCE_SIZE
assert _ADD_RECORD.size == _ADD_INFO.size == _CLIENT_GREET.size == 8


def decode_text(raw: bytes | bytearray) -> str:
    """UTF-8, or Latin-1 when the bytes are not valid UTF-8 (never fails).

    Old IOC databases carry Latin-1 text (a ``°`` in a DESC); the reference server
    crashed the session on it. Latin-1 maps every byte, so the text is kept.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _frame(msgid: int, body: bytes) -> bytes:
    return HEADER.pack(PROTO_ID, msgid, len(body)) + body


def _pack(layout: struct.Struct, *values: int) -> bytes:
    """Pack fixed fields; a number that does not fit its field is our bug."""
    try:
        return layout.pack(*values)
    except struct.error as error:
        raise LocalProtocolError(f"field out of range in {values}: {error}") from error


def _encode_text(text: str, limit: int, what: str) -> bytes:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise LocalProtocolError(f"{what} is not encodable as UTF-8: {error}") from error
    if len(raw) > limit:
        raise LocalProtocolError(f"{what} is {len(raw)} bytes, the field holds {limit}")
    return raw


@dataclass(slots=True)
class ServerGreet:
    """0x8001 S→C, body ``VERSION u8``. Must be the server's first message."""

    version: int = 0
    msgid: ClassVar[int] = MSG_SERVER_GREET

    def encode(self) -> bytes:
        return _frame(self.msgid, _pack(_U8, self.version))


@dataclass(slots=True)
class Ping:
    """0x8002 S→C, body ``NONCE u32``; the client echoes the nonce in a Pong."""

    nonce: int
    msgid: ClassVar[int] = MSG_PING

    def encode(self) -> bytes:
        return _frame(self.msgid, _pack(_U32, self.nonce))


@dataclass(slots=True)
class ClientGreet:
    """0x0001 C→S, body ``VERSION u8, TYPE u8, reserved u8[2], SERVKEY u32``."""

    version: int = 0
    client_type: int = 0
    key: int = 0
    msgid: ClassVar[int] = MSG_CLIENT_GREET

    def encode(self) -> bytes:
        return _frame(self.msgid, _pack(_CLIENT_GREET, self.version, self.client_type, self.key))


@dataclass(slots=True)
class Pong:
    """0x0002 C→S, body ``NONCE u32`` echoing a Ping."""

    nonce: int
    msgid: ClassVar[int] = MSG_PONG

    def encode(self) -> bytes:
        return _frame(self.msgid, _pack(_U32, self.nonce))


@dataclass(slots=True)
class AddRecord:
    """0x0003 C→S, body ``RECID u32, ATYPE u8, RTLEN u8, RNLEN u16, RTYPE, RNAME``.

    ATYPE 0 adds a record; ATYPE 1 adds an alias of record RECID. The C client
    sends aliases with an empty type, pyreccaster with the record's type.
    """

    rid: int
    atype: int
    rtype: str
    name: str
    msgid: ClassVar[int] = MSG_ADD_RECORD

    @property
    def is_alias(self) -> bool:
        return self.atype == ATYPE_ALIAS

    def encode(self) -> bytes:
        rtype = _encode_text(self.rtype, 0xFF, "record type")
        name = _encode_text(self.name, 0xFFFF, "record name")
        fixed = _pack(_ADD_RECORD, self.rid, self.atype, len(rtype), len(name))
        return _frame(self.msgid, fixed + rtype + name)


@dataclass(slots=True)
class DelRecord:
    """0x0004 C→S, body ``RECID u32``. No known client sends it."""

    rid: int
    msgid: ClassVar[int] = MSG_DEL_RECORD

    def encode(self) -> bytes:
        return _frame(self.msgid, _pack(_U32, self.rid))


@dataclass(slots=True)
class UploadDone:
    """0x0005 C→S, body 4 bytes (always 0, ignored)."""

    msgid: ClassVar[int] = MSG_UPLOAD_DONE

    def encode(self) -> bytes:
        return _frame(self.msgid, bytes(4))


@dataclass(slots=True)
class AddInfo:
    """0x0006 C→S, body ``RECID u32, KEYLEN u8, reserved u8, VALEN u16, KEY, VALUE``.

    RECID 0 is a client-wide info (the IOC's environment).
    """

    rid: int
    key: str
    value: str
    msgid: ClassVar[int] = MSG_ADD_INFO

    def encode(self) -> bytes:
        key = _encode_text(self.key, 0xFF, "info key")
        value = _encode_text(self.value, 0xFFFF, "info value")
        return _frame(self.msgid, _pack(_ADD_INFO, self.rid, len(key), len(value)) + key + value)


@dataclass(slots=True)
class Skipped:
    """A frame the decoder passed over: unknown id, or a body the protocol says to skip.

    Not a wire message of its own; it lets the caller log what was ignored.
    """

    msgid: int
    length: int
    reason: str


@dataclass(slots=True)
class UnchangedRun:
    """A run of record frames whose digest matched the expected one (see `Decoder`).

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

    ``digest`` is empty for a run that cannot be compared (see `Decoder`).
    """

    index: int
    digest: str


# Messages are plain (not frozen) slotted dataclasses: one is built for every message
# received, and a frozen dataclass's __init__ costs about three times as much. Treat
# them as values all the same.
Message = ServerGreet | Ping | ClientGreet | Pong | AddRecord | DelRecord | UploadDone | AddInfo
Decoded = Message | Skipped | UnchangedRun | RunEnd


# Body decoders read the body ``buf[start:end]`` in place (no copy of the body).
_BodyDecoder = typing.Callable[[bytes | bytearray, int, int], "Decoded"]


def _decode_server_greet(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return ServerGreet(buf[start])


def _decode_ping(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return Ping(_U32.unpack_from(buf, start)[0])


def _decode_client_greet(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    version, client_type, key = _CLIENT_GREET.unpack_from(buf, start)
    return ClientGreet(version, client_type, key)


def _decode_pong(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return Pong(_U32.unpack_from(buf, start)[0])


def _decode_add_record(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    rid, atype, rtlen, rnlen = _ADD_RECORD.unpack_from(buf, start)
    name_at = start + 8 + rtlen
    if end < name_at + rnlen:
        return Skipped(MSG_ADD_RECORD, end - start, "AddRecord strings overrun the body")
    if rnlen == 0 or atype not in (ATYPE_RECORD, ATYPE_ALIAS):
        return Skipped(MSG_ADD_RECORD, end - start, "AddRecord with no name or unknown kind")
    if atype == ATYPE_RECORD and rtlen == 0:
        return Skipped(MSG_ADD_RECORD, end - start, "AddRecord of a record without a type")
    return AddRecord(
        rid,
        atype,
        decode_text(buf[start + 8 : name_at]),
        decode_text(buf[name_at : name_at + rnlen]),
    )


def _decode_del_record(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return DelRecord(_U32.unpack_from(buf, start)[0])


def _decode_upload_done(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return UploadDone()


def _decode_add_info(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    rid, keylen, valen = _ADD_INFO.unpack_from(buf, start)
    value_at = start + 8 + keylen
    if end < value_at + valen:
        return Skipped(MSG_ADD_INFO, end - start, "AddInfo strings overrun the body")
    if keylen == 0:
        return Skipped(MSG_ADD_INFO, end - start, "AddInfo with an empty key")
    return AddInfo(
        rid, decode_text(buf[start + 8 : value_at]), decode_text(buf[value_at : value_at + valen])
    )


# msgid -> (minimum body length, decoder). Bodies shorter than the minimum are
# skipped as the reference server does (§2.5 "Known MSGID with LEN < fixed size").
_DECODERS: dict[int, tuple[int, _BodyDecoder]] = {
    MSG_SERVER_GREET: (1, _decode_server_greet),
    MSG_PING: (4, _decode_ping),
    MSG_CLIENT_GREET: (8, _decode_client_greet),
    MSG_PONG: (4, _decode_pong),
    MSG_ADD_RECORD: (8, _decode_add_record),
    MSG_DEL_RECORD: (4, _decode_del_record),
    MSG_UPLOAD_DONE: (4, _decode_upload_done),
    MSG_ADD_INFO: (8, _decode_add_info),
}


def decode_body(msgid: int, body: bytes) -> Decoded:
    """Decode one message body, or say why it is skipped. Never raises for any bytes."""
    return _decode_at(msgid, body, 0, len(body))


def _decode_at(msgid: int, buf: bytes | bytearray, start: int, end: int) -> Decoded:
    entry = _DECODERS.get(msgid)
    if entry is None:
        return Skipped(msgid, end - start, f"unknown message id 0x{msgid:04x}")
    minimum, decode = entry
    if end - start < minimum:
        return Skipped(
            msgid, end - start, f"body of {end - start} bytes, at least {minimum} needed"
        )
    return decode(buf, start, end)


class FramingError(RemoteProtocolError):
    """The stream is broken (bad magic or oversize length); nothing after it is usable.

    ``decoded`` holds the messages completed in the same `Decoder.feed` call before
    the broken frame, so the outcome does not depend on how TCP split the data.
    """

    def __init__(self, reason: str, decoded: list[Decoded]) -> None:
        super().__init__(reason)
        self.decoded = decoded


class Decoder:
    """Incremental frame decoder for one byte stream.

    ``feed(data)`` accepts any chunking and returns the messages completed by it,
    in order. A wrong magic or a declared body longer than `max_body_length`
    raises `FramingError` (a `RemoteProtocolError`) carrying the messages completed
    before it; the buffer is emptied and the decoder must not be fed again.
    """

    def __init__(self, max_body_length: int = MAX_BODY_LENGTH) -> None:
        self.max_body_length = max_body_length
        self._buffer = bytearray()
        #: Runs (`start_runs`): the run in progress, its position, what is expected.
        self._run: _Run | None = None
        self._run_index = 0
        self._expected: Sequence[str] | None | _Pending = None
        self._seed = b""
        self._max_aliases = 0

    @property
    def buffered(self) -> int:
        """Bytes not decoded yet: a partial frame (≤ 8 + max_body_length), or also what
        arrived while the decoder waits (`hold`, `awaiting`), which callers bound by
        not reading more meanwhile."""
        return len(self._buffer)

    @property
    def held(self) -> int:
        """Bytes of record frames held by the run in progress (≤ about `RUN_HOLD_LIMIT`)."""
        return len(self._run.data) if self._run is not None else 0

    def _fail(self, decoded: list[Decoded], reason: str) -> typing.NoReturn:
        # Drop everything: the stream cannot be resynchronised, and holding the
        # failing read would break the buffer bound.
        self._buffer.clear()
        raise FramingError(reason, decoded)

    def hold(self, data: bytes) -> None:
        """Keep bytes undecoded until the next `feed` (a connection waiting for a slot)."""
        self._buffer += data

    def feed(self, data: bytes, stop_after: type | None = None) -> list[Decoded]:
        """Decode what `data` completes; with `stop_after`, stop after the first message
        of that type and leave the rest undecoded in the buffer."""
        buf = self._buffer
        buf += data
        if self._run is not None:
            return self._feed_runs(buf)
        out: list[Decoded] = []
        offset = 0
        end = len(buf)
        while end - offset >= HEADER_SIZE:
            magic, msgid, length = HEADER.unpack_from(buf, offset)
            if magic != PROTO_ID:
                self._fail(out, f"bad magic 0x{magic:04x}, expected 0x{PROTO_ID:04x}")
            if length > self.max_body_length:
                self._fail(
                    out,
                    f"message 0x{msgid:04x} declares a {length}-byte body, "
                    f"the limit is {self.max_body_length}",
                )
            start = offset + HEADER_SIZE
            if end - start < length:
                break
            offset = start + length
            if length == 0:
                # The reference server ignores zero-length messages entirely (§2.5).
                out.append(Skipped(msgid, 0, "empty body"))
                continue
            message: Decoded
            if msgid == MSG_ADD_INFO and length >= 8:
                # Inline fast path for the commonest message (3-5 per record); any
                # irregularity (strings overrun, empty key, not UTF-8) takes the
                # general decoder below.
                rid, keylen, valen = _ADD_INFO.unpack_from(buf, start)
                value_at = start + 8 + keylen
                if keylen and value_at + valen <= offset:
                    try:
                        message = AddInfo(
                            rid,
                            buf[start + 8 : value_at].decode(),
                            buf[value_at : value_at + valen].decode(),
                        )
                    except UnicodeDecodeError:
                        message = _decode_at(msgid, buf, start, offset)
                else:
                    message = _decode_at(msgid, buf, start, offset)
            elif msgid == MSG_ADD_RECORD and length >= 8:
                # The same for AddRecord (records and aliases).
                rid, atype, rtlen, rnlen = _ADD_RECORD.unpack_from(buf, start)
                name_at = start + 8 + rtlen
                if (
                    rnlen
                    and name_at + rnlen <= offset
                    and (atype == ATYPE_ALIAS or (atype == ATYPE_RECORD and rtlen))
                ):
                    try:
                        message = AddRecord(
                            rid,
                            atype,
                            buf[start + 8 : name_at].decode(),
                            buf[name_at : name_at + rnlen].decode(),
                        )
                    except UnicodeDecodeError:
                        message = _decode_at(msgid, buf, start, offset)
                else:
                    message = _decode_at(msgid, buf, start, offset)
            else:
                message = _decode_at(msgid, buf, start, offset)
            out.append(message)
            if stop_after is not None and type(message) is stop_after:
                break
        if offset:
            del buf[:offset]
        return out

    # -- runs: finding unchanged records without decoding them ---------------------------

    def start_runs(self, seed: bytes, max_aliases: int = 1000) -> None:
        """Cut the record frames of the upload into runs and digest each, from now on.

        A run is `RUN_RECORDS` records (fewer once it holds `RUN_BYTES`), each record
        with the alias and info frames that follow it. Its digest is BLAKE2b-128 over
        `seed` and the run's frames with their record ids blanked: the C RecCaster
        numbers records afresh on every connection, so only the ids' pattern counts.
        That pattern must be the regular one, every alias and info naming the record
        just begun; a run with any other frame, or over `RUN_HOLD_LIMIT`, gets the
        empty digest, which never matches.

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

        A record with more than `max_aliases` alias frames (the session's limit) makes
        its run one that cannot be compared, so that the session applies the limit.
        """
        self._expected = PENDING
        self._seed = seed
        self._max_aliases = max_aliases
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

    def _feed_runs(self, buf: bytearray) -> list[Decoded]:
        # The hot loop of an unchanged re-upload: per frame only the header, the record
        # id and, for AddRecord, the name are looked at. Record frames are left in
        # place with their ids blanked, and added to the run a stretch at a time
        # (``buf[seg:offset]``, `_Run.add`). The current record's raw id and the run's
        # flags live in locals, written back before anything else looks at the run.
        out: list[Decoded] = []
        run = self._run
        assert run is not None
        current, through, regular = run.current, run.through, run.regular
        offset = seg = 0
        end = len(buf)
        unpack_header = HEADER.unpack_from
        while end - offset >= HEADER_SIZE:
            magic, msgid, length = unpack_header(buf, offset)
            if magic != PROTO_ID or length > self.max_body_length:
                run.current = current
                run.add(buf, seg, offset)
                self._framing_error(out, magic, msgid, length)
            start = offset + HEADER_SIZE
            frame_end = start + length
            if frame_end > end:
                break
            if msgid == MSG_ADD_INFO and length >= 8:
                rid = buf[start : start + 4]
                if rid == current:  # the common case: an info of the record just begun
                    if through:  # `_decode_record`, inline
                        rid_n, keylen, valen = _ADD_INFO.unpack_from(buf, start)
                        value_at = start + 8 + keylen
                        info: Decoded | None = None
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
                            info if info is not None else _decode_at(msgid, buf, start, frame_end)
                        )
                    if regular:
                        buf[start : start + 4] = _NO_RID
                    offset = frame_end
                    continue
                if rid == _NO_RID:  # client-wide: not part of the run
                    run.add(buf, seg, offset)
                    out.append(_decode_at(msgid, buf, start, frame_end))
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
                    if not through:
                        run.begin_record(
                            rid_n,
                            decode_text(buf[name_at : name_at + rnlen]),
                            sys.intern(decode_text(buf[start + 8 : name_at])),
                        )
                    linked = True
                elif atype == ATYPE_ALIAS and whole and buf[start : start + 4] == current:
                    # More aliases than the session takes: the run must be decoded.
                    run.alias_frames += 1
                    linked = run.alias_frames <= self._max_aliases
                    if linked and not through:
                        run.add_alias(decode_text(buf[name_at : name_at + rnlen]))
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
                out.append(_decode_at(msgid, buf, start, frame_end))
                del buf[:frame_end]
                return out + self.feed(b"")
            else:
                run.add(buf, seg, offset)
                out.append(
                    _decode_at(msgid, buf, start, frame_end)
                    if length
                    else Skipped(msgid, 0, "empty body")
                )
                offset = seg = frame_end
                continue
            # Any other frame of the run.
            if through:
                out.append(_decode_record(msgid, buf, start, frame_end))
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

    def _framing_error(
        self, out: list[Decoded], magic: int, msgid: int, length: int
    ) -> typing.NoReturn:
        if magic != PROTO_ID:
            self._fail(out, f"bad magic 0x{magic:04x}, expected 0x{PROTO_ID:04x}")
        self._fail(
            out,
            f"message 0x{msgid:04x} declares a {length}-byte body, "
            f"the limit is {self.max_body_length}",
        )

    def _new_run(self) -> _Run:
        index, expected = self._run_index, self._expected
        compare = expected is PENDING or (isinstance(expected, Sequence) and index < len(expected))
        return _Run(index, hashlib.blake2b(self._seed, digest_size=16), through=not compare)

    def _end_run(self, out: list[Decoded]) -> _Run:
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

    def _decode_held(self, run: _Run) -> list[Decoded]:
        """The held frames decoded, with their record ids put back."""
        data = run.data
        out: list[Decoded] = []
        rids = iter(run.rids)
        rid = 0
        pos = 0
        end = len(data)
        normalized = end if run.normalized is None else run.normalized
        while pos < end:
            _, msgid, length = HEADER.unpack_from(data, pos)
            body = pos + HEADER_SIZE
            if pos < normalized:
                if msgid == MSG_ADD_RECORD and data[body + 4] == ATYPE_RECORD:
                    rid = next(rids)
                _U32.pack_into(data, body, rid)
            pos = body + length
            # Only AddRecord and AddInfo frames of 8 bytes or more are ever held.
            out.append(_decode_record(msgid, data, body, pos))
        return out


_NO_RID = bytes(4)


class _Pending:
    """`Decoder.start_runs` was called, `Decoder.expect` not yet."""


PENDING = _Pending()


def _decode_record(msgid: int, buf: bytearray, start: int, end: int) -> Decoded:
    """AddInfo or AddRecord (body of at least 8 bytes), as `Decoder.feed` decodes them."""
    if msgid == MSG_ADD_INFO:
        rid, keylen, valen = _ADD_INFO.unpack_from(buf, start)
        value_at = start + 8 + keylen
        if keylen and value_at + valen <= end:
            try:
                return AddInfo(
                    rid,
                    buf[start + 8 : value_at].decode(),
                    buf[value_at : value_at + valen].decode(),
                )
            except UnicodeDecodeError:
                pass
        return _decode_at(msgid, buf, start, end)
    rid, atype, rtlen, rnlen = _ADD_RECORD.unpack_from(buf, start)
    name_at = start + 8 + rtlen
    if (
        rnlen
        and name_at + rnlen <= end
        and (atype == ATYPE_ALIAS or (atype == ATYPE_RECORD and rtlen))
    ):
        try:
            return AddRecord(
                rid,
                atype,
                buf[start + 8 : name_at].decode(),
                buf[name_at : name_at + rnlen].decode(),
            )
        except UnicodeDecodeError:
            pass
    return _decode_at(msgid, buf, start, end)


class _Run:
    """The run in progress (`Decoder.start_runs`).

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
        #: or complete (``ended``), until `Decoder.expect`.
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


@dataclass(frozen=True, slots=True)
class Announce:
    """The 16-byte UDP announcement a server sends to port 5049 (§1.1)."""

    port: int
    key: int
    addr: int = ANNOUNCE_ADDR_SOURCE

    def encode(self) -> bytes:
        return _pack(_ANNOUNCE, PROTO_ID, 0, self.addr, self.port, self.key)

    @classmethod
    def decode(cls, data: bytes) -> Announce:
        """Parse a datagram as a client does; raise RemoteProtocolError if it is not one."""
        if len(data) < ANNOUNCE_SIZE:
            raise RemoteProtocolError(f"announcement of {len(data)} bytes, 16 needed")
        magic, version, addr, port, key = _ANNOUNCE.unpack_from(data)
        if magic != PROTO_ID or version != 0:
            raise RemoteProtocolError("not a RecSync version 0 announcement")
        return cls(port=port, key=key, addr=addr)
