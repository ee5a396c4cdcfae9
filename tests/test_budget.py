"""The memory budget across connections (`bridge.server.budget`), on its own."""

from __future__ import annotations

import random

import pytest

from bridge.server.budget import MemoryBudget


class Recorder:
    """Stands in for the connections: which are paused, and the calls in order."""

    def __init__(self) -> None:
        self.paused: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def pause(self, item: str) -> None:
        assert item not in self.paused
        self.paused.add(item)
        self.calls.append(("pause", item))

    def resume(self, item: str) -> None:
        assert item in self.paused
        self.paused.discard(item)
        self.calls.append(("resume", item))


def budget(limit: int = 1000) -> tuple[MemoryBudget[str], Recorder]:
    recorder = Recorder()
    return MemoryBudget(limit, recorder.pause, recorder.resume), recorder


def test_under_the_budget_nothing_is_paused() -> None:
    b, r = budget()
    for item, held in (("a", 300), ("b", 300), ("c", 400)):
        b.update(item, held, slot=True)
    assert b.total == 1000 and r.calls == []


def test_over_the_budget_every_reader_but_the_smallest_is_paused_largest_first() -> None:
    b, r = budget()
    b.update("a", 100, slot=True)
    b.update("b", 500, slot=True)
    b.update("c", 300, slot=True)
    b.update("a", 250, slot=True)  # 1050: over
    assert r.calls == [("pause", "b"), ("pause", "c")]
    b.update("a", 400, slot=True)  # over, but "a" is the last one reading
    assert r.paused == {"b", "c"} and b.paused == 2


def test_connections_without_a_slot_count_but_are_never_paused() -> None:
    b, r = budget()
    b.update("idle", 5000, slot=False)
    b.update("a", 10, slot=True)
    b.update("b", 20, slot=True)
    assert r.calls == [("pause", "b")] and b.total == 5030


def test_paused_connections_resume_oldest_first_as_room_comes_back() -> None:
    b, r = budget()
    for item, held in (("a", 300), ("b", 400), ("c", 200), ("d", 250)):
        b.update(item, held, slot=True)  # 1150 after "d": all but "c" paused
    assert [call for call in r.calls] == [("pause", "b"), ("pause", "a"), ("pause", "d")]
    b.update("c", 100, slot=True)  # 1050: over, "c" reads on alone
    b.update("c", 0, slot=True)  # 950: under, but above the low-water mark (875)
    assert r.paused == {"a", "b", "d"}
    b.forget("d")  # 700: the oldest, "b", resumes ("d" is gone, nothing to resume)
    r.paused.discard("d")
    assert r.calls[-1] == ("resume", "b")
    b.update("c", 0, slot=True)  # another change, still low: "a"
    assert r.calls[-1] == ("resume", "a") and not r.paused


def test_when_no_slot_holder_reads_the_oldest_paused_resumes_whatever_the_total() -> None:
    b, r = budget()
    b.update("a", 900, slot=True)
    b.update("b", 800, slot=True)  # "a" paused; "b" is the last reader
    b.update("b", 800, slot=False)  # "b" finished its upload (no slot to read with)
    assert r.calls == [("pause", "a"), ("resume", "a")]
    assert b.total == 1700 and not r.paused


def test_a_paused_connection_that_loses_its_slot_is_resumed_and_forgotten() -> None:
    b, r = budget()
    b.update("a", 900, slot=True)
    b.update("b", 200, slot=True)  # "a" paused
    b.update("a", 900, slot=False)  # closing, say: never keep it paused
    assert r.calls == [("pause", "a"), ("resume", "a")]
    b.forget("a")
    b.forget("zzz")  # unknown: nothing
    assert b.total == 200 and b.paused == 0


def test_over_the_budget_no_upload_starts_until_room_comes_back_or_none_is_left() -> None:
    rooms: list[int] = []
    recorder = Recorder()
    b = MemoryBudget(1000, recorder.pause, recorder.resume, lambda: rooms.append(b.total))
    assert b.allows_upload()
    b.update("done", 1100, slot=False)  # an upload that finished reading, commits waiting
    assert b.allows_upload()  # no upload under way: one may always start
    b.update("a", 50, slot=True)
    assert not b.allows_upload() and rooms == []
    b.update("done", 900, slot=False)  # 950: under the budget, not the low-water mark
    assert rooms == []
    b.update("done", 800, slot=False)  # 850
    assert rooms == [850] and b.allows_upload()
    b.update("done", 5000, slot=False)
    assert not b.allows_upload()
    b.forget("a")  # no upload left: one may start whatever the total
    assert rooms == [850, 5000]


@pytest.mark.parametrize("seed", range(10))
def test_random_changes_keep_one_reader_and_resume_in_order(seed: int) -> None:
    rng = random.Random(seed)
    b, r = budget(10_000)
    held: dict[str, int] = {}
    slots: dict[str, bool] = {}
    for _ in range(3000):
        item = rng.choice("abcdefgh")
        if rng.random() < 0.05:
            b.forget(item)
            held.pop(item, None)
            slots.pop(item, None)
            r.paused.discard(item)  # a forgotten connection is gone, paused or not
        else:
            held[item] = rng.randint(0, 4000)
            slots[item] = rng.random() < 0.8
            b.update(item, held[item], slots[item])
        assert b.total == sum(held.values())
        assert r.paused <= {i for i, s in slots.items() if s}  # only slot-holders paused
        if r.paused:  # someone with a slot always reads
            assert any(s and i not in r.paused for i, s in slots.items())
        assert b.paused == len(r.paused)
