"""Own writes in tracking mode (``dragonfly_cache/_ownwrites.py``): the push our own write
causes on another of our pooled connections leaves the value we wrote in L1, and no
ordering of pushes and replies lets another client's write go unseen.

Which connection does what is set up by holding one out of the pool (the pool hands out
the last one returned), and a write is paused between sending and reading its replies
by holding the reply read of that thread (``paused_replies``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

import dragonfly_cache._connections as connections_module
from dragonfly_cache import TieredCache
from dragonfly_cache._l1 import L1
from dragonfly_cache._ownwrites import Link, OwnWrites
from tests.helpers import CacheFactory, run_threads, wait_until

BOUND = 0.100  # another client's write is seen within 100 ms on loopback


@pytest.fixture
def raw(redis_server: Any) -> redis.Redis:
    return redis_server.client()


@pytest.fixture
def cache(cache_factory: CacheFactory) -> TieredCache:
    cache = cache_factory(key_prefix="app:", invalidation="tracking", pool_size=4)
    assert not cache._l2.router.is_cluster()  # known standalone: own writes are owned
    return cache


def pool(cache: TieredCache) -> Any:
    router = cache._l2.router
    return router.nodes.node(router.primaries()[0]).connections


@contextmanager
def held(cache: TieredCache) -> Iterator[Any]:
    """One pooled connection (the one the next call would get), out of the pool meanwhile;
    given back (its pushes applied) when the block ends."""
    connections = pool(cache)
    connection = connections._take()
    try:
        yield connection
    finally:
        connections.give_back(connection, True)


@contextmanager
def borrowed(cache: TieredCache, connection: Any) -> Iterator[None]:
    """``connection`` (idle now) out of the pool for the block."""
    connections = pool(cache)
    assert connections.borrow(connection)
    own(cache)  # tracking runs
    cache._tiers.coherence._tracking.taken(connection)  # type: ignore[union-attr]
    try:
        yield
    finally:
        connections.give_back(connection, True)


def owner_of(cache: TieredCache, key: str) -> Any:
    """The connection that owns ``key``'s L1 entry (its own write's)."""
    return own(cache)._owners[key][0].connection()


def sent_out(raw: redis.Redis) -> None:
    """Wait until the server has written every reply and push it owes to any client (all
    output buffers empty): what it sent is in the sockets, to be read in one go."""
    wait_until(lambda: all(int(client["obl"]) == 0 and int(client["oll"]) == 0
                           for client in raw.client_list()), timeout=2)


def settled(cache: TieredCache, connection: Any) -> None:
    """Apply the pushes waiting on a held ``connection`` (once they arrived)."""
    wait_until(lambda: connection.can_read(timeout=0), timeout=2)
    pool(cache).settle(connection)


def l2_lookups(cache: TieredCache) -> int:
    stats = cache.stats()["l2_stats"]
    return stats["hits"] + stats["misses"]


def own(cache: TieredCache) -> Any:
    coherence = cache._tiers.coherence
    assert coherence is not None and coherence._tracking is not None
    return coherence._tracking.own


def test_the_push_of_our_own_write_on_another_connection_keeps_the_value(
        cache: TieredCache, raw: redis.Redis) -> None:
    """X read k; we write k on Y: the server pushes our write to X. Before: the value left
    L1 and the next read was a miss."""
    raw.set("app:k", b"old")
    assert cache.get("k") == b"old"  # read on X: X tracks k
    with held(cache) as other:  # X, held: the write goes on Y
        cache.set("k", b"new")
        settled(cache, other)  # X's push, for our own write: the value stays
    lookups = l2_lookups(cache)
    assert cache.get("k") == b"new" and cache._tiers.l1.peek("k") == b"new"
    assert l2_lookups(cache) == lookups
    assert own(cache).kept >= 1
    # ... and the writer's connection still reports anyone else's write.
    raw.set("app:k", b"theirs")
    wait_until(lambda: cache._tiers.l1.peek("k") is None, timeout=BOUND)
    assert cache.get("k") == b"theirs"


def test_a_push_on_the_owner_wins_even_when_another_connection_also_tracks_the_key(
        cache: TieredCache, raw: redis.Redis) -> None:
    cache.set("k", b"mine")  # owned by this connection (Y)
    with borrowed(cache, owner_of(cache, "k")):  # Y held: ttl() reads on X, which tracks k
        assert cache.ttl("k")
    raw.set("app:k", b"theirs")  # pushed to X (kept: Y owns it) and to Y (applied)
    wait_until(lambda: cache._tiers.l1.peek("k") is None, timeout=BOUND)
    assert cache.get("k") == b"theirs"


@contextmanager
def paused_replies(thread_name: str) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold every reply read of the thread called ``thread_name``: ``sent`` is set when its
    commands went out (the server ran them), the read goes on once ``go`` is set."""
    sent, go = threading.Event(), threading.Event()
    read = connections_module._read

    def pausing(connection: Any, count: int) -> list[Any]:
        if threading.current_thread().name == thread_name:
            sent.set()
            assert go.wait(5)
        return read(connection, count)

    connections_module._read = pausing
    try:
        yield sent, go
    finally:
        go.set()
        connections_module._read = read


def test_another_write_between_ours_and_our_reply_is_seen(cache: TieredCache,
                                                          raw: redis.Redis) -> None:
    """Our write ran, another client wrote after it, and only then do we read our reply:
    the push for theirs arrives on our own connection after the reply, and must win."""
    raw.set("app:k", b"old")
    assert cache.get("k") == b"old"  # X tracks k
    with held(cache), paused_replies("writer") as (sent, go):
        writer = threading.Thread(target=cache.set, args=("k", b"ours"), name="writer")
        writer.start()
        assert sent.wait(5)
        wait_until(lambda: raw.get("app:k") == b"ours", timeout=2)
        raw.set("app:k", b"theirs")  # after ours: pushed to Y only (X's went with ours)
        sent_out(raw)  # our reply and that push, read in one go: the push after the reply
        go.set()
        writer.join(5)
    wait_until(lambda: cache.get("k") == b"theirs", timeout=BOUND)


def test_a_write_that_does_not_read_its_key_back_ends_ownership(cache: TieredCache,
                                                                raw: redis.Redis) -> None:
    """An own delete on the owning connection ends the server's tracking of the key there
    without a push to it (NOLOOP): the owned entry must go with it, or the push the delete
    sends X would be kept, and nobody would report the next write."""
    cache.set("k", b"v")
    owner = owner_of(cache, "k")  # Y
    with borrowed(cache, owner):
        assert cache.ttl("k")  # on X: X tracks k too
    (other,) = [c for c in pool(cache)._idle if c is not owner]
    with borrowed(cache, other):  # the delete runs on Y; X's push waits
        cache._l2.delete_if_equal("k", b"v")
        assert raw.get("app:k") is None
        assert cache._tiers.l1.peek("k") is None
    raw.set("app:k", b"theirs")
    wait_until(lambda: cache.get("k") == b"theirs", timeout=BOUND)


def test_a_failed_write_applies_the_pushes_it_spared(cache: TieredCache, raw: redis.Redis,
                                                     redis_server: Any) -> None:
    """A push on another connection while our write is in flight spares its ticket; if
    the write then fails, the value it keeps in L1 for l1.degraded_ttl must not outlive
    the write that push reported."""
    raw.set("app:k", b"old")
    assert cache.get("k") == b"old"  # X tracks k
    connections = pool(cache)
    (other,) = connections._idle
    raw.config_set("maxmemory", 1)  # our SET is refused (OOM); a DEL is not
    try:
        with borrowed(cache, other), paused_replies("writer") as (sent, go):
            failure: list[BaseException] = []
            kept: list[bytes | None] = []

            def write() -> None:
                try:
                    cache.set("k", b"ours")
                except Exception as exc:
                    # At once: the journal's replay of the failed write soon drops it too.
                    kept.append(cache._tiers.l1.peek("k"))
                    failure.append(exc)

            writer = threading.Thread(target=write, name="writer")
            writer.start()
            assert sent.wait(5)
            raw.delete("app:k")  # pushed to X
            settled(cache, other)  # X's push, applied during the flight
            go.set()
            writer.join(5)
    finally:
        raw.config_set("maxmemory", 0)
    assert failure and "maxmemory" in str(failure[0])
    assert kept == [None]
    assert cache.get("k") is None


def test_racing_own_and_foreign_writes_leave_l1_agreeing_with_l2(cache: TieredCache,
                                                                 raw: redis.Redis) -> None:
    """Threads write a few keys through the cache while another client writes them too:
    once both stop, every key reads as L2 has it within 100 ms."""
    keys = [f"hot:{n}" for n in range(3)]
    foreign = redis.Redis(connection_pool=raw.connection_pool)

    def work(index: int) -> None:
        for round_ in range(150):
            key = keys[(index + round_) % len(keys)]
            if index == 0:
                foreign.set(f"app:{key}", b"theirs:%d" % round_)
            else:
                cache.set(key, b"%d:%d" % (index, round_))
            cache.get(keys[round_ % len(keys)])

    run_threads(4, work)
    started = time.monotonic()
    for key in keys:
        wait_until(lambda key=key: cache.get(key) == raw.get(f"app:{key}"), timeout=BOUND)
    assert time.monotonic() - started < BOUND * len(keys)
    assert own(cache).kept >= 1  # the rules were exercised, not bypassed


# -- the rules, without a server (pure logic: which push drops what) --------------------------


def link(noloop: bool = True) -> Link:
    return Link(redis.Connection(), noloop=noloop)  # type: ignore[no-untyped-call]


@pytest.fixture
def rules() -> tuple[L1, OwnWrites, Link, Link]:
    l1 = L1(100)
    a, x = (link() for _ in range(2))
    return l1, OwnWrites(l1), a, x


def test_rule_2_a_push_from_another_connection_spares_the_write_in_flight(
        rules: tuple[L1, OwnWrites, Link, Link]) -> None:
    l1, own_writes, a, x = rules
    with l1.ticket(["k"]) as ticket, own_writes.flight("k", ticket) as flight:
        own_writes.apply(x, ["k"])  # before our replies: spared
        own_writes.replied(a)
        own_writes.apply(x, ["k"])  # after them, from another connection: spared
        flight.landed(ticket.write({"k": b"ours"}, 1e18))
    assert l1.peek("k") == b"ours"
    own_writes.apply(x, ["k"])  # rule 1: A owns it
    assert l1.peek("k") == b"ours"
    own_writes.apply(a, ["k"])  # the owner's push always wins
    assert l1.peek("k") is None and own_writes.owned() == 0


@pytest.mark.parametrize("when", ["before", "after"])
def test_rule_2_a_push_on_the_writing_connection_stamps_the_write(
        rules: tuple[L1, OwnWrites, Link, Link], when: str) -> None:
    l1, own_writes, a, _ = rules
    with l1.ticket(["k"]) as ticket, own_writes.flight("k", ticket) as flight:
        if when == "before":
            own_writes.apply(a, ["k"])  # heard on A before its replies: maybe a later write
        own_writes.replied(a)
        if when == "after":
            own_writes.apply(a, ["k"])
        flight.landed(ticket.write({"k": b"ours"}, 1e18))
    assert l1.peek("k") is None and own_writes.owned() == 0


def test_rule_2_a_failed_write_applies_what_it_spared(
        rules: tuple[L1, OwnWrites, Link, Link]) -> None:
    l1, own_writes, _, x = rules
    with l1.ticket(["k"]) as ticket, own_writes.flight("k", ticket) as flight:
        own_writes.apply(x, ["k"])
        flight.abort()
        ticket.write({"k": b"ours"}, 1e18)  # the failed write's degraded install
    assert l1.peek("k") is None


def test_rule_1_ownership_ends_with_the_entry_the_socket_or_noloop(
        rules: tuple[L1, OwnWrites, Link, Link]) -> None:
    l1, own_writes, a, x = rules

    def write(value: bytes, link: Link) -> None:
        with l1.ticket(["k"]) as ticket, own_writes.flight("k", ticket) as flight:
            own_writes.replied(link)
            flight.landed(ticket.write({"k": value}, 1e18))

    write(b"1", a)
    with l1.ticket(["k"]) as ticket:  # another entry replaces ours (a fill)
        ticket.install(["k"], [b"2"], [1e18])
    own_writes.apply(x, ["k"])
    assert l1.peek("k") is None
    write(b"3", a)
    own_writes.lost(a)
    own_writes.apply(x, ["k"])
    assert l1.peek("k") is None
    write(b"4", link(noloop=False))
    assert own_writes.owned() == 0


def test_rule_3_an_untracked_write_drops_owned_entries_and_voids_flights(
        rules: tuple[L1, OwnWrites, Link, Link]) -> None:
    l1, own_writes, a, _ = rules
    with l1.ticket(["k"]) as ticket, own_writes.flight("k", ticket) as flight:
        own_writes.replied(a)
        flight.landed(ticket.write({"k": b"1"}, 1e18))
    own_writes.forget(["k"])
    assert l1.peek("k") is None and own_writes.owned() == 0
    with l1.ticket(["j"]) as ticket, own_writes.flight("j", ticket) as flight:
        own_writes.replied(a)
        own_writes.forget(["j"])  # ran while the write of j was in flight
        flight.landed(ticket.write({"j": b"1"}, 1e18))
    assert own_writes.owned() == 0
