"""Races and edge cases found in review, each pinned by a test."""

from __future__ import annotations

import threading
import time
from typing import Any

from dragonfly_cache import CacheUnavailableError
from tests.helpers import CacheFactory, FakeClock, fork, wait_until


def test_a_load_that_raced_another_process_write_does_not_overwrite_it(
        cache_factory: CacheFactory, redis_server: Any) -> None:
    loader_cache, writer = cache_factory(), cache_factory()

    def slow_loader() -> bytes:
        writer.set("k", b"new")  # another process writes while the database read runs
        return b"old"  # what the database said before that write

    assert loader_cache.get_or_load("k", slow_loader) == b"old"  # the caller gets its read
    assert redis_server.client().get("k") == b"new"  # but L2 keeps the newer write
    wait_until(lambda: loader_cache.stats()["coherence"]["received"] >= 1)
    assert loader_cache.get("k") == b"new"
    assert writer.get("k") == b"new"


def test_a_load_invalidated_while_loading_is_stored_nowhere(cache_factory: CacheFactory,
                                                            redis_server: Any) -> None:
    cache = cache_factory()

    def loader() -> bytes:
        cache.delete("k")  # e.g. the row was deleted and the cache told, mid-load
        return b"maybe-stale"

    assert cache.get_or_load("k", loader) == b"maybe-stale"
    assert redis_server.client().exists("k") == 0
    assert cache._l1.get("k") is None
    assert cache.get_or_load("k", lambda: b"fresh") == b"fresh"  # the next call loads again


def test_close_flushes_l1_so_nothing_stale_outlives_coherence(cache_factory: CacheFactory
                                                              ) -> None:
    cache, writer = cache_factory(), cache_factory()
    cache.set("k", b"v1")
    assert cache.get("k") == b"v1"
    cache.close()
    writer.set("k", b"v2")  # cache can no longer hear about this
    assert cache.get("k") == b"v2"
    assert cache.stats()["coherence"]["state"] == "stopped"


def test_reads_never_raise_while_another_thread_closes_the_cache(cache_factory: CacheFactory
                                                                ) -> None:
    cache = cache_factory(invalidation=False)
    cache.set_many({f"k{n}": b"v" for n in range(20)})
    stop = threading.Event()
    escaped: list[BaseException] = []

    def reader() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                cache._l1.clear()
                cache.get(f"k{n % 20}")
                cache.get_many([f"k{n % 20}", f"k{(n + 1) % 20}"])
                cache.exists("k0")
            except BaseException as exc:
                escaped.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        cache.close()
    stop.set()
    for thread in threads:
        thread.join(5)
    assert escaped == []


def test_a_write_l2_refused_lives_in_l1_only_briefly(cache_factory: CacheFactory,
                                                     redis_server_factory: Any,
                                                     fake_clock: FakeClock) -> None:
    server = redis_server_factory(extra_args=["--maxmemory", "2mb",
                                              "--maxmemory-policy", "noeviction"])
    cache = cache_factory(server, timer=fake_clock)
    big = b"x" * 10_000
    refused = None
    for n in range(2_000):
        try:
            cache.set(f"k{n}", big)
        except CacheUnavailableError:
            refused = f"k{n}"
            break
    assert refused is not None
    assert cache._l1.get(refused) == big  # applied locally, as the contract says ...
    fake_clock.advance(cache.config.l1.degraded_ttl + 0.01)
    assert cache._l1.get(refused) is None  # ... but not for longer than degraded_ttl
    assert cache._l1.get("k0") == big  # a write L2 took keeps its full life


def test_a_malformed_invalidation_flushes_l1(cache_factory: CacheFactory,
                                             redis_server: Any) -> None:
    cache = cache_factory()
    cache.set("k", b"v")
    redis_server.client().publish(cache._l2.channel, b"\xff not json")
    wait_until(lambda: cache.stats()["coherence"]["flushes"] == 1)
    assert cache._l1.get("k") is None
    assert cache.stats()["coherence"]["state"] == "subscribed"


def test_a_cache_closed_before_fork_stays_closed_in_the_child(cache_factory: CacheFactory
                                                              ) -> None:
    import os

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
