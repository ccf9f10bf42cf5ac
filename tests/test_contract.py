"""The public contract, run unchanged on every backend.

The contract is what README (its API table and "When things break") and docs/concepts.md
promise: values round-trip through L2 and reach other caches; TTLs hold in L2 and bound
L1; ``invalidate`` clears matches in both tiers; a write reaches other caches' L1 (held
here to 100 ms); concurrent misses share one load and a loader's error is never cached;
bad input changes nothing; losing the server of a key turns reads into misses and makes
writes raise; the loading features (batch loads, negative caching, the fleet lock,
memoize, serve stale on error) work.

Each test runs three times: on a standalone redis-server, on one reached over TLS only, and
on a 3-primary Redis Cluster given as its seed addresses (see ``tests/helpers/backends.py``).
Topology-specific behaviour is tested in test_tiered.py, test_tls.py and test_cluster.py.
"""

from __future__ import annotations

import contextlib
import math
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
    """``make(key_prefix="app:", l1_ttl=300.0, l2_ttl=3600.0, invalidation="auto",
    **dragonfly)``: a cache on the backend, its coherence ready. Closed at teardown."""
    caches: list[TieredCache] = []

    def factory(key_prefix: str = "app:", l1_ttl: float = 300.0, l2_ttl: float = 3600.0,
                invalidation: str = "auto", **dragonfly: Any) -> TieredCache:
        config = CacheConfig(dragonfly=DragonflyConfig(**{**backend.options(), **dragonfly}),
                             l1=L1Config(ttl=l1_ttl, invalidation=invalidation),
                             l2=L2Config(ttl=l2_ttl), key_prefix=key_prefix)
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
                 lambda: cache.set_many({"a": b"1", "": b"2"}), lambda: cache.invalidate(""),
                 lambda: cache.add("", b"v"), lambda: cache.add("a", "text"),  # type: ignore[arg-type]
                 lambda: cache.incr("a", "1"), lambda: cache.incr("a", True),  # type: ignore[arg-type]
                 lambda: cache.incr("a", 1.5), lambda: cache.decr("a", 2**63 + 1),  # type: ignore[arg-type]
                 lambda: cache.incr("a", ttl=-1), lambda: cache.touch("keep", ttl=0),
                 lambda: cache.touch(""), lambda: cache.ttl(""),
                 lambda: cache.delete_many("keep"), lambda: cache.delete_many(["keep", ""])):
        with pytest.raises((TypeError, ValueError)):
            call()
    assert backend.dbsize() == 1 and cache.get("a") is None
    assert cache.get("keep") == b"v" and backend.raw().pttl("app:keep") > 3_000_000


def test_add_stores_only_an_absent_key(make: Make, backend: Backend) -> None:
    cache, other = make(), make()
    assert cache.add("k", b"first", ttl=60) is True
    assert cache.add("k", b"second") is False
    assert other.add("k", b"third") is False
    assert backend.raw().get("app:k") == b"first"
    assert 59_000 < backend.raw().pttl("app:k") <= 60_000
    assert cache.get("k") == b"first" and other.get("k") == b"first"
    cache.delete("k")
    assert other.add("k", b"again") is True
    wait_until(lambda: cache.get("k") == b"again", timeout=0.1)


def test_incr_and_decr_count_atomically_in_l2(make: Make, backend: Backend) -> None:
    cache, other = make(), make()
    assert cache.incr("hits", ttl=60) == 1  # a missing key starts from 0 and gets the ttl
    assert 59_000 < backend.raw().pttl("app:hits") <= 60_000
    assert other.get("hits") == b"1"  # stored as the ASCII integer
    assert other.incr("hits", 10, ttl=3600) == 11
    assert backend.raw().pttl("app:hits") <= 60_000  # an existing key keeps its ttl
    wait_until(lambda: cache.get("hits") == b"11", timeout=0.1)  # the others drop it from L1
    assert cache.decr("hits", 5) == 6 and cache.decr("hits") == 5
    assert cache.get("hits") == b"5" and other.decr("fresh", 3) == -3

    def count(worker: int) -> None:
        for n in range(50):
            (cache if (worker + n) % 2 else other).incr("together")

    run_threads(8, count)
    assert backend.raw().get("app:together") == b"400"
    wait_until(lambda: cache.get("together") == b"400" and other.get("together") == b"400",
               timeout=0.1)


def test_incr_of_a_value_that_is_not_an_integer_changes_nothing(make: Make,
                                                                 backend: Backend) -> None:
    cache = make()
    cache.set("name", b"ada", ttl=60)
    with pytest.raises(ValueError, match="'name'"):
        cache.incr("name")
    with pytest.raises(ValueError, match="'name'"):
        cache.decr("name")
    assert backend.raw().get("app:name") == b"ada" and cache.get("name") == b"ada"
    assert 59_000 < backend.raw().pttl("app:name") <= 60_000
    backend.raw().set("app:big", str(2**63 - 1))
    with pytest.raises(ValueError, match="'big'"):
        cache.incr("big")  # would overflow 64 bits
    assert backend.raw().get("app:big") == str(2**63 - 1).encode()
    assert backend.raw().pttl("app:big") == -1


def test_touch_and_ttl(make: Make, backend: Backend) -> None:
    cache, other = make(), make()
    assert cache.ttl("k") is None
    assert cache.touch("k", ttl=10) is False and backend.dbsize() == 0
    cache.set("k", b"v", ttl=60)
    remaining = cache.ttl("k")
    assert remaining is not None and 59 < remaining <= 60
    assert other.get("k") == b"v"  # in other's L1, for up to 60 s
    assert cache.touch("k", ttl=0.3) is True
    assert 0 < backend.raw().pttl("app:k") <= 300
    remaining = cache.ttl("k")
    assert remaining is not None and 0 < remaining <= 0.3
    time.sleep(0.4)
    assert cache.get("k") is None and other.get("k") is None  # no L1 outlives the new ttl
    assert cache.touch("gone") is False
    backend.raw().set("app:forever", b"1")
    assert cache.ttl("forever") == math.inf
    assert cache.touch("forever") is True  # default: l2.ttl
    assert 3_590_000 < backend.raw().pttl("app:forever") <= 3_600_000


def test_delete_many_and_clear(make: Make, backend: Backend) -> None:
    cache, other = make(), make()
    foreign = make(key_prefix="other:")
    values = {f"k{n}": b"v" for n in range(100)}
    cache.set_many(values)
    foreign.set("x", b"1")
    assert other.get("k1") == b"v" and other.get("k70") == b"v"
    assert cache.delete_many([*list(values)[:60], "missing", "k1"]) == 60
    assert backend.dbsize() == 41
    assert cache.get("k1") is None
    wait_until(lambda: other.get("k1") is None, timeout=0.1)
    assert cache.delete_many([]) == 0
    assert cache.clear() == 40  # only this prefix's keys
    assert backend.dbsize() == 1 and backend.raw().get("other:x") == b"1"
    assert cache.get("k70") is None
    wait_until(lambda: other.get("k70") is None, timeout=0.1)
    assert foreign.get("x") == b"1"
    assert cache.clear() == 0


def test_stats_and_health_shapes(make: Make, backend: Backend) -> None:
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
    assert health["dragonfly"]["server"] == backend.kind
    assert health["dragonfly"]["version"] == backend.version
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
    # The failed writes were journaled, and their replay (a delete) may land after the set
    # above: once the journal is idle, write again, and every process reads it.
    wait_until(lambda: cache._tiers.journal.idle, timeout=5.0)
    cache.set("held", b"back")
    wait_until(lambda: fresh.get("held") == b"back", timeout=5.0)


def test_the_other_operations_when_the_server_of_a_key_is_lost(make: Make,
                                                               backend: Backend) -> None:
    cache = make()
    cache.set_many({"{g}n": b"5", "{g}t": b"v"})  # one hash tag: one cluster node
    assert cache.ttl("{g}t") is not None
    flushes = cache.stats()["coherence"]["flushes"]
    backend.kill_holder("app:{g}n")
    assert cache.ttl("{g}t") is None  # a read: never an error
    # The listener flushes L1 when it notices the loss: let it, so that the flush cannot
    # land between a write applied locally below and the read that checks it.
    wait_until(lambda: cache.stats()["coherence"]["flushes"] > flushes, timeout=5.0)
    with pytest.raises(CacheUnavailableError):
        cache.add("{g}a", b"1")
    assert cache.get("{g}a") == b"1"  # applied locally, briefly
    with pytest.raises(CacheUnavailableError):
        cache.set("{g}n", b"5")  # L1 holds it (for l1.degraded_ttl)
    with pytest.raises(CacheUnavailableError):
        cache.incr("{g}n", 2)
    assert cache.get("{g}n") == b"7"  # applied to the integer L1 holds
    with pytest.raises(CacheUnavailableError):
        cache.touch("{g}n")
    with pytest.raises(CacheUnavailableError):
        cache.delete_many(["{g}n", "{g}a"])
    assert cache.get("{g}n") is None and cache.get("{g}a") is None  # never undone locally
    with pytest.raises(CacheUnavailableError):
        cache.clear()
    assert cache.stats()["l1_stats"]["size"] == 0
    backend.restore()


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


def test_stale_if_error_serves_the_last_value_until_a_delete(make: Make, backend: Backend
                                                             ) -> None:
    """In pub/sub mode, where an expiry announces nothing (in tracking mode the server's
    expiry push ends the kept value: tests/test_tracking.py)."""
    cache, other = make(invalidation="pubsub"), make(invalidation="pubsub")
    failing = [False]

    def loader() -> bytes:
        if failing[0]:
            raise RuntimeError("database down")
        return b"v1"

    assert cache.get_or_load("k", loader, ttl=0.3, stale_if_error=60) == b"v1"
    failing[0] = True
    time.sleep(0.5)  # the key expired in both tiers
    assert backend.raw().get("app:k") is None
    assert cache.get_or_load("k", loader, ttl=0.3, stale_if_error=60) == b"v1"
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_load("k", loader, ttl=0.3)  # off by default
    applied = cache.stats()["coherence"]["applied"]
    other.delete("k")  # a delete anywhere ends it
    wait_until(lambda: cache.stats()["coherence"]["applied"] > applied)
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_load("k", loader, ttl=0.3, stale_if_error=60)
    assert cache.stats()["loading"]["stale_served"] == 1
