"""Upload slot bookkeeping (`bridge.server.slots`): shares per address, turns."""

from __future__ import annotations

import random

import pytest

from bridge.server.slots import Slots


def host(item: str) -> str:
    """Items are "host/n"."""
    return item.partition("/")[0]


def grant(slots: Slots[str]) -> list[str]:
    """Hand out every slot that is free now, as the factory does."""
    granted = []
    while (item := slots.next()) is not None:
        slots.take(item)
        granted.append(item)
    return granted


def test_one_address_holds_at_most_its_share_and_leaves_the_rest_to_others() -> None:
    slots: Slots[str] = Slots(20, 5, host)
    for n in range(100):
        item = f"a/{n}"
        if slots.free_for("a"):
            slots.take(item)
        else:
            slots.wait(item)
    assert (slots.active, len(slots)) == (5, 95)
    assert all(slots.free_for(h) for h in ("b", "c", "d"))
    assert grant(slots) == []  # waiters at their share get nothing, slots stay free


def test_a_free_slot_goes_to_the_next_address_in_turn_not_the_longest_waiter() -> None:
    slots: Slots[str] = Slots(3, 3, host)
    for item in ("a/0", "a/1", "a/2"):
        slots.take(item)
    for item in [f"a/{n}" for n in range(3, 10)] + ["b/0", "c/0", "b/1"]:
        slots.wait(item)
    order = []
    for held in ("a/0", "a/1", "a/2", "a/3", "b/0", "c/0"):
        slots.release(held)
        order += grant(slots)
    assert order == ["a/3", "b/0", "c/0", "a/4", "b/1", "a/5"]


def test_waiters_leave_and_slots_are_released_once() -> None:
    slots: Slots[str] = Slots(1, 1, host)
    slots.take("a/0")
    slots.wait("a/1")
    slots.wait("b/0")
    assert "a/1" in slots and "b/0" in slots
    slots.remove("a/1")
    slots.remove("a/1")  # not waiting any more: nothing happens
    assert "a/1" not in slots and len(slots) == 1 and list(slots) == ["b/0"]
    slots.release("a/0")
    assert grant(slots) == ["b/0"] and not slots
    with pytest.raises(AssertionError):
        slots.release("a/0")


def test_a_share_above_the_total_is_the_total() -> None:
    assert Slots(4, 10, host).per_host == 4
    with pytest.raises(ValueError):
        Slots(0, 1, host)


@pytest.mark.parametrize("seed", range(20))
def test_random_traffic_keeps_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    total, share = rng.randint(1, 8), rng.randint(1, 8)
    slots: Slots[str] = Slots(total, share, host)
    holding: list[str] = []
    waiting: list[str] = []
    for n in range(2000):
        if rng.random() < 0.5 or not holding:
            item = f"{rng.choice('abcde')}/{n}"
            if slots.free_for(host(item)):
                slots.take(item)
                holding.append(item)
            else:
                slots.wait(item)
                waiting.append(item)
        elif rng.random() < 0.8:
            slots.release(holding.pop(rng.randrange(len(holding))))
        elif waiting:
            item = waiting.pop(rng.randrange(len(waiting)))
            slots.remove(item)
        for item in grant(slots):
            waiting.remove(item)
            holding.append(item)
        per_host = {h: sum(host(i) == h for i in holding) for h in "abcde"}
        assert slots.active == len(holding) <= total
        assert all(count <= min(share, total) for count in per_host.values())
        assert sorted(slots) == sorted(waiting)
        # Nobody waits who could have a slot now.
        assert slots.active == total or all(
            per_host[host(i)] >= min(share, total) for i in waiting
        )
