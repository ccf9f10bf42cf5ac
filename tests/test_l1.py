"""The local tier on its own: deadlines on a fake clock, bounds, counters, racing fills."""

from __future__ import annotations

import math

from dragonfly_cache._l1 import L1
from tests.helpers import FakeClock, run_threads


def make_l1(max_size: int = 100, ttl: float = 300.0) -> tuple[L1, FakeClock]:
    clock = FakeClock()
    return L1(max_size, ttl, clock), clock


def test_write_then_get_hits_and_counts() -> None:
    l1, _ = make_l1()
    assert l1.get("k") is None
    l1.write({"k": b"v"}, l1.timer() + 60.0, l1.begin(["k"]))
    assert l1.get("k") == b"v"
    stats = l1.stats()
    assert (stats["hits"], stats["misses"], stats["size"]) == (1, 1, 1)
    assert stats["hit_rate"] == 0.5


def test_entry_expires_at_the_key_ttl_when_shorter_than_l1_ttl() -> None:
    l1, clock = make_l1(ttl=300.0)
    l1.write({"k": b"v"}, l1.timer() + 10.0, l1.begin(["k"]))
    clock.advance(9.99)
    assert l1.get("k") == b"v"
    clock.advance(0.02)
    assert l1.get("k") is None
    assert l1.stats()["expirations"] == 1
    assert l1.stats()["evictions"] == 0
    assert len(l1) == 0


def test_entry_expires_at_the_l1_ttl_when_shorter_than_the_key_ttl() -> None:
    l1, clock = make_l1(ttl=5.0)
    l1.write({"k": b"v"}, l1.timer() + 3600.0, l1.begin(["k"]))
    clock.advance(4.9)
    assert l1.get("k") == b"v"
    clock.advance(0.2)
    assert l1.get("k") is None


def test_fill_deadline_is_clamped_to_the_l1_ttl_and_kept_when_earlier() -> None:
    l1, clock = make_l1(ttl=5.0)
    l1.fill({"far": (b"1", math.inf), "near": (b"2", clock.now + 0.5)},
            l1.begin(["far", "near"]))
    clock.advance(0.6)
    assert l1.get("near") is None  # the L2 key's remaining life was 0.5 s
    assert l1.get("far") == b"1"
    clock.advance(4.5)
    assert l1.get("far") is None


def test_size_evictions_and_expirations_are_counted_apart() -> None:
    l1, clock = make_l1(max_size=3)
    for i in range(5):
        l1.write({f"k{i}": b"v"}, l1.timer() + 1.0, l1.begin([f"k{i}"]))
    assert l1.stats()["size"] == 3
    assert l1.stats()["evictions"] == 2
    clock.advance(2.0)
    assert l1.get_many(["k2", "k3", "k4"]) == {}
    assert l1.stats()["expirations"] == 3
    assert l1.stats()["evictions"] == 2


def test_lru_order_keeps_recently_read_entries() -> None:
    l1, _ = make_l1(max_size=2)
    l1.write({"a": b"1", "b": b"2"}, l1.timer() + 60.0, l1.begin(["a", "b"]))
    assert l1.get("a") == b"1"
    l1.write({"c": b"3"}, l1.timer() + 60.0, l1.begin(["c"]))
    assert l1.get("b") is None
    assert l1.get("a") == b"1"


def test_get_many_counts_each_key() -> None:
    l1, _ = make_l1()
    l1.write({"a": b"1"}, l1.timer() + 60.0, l1.begin(["a"]))
    assert l1.get_many(["a", "b", "c"]) == {"a": b"1"}
    assert (l1.stats()["hits"], l1.stats()["misses"]) == (1, 2)


def test_peek_counts_nothing_and_respects_deadlines() -> None:
    l1, clock = make_l1()
    l1.write({"a": b"1"}, l1.timer() + 1.0, l1.begin(["a"]))
    assert l1.peek("a") == b"1"
    clock.advance(1.5)
    assert l1.peek("a") is None
    assert (l1.stats()["hits"], l1.stats()["misses"]) == (0, 0)


# -- racing fills ----------------------------------------------------------------------


def test_fill_that_raced_an_invalidation_is_not_installed() -> None:
    l1, _ = make_l1()
    ticket = l1.begin(["k"])  # a reader goes to L2 ...
    l1.invalidate(["k"])  # ... a delete lands meanwhile ...
    l1.fill({"k": (b"old", math.inf)}, ticket)  # ... the reader's old value must lose
    assert l1.get("k") is None


def test_fill_after_an_unrelated_invalidation_is_installed() -> None:
    l1, _ = make_l1()
    ticket = l1.begin(["k"])
    l1.invalidate(["other"])
    l1.fill({"k": (b"v", math.inf)}, ticket)
    assert l1.get("k") == b"v"


def test_invalidation_before_the_ticket_does_not_block_the_fill() -> None:
    l1, _ = make_l1()
    holder = l1.begin(["k"])  # keeps the key's bookkeeping alive
    l1.invalidate(["k"])
    ticket = l1.begin(["k"])
    l1.fill({"k": (b"new", math.inf)}, ticket)
    assert l1.get("k") == b"new"
    l1.end(["k"])
    del holder


def test_pattern_invalidation_and_clear_make_racing_fills_lose() -> None:
    l1, _ = make_l1()
    ticket = l1.begin(["user:1", "post:1"])
    l1.invalidate_matching(lambda key: key.startswith("user:"))
    l1.fill({"user:1": (b"u", math.inf), "post:1": (b"p", math.inf)}, ticket)
    assert l1.get("user:1") is None
    assert l1.get("post:1") == b"p"

    ticket = l1.begin(["a"])
    l1.clear()
    l1.fill({"a": (b"1", math.inf)}, ticket)
    assert l1.get("a") is None


def test_concurrent_writes_of_one_key_drop_it_instead_of_guessing_the_order() -> None:
    l1, _ = make_l1()
    first, second = l1.begin(["k"]), l1.begin(["k"])
    # Both wrote L2; which landed last is unknown. Whichever applies L1 second drops the key.
    l1.write({"k": b"v1"}, l1.timer() + 60.0, first)
    assert l1.get("k") == b"v1"
    l1.write({"k": b"v2"}, l1.timer() + 60.0, second)
    assert l1.get("k") is None


def test_own_write_invalidates_a_racing_fill() -> None:
    l1, _ = make_l1()
    reader = l1.begin(["k"])
    l1.write({"k": b"new"}, l1.timer() + 60.0, l1.begin(["k"]))
    l1.fill({"k": (b"old", math.inf)}, reader)
    assert l1.get("k") == b"new"


def test_ticket_bookkeeping_is_released() -> None:
    l1, _ = make_l1()
    t1 = l1.begin(["a", "b"])
    l1.invalidate(["a"])
    l1.fill({"a": (b"1", math.inf)}, t1, ["b"])
    l1.write({"c": b"3"}, l1.timer() + 1.0, l1.begin(["c"]))
    l1.begin(["d"])
    l1.end(["d"])
    assert l1._tickets == {}
    assert l1._stamps == {}


def test_bound_holds_under_concurrent_churn() -> None:
    l1, _ = make_l1(max_size=50)
    sizes: list[int] = []

    def churn(worker: int) -> None:
        for i in range(300):
            key = f"{worker}:{i}"
            l1.write({key: b"x"}, l1.timer() + 60.0, l1.begin([key]))
            l1.get(key)
            sizes.append(len(l1))

    run_threads(16, churn)
    assert max(sizes) <= 50
    assert l1.stats()["size"] == 50
    assert l1.stats()["evictions"] == 16 * 300 - 50
