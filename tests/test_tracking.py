"""Tracking mode (``l1.invalidation=tracking``, and what ``auto`` picks on Redis and Valkey):
the server's own invalidations, for writes by any client, on connections that sit idle.

Coherence in general runs in both modes in tests/test_coherence.py; the cluster's tracking
per node is in tests/test_cluster.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config, TieredCache
from tests.helpers import CacheFactory, percentile, run_threads, wait_until
from tests.helpers.coherence_worker import Worker, measure

BOUND = 0.100  # the contract: another process's write is seen within 100 ms on loopback


def tracked_clients(server: Any) -> list[dict[str, Any]]:
    """The server's clients with tracking on (CLIENT LIST flag ``t``)."""
    return [client for client in server.client().client_list() if "t" in client["flags"]]


def gone_within(cache: TieredCache, key: str, seconds: float) -> float:
    """Seconds until ``key`` leaves ``cache``'s L1, watched without any call to the cache
    (its connections stay idle in the pool). Fails past ``seconds``."""
    l1 = cache._tiers.l1
    started = time.monotonic()
    wait_until(lambda: l1.peek(key) is None, timeout=seconds)
    return time.monotonic() - started


def in_l1(cache: TieredCache, key: str, value: bytes) -> None:
    """Read ``key`` into ``cache``'s L1 (then it is an L1 hit)."""
    hits = cache.stats()["l1_stats"]["hits"]
    assert cache.get(key) == value and cache.get(key) == value
    assert cache.stats()["l1_stats"]["hits"] == hits + 1


# -- which mode runs ---------------------------------------------------------------------------


def test_auto_picks_tracking_here_and_says_so(cache_factory: CacheFactory,
                                              redis_server: Any) -> None:
    cache = cache_factory()  # auto, the default
    stats = cache.stats()["coherence"]
    assert (stats["mode"], stats["state"]) == ("tracking", "subscribed")
    health = cache.health()
    assert (health["invalidation"], health["coherence"]) == ("tracking", "subscribed")
    cache.set("k", b"v")
    assert cache.get("k") == b"v"
    (client,) = tracked_clients(redis_server)  # the pooled connection, RESP3, tracked
    assert client["resp"] == "3"


@pytest.mark.parametrize("mode", ["pubsub", "off"])
def test_a_forced_mode_runs_and_is_reported(cache_factory: CacheFactory, redis_server: Any,
                                            mode: str) -> None:
    cache = cache_factory(invalidation=mode)
    cache.set("k", b"v")
    assert cache.get("k") == b"v"
    stats = cache.stats()["coherence"]
    assert stats["mode"] == mode
    assert stats["state"] == ("subscribed" if mode == "pubsub" else "disabled")
    assert cache.health()["invalidation"] == mode
    assert tracked_clients(redis_server) == []


def test_auto_runs_pubsub_when_stale_if_error_is_configured(redis_server: Any) -> None:
    """Tracking would end every kept value when its L2 key expires (an expiry push cannot
    be told from a delete), so the configured stale_if_error runs pub/sub under auto; a
    forced tracking is kept as asked."""
    stale = L2Config(stale_if_error=60.0)
    dragonfly = DragonflyConfig(addresses=[redis_server.address])
    with TieredCache(CacheConfig(dragonfly=dragonfly, l2=stale)) as cache:
        cache.set("k", b"v")
        wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed")
        assert cache.stats()["coherence"]["mode"] == "pubsub"
    forced = CacheConfig(dragonfly=dragonfly, l1=L1Config(invalidation="tracking"), l2=stale)
    with TieredCache(forced) as cache:
        cache.set("k", b"v")
        assert cache.stats()["coherence"]["mode"] == "tracking"


def test_fake_servers_answer_no_tracking_so_auto_runs_pubsub() -> None:
    from dragonfly_cache.testing import fake_cache

    with fake_cache(CacheConfig(key_prefix="fake-auto:")) as cache:
        wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed")
        assert cache.stats()["coherence"]["mode"] == "pubsub"


def test_auto_runs_pubsub_for_a_user_the_acl_denies_tracking(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    server.client().execute_command(
        "ACL", "SETUSER", "notrack", "on", ">pw-0123456789", "~*", "&*", "+@all",
        "-client")
    config = CacheConfig(dragonfly=DragonflyConfig(addresses=[server.address],
                                                   username="notrack",
                                                   password="pw-0123456789"))
    with TieredCache(config) as cache:
        wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed")
        assert cache.stats()["coherence"]["mode"] == "pubsub"
        cache.set("k", b"v")
        assert cache.get("k") == b"v"
    forced = CacheConfig(dragonfly=config.dragonfly, l1=L1Config(invalidation="tracking"))
    with TieredCache(forced) as cache:
        # Never an untracked connection in tracking mode: reads miss, writes raise.
        assert cache.get("k") is None
        assert "CLIENT TRACKING ON refused" in cache.health()["dragonfly"].get("error", "")


# -- writes by other clients -------------------------------------------------------------------


@pytest.fixture
def raw(redis_server: Any) -> redis.Redis:
    return redis_server.client()


WRITES: dict[str, Callable[[redis.Redis, str], None]] = {
    "SET": lambda client, name: client.set(name, b"new"),
    "DEL": lambda client, name: client.delete(name),
    "UNLINK": lambda client, name: client.unlink(name),
    "Lua": lambda client, name: client.eval("return redis.call('SET', KEYS[1], 'new')", 1,
                                            name),
    # Another client shortens the key's life: its L1 copy (whose deadline came from the
    # PTTL read with it) must not outlive the new expiry.
    "PEXPIRE": lambda client, name: client.pexpire(name, 20),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_raw_write_leaves_another_cache_l1_while_its_connections_idle(
        cache_factory: CacheFactory, raw: redis.Redis, write: str) -> None:
    cache = cache_factory(key_prefix="app:", invalidation="tracking")
    raw.set("app:k", b"old", ex=300)
    in_l1(cache, "k", b"old")
    WRITES[write](raw, "app:k")
    assert gone_within(cache, "k", 2.0) < BOUND
    wait_until(lambda: write != "PEXPIRE" or not raw.exists("app:k"))
    assert cache.get("k") == (b"new" if write in ("SET", "Lua") else None)
    assert cache.stats()["coherence"]["applied"] >= 1


def test_a_key_this_process_only_wrote_is_tracked_too(cache_factory: CacheFactory,
                                                      raw: redis.Redis) -> None:
    """The write read the key back (PTTL in its transaction): the server tells us when
    someone else writes it later, though we never GET it."""
    cache = cache_factory(key_prefix="app:", invalidation="tracking")
    cache.set("own:set", b"mine")
    assert cache.add("own:add", b"mine")
    assert cache.incr("own:incr") == 1
    for key in ("own:set", "own:add", "own:incr"):
        assert cache._tiers.l1.peek(key) is not None, key  # our own write is in L1
        raw.set(f"app:{key}", b"theirs")
        assert gone_within(cache, key, 2.0) < BOUND, key
        assert cache.get(key) == b"theirs"


def test_keys_read_by_get_many_are_tracked(cache_factory: CacheFactory,
                                           raw: redis.Redis) -> None:
    """get_many reads through a script (EVALSHA): the server tracks what it read."""
    cache = cache_factory(key_prefix="app:", invalidation="tracking")
    raw.mset({"app:a": b"1", "app:b": b"2"})
    assert cache.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
    assert cache._tiers.l1.peek("a") == b"1" and cache._tiers.l1.peek("b") == b"2"
    raw.set("app:b", b"new")
    raw.set("app:c", b"new")  # read as missing: tracked all the same
    assert gone_within(cache, "b", 2.0) < BOUND
    assert cache._tiers.l1.peek("a") == b"1"
    assert cache.get_many(["b", "c"]) == {"b": b"new", "c": b"new"}


def test_invalidate_and_clear_reach_tracking_caches(cache_factory: CacheFactory) -> None:
    writer = cache_factory(key_prefix="app:", invalidation="tracking")
    reader = cache_factory(key_prefix="app:", invalidation="tracking")
    writer.set_many({"user:1": b"a", "user:2": b"b", "post:1": b"c"})
    for key in ("user:1", "user:2", "post:1"):
        assert reader.get(key) is not None
    assert writer.invalidate("user:*") == 2
    wait_until(lambda: reader._tiers.l1.peek("user:1") is None
               and reader._tiers.l1.peek("user:2") is None, timeout=BOUND * 5)
    assert reader._tiers.l1.peek("post:1") == b"c"
    assert writer.clear() == 1
    assert gone_within(reader, "post:1", 2.0) < BOUND


@pytest.mark.parametrize("flush", ["FLUSHALL", "FLUSHDB"])
def test_a_flush_by_anyone_empties_l1(cache_factory: CacheFactory, raw: redis.Redis,
                                      flush: str) -> None:
    cache = cache_factory(invalidation="tracking")
    cache.set_many({"a": b"1", "b": b"2"})
    assert cache.get("a") == b"1"
    raw.execute_command(flush)
    assert gone_within(cache, "a", 2.0) < BOUND
    assert len(cache._tiers.l1) == 0
    assert cache.stats()["coherence"]["flushes"] >= 1


@pytest.fixture
def tracking_worker(redis_server: Any) -> Iterator[Worker]:
    worker = Worker(redis_server.address, "app:", "tracking")
    try:
        assert worker.coherence == "subscribed"
        yield worker
    finally:
        worker.close()


def test_another_process_drops_raw_writes_within_100ms(
        cache_factory: CacheFactory, raw: redis.Redis, tracking_worker: Worker) -> None:
    """B spins on L1 (no call reaches its pool) while a raw client writes."""
    writer = cache_factory(key_prefix="app:", invalidation="tracking")
    delays = []
    kinds = ["SET", "DEL", "Lua"]
    for n in range(30):
        kind = kinds[n % len(kinds)]
        name = f"app:raw:{n}"
        raw.set(name, b"old")
        outcome, delay, value, lookups = measure(
            writer, tracking_worker, f"raw:{n}", b"old",
            lambda kind=kind, name=name: WRITES[kind](raw, name))
        assert outcome == "seen", (kind, n)
        assert value == (None if kind == "DEL" else b"new"), (kind, value)
        assert lookups <= 2
        delays.append(delay)
    print(f"\nraw writes seen by another process: p50 {percentile(delays, 0.5) * 1000:.2f} "
          f"ms, p99 {percentile(delays, 0.99) * 1000:.2f} ms")
    assert percentile(delays, 0.99) < BOUND


# -- lost tracking -----------------------------------------------------------------------------


def test_a_killed_tracked_connection_flushes_l1(cache_factory: CacheFactory, raw: redis.Redis,
                                                redis_server: Any) -> None:
    cache = cache_factory(key_prefix="app:", invalidation="tracking")
    raw.set("app:k", b"old")
    in_l1(cache, "k", b"old")
    (client,) = tracked_clients(redis_server)
    raw.client_kill_filter(_id=client["id"])
    # Whatever happens to the key now, the server tells nobody: L1 must not keep it.
    raw.set("app:k", b"new")
    assert gone_within(cache, "k", 2.0) < BOUND
    assert cache.get("k") == b"new"
    stats = cache.stats()["coherence"]
    assert (stats["flushes"], stats["reconnects"], stats["state"]) == (1, 1, "subscribed")
    # The connection came back tracked.
    raw.set("app:k", b"newer")
    assert gone_within(cache, "k", 2.0) < BOUND


def test_a_restarted_server_flushes_l1(cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory(invalidation="tracking")
    cache.set("k", b"v")
    redis_server.restart()
    assert gone_within(cache, "k", 2.0) < BOUND
    assert cache.get("k") is None  # the restarted server is empty


def test_an_expiry_push_ends_a_kept_stale_value(cache_factory: CacheFactory,
                                                redis_server: Any) -> None:
    """stale_if_error in tracking mode: the server announces the key's expiry like any
    change, and nothing tells an expiry from a delete, so the kept value goes with it (the
    safe side: never a value a delete removed). The pub/sub behaviour, where an expiry
    announces nothing, is tested in tests/test_loading.py and tests/test_contract.py."""
    cache = cache_factory(invalidation="tracking", l2={"stale_if_error": 60.0})
    failing = [False]

    def loader() -> bytes:
        if failing[0]:
            raise RuntimeError("database down")
        return b"v1"

    assert cache.get_or_load("k", loader, ttl=0.2) == b"v1"
    failing[0] = True
    applied = cache.stats()["coherence"]["applied"]
    wait_until(lambda: cache.stats()["coherence"]["applied"] > applied)  # the expiry
    assert redis_server.client().get("k") is None
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_load("k", loader, ttl=0.2)
    assert cache.stats()["loading"]["stale_served"] == 0


# -- own writes --------------------------------------------------------------------------------


def test_own_writes_stay_in_l1(cache_factory: CacheFactory, redis_server: Any) -> None:
    """NOLOOP: the connection that wrote gets no push for its own write (Redis, Valkey)."""
    cache = cache_factory(invalidation="tracking")
    for n in range(20):
        cache.set("k", b"v%d" % n)
        assert cache.get("k") == b"v%d" % n
    assert cache.stats()["l2_stats"]["hits"] + cache.stats()["l2_stats"]["misses"] == 0
    assert cache.stats()["coherence"]["received"] == 0


def test_writes_from_many_threads_never_leave_a_stale_value(cache_factory: CacheFactory,
                                                            raw: redis.Redis) -> None:
    """Our own writes on one pooled connection invalidate the key on the others (the server
    cannot tell us apart from anyone else): extra misses, and never a value older than
    L2's once the writes are over."""
    cache = cache_factory(invalidation="tracking", pool_size=4)
    keys = [f"hot:{n}" for n in range(4)]

    def work(index: int) -> None:
        for round_ in range(200):
            key = keys[(index + round_) % len(keys)]
            cache.set(key, b"%d:%d" % (index, round_))
            cache.get(keys[round_ % len(keys)])

    run_threads(8, work)
    time.sleep(0.05)  # the last pushes land
    for key in keys:
        assert cache.get(key) == raw.get(key), key


def test_the_poller_keeps_the_pool_within_pool_size(cache_factory: CacheFactory,
                                                    redis_server: Any) -> None:
    cache = cache_factory(invalidation="tracking", pool_size=2)
    stop = threading.Event()

    def read(index: int) -> None:
        while not stop.is_set():
            cache.set(f"k{index}", b"v")
            cache.get(f"k{(index + 1) % 4}")

    threads = [threading.Thread(target=read, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 2.5  # past a PING_INTERVAL: the poller pings too
        most = 0
        while time.monotonic() < deadline:
            most = max(most, len(tracked_clients(redis_server)))
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    assert 1 <= most <= 2


def test_a_push_that_found_every_slot_taken_is_applied_once_one_is_free(
        cache_factory: CacheFactory, raw: redis.Redis) -> None:
    """The poller tends an idle connection under one of its node's slots. A push that
    arrives while every slot is held (here by the test, as by a caller that then takes
    no connection) is applied soon after a slot is free, not at the next PING (1 s)."""
    cache = cache_factory(key_prefix="app:", invalidation="tracking", pool_size=1)
    raw.set("app:k", b"old")
    in_l1(cache, "k", b"old")
    slots = cache._l2.router.nodes.node(cache._l2.address).slots
    assert slots.acquire(1.0)
    try:
        raw.set("app:k", b"new")
        time.sleep(0.2)  # the poller's event fires now, and finds no slot
        assert cache._tiers.l1.peek("k") is not None
    finally:
        slots.release()
    assert gone_within(cache, "k", 2.0) < BOUND
    assert cache.get("k") == b"new"


def test_close_stops_the_poller_and_flushes(cache_factory: CacheFactory,
                                            redis_server: Any) -> None:
    cache = cache_factory(invalidation="tracking")
    cache.set("k", b"v")
    coherence = cache._tiers.coherence
    assert coherence is not None and coherence._tracking is not None
    poller = coherence._tracking._thread
    assert poller is not None and poller.is_alive()
    cache.close()
    assert cache.stats()["coherence"]["state"] == "stopped"
    assert len(cache._tiers.l1) == 0
    assert not poller.is_alive()
    wait_until(lambda: tracked_clients(redis_server) == [])  # a closed cache keeps none
