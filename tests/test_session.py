"""The session state machine, on a fake clock and with no I/O."""

from __future__ import annotations

import itertools
import typing

import pytest

from bridge.model import KeptRun, Peer, Transaction
from bridge.protocol import wire
from bridge.protocol.effects import Close, Commit, Effect, Notice, Send
from bridge.protocol.names import NameLimits
from bridge.protocol.runs import RunDecoded, RunEnd, UnchangedRun
from bridge.protocol.session import (
    DISPATCH,
    ITEM_COST,
    RECORD_COST,
    Session,
    SessionLimits,
    State,
)

PEER = Peer("10.0.0.5", 40000)


def make_session(**limits: object) -> Session:
    nonces = itertools.count(0x1000)
    return Session(7, PEER, SessionLimits(**limits), lambda: next(nonces))  # type: ignore[arg-type]


def commits(effects: list[Effect]) -> list[Transaction]:
    return [e.transaction for e in effects if isinstance(e, Commit)]


def sent(effects: list[Effect]) -> list[wire.Decoded]:
    decoder = wire.Decoder()
    return [m for e in effects if isinstance(e, Send) for m in decoder.feed(e.data)]


def closes(effects: list[Effect]) -> list[str]:
    return [e.reason for e in effects if isinstance(e, Close)]


def greeted(**limits: object) -> Session:
    session = make_session(**limits)
    session.start(0.0)
    session.receive([wire.ClientGreet(0, 0, 0xCAFEF00D)], 0.0)
    return session


def test_start_sends_exactly_one_server_greeting() -> None:
    session = make_session()
    effects = session.start(0.0)
    assert effects == [Send(bytes.fromhex("524380010000000100"))]
    assert session.state is State.GREETING


def test_client_greet_starts_the_upload() -> None:
    session = greeted()
    assert session.state is State.UPLOADING


def test_record_before_greeting_closes() -> None:
    session = make_session()
    session.start(0.0)
    effects = session.receive([wire.AddRecord(1, 0, "ai", "X")], 1.0)
    assert closes(effects) == ["AddRecord before ClientGreet"]
    assert session.state is State.CLOSED


def test_pong_before_greeting_is_ignored() -> None:
    session = make_session()
    session.start(0.0)
    assert session.receive([wire.Pong(5)], 1.0) == []
    assert session.state is State.GREETING


def test_c_client_upload_becomes_one_transaction_with_everything() -> None:
    session = greeted()
    effects = session.receive(
        [
            wire.AddInfo(0, "EPICS_VERSION", "EPICS 7.0.8"),
            wire.AddInfo(0, "IOCNAME", "IOC-1"),
            wire.AddRecord(1, 0, "ai", "A"),
            wire.AddRecord(1, 1, "", "A:alias"),
            wire.AddInfo(1, "archive", "Monitor 1"),
            wire.AddInfo(1, "recordDesc", "Beam current"),
            wire.AddRecord(2, 0, "bo", "B"),
            wire.UploadDone(),
        ],
        2.0,
    )
    (txn,) = commits(effects)
    assert txn.seq == 0 and txn.upload_done and txn.connected
    assert txn.client_infos == {"EPICS_VERSION": "EPICS 7.0.8", "IOCNAME": "IOC-1"}
    a, b = txn.records
    assert (a.name, a.rtype, a.aliases, a.infos, a.desc) == (
        "A",
        "ai",
        ["A:alias"],
        {"archive": "Monitor 1"},
        "Beam current",
    )
    assert (b.name, b.rtype, b.aliases, b.infos, b.desc) == ("B", "bo", [], {}, None)
    assert session.state is State.LIVE


def test_upload_done_is_followed_by_a_ping_at_once() -> None:
    session = greeted()
    effects = session.receive([wire.UploadDone()], 1.0)
    assert sent(effects) == [wire.Ping(0x1000)]


def test_pyreccaster_style_repeated_client_infos_last_value_wins() -> None:
    session = greeted()
    effects = session.receive(
        [
            wire.AddRecord(100, 0, "ai", "A"),
            wire.AddRecord(100, 1, "ai", "A:al"),  # typed alias
            wire.AddInfo(0, "ENGINEER", "x"),
            wire.AddRecord(101, 0, "ai", "B"),
            wire.AddInfo(0, "ENGINEER", "y"),
            wire.UploadDone(),
        ],
        1.0,
    )
    (txn,) = commits(effects)
    assert txn.client_infos == {"ENGINEER": "y"}
    assert txn.records[0].aliases == ["A:al"]


def test_client_infos_sent_again_after_every_record_count_once() -> None:
    """pyreccaster's pattern: every client-wide info again after each record. Only
    growth counts towards maxRecordBytes, so a later change is still taken."""
    session = greeted()
    env = {
        "EPICS_VERSION": "EPICS 7.0.8",
        "IOCNAME": "PY-IOC",
        "HOSTNAME": "pyhost",
        "ENGINEER": "someone",
        "LOCATION": "b1",
    }
    messages: list[wire.Decoded] = []
    for rid in range(100, 20_100):  # 76 bytes of infos a record: 1.5 MB if summed
        messages.append(wire.AddRecord(rid, 0, "ai", f"PY:{rid}"))
        messages += [wire.AddInfo(0, key, value) for key, value in env.items()]
    messages += [wire.AddInfo(0, "ENGINEER", "someone else"), wire.UploadDone()]
    effects = session.receive(messages, 1.0)
    assert [e for e in effects if isinstance(e, Notice)] == []
    txns = commits(effects)
    assert txns[-1].client_infos == {**env, "ENGINEER": "someone else"}
    assert sum(len(t.records) for t in txns) == 20_000


def test_a_value_sent_again_counts_only_its_growth_towards_the_limits() -> None:
    # Client-wide infos: their text plus ITEM_COST each, up to maxClientInfoBytes.
    session = greeted(max_record_bytes=100, max_client_info_bytes=100 + 2 * ITEM_COST)
    effects = session.receive(
        [
            wire.AddInfo(0, "K", "x" * 90),  # 91 bytes held
            wire.AddInfo(0, "K", "y" * 99),  # grows to 100: fits
            wire.AddInfo(0, "K", "z" * 10),  # shrinks
            wire.AddInfo(0, "L", "w" * 80),  # 11 + 81: fits
            wire.AddRecord(1, 0, "ai", "A"),
            *[wire.AddInfo(1, "k", "v" * 90) for _ in range(50)],
            wire.AddInfo(1, "k", "v" * 99),  # "A" + "ai" + "k" + 99 > 100: skipped
            wire.UploadDone(),
        ],
        1.0,
    )
    assert [e.limit for e in effects if isinstance(e, Notice)] == ["maxRecordBytes"]
    (txn,) = commits(effects)
    assert txn.client_infos == {"K": "z" * 10, "L": "w" * 80}
    assert txn.records[0].infos == {"k": "v" * 90}


def test_client_wide_infos_past_max_client_info_bytes_are_skipped_with_one_notice() -> None:
    """What idle connections hold is bounded: an environment of 80 KB keeps 1 KiB."""
    session = greeted(max_client_info_bytes=1024)
    effects = session.receive(
        [*(wire.AddInfo(0, f"E{i}", "v" * 800) for i in range(100)), wire.UploadDone()], 1.0
    )
    notices = [e for e in effects if isinstance(e, Notice)]
    assert [n.limit for n in notices] == ["maxClientInfoBytes"]
    assert "client-wide infos exceed maxClientInfoBytes=1024" in notices[0].text
    (txn,) = commits(effects)
    assert txn.client_infos == {"E0": "v" * 800}  # 2 + 800 + 110; a second would not fit
    assert session.bytes_held <= 1024


def test_transactions_are_cut_at_record_boundaries_by_size() -> None:
    session = greeted(batch_records=2)
    messages: list[wire.Decoded] = []
    for rid in range(1, 6):
        messages += [wire.AddRecord(rid, 0, "ai", f"R{rid}"), wire.AddInfo(rid, "k", str(rid))]
    effects = session.receive([*messages, wire.UploadDone()], 1.0)
    txns = commits(effects)
    assert [t.seq for t in txns] == [0, 1, 2]
    assert [[r.name for r in t.records] for t in txns] == [["R1", "R2"], ["R3", "R4"], ["R5"]]
    assert all(r.infos == {"k": r.name[1:]} for t in txns for r in t.records)
    assert [t.upload_done for t in txns] == [False, False, True]


def test_transactions_are_cut_by_age_at_the_next_record() -> None:
    session = greeted(commit_interval=5.0)
    assert commits(session.receive([wire.AddRecord(1, 0, "ai", "A")], 1.0)) == []
    (txn,) = commits(session.receive([wire.AddRecord(2, 0, "ai", "B")], 6.5))
    assert [r.name for r in txn.records] == ["A"]


def test_colliding_record_ids_keep_both_records() -> None:
    # Pre-1.4 C clients reuse ids above 65535 records; infos follow their record.
    session = greeted()
    effects = session.receive(
        [
            wire.AddRecord(1 << 16, 0, "ai", "A"),
            wire.AddInfo(1 << 16, "k", "a"),
            wire.AddRecord(1 << 16, 0, "ai", "B"),
            wire.AddInfo(1 << 16, "k", "b"),
            wire.UploadDone(),
        ],
        1.0,
    )
    (txn,) = commits(effects)
    assert [(r.name, r.infos) for r in txn.records] == [("A", {"k": "a"}), ("B", {"k": "b"})]


def test_del_record_removes_pending_and_reports_committed() -> None:
    session = greeted(batch_records=1)
    effects = session.receive(
        [
            wire.AddRecord(1, 0, "ai", "A"),
            wire.AddRecord(2, 0, "ai", "B"),  # cuts A
            wire.AddRecord(3, 0, "ai", "C"),  # cuts B
            wire.DelRecord(1),
            wire.DelRecord(3),
            wire.UploadDone(),
        ],
        1.0,
    )
    last = commits(effects)[-1]
    assert last.removed == ("A",)
    assert [r.name for r in last.records] == []


def test_begin_records_commits_an_empty_first_transaction_once() -> None:
    session = greeted()
    session.receive([wire.AddInfo(0, "IOCNAME", "X")], 0.0)
    (begin,) = commits(session.begin_records(0.5))
    assert (begin.seq, begin.records, begin.client_infos) == (0, (), {"IOCNAME": "X"})
    assert session.begin_records(0.6) == []
    assert make_session().begin_records(0.0) == []  # not uploading yet


def test_unchanged_run_is_committed_as_kept_with_every_digest_in_order() -> None:
    session = greeted()
    session.receive(
        [wire.AddRecord(1, 0, "ai", "A"), wire.AddInfo(1, "k", "v"), RunEnd(0, "d0")], 0.0
    )
    run = UnchangedRun(1, "d1", [2, 3], ["B", "C"], ["ai", "bo"], ["B:A"], [0])
    (txn,) = commits(session.receive([run], 0.0))
    assert [r.name for r in txn.records] == ["A"]  # the records before it go first
    assert txn.kept == (KeptRun(1, "d1", ["B", "C"], ["ai", "bo"], ["B:A"], [0]),)
    assert txn.digests == ("d0", "d1")
    assert session.records_total == 3
    # Its records are known by id: a DelRecord of one is reported by name.
    effects = session.receive([wire.DelRecord(3), RunEnd(2, ""), wire.UploadDone()], 1.0)
    (last,) = commits(effects)
    assert (last.removed, last.kept, last.digests, last.upload_done) == (("C",), (), ("",), True)


def test_unchanged_run_beyond_max_records_closes() -> None:
    session = greeted(max_records=2)
    run = UnchangedRun(0, "d", [1, 2, 3], ["A", "B", "C"], ["ai"] * 3, [], [])
    effects = session.receive([run], 0.0)
    assert closes(effects) == ["upload exceeds maxRecords=2"]


def test_del_record_names_any_committed_record_by_its_exact_name() -> None:
    session = greeted(batch_records=1)
    names = ["A", "Temp \xb0C", "odd \ud800", "B"]
    session.receive([wire.AddRecord(rid, 0, "ai", n) for rid, n in enumerate(names, 1)], 0.0)
    effects = session.receive(
        [wire.DelRecord(2), wire.DelRecord(3), wire.DelRecord(2), wire.UploadDone()], 1.0
    )
    assert commits(effects)[-1].removed == ("Temp \xb0C", "odd \ud800")


def test_messages_after_upload_done_are_skipped_with_one_notice() -> None:
    session = greeted()
    session.receive([wire.UploadDone()], 1.0)
    effects = session.receive(
        [wire.AddRecord(9, 0, "ai", "Z"), wire.AddRecord(10, 0, "ai", "Y")], 2.0
    )
    assert effects == [Notice("AddRecord after UploadDone ignored")]
    assert session.state is State.LIVE


def test_silence_sends_ping_then_closes_on_missed_pong() -> None:
    session = greeted(tcptimeout=15.0)
    session.receive([wire.UploadDone()], 0.0)  # ping 0x1000 at once
    session.receive([wire.Pong(0x1000)], 1.0)
    assert session.deadline == 16.0
    assert session.tick(15.9) == []
    assert sent(session.tick(16.0)) == [wire.Ping(0x1001)]
    assert session.deadline == 31.0
    effects = session.tick(31.0)
    assert closes(effects) == ["no Pong within 15 s"]


def test_matching_pong_keeps_the_session_alive() -> None:
    session = greeted(tcptimeout=15.0)
    session.receive([wire.UploadDone()], 0.0)
    now = 0.0
    for step in range(1, 10):
        session.receive([wire.Pong(0x1000 + step - 1)], now + 1)
        now = session.deadline or 0.0
        assert sent(session.tick(now)) == [wire.Ping(0x1000 + step)]
    assert session.state is State.LIVE


def test_wrong_pong_nonce_closes() -> None:
    session = greeted()
    session.receive([wire.UploadDone()], 0.0)
    assert closes(session.receive([wire.Pong(0xDEAD)], 1.0)) == [
        "Pong nonce 0x0000dead does not match Ping 0x00001000"
    ]


def test_greeting_deadline_closes_a_silent_peer() -> None:
    session = make_session(greeting_timeout=20.0, tcptimeout=15.0)
    session.start(0.0)
    # A dribble of Pongs resets the silence timer but not the greeting deadline.
    session.receive([wire.Pong(1)], 10.0)
    assert session.deadline == 20.0
    assert closes(session.tick(20.0)) == ["no ClientGreet within 20 s"]


def test_upload_deadline_closes_an_endless_upload() -> None:
    session = greeted(upload_timeout=60.0, tcptimeout=15.0)
    for t in range(1, 60, 5):
        session.receive([wire.AddRecord(t, 0, "ai", f"R{t}")], float(t))
    assert closes(session.tick(60.0)) == ["upload not finished within 60 s"]


def test_paused_session_does_not_time_out_for_silence() -> None:
    session = greeted(tcptimeout=15.0, min_upload_rate=0)
    session.pause(1.0)
    assert session.deadline == float("inf") or session.deadline is None
    assert session.tick(100.0) == []
    session.resume(100.0)
    assert session.deadline == 115.0


def test_connection_lost_mid_upload_emits_final_after_committed_work() -> None:
    session = greeted(batch_records=1)
    session.receive([wire.AddRecord(1, 0, "ai", "A"), wire.AddRecord(2, 0, "ai", "B")], 1.0)
    (final,) = commits(session.connection_lost("connection reset"))
    assert not final.connected and final.reason == "connection reset" and final.seq == 1
    assert session.connection_lost("again") == []


def test_connection_lost_before_any_commit_emits_nothing() -> None:
    session = greeted()
    session.receive([wire.AddRecord(1, 0, "ai", "A")], 1.0)
    assert session.connection_lost("gone") == []


def test_close_emits_final_once() -> None:
    session = greeted()
    session.receive([wire.UploadDone()], 0.0)
    effects = session.receive([wire.Pong(0xBAD)], 1.0)
    assert len(commits(effects)) == 1
    assert session.connection_lost("closed") == []


def test_max_records_closes_naming_the_limit_with_no_separate_notice() -> None:
    session = greeted(max_records=2)
    effects = session.receive([wire.AddRecord(i, 0, "ai", f"R{i}") for i in (1, 2, 3)], 1.0)
    assert effects == [Close("upload exceeds maxRecords=2", "maxRecords")]


@pytest.mark.parametrize(
    ("limits", "close"),
    [
        ({"greeting_timeout": 9.0}, Close("no ClientGreet within 9 s", "greetingTimeout")),
        ({"upload_timeout": 9.0}, Close("upload not finished within 9 s", "uploadTimeout")),
        ({"tcptimeout": 9.0}, Close("no Pong within 9 s", "tcptimeout")),
    ],
    ids=["greeting", "upload", "pong"],
)
def test_every_timer_closes_naming_its_limit(limits: dict[str, float], close: Close) -> None:
    session = make_session(
        **{"greeting_timeout": 99.0, "tcptimeout": 99.0, "min_upload_rate": 0, **limits}
    )
    session.start(0.0)
    if "greeting_timeout" not in limits:
        session.receive([wire.ClientGreet()], 0.0)
    if "tcptimeout" in limits:
        session.receive([wire.UploadDone()], 0.0)  # its Ping goes unanswered
    assert session.deadline == 9.0 and session.tick(8.9) == []
    effects = session.tick(9.0)
    assert [e for e in effects if isinstance(e, Close | Notice)] == [close]


def test_a_protocol_error_closes_naming_no_limit() -> None:
    session = make_session()
    session.start(0.0)
    assert session.receive([wire.AddInfo(1, "k", "v")], 0.0) == [
        Close("AddInfo before ClientGreet", None)
    ]


# -- the dispatch table ---------------------------------------------------------------

#: One message of every type the decoders give (`RunDecoded`).
SAMPLES: dict[type, RunDecoded] = {
    wire.ClientGreet: wire.ClientGreet(),
    wire.Pong: wire.Pong(0x1000),
    wire.AddRecord: wire.AddRecord(1, 0, "ai", "A"),
    wire.AddInfo: wire.AddInfo(1, "k", "v"),
    wire.DelRecord: wire.DelRecord(1),
    wire.UploadDone: wire.UploadDone(),
    UnchangedRun: UnchangedRun(0, "d", [1], ["A"], ["ai"], [], []),
    RunEnd: RunEnd(0, "d"),
    wire.Skipped: wire.Skipped(0x77, 0, "unknown"),
    wire.ServerGreet: wire.ServerGreet(),
    wire.Ping: wire.Ping(1),
}


def test_samples_cover_every_type_the_decoders_give() -> None:
    assert set(SAMPLES) == set(typing.get_args(RunDecoded))


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_the_dispatch_table_has_a_handler_for_every_message_in_every_state(
    state: State,
) -> None:
    assert set(DISPATCH[state]) == set(typing.get_args(RunDecoded))
    assert all(callable(handler) for handler in DISPATCH[state].values())


def in_state(state: State) -> Session:
    session = make_session()
    session.start(0.0)
    if state is not State.GREETING:
        session.receive([wire.ClientGreet()], 0.0)
    if state is State.LIVE:
        session.receive([wire.UploadDone()], 0.0)  # Ping 0x1000 goes out
    if state is State.CLOSED:
        session.connection_lost("gone")
    assert session.state is state
    return session


#: The cells that end the session: the upload before ClientGreet, and messages only a
#: server may send. Everything else is taken, or skipped with at most one notice.
CLOSING = {
    (State.GREETING, kind)
    for kind in (wire.AddRecord, wire.AddInfo, wire.DelRecord, wire.UploadDone, UnchangedRun)
} | {(state, kind) for state in State for kind in (wire.ServerGreet, wire.Ping)}


@pytest.mark.parametrize("kind", list(SAMPLES), ids=lambda k: k.__name__)
@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_each_cell_of_the_table_closes_only_where_the_protocol_says(
    state: State, kind: type
) -> None:
    session = in_state(state)
    effects = session.receive([SAMPLES[kind]], 1.0)
    closing = (state, kind) in CLOSING and state is not State.CLOSED
    assert len(closes(effects)) == closing
    assert (session.state is State.CLOSED) == (closing or state is State.CLOSED)
    assert all(e.limit is None for e in effects if isinstance(e, Close))  # protocol errors
    assert len([e for e in effects if isinstance(e, Notice)]) <= 1


@pytest.mark.parametrize("rid", [0, 1])
def test_max_infos_skips_extra_infos_with_one_notice(rid: int) -> None:
    session = greeted(max_infos=2)
    messages: list[wire.Decoded] = [wire.AddRecord(1, 0, "ai", "A")]
    messages += [wire.AddInfo(rid, f"k{i}", "v") for i in range(5)]
    effects = session.receive([*messages, wire.UploadDone()], 1.0)
    notices = [e for e in effects if isinstance(e, Notice)]
    assert len(notices) == 1 and notices[0].limit == "maxInfos"
    (txn,) = commits(effects)
    infos = txn.client_infos if rid == 0 else txn.records[0].infos
    assert infos == {"k0": "v", "k1": "v"}


def test_server_message_from_the_peer_closes() -> None:
    session = greeted()
    assert closes(session.receive([wire.Ping(1)], 1.0)) == [
        "peer sent a server-to-client message 0x8002"
    ]


def test_unknown_message_gives_one_notice_and_the_upload_continues() -> None:
    session = greeted()
    skipped = wire.Skipped(0x77, 3, "unknown message id 0x0077")
    effects = session.receive([skipped, skipped, wire.AddRecord(1, 0, "ai", "A")], 1.0)
    assert effects == [Notice("skipped message: unknown message id 0x0077")]
    assert session.state is State.UPLOADING


def test_core_modules_do_not_import_twisted() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bridge.protocol.wire, bridge.protocol.session, bridge.model, "
        "bridge.documents; "
        "bad = [m for m in sys.modules if m.startswith(('twisted', 'socket', 'pyetcd'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- name limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "setting"),
    [
        ("HOSTNAME", "h" * 254, "maxHostnameLength"),
        ("HOSTNAME", "é" * 127, "maxHostnameLength"),  # 127 characters, 254 bytes
        ("IOCNAME", "n" * 256, "maxIocNameLength"),
        ("IOC", "n" * 60_000, "maxIocNameLength"),
    ],
    ids=["hostname", "hostname-utf8", "iocname", "ioc"],
)
def test_an_identity_over_its_limit_closes_naming_it(key: str, value: str, setting: str) -> None:
    session = greeted()
    effects = session.receive([wire.AddInfo(0, key, value), wire.AddRecord(1, 0, "ai", "A")], 1.0)
    (close,) = [e for e in effects if isinstance(e, Close)]
    assert close.limit == setting and f"{key} " in close.reason and setting in close.reason
    assert len(close.reason) < 200  # the name is cut short in the line
    assert session.state is State.CLOSED and key not in session.client_infos


def test_identities_at_their_limits_are_taken() -> None:
    session = greeted()
    infos = {"HOSTNAME": "é" * 126 + "h", "IOCNAME": "n" * 255}  # 253 and 255 bytes
    effects = session.receive(
        [*(wire.AddInfo(0, k, v) for k, v in infos.items()), wire.UploadDone()], 1.0
    )
    assert closes(effects) == [] and commits(effects)[0].client_infos == infos


def test_an_iocid_over_its_limit_closes_even_when_its_parts_fit() -> None:
    session = greeted(names=NameLimits(iocid=20))
    effects = session.receive(
        [wire.AddInfo(0, "IOCNAME", "n" * 10), wire.AddInfo(0, "HOSTNAME", "h" * 10)], 1.0
    )
    assert [(e.limit, e.reason) for e in effects if isinstance(e, Close)] == [
        ("maxIocidLength", f"iocid {'h' * 10 + ':' + 'n' * 10!r} exceeds maxIocidLength=20")
    ]


def test_a_record_with_a_name_or_type_over_its_limit_is_skipped_with_its_aliases_and_infos() -> (
    None
):
    session = greeted(names=NameLimits(record_name=150, record_type=8))
    effects = session.receive(
        [
            wire.AddRecord(1, 0, "ai", "L" * 151),
            wire.AddRecord(1, 1, "", "L:alias"),
            wire.AddInfo(1, "archive", "x"),
            wire.AddRecord(2, 0, "ai", "°" * 75),  # 150 bytes: fits
            wire.AddRecord(3, 0, "ai", "°" * 76),  # 152 bytes
            wire.AddInfo(3, "archive", "x"),
            wire.AddRecord(4, 0, "t" * 9, "T"),
            wire.AddInfo(4, "archive", "x"),
            wire.AddRecord(5, 0, "ai", "B"),
            wire.AddRecord(5, 1, "", "B:" + "a" * 149),  # 151 bytes
            wire.AddRecord(5, 1, "", "B:ok"),
            wire.UploadDone(),
        ],
        1.0,
    )
    notices = [e for e in effects if isinstance(e, Notice)]
    assert [n.limit for n in notices] == ["maxRecordNameLength", "maxRecordTypeLength"]
    assert "maxRecordNameLength=150" in notices[0].text
    (txn,) = commits(effects)
    assert [(r.name, r.aliases, r.infos) for r in txn.records] == [
        ("°" * 75, [], {}),
        ("B", ["B:ok"], {}),
    ]


def test_an_info_key_over_its_limit_is_skipped() -> None:
    session = greeted(names=NameLimits(info_key=10))
    effects = session.receive(
        [
            wire.AddInfo(0, "K" * 11, "v"),
            wire.AddInfo(0, "ENGINEER", "v"),
            wire.AddRecord(1, 0, "ai", "A"),
            wire.AddInfo(1, "k" * 11, "v"),
            wire.AddInfo(1, "archive", "v"),
            wire.UploadDone(),
        ],
        1.0,
    )
    assert [e.limit for e in effects if isinstance(e, Notice)] == ["maxInfoKeyLength"]
    (txn,) = commits(effects)
    assert txn.client_infos == {"ENGINEER": "v"}
    assert txn.records[0].infos == {"archive": "v"}


def test_the_name_limits_are_part_of_the_digest_seed() -> None:
    seeds = {
        make_session(names=names).digest_seed
        for names in (
            NameLimits(),
            NameLimits(record_name=100),
            NameLimits(record_type=10),
            NameLimits(info_key=10),
        )
    }
    assert len(seeds) == 4


# -- minimum upload progress ------------------------------------------------------------


def trickle(session: Session, until: float, size: int = 30) -> list[Effect]:
    """One `size`-byte AddInfo a second, from t=1 until `until` or the close."""
    effects: list[Effect] = []
    t = 1.0
    while t <= until and session.state is not State.CLOSED:
        deadline = session.deadline
        if deadline is not None and deadline <= t:
            effects += session.tick(deadline)
            continue
        session.received(size)
        effects += session.receive([wire.AddInfo(1, "k", "v" * (size - 17))], t)
        t += 1.0
    return effects


def test_a_slot_holder_that_trickles_is_closed_after_one_window() -> None:
    session = greeted(upload_rate_window=5.0, min_upload_rate=1000.0)
    session.receive([wire.AddRecord(1, 0, "ai", "T")], 0.0)
    assert session.deadline == 5.0
    effects = trickle(session, 60.0)
    assert [(e.limit, e.reason) for e in effects if isinstance(e, Close)] == [
        ("minUploadRate", "upload too slow: 120 bytes in 5 s, minUploadRate=1000 bytes/s")
    ]


def test_an_upload_that_keeps_the_rate_goes_on_window_after_window() -> None:
    session = greeted(upload_rate_window=5.0, min_upload_rate=20.0)
    effects = trickle(session, 60.0)  # 30 bytes a second: 150 >= 100 in every window
    assert closes(effects) == [] and session.state is State.UPLOADING
    assert session.deadline is not None and 60.0 < session.deadline <= 65.0


def test_time_paused_by_the_bridge_is_not_upload_time_for_the_rate() -> None:
    session = greeted(upload_rate_window=5.0, min_upload_rate=10.0, tcptimeout=1e9)
    session.received(40)
    session.pause(2.0)  # two seconds into the window
    assert session.deadline is None or session.deadline == float("inf")
    assert session.tick(100.0) == []
    session.resume(100.0)
    assert session.deadline == 103.0  # the three seconds left of the window
    session.received(10)
    assert closes(session.tick(103.0)) == []  # 50 bytes in 5 s of upload time


def test_the_rate_does_not_apply_before_client_greet_or_after_upload_done() -> None:
    session = make_session(greeting_timeout=99.0, tcptimeout=99.0)
    session.start(0.0)
    assert session.deadline == 99.0
    session.receive([wire.ClientGreet(), wire.UploadDone()], 1.0)
    assert session.deadline == 1.0 + 99.0  # the Ping's Pong, nothing else
    assert closes(session.tick(50.0)) == []


def test_a_rate_of_0_turns_it_off() -> None:
    session = greeted(min_upload_rate=0, upload_timeout=600.0, tcptimeout=1e9)
    assert session.deadline == 600.0


# -- what a session holds -------------------------------------------------------------


def test_flush_commits_the_complete_records_and_keeps_the_one_in_progress() -> None:
    session = greeted()
    session.receive(
        [
            wire.AddInfo(0, "IOCNAME", "F"),
            wire.AddRecord(1, 0, "ai", "A"),
            wire.AddInfo(1, "archive", "x"),
            wire.AddRecord(2, 0, "ai", "B"),
            wire.AddInfo(2, "k", "1"),
        ],
        1.0,
    )
    held = session.bytes_held
    (commit,) = [e for e in session.flush(2.0) if isinstance(e, Commit)]
    assert [r.name for r in commit.transaction.records] == ["A"]
    assert 0 < commit.size < held and session.bytes_held < held
    assert session.flush(2.0) == []  # one record in progress: nothing to flush
    effects = session.receive([wire.AddInfo(2, "k2", "2"), wire.UploadDone()], 3.0)
    (last,) = commits(effects)
    assert [(r.name, r.infos) for r in last.records] == [("B", {"k": "1", "k2": "2"})]
    assert [t.seq for t in (commit.transaction, last)] == [0, 1]


def test_bytes_held_grows_with_the_upload_and_a_cut_hands_it_to_the_commit() -> None:
    session = greeted(batch_records=100)
    empty = session.bytes_held
    messages: list[wire.Decoded] = []
    for rid in range(1, 101):
        messages += [
            wire.AddRecord(rid, 0, "ai", f"R:{rid:03d}"),
            wire.AddInfo(rid, "k", "v" * 50),
        ]
    session.receive(messages, 1.0)
    held = session.bytes_held
    # At least the text, plus a record's and an info's worth of objects each.
    assert held - empty >= 100 * (len("R:100ai") + 51 + RECORD_COST + ITEM_COST)
    (commit,) = [
        e
        for e in session.receive([wire.AddRecord(101, 0, "ai", "C")], 1.0)
        if isinstance(e, Commit)
    ]
    assert commit.size >= held - empty
    # The new record, and the names committed (for DelRecord): 12 bytes and the name.
    assert session.bytes_held == empty + 3 + RECORD_COST + ITEM_COST + 100 * (12 + 5)
