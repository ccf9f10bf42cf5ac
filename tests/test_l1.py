"""The local tier on its own: deadlines on a fake clock, bounds, counters, racing fills."""

from __future__ import annotations

import math

import pytest

from dragonfly_cache._l1 import ENTRY_OVERHEAD, L1
from tests.helpers import FakeClock, run_threads


def make_l1(max_size: int = 100) -> tuple[L1, FakeClock]:
    clock = FakeClock()
    return L1(max_size, clock), clock


def put(l1: L1, values: dict[str, bytes], life: float = 60.0) -> None:
    """This process's own write of ``values``, living ``life`` seconds."""
    with l1.ticket(values) as ticket:
        ticket.write(values, l1.timer() + life)


def test_write_then_get_hits_and_counts() -> None:
    l1, _ = make_l1()
    assert l1.get("k") is None
    put(l1, {"k": b"v"})
    assert l1.get("k") == b"v"
    stats = l1.stats()
    assert (stats["hits"], stats["misses"], stats["size"]) == (1, 1, 1)
    assert stats["hit_rate"] == 0.5


def test_entry_expires_at_its_deadline() -> None:
    l1, clock = make_l1()
    put(l1, {"k": b"v"}, life=10.0)
    clock.advance(9.99)
    assert l1.get("k") == b"v"
    clock.advance(0.02)
    assert l1.get("k") is None
    assert l1.stats()["expirations"] == 1
    assert l1.stats()["evictions"] == 0
    assert len(l1) == 0


def test_fill_keeps_each_entry_s_own_deadline() -> None:
    l1, clock = make_l1()
    with l1.ticket(["far", "near"]) as ticket:
        ticket.fill({"far": (b"1", clock.now + 5.0), "near": (b"2", clock.now + 0.5)})
    clock.advance(0.6)
    assert l1.get("near") is None  # the L2 key's remaining life was 0.5 s
    assert l1.get("far") == b"1"
    clock.advance(4.5)
    assert l1.get("far") is None


def test_size_evictions_and_expirations_are_counted_apart() -> None:
    l1, clock = make_l1(max_size=3)
    for i in range(5):
        put(l1, {f"k{i}": b"v"}, life=1.0)
    assert l1.stats()["size"] == 3
    assert l1.stats()["evictions"] == 2
    clock.advance(2.0)
    assert l1.get_many(["k2", "k3", "k4"]) == {}
    assert l1.stats()["expirations"] == 3
    assert l1.stats()["evictions"] == 2


def test_lru_order_keeps_recently_read_entries() -> None:
    l1, _ = make_l1(max_size=2)
    put(l1, {"a": b"1", "b": b"2"})
    assert l1.get("a") == b"1"
    put(l1, {"c": b"3"})
    assert l1.get("b") is None
    assert l1.get("a") == b"1"


def test_get_many_counts_each_key() -> None:
    l1, _ = make_l1()
    put(l1, {"a": b"1"})
    assert l1.get_many(["a", "b", "c"]) == {"a": b"1"}
    assert (l1.stats()["hits"], l1.stats()["misses"]) == (1, 2)


def test_peek_counts_nothing_and_respects_deadlines() -> None:
    l1, clock = make_l1()
    put(l1, {"a": b"1"}, life=1.0)
    assert l1.peek("a") == b"1"
    clock.advance(1.5)
    assert l1.peek("a") is None
    assert (l1.stats()["hits"], l1.stats()["misses"]) == (0, 0)


# -- racing fills ----------------------------------------------------------------------


def test_fill_that_raced_an_invalidation_is_not_installed() -> None:
    l1, _ = make_l1()
    with l1.ticket(["k"]) as ticket:  # a reader goes to L2 ...
        l1.invalidate(["k"])  # ... a delete lands meanwhile ...
        assert ticket.stale("k")
        ticket.fill({"k": (b"old", math.inf)})  # ... the reader's old value must lose
    assert l1.get("k") is None


def test_fill_after_an_unrelated_invalidation_is_installed() -> None:
    l1, _ = make_l1()
    with l1.ticket(["k"]) as ticket:
        l1.invalidate(["other"])
        assert not ticket.stale("k")
        ticket.fill({"k": (b"v", math.inf)})
    assert l1.get("k") == b"v"


def test_invalidation_before_the_ticket_does_not_block_the_fill() -> None:
    l1, _ = make_l1()
    with l1.ticket(["k"]):  # keeps the key's bookkeeping alive
        l1.invalidate(["k"])
        with l1.ticket(["k"]) as ticket:
            ticket.fill({"k": (b"new", math.inf)})
    assert l1.get("k") == b"new"


def test_pattern_invalidation_and_clear_make_racing_fills_lose() -> None:
    l1, _ = make_l1()
    with l1.ticket(["user:1", "post:1"]) as ticket:
        l1.invalidate_matching(lambda key: key.startswith("user:"))
        ticket.fill({"user:1": (b"u", math.inf), "post:1": (b"p", math.inf)})
    assert l1.get("user:1") is None
    assert l1.get("post:1") == b"p"

    with l1.ticket(["a"]) as ticket:
        l1.clear()
        ticket.fill({"a": (b"1", math.inf)})
    assert l1.get("a") is None


def test_drop_untrusted_empties_l1_and_refuses_fills_in_flight_but_invalidates_nothing(
        ) -> None:
    l1, clock = make_l1()
    with l1.ticket(["a", "w"]) as ticket:
        ticket.fill({"a": (b"1", math.inf)})
        assert l1.get("a") == b"1"
        with l1.ticket(["b"]) as in_flight:
            l1.drop_untrusted()
            assert l1.get("a") is None and len(l1) == 0
            assert not in_flight.stale("b")  # a load in flight may still store in L2
            in_flight.fill({"b": (b"2", math.inf)})  # ...but it read before: not into L1
        assert l1.get("b") is None
        ticket.write({"w": b"mine"}, clock.now + 60.0)  # our own write still applies
    assert l1.get("w") == b"mine"
    with l1.ticket(["c"]) as after:
        after.fill({"c": (b"3", math.inf)})
    assert l1.get("c") == b"3"


def test_concurrent_writes_of_one_key_drop_it_instead_of_guessing_the_order() -> None:
    l1, clock = make_l1()
    with l1.ticket(["k"]) as first, l1.ticket(["k"]) as second:
        # Both wrote L2; which landed last is unknown. Whichever applies L1 second drops it.
        first.write({"k": b"v1"}, clock.now + 60.0)
        assert l1.get("k") == b"v1"
        second.write({"k": b"v2"}, clock.now + 60.0)
        assert l1.get("k") is None


def test_own_write_invalidates_a_racing_fill() -> None:
    l1, _ = make_l1()
    with l1.ticket(["k"]) as reader:
        put(l1, {"k": b"new"})
        reader.fill({"k": (b"old", math.inf)})
    assert l1.get("k") == b"new"


def test_ticket_bookkeeping_is_released() -> None:
    l1, _ = make_l1()
    with l1.ticket(["a", "b"]) as ticket:
        l1.invalidate(["a"])
        ticket.fill({"a": (b"1", math.inf)})  # "b" is left for the end of the block
    put(l1, {"c": b"3"})
    with l1.ticket(["d"]):
        pass
    assert l1.held() == {}


def test_ticket_releases_what_it_holds_when_the_block_raises() -> None:
    l1, _ = make_l1()
    with pytest.raises(RuntimeError), l1.ticket(["a", "b"]) as ticket:
        ticket.fill({"a": (b"1", math.inf)})
        raise RuntimeError("the L2 read failed")
    assert l1.held() == {}
    assert l1.get("a") == b"1"


def test_each_key_is_released_once_however_often_it_is_named() -> None:
    l1, _ = make_l1()
    with l1.ticket(["k"]) as outer:
        with l1.ticket(["k", "k"]) as inner:  # a duplicate key takes one ticket
            inner.fill({"k": (b"1", math.inf)})
            inner.fill({"k": (b"2", math.inf)})  # already released: nothing happens
            inner.release(["k"])
            assert l1.held() == {"k": 1}  # the outer ticket is still out
        l1.invalidate(["k"])
        assert outer.stale("k")  # so an invalidation still marks the key for it
        outer.fill({"k": (b"3", math.inf)})
    assert l1.get("k") is None
    assert l1.held() == {}


def test_bound_holds_under_concurrent_churn() -> None:
    l1, _ = make_l1(max_size=50)
    sizes: list[int] = []

    def churn(worker: int) -> None:
        for i in range(300):
            key = f"{worker}:{i}"
            put(l1, {key: b"x"})
            l1.get(key)
            sizes.append(len(l1))

    run_threads(16, churn)
    assert max(sizes) <= 50
    assert l1.stats()["size"] == 50
    assert l1.stats()["evictions"] == 16 * 300 - 50


def test_the_byte_bound_evicts_the_least_recently_used_and_counts_it() -> None:
    clock = FakeClock()
    l1 = L1(100, clock, max_bytes=3 * (1000 + ENTRY_OVERHEAD))  # room for three 1000-byte values
    for key in ("a", "b", "c"):
        with l1.ticket([key]) as ticket:
            ticket.write({key: b"x" * 1000}, clock.now + 60)
    assert l1.get("a") == b"x" * 1000  # "b" is now the least recently used
    with l1.ticket(["d"]) as ticket:
        ticket.write({"d": b"y" * 1000}, clock.now + 60)
    assert l1.peek("b") is None and l1.peek("a") is not None
    stats = l1.stats()
    assert stats["bytes"] == 3 * (1000 + ENTRY_OVERHEAD) and stats["size"] == 3
    assert stats["evictions_by_cause"] == {"entries": 0, "bytes": 1}
    assert stats["evictions"] == 1


def test_the_entry_bound_still_holds_and_is_counted_apart() -> None:
    clock = FakeClock()
    l1 = L1(2, clock, max_bytes=10**6)
    for key in ("a", "b", "c"):
        with l1.ticket([key]) as ticket:
            ticket.write({key: b"v"}, clock.now + 60)
    assert len(l1) == 2
    assert l1.stats()["evictions_by_cause"] == {"entries": 1, "bytes": 0}


def test_a_value_over_the_entry_limit_is_not_kept_and_drops_an_older_one() -> None:
    clock = FakeClock()
    l1 = L1(100, clock, max_bytes=10_000, max_entry_bytes=1000)
    with l1.ticket(["k"]) as ticket:
        ticket.write({"k": b"small"}, clock.now + 60)
    with l1.ticket(["k"]) as ticket:
        ticket.fill({"k": (b"z" * 5000, clock.now + 60)})
    assert l1.peek("k") is None  # neither the large value nor the old small one
    assert l1.stats()["too_large"] == 1 and l1.stats()["bytes"] == 0


# -- expired entries kept for stale_if_error -------------------------------------------------


def test_a_kept_entry_is_a_miss_to_reads_and_stale_until_the_window_ends() -> None:
    l1, clock = make_l1()
    l1.keep_expired(30.0)
    put(l1, {"k": b"v", "other": b"w"}, life=10.0)
    clock.advance(10.0)  # at its deadline: expired
    assert l1.get("k") is None and l1.get_many(["other"]) == {} and l1.peek("k") is None
    assert l1.stale("k", 30.0) == (b"v", 1010.0)
    assert l1.stale("k", 5.0) is not None  # 0 s past the deadline
    clock.advance(29.9)
    assert l1.stale("k", 30.0) == (b"v", 1010.0)
    assert l1.stale("k", 20.0) is None  # a caller with a shorter window
    assert len(l1) == 2 and l1.stats()["expirations"] == 0  # still held, not yet counted
    clock.advance(0.1)  # exactly 30 s past: never served, and dropped by the next read
    assert l1.stale("k", 30.0) is None
    assert l1.get("k") is None and l1.get_many(["other"]) == {}
    assert len(l1) == 0 and l1.stats()["expirations"] == 2


def test_kept_entries_count_against_the_bounds_and_invalidations_remove_them() -> None:
    clock = FakeClock()
    l1 = L1(100, clock, max_bytes=3 * (100 + ENTRY_OVERHEAD))
    l1.keep_expired(60.0)
    put(l1, {"a": b"a" * 100, "b": b"b" * 100, "c": b"c" * 100}, life=1.0)
    clock.advance(2.0)
    assert l1.stats()["bytes"] == 3 * (100 + ENTRY_OVERHEAD)  # kept values use the budget
    put(l1, {"d": b"d" * 100})
    assert l1.stale("a", 60.0) is None and l1.stats()["evictions_by_cause"]["bytes"] == 1
    l1.invalidate(["b"])
    l1.invalidate_matching(lambda key: key == "c")
    assert l1.stale("b", 60.0) is None and l1.stale("c", 60.0) is None
    put(l1, {"e": b"e"}, life=1.0)
    clock.advance(2.0)
    l1.clear()
    assert l1.stale("e", 60.0) is None and len(l1) == 0


def test_replacing_or_dropping_a_kept_entry_counts_one_expiration() -> None:
    l1, clock = make_l1()
    l1.keep_expired(30.0)
    put(l1, {"k": b"old", "n": b"x"}, life=1.0)
    clock.advance(2.0)
    assert l1.get("k") is None and l1.get("k") is None  # two reads of the kept entry
    put(l1, {"k": b"new"})  # the refill replaces it
    assert l1.get("k") == b"new" and l1.stats()["expirations"] == 1
    l1.drop_expired("k")  # live: stays
    l1.drop_expired("n")  # kept: goes
    assert l1.get("k") == b"new" and l1.stale("n", 30.0) is None
    assert l1.stats()["expirations"] == 2


def test_without_keep_expired_nothing_is_kept() -> None:
    l1, clock = make_l1()
    put(l1, {"k": b"v"}, life=1.0)
    clock.advance(1.0)
    assert l1.get("k") is None and len(l1) == 0 and l1.stats()["expirations"] == 1


def test_a_batch_into_a_full_l1_evicts_the_oldest_and_keeps_the_byte_count() -> None:
    l1, clock = make_l1(max_size=5)
    put(l1, {f"old{i}": b"x" * i for i in range(5)})
    assert l1.get("old0") == b""  # now the most recently used
    found, ticket = l1.lookup({"a": None, "b": None, "c": None})
    with ticket:
        ticket.install(ticket.keys, [b"1", b"22", b"333"], [clock.now + 60] * 3)
    assert found == {} and l1.held() == {}
    assert [key for key in ("old0", "old1", "old2", "old3", "old4", "a", "b", "c")
            if l1.peek(key) is not None] == ["old0", "old4", "a", "b", "c"]
    stats = l1.stats()
    assert stats["evictions_by_cause"] == {"entries": 3, "bytes": 0}
    assert stats["bytes"] == (0 + 4 + 1 + 2 + 3) + 5 * ENTRY_OVERHEAD


def test_two_cold_batch_reads_of_the_same_keys_count_their_bytes_once() -> None:
    l1, clock = make_l1()
    _, first = l1.lookup(["a", "b"])  # two readers miss the same keys ...
    _, second = l1.lookup(["b", "c"])
    with second:  # ... the second fills first
        second.install(second.keys, [b"2", b"3"], [clock.now + 60] * 2)
    with first:  # "b" has an entry now: the first one's fill replaces it
        first.install(first.keys, [b"1", b"22"], [clock.now + 60] * 2)
    assert [l1.peek(key) for key in "abc"] == [b"1", b"22", b"3"]
    assert l1.stats()["bytes"] == 1 + 2 + 1 + 3 * ENTRY_OVERHEAD and len(l1) == 3
    found, ticket = l1.lookup(["a", "d"])  # "a" is there: not a cold batch
    with ticket:
        ticket.install(ticket.keys, [b"444"], [clock.now + 60])
    assert found == {"a": b"1"} and l1.peek("d") == b"444"
    assert l1.stats()["bytes"] == 1 + 2 + 1 + 3 + 4 * ENTRY_OVERHEAD
