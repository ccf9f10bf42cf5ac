"""Failure behaviour against real servers: the breaker, recovery, OOM and fork safety."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from typing import Any

import pytest

from dragonfly_cache import CacheConfig, CacheUnavailableError, DragonflyConfig, TieredCache
from tests.helpers import CacheFactory, FakeClock, fork, percentile, wait_until
from tests.helpers.servers import free_port


def test_an_open_breaker_fails_fast_without_touching_the_network(
        cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory(breaker_threshold=3, breaker_cooldown=60, invalidation=False)
    cache.set("cached", b"in-l1")
    redis_server.kill()
    for _ in range(3):
        assert cache.get("miss") is None
    stats = cache.stats()
    assert stats["breaker"]["state"] == "open"
    errors = stats["l2_stats"]["errors"]

    timings = []
    for i in range(2000):
        started = time.perf_counter()
        assert cache.get(f"m{i % 50}") is None
        timings.append(time.perf_counter() - started)
    p50, p99 = percentile(timings, 0.5), percentile(timings, 0.99)
    print(f"\nget with the breaker open: p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us")
    assert p99 < 0.002  # no socket attempt; a connect+timeout would be >= 250 ms

    assert cache.get("cached") == b"in-l1"  # L1 still serves
    with pytest.raises(CacheUnavailableError, match="circuit breaker open"):
        cache.set("k", b"v")
    assert cache.get("k") == b"v"  # applied locally, as for any failed write
    stats = cache.stats()
    assert stats["l2_stats"]["errors"] == errors  # no new attempts ...
    assert stats["l2_stats"]["rejected"] >= 2001  # ... only refusals
    report = cache.health()
    assert report["status"] == "unhealthy"
    assert report["breaker"] == "open"
    assert "circuit breaker open" in report["dragonfly"]["error"]


def test_recovery_after_the_server_returns(cache_factory: CacheFactory, redis_server: Any
                                           ) -> None:
    cache = cache_factory(breaker_threshold=2, breaker_cooldown=0.2, breaker_max_cooldown=0.8)
    redis_server.kill()
    for _ in range(4):
        cache.get("k")
    assert cache.stats()["breaker"]["state"] == "open"
    redis_server.restart()
    redis_server.client().set("k", b"back")
    started = time.monotonic()
    wait_until(lambda: cache.get("k") == b"back", timeout=5.0)
    recovery = time.monotonic() - started
    print(f"\nrecovered {recovery * 1000:.0f} ms after the server returned")
    assert recovery <= 0.8 + 0.5  # at most one (capped) cooldown, plus slack for a busy box
    assert cache.stats()["breaker"]["state"] == "closed"
    assert cache.stats()["breaker"]["closed"] >= 1
    cache.set("after", b"ok")


def test_out_of_memory_fails_writes_but_not_reads(cache_factory: CacheFactory,
                                                  redis_server_factory: Any) -> None:
    server = redis_server_factory(extra_args=["--maxmemory", "2mb",
                                              "--maxmemory-policy", "noeviction"])
    writer, reader = cache_factory(server), cache_factory(server)
    big = b"x" * 10_000
    writer.set("first", big)
    with pytest.raises(CacheUnavailableError, match=r"OutOfMemory|maxmemory"):
        for i in range(2_000):
            writer.set(f"k{i}", big)
    assert writer.stats()["breaker"]["state"] == "closed"
    for _ in range(10):  # repeated OOM errors never open the breaker for reads
        with pytest.raises(CacheUnavailableError, match=r"OutOfMemory|maxmemory"):
            writer.set("more", big)
    assert writer.stats()["breaker"] == writer.stats()["breaker"] | {"state": "closed"}
    assert reader.get("first") == big
    assert writer.health()["status"] == "healthy"


def test_a_write_l2_refused_lives_in_l1_only_briefly(cache_factory: CacheFactory,
                                                     redis_server_factory: Any,
                                                     fake_clock: FakeClock) -> None:
    server = redis_server_factory(extra_args=["--maxmemory", "2mb",
                                              "--maxmemory-policy", "noeviction"])
    cache = cache_factory(server, timer=fake_clock)
    # The journal would delete the refused key at once (UNLINK works on a full server);
    # this test is about how long L1 keeps the local value.
    cache._tiers.journal.stop()
    big = b"x" * 10_000
    refused = None
    for n in range(2_000):
        try:
            cache.set(f"k{n}", big)
        except CacheUnavailableError:
            refused = f"k{n}"
            break
    assert refused is not None
    assert cache._tiers.l1.get(refused) == big  # applied locally, as the contract says ...
    fake_clock.advance(cache.config.l1.degraded_ttl + 0.01)
    assert cache._tiers.l1.get(refused) is None  # ... but not for longer than degraded_ttl
    assert cache._tiers.l1.get("k0") == big  # a write L2 took keeps its full life


def test_fork_child_works_even_with_locks_held_and_loads_in_flight(
        cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    cache.set("k", b"parent")
    lock_held, release = threading.Event(), threading.Event()
    loading = threading.Event()

    def hold_the_l1_lock() -> None:
        with cache._tiers.l1._lock:
            lock_held.set()
            release.wait(10)

    def slow_loader() -> bytes:
        loading.set()
        release.wait(10)
        return b"parent-load"

    loader_thread = threading.Thread(target=lambda: cache.get_or_load("loading", slow_loader))
    loader_thread.start()
    loading.wait(5)
    holder = threading.Thread(target=hold_the_l1_lock)
    holder.start()
    lock_held.wait(5)

    pid = fork()
    if pid == 0:  # the child: only this thread exists; the parent's lock holder does not
        code = 1
        try:
            signal.alarm(10)  # a deadlock ends the child instead of the test run
            ok = (cache.stats()["l1_stats"]["size"] == 0  # starts empty, counters at zero
                  and cache.get("k") == b"parent"  # from L2, over the child's own pool
                  and cache.get_or_load("loading", lambda: b"child-load") == b"child-load")
            cache.set("from-child", b"c")
            code = 0 if ok else 2
        finally:
            os._exit(code)
    # The child must finish while the parent's threads still hold the lock and the flight.
    _, status = os.waitpid(pid, 0)
    release.set()
    holder.join(5)
    loader_thread.join(5)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent keeps working, its state intact.
    assert cache.get("from-child") == b"c"
    cache.set("parent-after", b"p")
    assert cache.get("parent-after") == b"p"


def test_a_cache_closed_before_fork_stays_closed_in_the_child(cache_factory: CacheFactory
                                                              ) -> None:
    cache = cache_factory()
    cache.close()
    pid = fork()
    if pid == 0:
        code = 1
        try:
            cache.set("k", b"v")
            code = 0 if cache.stats()["coherence"]["state"] == "stopped" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_write_with_the_server_down_shows_only_the_callers_frames() -> None:
    """The listener (started with the cache) usually asks the server's mode first; a write
    waiting for that answer raises an error of its own, not the listener's with its frames."""
    for _ in range(5):
        address = f"127.0.0.1:{free_port()}"  # nothing listens there
        with TieredCache(CacheConfig(dragonfly=DragonflyConfig(addresses=[address]))) as cache:
            with pytest.raises(CacheUnavailableError, match=r"on 127\.0\.0\.1:\d+ failed") as exc:
                cache.set("k", b"v")
            text = "".join(traceback.format_exception(exc.value))
            assert "_listener.py" not in text and "_coherence.py" not in text, text
