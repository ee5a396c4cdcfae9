"""RecSync wire codec: the UDP announcement and the eight TCP messages.

Pure and I/O free. Layouts follow docs/protocol.md (Discovery, Framing, Messages);
everything is big-endian. Encoding is strict; decoding is liberal where the
protocol says "ignore": unknown message ids are skipped, extra body bytes are
ignored, reserved bytes are never checked, aliases may carry a record type, and
text that is not valid UTF-8 is decoded as Latin-1 instead of failing.

The `Decoder` takes bytes in any chunking and returns whole messages. It checks
each declared body length against a limit *before* buffering the body, so a peer
can never make it hold more than ``8 + max_body_length`` bytes of a partial frame:
a longer body is passed over by counting its bytes, never buffered, and reported
as one `Skipped` (docs/protocol.md, Framing).

Finding the runs of records an IOC sent exactly as last time, without decoding
them, is a layer of its own on top of this decoder: `bridge.protocol.runs`.
"""

from __future__ import annotations

import struct
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from bridge.errors import LocalProtocolError, RemoteProtocolError

PROTO_ID = 0x5243  # "RC"
ANNOUNCE_PORT = 5049
#: SERV ADDR meaning "connect to the UDP source address of this datagram".
ANNOUNCE_ADDR_SOURCE = 0xFFFFFFFF
ANNOUNCE_SIZE = 16

HEADER = struct.Struct(">HHI")
HEADER_SIZE = HEADER.size

#: The longest legitimate body: AddInfo with an 8-byte fixed part, a 255-byte key and
#: a 65535-byte value (docs/protocol.md, Limits). The reference server had no limit.
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

#: Fixed parts of the bodies. `U32` is the body of Ping, Pong and DelRecord (and the
#: record id at the start of AddRecord and AddInfo); `ADD_RECORD` and `ADD_INFO` are
#: also read in place by `bridge.protocol.runs`.
U32 = struct.Struct(">I")
ADD_RECORD = struct.Struct(">IBBH")
ADD_INFO = struct.Struct(">IBxH")
_U8 = struct.Struct(">B")
_CLIENT_GREET = struct.Struct(">BBxxI")
_ANNOUNCE = struct.Struct(">HBxIHxxI")
assert _ANNOUNCE.size == ANNOUNCE_SIZE
assert ADD_RECORD.size == ADD_INFO.size == _CLIENT_GREET.size == 8


def decode_text(raw: bytes | bytearray) -> str:
    """UTF-8, or Latin-1 when the bytes are not valid UTF-8 (never fails).

    Old IOC databases carry Latin-1 text (a ``°`` in a DESC); the reference server
    crashed the session on it. Latin-1 maps every byte, so the text is kept.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def longer_than(text: str, limit: int) -> bool:
    """True if `text` takes more than `limit` bytes in UTF-8 (as the bridge stores it).

    Cheap for the usual short ASCII name: the UTF-8 length is between ``len(text)``
    and four times that.
    """
    length = len(text)
    if length > limit:
        return True
    if length * 4 <= limit or text.isascii():
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


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
        return _frame(self.msgid, _pack(U32, self.nonce))


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
        return _frame(self.msgid, _pack(U32, self.nonce))


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
        fixed = _pack(ADD_RECORD, self.rid, self.atype, len(rtype), len(name))
        return _frame(self.msgid, fixed + rtype + name)


@dataclass(slots=True)
class DelRecord:
    """0x0004 C→S, body ``RECID u32``. No known client sends it."""

    rid: int
    msgid: ClassVar[int] = MSG_DEL_RECORD

    def encode(self) -> bytes:
        return _frame(self.msgid, _pack(U32, self.rid))


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
        return _frame(self.msgid, _pack(ADD_INFO, self.rid, len(key), len(value)) + key + value)


@dataclass(slots=True)
class Skipped:
    """A frame the decoder passed over: unknown id, or a body the protocol says to skip.

    Not a wire message of its own; it lets the caller log what was ignored. ``limit``
    names the configured limit that made the decoder skip it (`MAX_BODY_LENGTH_LIMIT`
    for a body longer than ``max_body_length``, which is passed over unread), or is
    None when the protocol itself says to skip it.
    """

    msgid: int
    length: int
    reason: str
    limit: str | None = None


# Messages are plain (not frozen) slotted dataclasses: one is built for every message
# received, and a frozen dataclass's __init__ costs about three times as much. Treat
# them as values all the same.
Message = ServerGreet | Ping | ClientGreet | Pong | AddRecord | DelRecord | UploadDone | AddInfo
#: What `Decoder.feed` returns: messages, and frames it passed over.
Decoded = Message | Skipped


# Body decoders read the body ``buf[start:end]`` in place (no copy of the body).
_BodyDecoder = typing.Callable[[bytes | bytearray, int, int], "Decoded"]


def _decode_server_greet(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return ServerGreet(buf[start])


def _decode_ping(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return Ping(U32.unpack_from(buf, start)[0])


def _decode_client_greet(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    version, client_type, key = _CLIENT_GREET.unpack_from(buf, start)
    return ClientGreet(version, client_type, key)


def _decode_pong(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return Pong(U32.unpack_from(buf, start)[0])


def _decode_add_record(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    rid, atype, rtlen, rnlen = ADD_RECORD.unpack_from(buf, start)
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
    return DelRecord(U32.unpack_from(buf, start)[0])


def _decode_upload_done(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    return UploadDone()


def _decode_add_info(buf: bytes | bytearray, start: int, end: int) -> Decoded:
    rid, keylen, valen = ADD_INFO.unpack_from(buf, start)
    value_at = start + 8 + keylen
    if end < value_at + valen:
        return Skipped(MSG_ADD_INFO, end - start, "AddInfo strings overrun the body")
    if keylen == 0:
        return Skipped(MSG_ADD_INFO, end - start, "AddInfo with an empty key")
    return AddInfo(
        rid, decode_text(buf[start + 8 : value_at]), decode_text(buf[value_at : value_at + valen])
    )


# msgid -> (minimum body length, decoder). Bodies shorter than the minimum are
# skipped as the reference server does (docs/protocol.md, Framing).
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
    return decode_at(msgid, body, 0, len(body))


def decode_at(msgid: int, buf: bytes | bytearray, start: int, end: int) -> Decoded:
    """`decode_body` of the body ``buf[start:end]``, read in place."""
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
    """The stream is broken (a bad magic); nothing after it is usable.

    ``decoded`` holds what the decoder that raised it completed in the same ``feed``
    call before the broken frame (a list of what its ``feed`` returns), so the outcome
    does not depend on how TCP split the data.
    """

    def __init__(self, reason: str, decoded: list[Any]) -> None:
        super().__init__(reason)
        self.decoded = decoded


#: `Skipped.limit` of a body longer than the decoder's limit: the name of the
#: configuration key that sets it.
MAX_BODY_LENGTH_LIMIT = "maxBodyLength"


class Decoder:
    """Incremental frame decoder for one byte stream.

    ``feed(data)`` accepts any chunking and returns the messages completed by it,
    in order. A declared body longer than `max_body_length` gives a `Skipped` (with
    ``limit`` set) as soon as its header is complete, and its bytes are then counted
    off as they arrive without being buffered: the C RecCaster sends an info value
    over 65,535 bytes with a true frame length, and the message is lost, as the
    reference loses it, while the upload goes on. A wrong magic raises
    `FramingError` (a `RemoteProtocolError`) carrying the messages completed before
    it; the buffer is emptied and the decoder must not be fed again.

    `bridge.protocol.runs.RunDecoder` wraps one and reads frames from its buffer in
    place (``_buffer``, ``_take``, ``_broken``, `oversize`); nothing else touches them.
    """

    def __init__(self, max_body_length: int = MAX_BODY_LENGTH) -> None:
        self.max_body_length = max_body_length
        #: The limit named in the `Skipped` of a longer body (`set_body_limit`).
        self.limit_name = MAX_BODY_LENGTH_LIMIT
        self._buffer = bytearray()
        #: Bytes of an oversize body still to pass over (`oversize`).
        self._skip = 0

    @property
    def buffered(self) -> int:
        """Bytes not decoded yet: a partial frame (≤ 8 + max_body_length), or also what
        arrived while the caller waits (`hold`), which callers bound by not reading
        more meanwhile."""
        return len(self._buffer)

    @property
    def skipping(self) -> int:
        """Bytes of an oversize body still to be passed over (never buffered)."""
        return self._skip

    def hold(self, data: bytes) -> None:
        """Keep bytes undecoded until the next `feed` (a connection waiting for a slot)."""
        self._buffer += data

    def set_body_limit(self, max_body_length: int, name: str = MAX_BODY_LENGTH_LIMIT) -> None:
        """Pass over bodies longer than `max_body_length` from now on, naming `name` as
        the limit (a caller that allows less at times, under a name of its own)."""
        self.max_body_length = max_body_length
        self.limit_name = name

    def _take(self, data: bytes) -> bytearray:
        """Append `data` to the buffer, less what is left of an oversize body."""
        buf = self._buffer
        buf += data
        if self._skip:
            passed = min(self._skip, len(buf))
            del buf[:passed]
            self._skip -= passed
        return buf

    def _broken(self, decoded: list[Any], magic: int) -> typing.NoReturn:
        """Raise the `FramingError` for a header with a bad magic."""
        # Drop everything: the stream cannot be resynchronised, and holding the
        # failing read would break the buffer bound.
        self._buffer.clear()
        raise FramingError(f"bad magic 0x{magic:04x}, expected 0x{PROTO_ID:04x}", decoded)

    def oversize(self, msgid: int, length: int, start: int, end: int) -> tuple[Skipped, int]:
        """A header at ``start - 8`` declares a body longer than `max_body_length`.

        Returns its `Skipped` and where decoding goes on in the buffer: after the body,
        if it is all there (``end`` is the buffer's end), else at ``end``, with the rest
        of the body to be passed over as it arrives.
        """
        skipped = Skipped(
            msgid,
            length,
            f"message 0x{msgid:04x} declares a {length}-byte body, over "
            f"{self.limit_name}={self.max_body_length}; passed over unread",
            self.limit_name,
        )
        if end - start >= length:
            return skipped, start + length
        self._skip = length - (end - start)
        return skipped, end

    def feed(self, data: bytes, stop_after: type | None = None) -> list[Decoded]:
        """Decode what `data` completes; with `stop_after`, stop after the first message
        of that type and leave the rest undecoded in the buffer."""
        buf = self._take(data)
        out: list[Decoded] = []
        offset = 0
        end = len(buf)
        while end - offset >= HEADER_SIZE:
            magic, msgid, length = HEADER.unpack_from(buf, offset)
            if magic != PROTO_ID:
                self._broken(out, magic)
            start = offset + HEADER_SIZE
            if length > self.max_body_length:
                skipped, offset = self.oversize(msgid, length, start, end)
                out.append(skipped)
                continue
            if end - start < length:
                break
            offset = start + length
            if length == 0:
                # The reference server ignores zero-length messages entirely
                # (docs/protocol.md, Framing).
                out.append(Skipped(msgid, 0, "empty body"))
                continue
            message: Decoded
            if msgid == MSG_ADD_INFO and length >= 8:
                # Inline fast path for the commonest message (3-5 per record); any
                # irregularity (strings overrun, empty key, not UTF-8) takes the
                # general decoder below.
                rid, keylen, valen = ADD_INFO.unpack_from(buf, start)
                value_at = start + 8 + keylen
                if keylen and value_at + valen <= offset:
                    try:
                        message = AddInfo(
                            rid,
                            buf[start + 8 : value_at].decode(),
                            buf[value_at : value_at + valen].decode(),
                        )
                    except UnicodeDecodeError:
                        message = decode_at(msgid, buf, start, offset)
                else:
                    message = decode_at(msgid, buf, start, offset)
            elif msgid == MSG_ADD_RECORD and length >= 8:
                # The same for AddRecord (records and aliases).
                rid, atype, rtlen, rnlen = ADD_RECORD.unpack_from(buf, start)
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
                        message = decode_at(msgid, buf, start, offset)
                else:
                    message = decode_at(msgid, buf, start, offset)
            else:
                message = decode_at(msgid, buf, start, offset)
            out.append(message)
            if stop_after is not None and type(message) is stop_after:
                break
        if offset:
            del buf[:offset]
        return out


def decode_record(msgid: int, buf: bytes | bytearray, start: int, end: int) -> Decoded:
    """An AddInfo or AddRecord body of at least 8 bytes, ``buf[start:end]``, decoded
    exactly as `Decoder.feed` decodes it (the same fast path, as a function)."""
    if msgid == MSG_ADD_INFO:
        rid, keylen, valen = ADD_INFO.unpack_from(buf, start)
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
        return decode_at(msgid, buf, start, end)
    rid, atype, rtlen, rnlen = ADD_RECORD.unpack_from(buf, start)
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
    return decode_at(msgid, buf, start, end)


@dataclass(frozen=True, slots=True)
class Announce:
    """The 16-byte UDP announcement a server sends to port 5049 (docs/protocol.md,
    Discovery)."""

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
