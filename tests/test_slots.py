"""FairSlots: the bounded, first-come-first-served wait for a pooled connection."""

from __future__ import annotations

import threading
import time

from dragonfly_cache._slots import FairSlots


def test_slots_bound_concurrency_and_time_out() -> None:
    slots = FairSlots(2)
    assert slots.acquire(0.01)
    assert slots.acquire(0.01)
    started = time.monotonic()
    assert not slots.acquire(0.05)
    assert 0.04 < time.monotonic() - started < 1.0
    slots.release()
    assert slots.acquire(0.01)


def test_a_released_slot_goes_to_the_oldest_waiter() -> None:
    slots = FairSlots(1)
    assert slots.acquire(0.01)
    order: list[int] = []
    queued = [threading.Event() for _ in range(3)]

    def waiter(n: int) -> None:
        queued[n].set()
        assert slots.acquire(5)
        order.append(n)
        slots.release()

    threads = []
    for n in range(3):
        thread = threading.Thread(target=waiter, args=(n,))
        thread.start()
        queued[n].wait(5)
        # wait until this waiter is actually queued before starting the next one
        deadline = time.monotonic() + 5
        while len(slots._waiters) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        threads.append(thread)
    # A newcomer must not barge ahead of the queue.
    assert not slots.acquire(0.0)
    slots.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2]
