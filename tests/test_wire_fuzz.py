"""Property tests for the RecSync decoders (`bridge.protocol.wire`, `.runs`) with hypothesis.

Two families:

* round trips: valid messages of every type, with arbitrary ids, numbers and
  unicode text that fits the length fields, encode and decode back to themselves
  under any chunking of the byte stream;
* mutations: a valid stream is truncated, bit-flipped, has bytes inserted or
  deleted, gets a huge declared length, a wrong magic or garbage between frames.
  Whatever happens, `Decoder.feed` returns decoded messages or raises
  `RemoteProtocolError` (nothing else), and `decoder.buffered` stays within
  ``8 + max_body_length`` after every feed that returns. A body over the limit is
  passed over unbuffered, and the frames after it decode.

The whole file is kept to a few seconds: every test sets `max_examples`.
"""

from __future__ import annotations

import collections
import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridge.errors import RemoteProtocolError
from bridge.protocol import wire
from bridge.protocol.runs import RUN_HOLD_LIMIT, RunDecoded, RunDecoder, RunEnd, UnchangedRun
from tests.helpers import answer_runs

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=60)

MESSAGE_TYPES = (
    wire.ServerGreet,
    wire.Ping,
    wire.ClientGreet,
    wire.Pong,
    wire.AddRecord,
    wire.DelRecord,
    wire.UploadDone,
    wire.AddInfo,
)
DECODED_TYPES = (*MESSAGE_TYPES, wire.Skipped)
KNOWN_MSGIDS = tuple(t.msgid for t in MESSAGE_TYPES)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def _fit(text: str, limit: int) -> str:
    """Cut `text` to at most `limit` UTF-8 bytes on a character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def texts(limit: int, *, min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Arbitrary unicode (no surrogates) whose UTF-8 fits `limit` bytes."""
    return st.text(min_size=min_size, max_size=max_size).map(lambda s: _fit(s, limit))


# Occasionally produce strings right at the length limits (255 / 65535 bytes).
rtypes = st.one_of(texts(0xFF, max_size=20), texts(0xFF, max_size=300))
names = st.one_of(texts(0xFFFF, max_size=60), st.just("N" * 0xFFFF))
keys = st.one_of(texts(0xFF, max_size=20), texts(0xFF, max_size=300))
values = st.one_of(texts(0xFFFF, max_size=60), st.just("°" * (0xFFFF // 2) + "x"))


def _nonempty(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return strategy.filter(bool)


add_records = st.one_of(
    st.builds(
        wire.AddRecord, u32, st.just(wire.ATYPE_RECORD), _nonempty(rtypes), _nonempty(names)
    ),
    st.builds(wire.AddRecord, u32, st.just(wire.ATYPE_ALIAS), rtypes, _nonempty(names)),
)
add_infos = st.builds(wire.AddInfo, u32, _nonempty(keys), values)

messages: st.SearchStrategy[wire.Message] = st.one_of(
    st.builds(wire.ServerGreet, u8),
    st.builds(wire.Ping, u32),
    st.builds(wire.ClientGreet, u8, u8, u32),
    st.builds(wire.Pong, u32),
    add_records,
    st.builds(wire.DelRecord, u32),
    st.just(wire.UploadDone()),
    add_infos,
)
# Small messages for the mutation tests, so that small body limits still fit them.
small_messages: st.SearchStrategy[wire.Message] = st.one_of(
    st.builds(wire.ServerGreet, u8),
    st.builds(wire.Ping, u32),
    st.builds(wire.ClientGreet, u8, u8, u32),
    st.builds(wire.Pong, u32),
    st.builds(wire.AddRecord, u32, st.just(0), texts(16, min_size=1), texts(64, min_size=1)),
    st.builds(wire.AddRecord, u32, st.just(1), texts(16), texts(64, min_size=1)),
    st.builds(wire.DelRecord, u32),
    st.just(wire.UploadDone()),
    st.builds(wire.AddInfo, u32, texts(16, min_size=1), texts(64)),
)
limits = st.sampled_from([0, 8, 64, 256, 4096, wire.MAX_BODY_LENGTH])


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut at arbitrary points (possibly empty chunks, possibly byte by byte)."""
    if not data:
        return [b""]
    mode = draw(st.sampled_from(["whole", "bytes", "cuts"]))
    if mode == "whole":
        return [data]
    if mode == "bytes" and len(data) <= 5000:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def feed_checked(decoder: wire.Decoder, chunks: list[bytes]) -> tuple[list[wire.Decoded], bool]:
    """Feed chunks; returns (messages, raised). Only RemoteProtocolError may escape feed.

    After each feed that returns, the buffer bound holds and every result is a
    decoded message. After a RemoteProtocolError the decoder is not fed again.
    """
    bound = wire.HEADER_SIZE + decoder.max_body_length
    out: list[wire.Decoded] = []
    for chunk in chunks:
        try:
            got = decoder.feed(chunk)
        except wire.FramingError as error:
            # The frames completed before the broken one are delivered with the error,
            # and the buffer is emptied.
            out.extend(error.decoded)
            assert decoder.buffered == 0
            return out, True
        assert isinstance(got, list)
        assert all(isinstance(m, DECODED_TYPES) for m in got), got
        assert decoder.buffered <= bound
        out.extend(got)
    return out, False


def frame_offsets(stream_messages: list[wire.Message]) -> list[int]:
    """Start offset of each frame, plus the end of the stream."""
    offsets = [0]
    for message in stream_messages:
        offsets.append(offsets[-1] + len(message.encode()))
    return offsets


# --- round trips --------------------------------------------------------------------


@FAST
@given(messages)
def test_every_valid_message_round_trips(message: wire.Message) -> None:
    data = message.encode()
    (msgid, length) = struct.unpack_from(">2xHI", data)
    assert msgid == message.msgid
    assert length == len(data) - wire.HEADER_SIZE
    assert wire.decode_body(msgid, data[wire.HEADER_SIZE :]) == message
    decoder = wire.Decoder()
    assert decoder.feed(data) == [message]
    assert decoder.buffered == 0


@SLOW
@given(st.lists(messages, max_size=12), st.data())
def test_a_stream_of_valid_messages_round_trips_under_any_chunking(
    stream_messages: list[wire.Message], data: st.DataObject
) -> None:
    stream = b"".join(m.encode() for m in stream_messages)
    chunks = data.draw(chunkings(stream))
    decoder = wire.Decoder()
    out, raised = feed_checked(decoder, chunks)
    assert not raised
    assert out == stream_messages
    assert decoder.buffered == 0


@FAST
@given(st.lists(small_messages, max_size=20), st.data())
def test_small_messages_round_trip_byte_by_byte_and_in_random_chunks(
    stream_messages: list[wire.Message], data: st.DataObject
) -> None:
    stream = b"".join(m.encode() for m in stream_messages)
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        assert feed_checked(wire.Decoder(), chunks) == (stream_messages, False)
    assert feed_checked(wire.Decoder(), data.draw(chunkings(stream))) == (stream_messages, False)


@FAST
@given(
    st.lists(
        st.one_of(
            small_messages,
            st.tuples(
                u16.filter(lambda m: m not in KNOWN_MSGIDS),
                st.binary(max_size=40),
            ),
        ),
        max_size=15,
    ),
    st.data(),
)
def test_unknown_message_ids_are_skipped_between_valid_messages(
    items: list[wire.Message | tuple[int, bytes]], data: st.DataObject
) -> None:
    stream = b""
    expected: list[wire.Decoded] = []
    for item in items:
        if isinstance(item, tuple):
            msgid, body = item
            stream += struct.pack(">HHI", wire.PROTO_ID, msgid, len(body)) + body
            expected.append(wire.Skipped(msgid, len(body), "?"))
        else:
            stream += item.encode()
            expected.append(item)
    out, raised = feed_checked(wire.Decoder(), data.draw(chunkings(stream)))
    assert not raised
    assert len(out) == len(expected)
    for got, want in zip(out, expected, strict=True):
        if isinstance(want, wire.Skipped):
            assert isinstance(got, wire.Skipped)
            assert (got.msgid, got.length) == (want.msgid, want.length)
        else:
            assert got == want


@FAST
@given(u16, st.binary(max_size=300))
def test_decode_body_never_raises(msgid: int, body: bytes) -> None:
    assert isinstance(wire.decode_body(msgid, body), DECODED_TYPES)


@FAST
@given(
    st.sampled_from([wire.MSG_ADD_INFO, wire.MSG_ADD_RECORD]),
    st.binary(max_size=80),
    st.sampled_from([b"", b"\xc3", b"\xff\xfe", "°".encode("latin-1")]),
)
def test_the_decoders_fast_paths_agree_with_decode_body(
    msgid: int, body: bytes, odd: bytes
) -> None:
    # Decoder.feed decodes AddInfo and AddRecord inline; any body must come out as
    # decode_body says (including Latin-1 text and every kind of skipped body).
    body = body[:8] + odd + body[8:]
    assume(body)  # an empty body is skipped before any decoder sees it (docs/protocol.md, Framing)
    frame = wire.HEADER.pack(wire.PROTO_ID, msgid, len(body)) + body
    (got,) = wire.Decoder().feed(frame)
    assert got == wire.decode_body(msgid, body)


@FAST
@given(st.sampled_from(KNOWN_MSGIDS), st.binary(max_size=64), st.binary(min_size=1, max_size=16))
def test_extra_body_bytes_never_change_a_decoded_message(
    msgid: int, body: bytes, extra: bytes
) -> None:
    first = wire.decode_body(msgid, body)
    if isinstance(first, MESSAGE_TYPES):
        assert wire.decode_body(msgid, body + extra) == first


@FAST
@given(u16, u32, st.binary(min_size=4, max_size=4), u32)
def test_announce_round_trips_and_ignores_reserved_bytes(
    port: int, key: int, reserved: bytes, addr: int
) -> None:
    announce = wire.Announce(port=port, key=key, addr=addr)
    data = bytearray(announce.encode())
    assert wire.Announce.decode(bytes(data)) == announce
    data[3] = reserved[0]
    data[10:12] = reserved[1:3]
    assert wire.Announce.decode(bytes(data) + reserved) == announce


@FAST
@given(st.binary(max_size=40))
def test_announce_decode_only_raises_remote_protocol_error(data: bytes) -> None:
    try:
        announce = wire.Announce.decode(data)
    except RemoteProtocolError:
        assert len(data) < 16 or data[:3] != b"RC\x00"
    else:
        assert data[:3] == b"RC\x00" and len(data) >= 16
        assert announce.encode()[:3] == data[:3]


# --- mutations ----------------------------------------------------------------------

valid_streams = st.lists(small_messages, min_size=1, max_size=10)


@FAST
@given(valid_streams, st.data())
def test_truncated_stream_decodes_the_complete_frames_and_buffers_the_rest(
    stream_messages: list[wire.Message], data: st.DataObject
) -> None:
    stream = b"".join(m.encode() for m in stream_messages)
    cut = data.draw(st.integers(0, len(stream)))
    decoder = wire.Decoder()
    out, raised = feed_checked(decoder, data.draw(chunkings(stream[:cut])))
    assert not raised
    offsets = frame_offsets(stream_messages)
    complete = sum(1 for end in offsets[1:] if end <= cut)
    assert out == stream_messages[:complete]
    assert decoder.buffered == cut - offsets[complete]


@FAST
@given(valid_streams, limits, st.data())
def test_bit_flips_only_ever_raise_remote_protocol_error(
    stream_messages: list[wire.Message], limit: int, data: st.DataObject
) -> None:
    stream = bytearray(b"".join(m.encode() for m in stream_messages))
    for bit in data.draw(st.lists(st.integers(0, len(stream) * 8 - 1), min_size=1, max_size=8)):
        stream[bit // 8] ^= 1 << (bit % 8)
    feed_checked(wire.Decoder(max_body_length=limit), data.draw(chunkings(bytes(stream))))


@FAST
@given(valid_streams, limits, st.data())
def test_inserted_and_deleted_bytes_only_ever_raise_remote_protocol_error(
    stream_messages: list[wire.Message], limit: int, data: st.DataObject
) -> None:
    stream = bytearray(b"".join(m.encode() for m in stream_messages))
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(stream)))
        if data.draw(st.booleans()):
            stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=12))
        else:
            stream[pos : pos + data.draw(st.integers(1, 12))] = b""
    feed_checked(wire.Decoder(max_body_length=limit), data.draw(chunkings(bytes(stream))))


@FAST
@given(valid_streams, limits, st.data())
def test_a_body_over_the_limit_is_passed_over_unbuffered_and_the_rest_decodes(
    stream_messages: list[wire.Message], limit: int, data: st.DataObject
) -> None:
    # Only streams whose frames fit the limit: the long body is the only one skipped.
    stream_messages = [m for m in stream_messages if len(m.encode()) - 8 <= limit]
    index = data.draw(st.integers(0, len(stream_messages)))
    msgid = data.draw(u16)
    length = data.draw(
        st.one_of(st.integers(limit + 1, limit + 70_000), st.integers(limit + 1, 0xFFFFFFFF))
    )
    whole = length <= limit + 70_000  # else the stream ends inside the body
    body = data.draw(st.binary(min_size=length, max_size=length)) if whole else b"\xaa" * 300
    before = b"".join(m.encode() for m in stream_messages[:index])
    after = b"".join(m.encode() for m in stream_messages[index:]) if whole else b""
    stream = before + struct.pack(">HHI", wire.PROTO_ID, msgid, length) + body + after
    decoder = wire.Decoder(max_body_length=limit)
    out, raised = feed_checked(decoder, data.draw(chunkings(stream)))  # checks the bound
    assert not raised
    skipped = wire.Skipped(
        msgid,
        length,
        f"message 0x{msgid:04x} declares a {length}-byte body, over "
        f"maxBodyLength={limit}; passed over unread",
        wire.MAX_BODY_LENGTH_LIMIT,
    )
    if whole:
        assert out == [*stream_messages[:index], skipped, *stream_messages[index:]]
        assert decoder.buffered == decoder.skipping == 0
    else:
        assert out == [*stream_messages[:index], skipped]
        assert decoder.buffered == 0 and decoder.skipping == length - len(body)


@FAST
@given(valid_streams, st.data())
def test_wrong_magic_raises_and_earlier_frames_still_decode(
    stream_messages: list[wire.Message], data: st.DataObject
) -> None:
    offsets = frame_offsets(stream_messages)
    stream = bytearray(b"".join(m.encode() for m in stream_messages))
    index = data.draw(st.integers(0, len(stream_messages) - 1))
    magic = data.draw(st.integers(0, 0xFFFF).filter(lambda m: m != wire.PROTO_ID))
    struct.pack_into(">H", stream, offsets[index], magic)
    out, raised = feed_checked(
        wire.Decoder(), [bytes(stream[i : i + 1]) for i in range(len(stream))]
    )
    assert raised
    assert out == stream_messages[:index]
    assert feed_checked(wire.Decoder(), data.draw(chunkings(bytes(stream))))[1]


@FAST
@given(valid_streams, limits, st.data())
def test_garbage_between_frames_only_ever_raises_remote_protocol_error(
    stream_messages: list[wire.Message], limit: int, data: st.DataObject
) -> None:
    pieces = []
    for message in stream_messages:
        if data.draw(st.booleans()):
            pieces.append(data.draw(st.binary(min_size=1, max_size=20)))
        pieces.append(message.encode())
    pieces.append(data.draw(st.binary(max_size=20)))
    feed_checked(wire.Decoder(max_body_length=limit), data.draw(chunkings(b"".join(pieces))))


@FAST
@given(st.binary(max_size=600), limits, st.data())
def test_arbitrary_bytes_only_ever_raise_remote_protocol_error(
    garbage: bytes, limit: int, data: st.DataObject
) -> None:
    feed_checked(wire.Decoder(max_body_length=limit), data.draw(chunkings(garbage)))


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """Frames with the right magic and length but arbitrary ids and bodies."""
    out = b""
    for _ in range(draw(st.integers(0, 8))):
        msgid = draw(st.one_of(st.sampled_from(KNOWN_MSGIDS), u16))
        body = draw(st.binary(max_size=80))
        out += struct.pack(">HHI", wire.PROTO_ID, msgid, len(body)) + body
    return out


@FAST
@given(framed_garbage(), st.data())
def test_well_framed_garbage_bodies_never_raise(stream: bytes, data: st.DataObject) -> None:
    decoder = wire.Decoder()
    out, raised = feed_checked(decoder, data.draw(chunkings(stream)))
    assert not raised
    assert decoder.buffered == 0


@FAST
@given(st.one_of(st.binary(max_size=400), framed_garbage()), limits, st.data())
def test_any_chunking_decodes_the_same_as_one_read(
    stream: bytes, limit: int, data: st.DataObject
) -> None:
    whole = wire.Decoder(max_body_length=limit)
    whole_out, whole_raised = feed_checked(whole, [stream])
    chunked = wire.Decoder(max_body_length=limit)
    chunked_out, chunked_raised = feed_checked(chunked, data.draw(chunkings(stream)))
    # The outcome never depends on how TCP split the stream, broken or not.
    assert (chunked_out, chunked_raised) == (whole_out, whole_raised)
    assert chunked.buffered == whole.buffered


# --- runs ---------------------------------------------------------------------------


def feed_runs_checked(
    stream: bytes, chunks: list[bytes], expected: list[str] | None, first_run: bool
) -> tuple[list[RunDecoded], bool]:
    """Feed as the server does with runs on: whenever the decoder waits, say what to
    expect (after `wait_for_first_run` first, with `first_run`). Checks the bounds."""
    decoder = RunDecoder()
    decoder.start_runs(b"seed", max_aliases=3)
    out: list[RunDecoded] = []
    for chunk in chunks:
        try:
            got = decoder.feed(chunk)
            got += answer_runs(decoder, expected, first_run)
        except wire.FramingError as error:
            out.extend(error.decoded)
            return out, True
        assert all(isinstance(m, (*DECODED_TYPES, UnchangedRun, RunEnd)) for m in got), got
        assert decoder.buffered <= wire.HEADER_SIZE + decoder.max_body_length
        assert decoder.held <= RUN_HOLD_LIMIT + len(chunk)
        out.extend(got)
    return out, False


def record_count(out: list[RunDecoded]) -> int:
    return sum(
        len(m.names)
        if isinstance(m, UnchangedRun)
        else isinstance(m, wire.AddRecord) and m.atype == wire.ATYPE_RECORD
        for m in out
    )


@FAST
@given(
    st.lists(small_messages, min_size=1, max_size=30).map(lambda m: [*m, wire.UploadDone()]),
    st.data(),
)
def test_runs_of_any_stream_give_the_plain_messages_or_unchanged_runs_of_them(
    stream_messages: list[wire.Message], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(m.encode() for m in stream_messages))
    if data.draw(st.booleans()):  # and maybe broken
        for bit in data.draw(st.lists(st.integers(0, len(stream) * 8 - 1), max_size=4)):
            stream[bit // 8] ^= 1 << (bit % 8)
    chunks = data.draw(chunkings(bytes(stream)))
    first_run = data.draw(st.booleans())
    plain, plain_raised = feed_checked(wire.Decoder(), chunks)
    # Nothing expected: the same messages (client infos and other frames may overtake
    # held record frames, so the order may differ), plus a RunEnd per run; except that
    # record frames of a run that never ended (no UploadDone) are still held.
    runs, raised = feed_runs_checked(bytes(stream), chunks, None, first_run)
    assert raised == plain_raised
    if raised:
        return
    decoded = collections.Counter(repr(m) for m in runs if not isinstance(m, RunEnd))
    missing = collections.Counter(map(repr, plain)) - decoded
    assert not decoded - collections.Counter(map(repr, plain))
    held = [m for m in plain if repr(m) in missing]
    assert all(
        isinstance(m, wire.AddRecord)
        or (isinstance(m, wire.AddInfo) and m.rid)
        or (isinstance(m, wire.Skipped) and m.msgid in (3, 6))
        for m in held
    ), held
    if wire.UploadDone() in plain:
        assert not missing
        # Expecting what that gave: unchanged runs stand for the same records.
        digests = [m.digest for m in runs if isinstance(m, RunEnd)]
        again, _ = feed_runs_checked(bytes(stream), chunks, digests, first_run)
        assert record_count(again) == record_count(plain)
