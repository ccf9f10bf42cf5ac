"""The public contract, run unchanged on every backend.

The contract is what README (its API table and "When things break") and docs/concepts.md
promise: values round-trip through L2 and reach other caches; TTLs hold in L2 and bound
L1; ``invalidate`` clears matches in both tiers; a write reaches other caches' L1 (held
here to 100 ms); concurrent misses share one load and a loader's error is never cached;
bad input changes nothing; losing the server of a key turns reads into misses and makes
writes raise; the loading features (batch loads, negative caching, the fleet lock,
memoize) work.

Each test runs three times: on a standalone redis-server, on one reached over TLS only, and
on a 3-primary Redis Cluster given as its seed addresses (see ``tests/helpers/backends.py``).
Topology-specific behaviour is tested in test_tiered.py, test_tls.py and test_cluster.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dragonfly_cache import (
    CacheConfig,
    CacheUnavailableError,
    DragonflyConfig,
    L1Config,
    L2Config,
    TieredCache,
)
from tests.helpers import run_threads, wait_subscribed, wait_until
from tests.helpers.backends import Backend

Make = Callable[..., TieredCache]


@pytest.fixture
def make(backend: Backend) -> Iterator[Make]:
    """``make(key_prefix="app:", l1_ttl=300.0, l2_ttl=3600.0, **dragonfly)``: a cache on the
    backend, its invalidation listener subscribed. Closed at teardown."""
    caches: list[TieredCache] = []

    def factory(key_prefix: str = "app:", l1_ttl: float = 300.0, l2_ttl: float = 3600.0,
                **dragonfly: Any) -> TieredCache:
        config = CacheConfig(dragonfly=DragonflyConfig(**{**backend.options(), **dragonfly}),
                             l1=L1Config(ttl=l1_ttl), l2=L2Config(ttl=l2_ttl),
                             key_prefix=key_prefix)
        cache = TieredCache(config)
        caches.append(cache)
        cache.exists("warm-up")  # starts the listener (and a connection) as a real call would
        wait_subscribed(cache, timeout=5.0)
        return cache

    yield factory
    for cache in caches:
        with contextlib.suppress(Exception):
            cache.close()


def test_set_get_exists_delete(make: Make, backend: Backend) -> None:
    cache = make()
    assert cache.get("k") is None and not cache.exists("k")
    cache.set("k", b"v")
    assert cache.get("k") == b"v" and cache.exists("k")
    assert backend.raw().get("app:k") == b"v"
    cache.delete("k")
    assert cache.get("k") is None and not cache.exists("k")
    assert backend.raw().get("app:k") is None


def test_a_value_written_by_one_cache_is_read_by_another(make: Make) -> None:
    writer, reader = make(), make()
    writer.set("shared", b"1")
    assert reader.get("shared") == b"1"


def test_get_many_and_set_many_omit_misses(make: Make, backend: Backend) -> None:
    writer, reader = make(), make()
    values = {f"k{n}": b"v%d" % n for n in range(200)}
    writer.set_many(values, ttl=60)
    keys = [*values, "missing-1", "missing-2"]
    assert reader.get_many(keys) == values  # from L2: reader's L1 is empty
    assert reader.get_many(keys) == values  # from L1
    assert backend.dbsize() == 200
    assert 59_000 < backend.raw().pttl("app:k7") <= 60_000


def test_ttl_reaches_l2_and_bounds_l1(make: Make, backend: Backend) -> None:
    cache = make()
    cache.set("short", b"v", ttl=0.3)
    assert 0 < backend.raw().pttl("app:short") <= 300
    assert cache.get("short") == b"v"
    time.sleep(0.4)
    assert cache.get("short") is None  # L1 expired with the L2 key


def test_invalidate_removes_matches_from_l1_and_l2(make: Make, backend: Backend) -> None:
    cache, other = make(), make()
    cache.set_many({**{f"user:{n}": b"u" for n in range(50)}, "order:1": b"o"})
    assert other.get("user:3") == b"u"  # in other's L1 now
    assert cache.invalidate("user:*") == 50
    assert backend.dbsize() == 1
    assert cache.get("user:3") is None and cache.get("order:1") == b"o"
    wait_until(lambda: other.get("user:3") is None, timeout=1.0)


def test_a_write_reaches_the_other_caches_l1_within_100ms(make: Make) -> None:
    a, b = make(), make()
    a.set("k", b"old")
    assert b.get("k") == b"old"
    started = time.monotonic()
    a.set("k", b"new")
    wait_until(lambda: b.get("k") == b"new", timeout=0.1)
    assert time.monotonic() - started < 0.1
    a.delete("k")
    wait_until(lambda: b.get("k") is None, timeout=0.1)


def test_get_or_load_coalesces_concurrent_misses(make: Make, backend: Backend) -> None:
    cache = make()
    calls = 0

    def loader() -> bytes:
        nonlocal calls
        calls += 1
        time.sleep(0.05)
        return b"loaded"

    results: list[bytes] = []

    def worker(_: int) -> None:
        results.append(cache.get_or_load("slow", loader))

    run_threads(16, worker, timeout=5.0)
    assert results == [b"loaded"] * 16 and calls == 1
    assert backend.raw().get("app:slow") == b"loaded"


def test_a_loader_error_reaches_every_waiter_and_nothing_is_cached(make: Make,
                                                                     backend: Backend) -> None:
    cache = make()

    def loader() -> bytes:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_load("k", loader)
    assert cache.get_or_load("k", lambda: b"second") == b"second"  # the next call retries
    assert backend.raw().get("app:k") == b"second"


def test_bad_input_is_rejected_and_changes_nothing(make: Make, backend: Backend) -> None:
    cache = make()
    cache.set("keep", b"v")
    for call in (lambda: cache.set("", b"v"), lambda: cache.set("k", "text"),  # type: ignore[arg-type]
                 lambda: cache.set("k", b"v", ttl=0), lambda: cache.get(1),  # type: ignore[arg-type]
                 lambda: cache.set_many({"a": b"1", "": b"2"}), lambda: cache.invalidate("")):
        with pytest.raises((TypeError, ValueError)):
            call()
    assert backend.dbsize() == 1 and cache.get("a") is None


def test_stats_and_health_shapes(make: Make) -> None:
    cache = make()
    cache.set("k", b"v")
    assert cache.get("k") == b"v"
    stats = cache.stats()
    assert {"size", "max_size", "hits", "misses", "hit_rate", "evictions"} <= set(
        stats["l1_stats"])
    assert {"hits", "misses", "hit_rate", "errors"} <= set(stats["l2_stats"])
    assert {"loads", "coalesced"} <= set(stats["singleflight"])
    health = cache.health()
    assert health["status"] == "healthy", health
    assert health["dragonfly"]["connected"] is True
    assert health["dragonfly"]["server"] == "redis" and health["dragonfly"]["version"]
    assert {"l1_stats", "l2_stats"} <= set(health)


def test_losing_the_server_of_a_key_degrades_reads_and_reports_writes(
        make: Make, backend: Backend) -> None:
    cache, fresh = make(), make()
    cache.set("held", b"v")
    assert cache.get("held") == b"v"
    backend.kill_holder("app:held")
    # L1 answers until the listener notices the loss and flushes it (if the channel was
    # on that server); an empty L1 reads a miss. Never an error.
    assert cache.get("held") in (b"v", None)
    assert fresh.get("held") is None
    assert fresh.get_many(["held"]) == {}
    assert fresh.exists("held") is False
    assert fresh.get_or_load("held", lambda: b"from the loader") == b"from the loader"
    with pytest.raises(CacheUnavailableError):
        cache.set("held", b"new")
    assert cache.get("held") == b"new"  # applied locally, briefly
    with pytest.raises(CacheUnavailableError):
        cache.delete("held")
    assert cache.get("held") is None  # a delete is never undone locally
    backend.restore()

    def recovered() -> bool:
        try:
            cache.set("held", b"back")
        except CacheUnavailableError:
            return False
        return True

    wait_until(recovered, timeout=10.0)
    wait_until(lambda: fresh.get("held") == b"back", timeout=5.0)


def test_loading_batch_loads_negative_caching_fleet_lock_and_memoize(
        make: Make, backend: Backend) -> None:
    from dragonfly_cache import NotFound

    cache, other = make(), make()
    loaded: list[list[str]] = []

    def load_many(keys: list[str]) -> dict[str, bytes]:
        loaded.append(sorted(keys))
        return {key: key.encode() for key in keys if key != "absent"}

    keys = [f"batch:{n}" for n in range(30)]
    assert other.get_or_load_many([*keys, "absent"], load_many) == {k: k.encode() for k in keys}
    assert cache.get_or_load_many(keys, load_many) == {k: k.encode() for k in keys}
    assert loaded == [sorted([*keys, "absent"])]  # the second caller read them all from L2

    def missing() -> bytes:
        raise NotFound("no such user")

    with pytest.raises(NotFound):
        cache.get_or_load("user:404", missing)
    with pytest.raises(NotFound):  # remembered in L2: the other cache does not load
        other.get_or_load("user:404", lambda: b"never called")

    assert cache.get_or_load("locked", lambda: b"once", lock=True) == b"once"
    assert backend.raw().get("app:locked") == b"once"

    calls = 0

    @cache.memoize(ttl=60)
    def square(n: int) -> int:
        nonlocal calls
        calls += 1
        return n * n

    assert [square(3), square(3), square(4)] == [9, 9, 16] and calls == 2
    square.invalidate(3)
    assert square(3) == 9 and calls == 3
