"""Fault injection: partitions, stalls, resets and slow servers through a TCP proxy.

Every scenario asserts the contract: reads never raise, writes succeed or raise
CacheUnavailableError, every call ends within its documented bound, and the cache
recovers on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from dragonfly_cache import CacheUnavailableError, TieredCache
from dragonfly_cache._listener import PING_INTERVAL, PONG_TIMEOUT
from tests.helpers import CacheFactory, percentile, run_threads, wait_until
from tests.helpers.proxy import FaultProxy, proxy_for

BACKOFF_CAP = 0.1  # dragonfly_cache._nodes.BACKOFF_CAP


def worst_case(cache: TieredCache) -> float:
    """The documented bound on one call with the server unreachable."""
    d = cache.config.dragonfly
    return (d.pool_timeout + (1 + d.max_retries) * (d.connect_timeout + d.socket_timeout)
            + d.max_retries * BACKOFF_CAP)


@pytest.fixture
def proxy(redis_server: Any) -> Iterator[FaultProxy]:
    with proxy_for(redis_server) as running:
        yield running


@pytest.fixture
def through(proxy: FaultProxy, cache_factory: CacheFactory) -> Callable[..., TieredCache]:
    """Caches that reach the server through the proxy."""
    target = SimpleNamespace(address=proxy.address, password=None)

    def make(**kwargs: Any) -> TieredCache:
        return cache_factory(target, **kwargs)  # type: ignore[arg-type]

    return make


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result: Any = call()
    except CacheUnavailableError as exc:
        result = exc
    return result, time.monotonic() - started


def test_stalled_server_reads_are_bounded_by_the_timeout_then_fail_fast(
        through: Callable[..., TieredCache], proxy: FaultProxy) -> None:
    cache = through(socket_timeout=0.2, connect_timeout=0.2, breaker_threshold=3,
                    breaker_cooldown=30, invalidation=False)
    cache.set("k", b"v")
    cache._tiers.l1.clear()
    proxy.stall()
    slow = [timed(lambda: cache.get("k")) for _ in range(3)]
    for value, seconds in slow:
        assert value is None
        assert 0.15 < seconds < 0.2 + 0.3  # one socket timeout, not one per retry
    assert cache.stats()["breaker"]["state"] == "open"
    fast = [timed(lambda: cache.get("k"))[1] for _ in range(500)]
    print(f"\nstalled server: first reads {[round(s, 3) for s in (t for _, t in slow)]} s, "
          f"then p99 {percentile(fast, 0.99) * 1e6:.0f} us with the breaker open")
    assert percentile(fast, 0.99) < 0.002
    with pytest.raises(CacheUnavailableError, match="circuit breaker open"):
        cache.set("k", b"w")


def test_connections_reset_are_retried_transparently(
        through: Callable[..., TieredCache], proxy: FaultProxy) -> None:
    cache = through(invalidation=False)
    cache.set("k", b"v")
    for round_ in range(5):
        proxy.reset()  # every pooled connection is now dead
        cache._tiers.l1.clear()
        assert cache.get("k") == b"v"
        cache.set("k", b"v")  # a write on a reset connection is retried, not lost
        assert round_ < 5
    stats = cache.stats()
    assert stats["l2_stats"]["errors"] == 0
    assert stats["breaker"]["state"] == "closed"


def test_refused_connections_fail_within_the_documented_bound(
        through: Callable[..., TieredCache], proxy: FaultProxy) -> None:
    cache = through(max_retries=3, breaker_threshold=100, invalidation=False)
    proxy.refuse()
    for n in range(5):
        key = f"k{n}"
        value, seconds = timed(lambda: cache.get(key))  # noqa: B023 - called at once
        assert value is None
        assert seconds < worst_case(cache)
        error, seconds = timed(lambda: cache.set(key, b"v"))  # noqa: B023 - called at once
        assert isinstance(error, CacheUnavailableError)
        assert seconds < worst_case(cache)
    proxy.passthrough()
    cache.set("k", b"v")
    assert cache.get("k") == b"v"


def test_a_partition_that_heals_recovers_without_restarting_the_app(
        through: Callable[..., TieredCache], proxy: FaultProxy) -> None:
    cache = through(socket_timeout=0.1, connect_timeout=0.1, breaker_threshold=2,
                    breaker_cooldown=0.2, breaker_max_cooldown=0.4)
    cache.set("k", b"before")
    proxy.stall()
    for _ in range(4):
        cache.get("missing")
    assert cache.stats()["breaker"]["state"] == "open"
    proxy.reset()  # drop the stalled sockets, as a real partition's timeouts would
    proxy.passthrough()
    healed = time.monotonic()
    wait_until(lambda: cache.health()["status"] == "healthy", timeout=3.0)
    print(f"\nrecovered {(time.monotonic() - healed) * 1000:.0f} ms after the partition healed")
    cache.set("k", b"after")
    assert cache.get("k") == b"after"


@pytest.mark.parametrize("mode", ["pubsub", "tracking"])
def test_listener_that_stops_answering_ping_flushes_l1(
        through: Callable[..., TieredCache], proxy: FaultProxy,
        cache_factory: CacheFactory, mode: str) -> None:
    """Pub/sub: the listener's connection; tracking: the idle pooled connection that
    tracks the key (the poller PINGs it)."""
    cache = through(invalidation=mode)
    direct = cache_factory(invalidation=mode)  # the writer does not go through the partition
    direct.set("k", b"old")
    assert cache.get("k") == b"old"
    assert cache.stats()["coherence"]["state"] == "subscribed"
    proxy.stall()  # a silent partition: no FIN, no RST, just nothing
    stalled = time.monotonic()
    direct.set("k", b"new")  # its invalidation never reaches the partitioned listener
    wait_until(lambda: cache.stats()["coherence"]["flushes"] >= 1,
               timeout=PING_INTERVAL + PONG_TIMEOUT + 1.0)
    detected = time.monotonic() - stalled
    print(f"\nsilent partition detected and L1 flushed after {detected:.2f} s")
    assert detected <= PING_INTERVAL + PONG_TIMEOUT + 0.5
    if mode == "pubsub":  # tracking: the next call connects, tracked, at once
        assert cache.stats()["coherence"]["state"] == "down"
    assert cache._tiers.l1.get("k") is None  # nothing stale left to serve
    proxy.reset()
    proxy.passthrough()
    wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed", timeout=5.0)
    wait_until(lambda: cache.get("k") == b"new", timeout=3.0)


def test_pool_exhausted_by_slow_calls_is_a_bounded_wait(
        through: Callable[..., TieredCache], proxy: FaultProxy) -> None:
    cache = through(pool_size=2, pool_timeout=0.05, socket_timeout=2.0, invalidation=False)
    cache.set("k", b"v")
    proxy.latency(0.15)  # every round trip now takes ~0.3 s, well inside socket_timeout
    durations: list[float] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        if n % 2:
            value, seconds = timed(lambda: cache.get("k"))
            outcome = "hit" if value == b"v" else "miss"
        else:
            error, seconds = timed(lambda: cache.set(f"w{n}", b"x"))
            outcome = "error" if isinstance(error, CacheUnavailableError) else "stored"
        with lock:
            durations.append(seconds)
            outcomes.append(outcome)

    cache._tiers.l1.clear()
    run_threads(12, call)
    proxy.latency(0)
    print(f"\npool of 2, 12 callers, 0.3 s round trips: {sorted(outcomes)}, "
          f"longest call {max(durations):.2f} s")
    # Two callers got connections; the rest waited at most pool_timeout and gave up.
    assert outcomes.count("hit") + outcomes.count("stored") >= 2
    assert outcomes.count("miss") + outcomes.count("error") >= 6
    assert max(durations) < 0.3 * 2 + 0.5  # nobody piles up behind the slow calls
    assert cache.stats()["breaker"]["state"] == "closed"  # a busy pool is not an outage


def test_server_killed_mid_load(through: Callable[..., TieredCache], redis_server: Any
                                ) -> None:
    cache = through(breaker_cooldown=0.2, breaker_max_cooldown=0.5)
    unexpected: list[BaseException] = []
    write_failures = [0]
    stop = threading.Event()
    lock = threading.Lock()
    longest = [0.0]

    def load(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            key = f"k{n}:{i % 50}"
            started = time.monotonic()
            try:
                if i % 3 == 0:
                    cache.set(key, b"v")
                else:
                    cache.get(key)
                    cache.get_or_load(key + ":l", lambda: b"loaded")
            except CacheUnavailableError:
                with lock:
                    write_failures[0] += 1
            except BaseException as exc:  # everything else is a bug
                unexpected.append(exc)
            with lock:
                longest[0] = max(longest[0], time.monotonic() - started)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # let the load run before the fault, which is what is under test
    redis_server.kill()
    time.sleep(0.5)
    redis_server.restart()
    wait_until(lambda: cache.health()["status"] == "healthy", timeout=3.0)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert unexpected == []
    assert write_failures[0] > 0
    # a get_or_load may pay one bound for its read and one for its store
    assert longest[0] < 2 * worst_case(cache)


def test_wrong_password_opens_the_breaker_and_fails_fast(cache_factory: CacheFactory,
                                                         auth_redis_server: Any) -> None:
    cache = cache_factory(auth_redis_server, password="not-the-password", subscribed=False,
                          breaker_threshold=3, breaker_cooldown=30)
    for _ in range(3):
        assert cache.get("k") is None
    assert cache.stats()["breaker"]["state"] == "open"
    _, seconds = timed(lambda: cache.get("k"))
    assert seconds < 0.002
    report = cache.health()
    assert report["status"] == "unhealthy"
    assert "not-the-password" not in repr(report)
