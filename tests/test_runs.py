"""The decoder's runs: unchanged re-uploads found from the frames, without decoding them.

Pure: bytes in, messages out (`bridge.protocol.runs.RunDecoder.start_runs`). Uploads come from
`bridge.testing.fakeioc`, which puts the C RecCaster's exact sequence on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol import wire
from bridge.protocol.runs import (
    RUN_BYTES,
    RUN_HOLD_LIMIT,
    RunDecoded,
    RunDecoder,
    RunEnd,
    UnchangedRun,
)
from bridge.testing.fakeioc import IOCSpec, RecordSpec, make_ioc, upload_bytes, upload_frames
from tests.helpers import answer_runs

SEED = b"test seed"


def feed_runs(
    data: bytes,
    expected: Sequence[str] | None,
    chunk: int = 65536,
    seed: bytes = SEED,
    first_run: bool = False,
) -> list[RunDecoded]:
    """Decode as the server does: cut runs, and say what to expect when asked (with
    `first_run`, at the end of the first run instead of in front of the first record)."""
    decoder = RunDecoder()
    decoder.start_runs(seed)
    out: list[RunDecoded] = []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i : i + chunk])
        out += answer_runs(decoder, expected, first_run)
    return out


def plain(data: bytes) -> list[RunDecoded]:
    return wire.Decoder().feed(data)


def digests(out: list[RunDecoded]) -> list[str]:
    return [m.digest for m in out if isinstance(m, RunEnd | UnchangedRun)]


def without_run_ends(out: list[RunDecoded]) -> list[RunDecoded]:
    return [m for m in out if not isinstance(m, RunEnd)]


def kinds(out: list[RunDecoded]) -> list[str]:
    return [type(m).__name__ for m in out]


def test_a_reconnect_with_new_record_ids_is_found_unchanged() -> None:
    spec = make_ioc("R", 2500)
    first = feed_runs(upload_bytes(spec), None)
    assert without_run_ends(first) == plain(upload_bytes(spec))
    stored = digests(first)
    assert len(stored) == 3 and all(stored)  # 1000 + 1000 + 500 records

    # The C RecCaster numbers records on from where it stopped (2501, 2502, ...).
    again = feed_runs(upload_bytes(spec, first_rid=2501), stored)
    assert kinds(again) == ["ClientGreet"] + ["AddInfo"] * len(spec.env) + ["UnchangedRun"] * 3 + [
        "UploadDone"
    ]
    runs = [m for m in again if isinstance(m, UnchangedRun)]
    assert [r.index for r in runs] == [0, 1, 2]
    assert [r.digest for r in runs] == stored
    assert [n for r in runs for n in r.names] == [r.name for r in spec.records]
    assert [n for r in runs for n in r.rids] == list(range(2501, 5001))
    assert [a for r in runs for a in r.aliases] == [a for r in spec.records for a in r.aliases]
    assert [t for r in runs for t in r.rtypes] == [r.rtype for r in spec.records]
    owners = [r.names[i] for r in runs for i in r.alias_of]
    assert owners == [r.name for r in spec.records for _ in r.aliases]


def test_one_changed_record_reveals_only_its_own_run() -> None:
    spec = make_ioc("R", 2500)
    stored = digests(feed_runs(upload_bytes(spec), None))
    records = list(spec.records)
    records[1500] = RecordSpec(records[1500].name, "ai", (), (), "changed")
    changed = IOCSpec(spec.env, tuple(records))
    out = feed_runs(upload_bytes(changed, first_rid=9), stored)

    unchanged = [m.index for m in out if isinstance(m, UnchangedRun)]
    ends = [m for m in out if isinstance(m, RunEnd)]
    assert unchanged == [0, 2]
    assert [e.index for e in ends] == [1] and ends[0].digest not in ("", stored[1])
    # Run 1 comes out decoded, with its real record ids, exactly as the plain decoder
    # gives it.
    decoded = [m for m in out if isinstance(m, wire.AddRecord | wire.AddInfo) and m.rid]
    whole = [
        m
        for m in plain(upload_bytes(changed, first_rid=9))
        if isinstance(m, wire.AddRecord | wire.AddInfo) and m.rid
    ]
    assert decoded == [m for m in whole if 1009 <= m.rid < 2009]


@settings(max_examples=40, deadline=None)
@given(
    chunk=st.integers(min_value=1, max_value=20_000),
    first_rid=st.integers(1, 2**31),
    first_run=st.booleans(),
)
def test_runs_decode_to_exactly_what_the_plain_decoder_gives(
    chunk: int, first_rid: int, first_run: bool
) -> None:
    spec = make_ioc("H", 1200)
    stored = digests(feed_runs(upload_bytes(spec), None))
    assert stored == digests(feed_runs(upload_bytes(spec), None, first_run=True))
    # Every run differs (1 % of the records changed): all of them are decoded.
    changed = make_ioc("H", 1200, changed=0.01, variant=1)
    data = upload_bytes(changed, first_rid=first_rid)
    out = feed_runs(data, stored, chunk=chunk, first_run=first_run)
    assert without_run_ends(out) == plain(data)
    assert [m.index for m in out if isinstance(m, RunEnd)] == [0, 1]
    # And split anywhere, an unchanged upload is the same two runs.
    same = feed_runs(
        upload_bytes(spec, first_rid=first_rid), stored, chunk=chunk, first_run=first_run
    )
    assert kinds(same).count("UnchangedRun") == 2


def test_records_out_of_pattern_give_a_run_no_digest_yet_decode_the_same() -> None:
    frames = [
        wire.ClientGreet().encode(),
        wire.AddRecord(1, wire.ATYPE_RECORD, "ai", "A").encode(),
        wire.AddRecord(2, wire.ATYPE_RECORD, "ai", "B").encode(),
        wire.AddInfo(1, "late", "info for A after B began").encode(),
        wire.AddInfo(2, "k", "v").encode(),
        wire.UploadDone().encode(),
    ]
    data = b"".join(frames)
    first = feed_runs(data, None)
    assert without_run_ends(first) == plain(data)
    assert digests(first) == [""]
    again = feed_runs(data, [""])
    assert without_run_ends(again) == plain(data)  # the empty digest never matches


def test_a_malformed_record_frame_breaks_the_pattern() -> None:
    frames = [
        wire.ClientGreet().encode(),
        wire.AddRecord(1, wire.ATYPE_RECORD, "ai", "A").encode(),
        # An AddRecord of a record without a type: skipped when decoded.
        wire._frame(wire.MSG_ADD_RECORD, bytes([0, 0, 0, 2, 0, 0, 0, 1]) + b"B"),
        wire.UploadDone().encode(),
    ]
    data = b"".join(frames)
    out = feed_runs(data, None)
    assert without_run_ends(out) == plain(data)
    assert isinstance(out[2], wire.Skipped) and digests(out) == [""]


def test_client_infos_between_records_leave_runs_comparable() -> None:
    # pyreccaster sends every client-wide info again after each record, and the same
    # record ids on every connection.
    def upload(desc: str) -> bytes:
        frames = [wire.ClientGreet().encode()]
        for i in range(3):
            rid = 100 + i
            frames.append(wire.AddRecord(rid, wire.ATYPE_RECORD, "ai", f"P{i}").encode())
            frames.append(wire.AddRecord(rid, wire.ATYPE_ALIAS, "ai", f"P{i}:A").encode())
            frames.append(wire.AddInfo(0, "IOCNAME", "PY").encode())
            frames.append(wire.AddInfo(rid, "recordDesc", desc).encode())
        frames.append(wire.UploadDone().encode())
        return b"".join(frames)

    def client_info(m: RunDecoded) -> bool:
        return isinstance(m, wire.AddInfo) and m.rid == 0

    first = feed_runs(upload("d"), None, first_run=True)
    whole = plain(upload("d"))
    # The same messages, except that client infos overtake the held record frames.
    assert [m for m in without_run_ends(first) if not client_info(m)] == [
        m for m in whole if not client_info(m)
    ]
    assert [m for m in first if client_info(m)] == [m for m in whole if client_info(m)]
    again = feed_runs(upload("d"), digests(first), first_run=True)
    # The client infos come out at once, ahead of the run they were sent within.
    assert kinds(again) == ["ClientGreet"] + ["AddInfo"] * 3 + ["UnchangedRun", "UploadDone"]
    run = again[4]
    assert isinstance(run, UnchangedRun)
    assert (run.names, run.aliases, run.rids) == (
        ["P0", "P1", "P2"],
        ["P0:A", "P1:A", "P2:A"],
        [100, 101, 102],
    )
    assert (run.rtypes, run.alias_of) == (["ai"] * 3, [0, 1, 2])
    assert digests(feed_runs(upload("other"), digests(first), first_run=True)) != digests(first)


def test_a_record_with_more_aliases_than_the_session_takes_is_decoded() -> None:
    many = IOCSpec(
        (),
        (
            RecordSpec("A", "ai", tuple(f"A:{i}" for i in range(5))),
            RecordSpec("B", "ai", ("B:0",)),
        ),
    )
    data = upload_bytes(many)
    decoder = RunDecoder()
    decoder.start_runs(SEED, max_aliases=4)
    decoder.feed(data)
    decoder.expect(None)
    assert digests(decoder.feed(b"")) == [""]  # a run no later upload can match
    decoder = RunDecoder()
    decoder.start_runs(SEED, max_aliases=5)
    decoder.feed(data)
    decoder.expect(None)
    assert all(digests(decoder.feed(b"")))


@pytest.mark.parametrize(
    "spec",
    [
        RecordSpec("N" * 11, "ai"),
        RecordSpec("°" * 6, "ai"),  # 6 characters, 12 bytes
        RecordSpec("A", "t" * 5),
        RecordSpec("A", "ai", ("a" * 11,)),
    ],
    ids=["name", "name-utf8", "type", "alias"],
)
def test_a_record_with_a_name_the_session_skips_is_decoded(spec: RecordSpec) -> None:
    """Found unchanged, the run would stand for a record the session never took."""
    data = upload_bytes(IOCSpec((), (spec, RecordSpec("B", "ai", ("B:0",)))))
    stored = digests(feed_runs(data, None))
    for name_limit, type_limit, fits in ((10, 4, False), (12, 5, True)):
        decoder = RunDecoder()
        decoder.start_runs(SEED, max_name_length=name_limit, max_type_length=type_limit)
        decoder.feed(data)
        decoder.expect(stored)
        assert ("UnchangedRun" in kinds(decoder.feed(b""))) == fits


def test_the_seed_is_part_of_every_digest() -> None:
    data = upload_bytes(make_ioc("S", 10))
    assert digests(feed_runs(data, None, seed=b"a")) != digests(feed_runs(data, None, seed=b"b"))


def test_a_run_ends_at_1_mib_before_1000_records() -> None:
    big = tuple(
        RecordSpec(f"BIG:{i}", "ai", (), (("blob", "x" * 3000),), None) for i in range(700)
    )
    out = feed_runs(upload_bytes(IOCSpec((), big)), None)
    ends = [m.index for m in out if isinstance(m, RunEnd)]
    records_per_run = 1 + (RUN_BYTES - 1) // 3031  # frames of 3031 bytes per record
    assert ends == list(range(-(-700 // records_per_run)))


def test_a_run_over_the_hold_limit_is_decoded_as_it_arrives() -> None:
    # One record with 80 info tags of 60 kB: 4.8 MB, more than the 4 MiB a run may hold.
    infos = tuple((f"k{i}", "v" * 60_000) for i in range(80))
    spec = IOCSpec((), (RecordSpec("HUGE", "ai", (), infos, None), RecordSpec("NEXT")))
    data = upload_bytes(spec)
    first = feed_runs(data, None)
    assert without_run_ends(first) == plain(data)
    assert digests(first) == ["", digests(first)[1]]  # no digest for the run over the limit
    decoder = RunDecoder()
    decoder.start_runs(SEED)
    out: list[RunDecoded] = []
    for i in range(0, len(data), 65536):
        out += decoder.feed(data[i : i + 65536])
        assert decoder.held <= RUN_HOLD_LIMIT + 65536
        if decoder.awaiting:
            decoder.expect(digests(first))
            out += decoder.feed(b"")
    # Decoded as before, except that the run after it compares.
    assert without_run_ends(out)[:-2] == without_run_ends(first)[:-2]
    assert kinds(out)[-3:] == ["RunEnd", "UnchangedRun", "UploadDone"]


def test_delrecord_ends_runs_and_the_rest_is_decoded_plainly() -> None:
    spec = make_ioc("D", 30)
    head = upload_bytes(IOCSpec(spec.env, spec.records[:20]))[:-12]  # without UploadDone
    tail = b"".join(
        wire.AddRecord(100 + i, wire.ATYPE_RECORD, "ai", f"T{i}").encode() for i in range(3)
    )
    data = head + wire.DelRecord(5).encode() + tail + wire.UploadDone().encode()
    out = feed_runs(data, None)
    assert without_run_ends(out) == plain(data)
    assert [type(m).__name__ for m in out[-6:]] == [
        "RunEnd",
        "DelRecord",
        "AddRecord",
        "AddRecord",
        "AddRecord",
        "UploadDone",
    ]


def test_the_decoder_waits_for_what_to_expect_in_front_of_the_first_record() -> None:
    data = upload_bytes(make_ioc("S", 1500))
    decoder = RunDecoder()
    decoder.start_runs(SEED)
    out = decoder.feed(data)
    # Client infos come out; nothing goes on until the caller says what to expect.
    assert kinds(out) == ["ClientGreet"] + ["AddInfo"] * 5
    assert decoder.awaiting and decoder.before_records
    assert decoder.feed(b"") == [] and decoder.awaiting
    decoder.expect(None)
    rest = decoder.feed(b"")
    assert not decoder.awaiting
    assert without_run_ends(out + rest) == plain(data)
    assert [m.index for m in rest if isinstance(m, RunEnd)] == [0, 1]


def test_or_at_the_end_of_the_first_run_when_asked_to() -> None:
    data = upload_bytes(make_ioc("S", 1500))
    decoder = RunDecoder()
    decoder.start_runs(SEED)
    assert kinds(decoder.feed(data)) == ["ClientGreet"] + ["AddInfo"] * 5
    decoder.wait_for_first_run()
    assert decoder.feed(b"") == []  # the first run is held ...
    assert decoder.awaiting and not decoder.before_records  # ... and complete
    stored = digests(feed_runs(data, None))
    decoder.expect(stored)
    rest = decoder.feed(b"")
    assert kinds(rest) == ["UnchangedRun", "UnchangedRun", "UploadDone"]


def test_a_bad_magic_inside_a_run_raises_as_the_plain_decoder_does() -> None:
    data = upload_bytes(make_ioc("F", 3))[:-12]  # everything but UploadDone
    broken = b"XXXXXXXX"
    decoder = RunDecoder()
    decoder.start_runs(SEED)
    decoder.feed(data)
    answer_runs(decoder, None)
    with pytest.raises(wire.FramingError) as error:
        decoder.feed(broken)
    with pytest.raises(wire.FramingError) as plain_error:
        wire.Decoder().feed(data + broken)
    assert str(error.value) == str(plain_error.value)
    assert decoder.buffered == 0


def test_an_oversize_frame_inside_a_run_is_passed_over_and_its_run_never_compared() -> None:
    frames = list(upload_frames(make_ioc("F", 30)))
    body = wire.ADD_INFO.pack(12, 1, 0xFFFF) + b"k" + b"v" * 70_000  # the C client's value
    at = frames.index(wire.AddRecord(12, 0, "longin", "F:PV000011").encode()) + 1
    frames.insert(at, wire.HEADER.pack(wire.PROTO_ID, wire.MSG_ADD_INFO, len(body)) + body)
    data = wire.ClientGreet().encode() + b"".join(frames)
    first = feed_runs(data, None)
    by_repr = sorted(map(repr, without_run_ends(first)))
    assert by_repr == sorted(map(repr, plain(data)))  # the same messages, the Skipped too
    assert digests(first) == [""]  # one run (30 records), not comparable
    again = feed_runs(data, digests(first))
    assert "UnchangedRun" not in kinds(again)
    assert sorted(map(repr, without_run_ends(again))) == by_repr
    decoder = RunDecoder()
    decoder.start_runs(SEED)
    for i in range(0, len(data), 4096):
        decoder.feed(data[i : i + 4096])
        answer_runs(decoder, None)
        assert decoder.buffered <= wire.HEADER_SIZE + wire.MAX_BODY_LENGTH


def test_before_start_runs_it_is_the_plain_decoder() -> None:
    data = upload_bytes(make_ioc("P", 1500))
    decoder = RunDecoder()
    out = [m for i in range(0, len(data), 4096) for m in decoder.feed(data[i : i + 4096])]
    assert out == plain(data) and decoder.held == 0


def test_an_upload_without_records_never_waits() -> None:
    data = (
        wire.ClientGreet().encode()
        + wire.AddInfo(0, "IOCNAME", "E").encode()
        + wire.UploadDone().encode()
    )
    decoder = RunDecoder()
    decoder.start_runs(SEED)
    assert decoder.feed(data) == plain(data) and not decoder.awaiting


def test_a_record_with_id_0_breaks_the_pattern_and_its_infos_stay_client_wide() -> None:
    data = b"".join(
        m.encode()
        for m in [
            wire.ClientGreet(),
            wire.AddRecord(0, wire.ATYPE_RECORD, "ai", "ZERO"),
            wire.AddInfo(0, "IOCNAME", "Z"),
            wire.AddRecord(1, wire.ATYPE_RECORD, "ai", "ONE"),
            wire.UploadDone(),
        ]
    )
    first = feed_runs(data, None)
    assert sorted(map(repr, without_run_ends(first))) == sorted(map(repr, plain(data)))
    assert digests(first) == [""]
    again = feed_runs(data, [""])
    assert wire.AddInfo(0, "IOCNAME", "Z") in again and "UnchangedRun" not in kinds(again)
