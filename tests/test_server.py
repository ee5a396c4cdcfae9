"""The Twisted glue: admission, framing, pings, backpressure, commit ordering."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from bridge.interfaces import IProcessor, IUnchangedRuns
from bridge.processors import ProcessorChain
from bridge.processors.show import ShowProcessor
from bridge.protocol import wire
from bridge.protocol.effects import Close, Effect, Notice
from bridge.protocol.session import ITEM_COST, SessionLimits
from bridge.server.admission import NOT_READY, BridgeFactory
from bridge.server.connection import MAX_INFLIGHT, PROTOCOL_ERROR, RecSyncProtocol
from bridge.testing.fakeioc import make_ioc, upload_bytes
from tests.helpers import RecordingProcessor, RunsProcessor


def upload(*records: str) -> bytes:
    frames = [wire.ClientGreet(0, 0, 1).encode(), wire.AddInfo(0, "IOCNAME", "ioc").encode()]
    for rid, name in enumerate(records, 1):
        frames.append(wire.AddRecord(rid, 0, "ai", name).encode())
    return b"".join(frames)


def returning(effects: list[Effect]) -> Callable[..., list[Effect]]:
    """Stands in for `Session.receive`: `effects` at the first call, nothing after."""
    calls = iter([effects])
    return lambda messages, now: next(calls, [])


class ServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.processor = RecordingProcessor()
        self.port = 40000

    def factory(self, **kw: object) -> BridgeFactory:
        limits = kw.pop("limits", SessionLimits(tcptimeout=15.0))
        return BridgeFactory(
            self.processor,
            self.clock,
            limits,
            nonce=lambda: 0xABCD,
            **kw,  # type: ignore[arg-type]
        )

    def connect(
        self, factory: BridgeFactory, host: str = "127.0.0.1"
    ) -> tuple[RecSyncProtocol, StringTransport]:
        self.port += 1
        protocol = factory.buildProtocol(IPv4Address("TCP", host, self.port))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol: RecSyncProtocol) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))

    def frames(self, transport: StringTransport) -> list[wire.Decoded]:
        return wire.Decoder().feed(transport.value())

    def test_processor_interfaces_hold(self) -> None:
        verifyObject(IProcessor, ShowProcessor())
        verifyObject(IProcessor, ProcessorChain([ShowProcessor()]))

    def test_greets_on_accept_without_waiting(self) -> None:
        _, transport = self.connect(self.factory())
        self.assertEqual(transport.value(), bytes.fromhex("524380010000000100"))

    def test_upload_byte_by_byte_commits_and_pings_after_upload_done(self) -> None:
        protocol, transport = self.connect(self.factory())
        for byte in upload("A", "B") + wire.UploadDone().encode():
            protocol.dataReceived(bytes([byte]))
        (txn,) = self.processor.transactions
        self.assertEqual([r.name for r in txn.records], ["A", "B"])
        self.assertTrue(txn.upload_done)
        self.assertEqual(self.frames(transport), [wire.ServerGreet(0), wire.Ping(0xABCD)])

    def test_each_frame_is_one_write(self) -> None:
        protocol, transport = self.connect(self.factory())
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        protocol.dataReceived(upload("A") + wire.UploadDone().encode())
        self.assertEqual(writes, [wire.Ping(0xABCD).encode()])

    def test_missed_pong_closes_and_commits_disconnect(self) -> None:
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(upload("A") + wire.UploadDone().encode())
        self.clock.advance(15.0)
        self.assertTrue(transport.disconnecting)
        self.lose(protocol)
        final = self.processor.transactions[-1]
        self.assertFalse(final.connected)

    def test_silent_connection_is_pinged_after_tcptimeout(self) -> None:
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(upload("A") + wire.UploadDone().encode())
        protocol.dataReceived(wire.Pong(0xABCD).encode())
        transport.clear()
        self.clock.advance(14.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.frames(transport), [wire.Ping(0xABCD)])
        self.assertFalse(transport.disconnecting)

    def test_bad_magic_closes_with_the_peer_in_the_log(self) -> None:
        protocol, transport = self.connect(self.factory())
        with capturedLogs() as events:
            protocol.dataReceived(b"XXXXXXXXXXXX")
        self.assertTrue(transport.disconnecting)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1)
        self.assertIn("127.0.0.1", lines[0])
        self.assertIn("bad magic", lines[0])

    def test_an_oversize_body_is_passed_over_without_buffering(self) -> None:
        protocol, transport = self.connect(self.factory(max_body_length=1024))
        protocol.dataReceived(wire.ClientGreet().encode() + bytes.fromhex("524300060000ffff"))
        protocol.dataReceived(b"x" * 0xFFFF)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(protocol.decoder.buffered, 0)

    def test_max_active_queues_greeted_uploads_and_releases_once(self) -> None:
        factory = self.factory(max_active=1)
        first, t1 = self.connect(factory)
        second, t2 = self.connect(factory)
        # Everyone is greeted at once; the slot is taken by the first ClientGreet.
        self.assertEqual(self.frames(t2), [wire.ServerGreet(0)])
        self.assertEqual((factory.active, len(factory.queue)), (0, 0))
        first.dataReceived(upload("A"))
        second.dataReceived(upload("B") + wire.UploadDone().encode())
        self.assertEqual(t2.producerState, "paused")
        self.assertEqual((factory.active, len(factory.queue)), (1, 1))
        self.assertEqual([t.session_id for t in self.processor.transactions], [])
        # While it waits, what followed its ClientGreet stays raw bytes, not messages.
        waiting = len(upload("B") + wire.UploadDone().encode()) - len(wire.ClientGreet().encode())
        self.assertEqual(second.decoder.buffered, waiting)
        second.dataReceived(wire.AddRecord(9, 0, "ai", "C").encode())  # read before the pause
        self.assertEqual(second.decoder.buffered, waiting + 8 + 2 + 1 + 8)
        first.dataReceived(wire.UploadDone().encode())
        # Slot released once the upload's last commit completed: the second uploads
        # what it sent while it waited.
        self.assertEqual(t2.producerState, "producing")
        self.assertEqual(
            [[r.name for r in t.records] for t in self.processor.transactions], [["A"], ["B"]]
        )
        self.assertEqual(second.decoder.buffered, 0)
        self.assertEqual((factory.active, len(factory.queue)), (0, 0))
        self.lose(first)
        self.lose(second)
        self.assertEqual(factory.active, 0)

    def test_queued_connection_that_goes_away_frees_its_place(self) -> None:
        factory = self.factory(max_active=1)
        first, _ = self.connect(factory)
        second, _ = self.connect(factory)
        self.lose(second)
        self.assertEqual(len(factory.queue), 0)
        self.lose(first)
        self.assertEqual(factory.active, 0)

    def test_backpressure_pauses_reading_until_commits_complete(self) -> None:
        self.processor = RecordingProcessor(manual=True)
        limits = SessionLimits(batch_records=1)
        protocol, transport = self.connect(self.factory(limits=limits))
        protocol.dataReceived(upload(*[f"R{i}" for i in range(MAX_INFLIGHT + 2)]))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(self.processor.transactions), 1)  # chained: one at a time
        while self.processor.pending:
            self.processor.pending.pop(0).callback(None)
        self.assertEqual(transport.producerState, "producing")
        seqs = [t.seq for t in self.processor.transactions]
        self.assertEqual(seqs, list(range(MAX_INFLIGHT + 1)))

    def test_failed_commit_closes_and_skips_later_batches_but_not_the_final(self) -> None:
        self.processor = RecordingProcessor(manual=True)
        protocol, transport = self.connect(self.factory(limits=SessionLimits(batch_records=1)))
        protocol.dataReceived(upload("A", "B", "C"))
        self.processor.pending.pop(0).errback(RuntimeError("etcd down"))
        self.flushLoggedErrors(RuntimeError)
        self.assertTrue(transport.disconnecting)
        self.lose(protocol)
        while self.processor.pending:
            self.processor.pending.pop(0).callback(None)
        committed = [(t.seq, t.connected) for t in self.processor.transactions]
        self.assertEqual(committed, [(0, True), (2, False)])

    def test_allow_list_refuses_other_networks(self) -> None:
        import ipaddress

        factory = self.factory(allow=[ipaddress.ip_network("10.1.0.0/16")])
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "10.2.0.1", 1)))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1)))
        self.assertEqual(factory.counters["allow"], 1)

    def test_ipv4_peers_of_a_dual_stack_socket_are_their_ipv4_address(self) -> None:
        import ipaddress

        from twisted.internet.address import IPv6Address

        factory = self.factory(allow=[ipaddress.ip_network("127.0.0.2/32")])
        mapped = factory.buildProtocol(IPv6Address("TCP", "::ffff:127.0.0.2", 40000))
        self.assertIsNotNone(mapped)
        assert mapped is not None
        self.assertEqual(str(mapped.peer), "127.0.0.2:40000")
        self.assertIsNone(factory.buildProtocol(IPv6Address("TCP", "::ffff:127.0.0.3", 1)))
        self.assertIsNone(factory.buildProtocol(IPv6Address("TCP", "::1", 1)))
        self.assertEqual(factory.counters["allow"], 2)
        self.assertEqual(factory.per_host["127.0.0.2"], 1)

    def test_an_ipv6_peer_is_shown_in_brackets(self) -> None:
        from twisted.internet.address import IPv6Address

        protocol = self.factory().buildProtocol(IPv6Address("TCP", "::1", 40000))
        assert protocol is not None
        self.assertEqual(str(protocol.peer), "[::1]:40000")

    def test_per_host_connection_limit(self) -> None:
        factory = self.factory(max_connections_per_host=2)
        self.connect(factory)
        self.connect(factory)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9)))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 9)))
        self.assertEqual(factory.counters["maxConnectionsPerHost"], 1)

    # -- the session/server contract ---------------------------------------------------

    def test_a_close_is_counted_under_the_limit_it_names_and_logged_once(self) -> None:
        factory = self.factory()
        protocol, transport = self.connect(factory)
        effects = [Notice("same words", "someLimit"), Close("same words", "otherLimit")]
        protocol.session.receive = returning(effects)  # type: ignore[method-assign]
        with capturedLogs() as events:
            protocol.dataReceived(wire.ClientGreet().encode())
        # Counted and logged each on its own: nothing pairs a Notice with a Close.
        self.assertEqual(dict(factory.counters), {"someLimit": 1, "otherLimit": 1})
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2)
        self.assertTrue(all(line.startswith(f"{protocol.peer} ") for line in lines))
        self.assertTrue(transport.disconnecting)

    def test_a_close_without_a_limit_is_a_protocol_error(self) -> None:
        factory = self.factory()
        protocol, transport = self.connect(factory)
        protocol.session.receive = returning([Close("odd")])  # type: ignore[method-assign]
        protocol.dataReceived(wire.ClientGreet().encode())
        self.assertEqual(dict(factory.counters), {PROTOCOL_ERROR: 1})

    def test_a_framing_error_is_a_protocol_error_whatever_its_text(self) -> None:
        factory = self.factory()
        protocol, transport = self.connect(factory)

        def broken(data: bytes, stop_after: type | None = None) -> list[wire.Decoded]:
            raise wire.FramingError("maxBodyLength in the text only", [])

        protocol.decoder.feed = broken  # type: ignore[method-assign]
        protocol.dataReceived(b"x")
        self.assertEqual(dict(factory.counters), {PROTOCOL_ERROR: 1})
        self.assertTrue(transport.disconnecting)

    def test_a_skipped_frame_is_counted_by_its_limit_never_by_its_text(self) -> None:
        factory = self.factory()
        protocol, transport = self.connect(factory)
        skipped = [
            wire.Skipped(0x77, 1, "maxBodyLength in the text only"),
            wire.Skipped(0x78, 1 << 20, "no words about it", "maxBodyLength"),
        ]
        protocol.decoder.feed = lambda data, stop_after=None: skipped  # type: ignore[method-assign]
        protocol.dataReceived(b"x")
        self.assertEqual(dict(factory.counters), {"maxBodyLength": 1})
        self.assertFalse(transport.disconnecting)

    def test_without_processors_connections_are_refused_counted_and_logged_once(self) -> None:
        factory = BridgeFactory(None, self.clock, SessionLimits())
        with capturedLogs() as events:
            for host in ("10.0.0.1", "10.0.0.2", "10.0.0.1"):
                self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", host, 1)))
        self.assertEqual(dict(factory.counters), {NOT_READY: 3})
        (line,) = [formatEvent(e) for e in events]
        self.assertIn("10.0.0.1", line)
        self.assertIn("starting", line)
        factory.processor = self.processor
        protocol, transport = self.connect(factory)
        self.assertEqual(transport.value(), wire.ServerGreet(0).encode())
        self.assertIs(protocol.processor, self.processor)

    def test_bytes_held_counts_a_partial_frame_then_what_the_session_keeps(self) -> None:
        factory = self.factory()
        protocol, _ = self.connect(factory)
        frame = wire.AddInfo(0, "IOCNAME", "x" * 100).encode()
        protocol.dataReceived(wire.ClientGreet().encode() + frame[:50])
        self.assertEqual(protocol.bytes_held, 50)
        protocol.dataReceived(frame[50:])
        # The client-wide info, with what a dict entry and two str objects cost.
        self.assertEqual(protocol.bytes_held, 7 + 100 + ITEM_COST)
        self.assertEqual(factory.budget.total, protocol.bytes_held)

    def test_has_room_until_every_slot_is_taken(self) -> None:
        factory = self.factory(max_active=1)
        self.assertTrue(factory.has_room)
        first, _ = self.connect(factory)
        self.assertTrue(factory.has_room)  # connected, not greeted: no slot
        first.dataReceived(upload("A"))
        self.assertFalse(factory.has_room)
        first.dataReceived(wire.UploadDone().encode())
        self.assertTrue(factory.has_room)


class RunsTests(SynchronousTestCase):
    """The server with processors that take unchanged runs (`IUnchangedRuns`)."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def connect(self, processor: RunsProcessor) -> tuple[RecSyncProtocol, StringTransport]:
        factory = BridgeFactory(processor, self.clock, SessionLimits(), nonce=lambda: 1)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def digests_of(self, data: bytes) -> list[str]:
        processor = RunsProcessor()
        protocol, _ = self.connect(processor)
        protocol.dataReceived(data)
        return [d for t in processor.transactions for d in t.digests]

    def test_unchanged_upload_commits_its_start_then_kept_runs_only(self) -> None:
        spec = make_ioc("K", 2500)
        stored = self.digests_of(upload_bytes(spec))
        self.assertEqual(len(stored), 3)
        processor = RunsProcessor(stored, manual=True)
        protocol, transport = self.connect(processor)
        protocol.dataReceived(upload_bytes(spec, first_rid=2501))
        # Stopped in front of the first record: the upload's start is committed (with
        # the client infos) and reading is paused until it is done.
        (start,) = processor.transactions
        self.assertEqual((start.seq, start.records, start.client_infos), (0, (), dict(spec.env)))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(processor.asked, [])
        processor.pending.pop().callback(None)
        self.assertEqual(processor.asked, [(protocol.session.session_id, 1)])
        while processor.pending:
            processor.pending.pop(0).callback(None)
        txns = processor.transactions[1:]
        self.assertEqual([r.index for t in txns for r in t.kept], [0, 1, 2])
        self.assertEqual([d for t in txns for d in t.digests], stored)
        self.assertFalse([r for t in txns for r in t.records])
        self.assertTrue(txns[-1].upload_done)
        self.assertEqual(protocol.session.records_total, 2500)

    def test_client_infos_after_the_first_record_are_waited_for(self) -> None:
        # As pyreccaster sends them: the IOC is named only after its first record.
        def data(rid: int) -> bytes:
            return b"".join(
                [
                    wire.ClientGreet().encode(),
                    wire.AddRecord(rid, 0, "ai", "P:1").encode(),
                    wire.AddInfo(0, "IOCNAME", "PY").encode(),
                    wire.AddInfo(rid, "recordDesc", "d").encode(),
                    wire.UploadDone().encode(),
                ]
            )

        stored = self.digests_of(data(100))
        processor = RunsProcessor(stored)
        protocol, _ = self.connect(processor)
        protocol.dataReceived(data(100))
        start = processor.transactions[0]
        self.assertEqual((start.records, start.client_infos), ((), {"IOCNAME": "PY"}))
        kept = [r for t in processor.transactions for r in t.kept]
        self.assertEqual([(r.index, list(r.names)) for r in kept], [(0, ["P:1"])])

    def test_nothing_stored_decodes_everything_and_reports_the_digests(self) -> None:
        spec = make_ioc("N", 1500)
        processor = RunsProcessor(None)
        protocol, _ = self.connect(processor)
        protocol.dataReceived(upload_bytes(spec))
        records = [r.name for t in processor.transactions for r in t.records]
        self.assertEqual(records, [r.name for r in spec.records])
        self.assertEqual(len([d for t in processor.transactions for d in t.digests]), 2)
        self.assertFalse([r for t in processor.transactions for r in t.kept])

    def test_a_chain_takes_runs_only_if_every_processor_does_and_they_agree(self) -> None:
        @implementer(IProcessor, IUnchangedRuns)
        class Runs(Service):
            def __init__(self, stored: list[str] | None) -> None:
                self.stored = stored

            def commit(self, transaction: object) -> None:
                return None

            def known_runs(self, session_id: int) -> list[str] | None:
                return self.stored

        def chain(*processors: object) -> ProcessorChain:
            return ProcessorChain(processors)  # type: ignore[arg-type]

        def cuts(processor: ProcessorChain) -> bool:
            return (
                BridgeFactory(processor, self.clock, SessionLimits()).unchanged_runs() is not None
            )

        self.assertTrue(cuts(chain(Runs(["a"]), Runs(["a"]))))
        self.assertFalse(cuts(chain(Runs(["a"]), ShowProcessor())))
        self.assertEqual(chain(Runs(["a"]), Runs(["a"])).known_runs(1), ["a"])
        self.assertIsNone(chain(Runs(["a"]), Runs(["b"])).known_runs(1))
        self.assertIsNone(chain(Runs(["a"]), Runs(None)).known_runs(1))


def test_builtin_processor_factories_provide_the_interface() -> None:
    from zope.interface.verify import verifyObject

    from bridge.interfaces import IProcessorFactory
    from bridge.processors import BUILTIN

    assert sorted(BUILTIN) == ["etcd", "show"]
    for factory in BUILTIN.values():
        verifyObject(IProcessorFactory, factory)
    show = BUILTIN["show"].build("show", None, None, bridge_id="b")
    verifyObject(IProcessor, show)
