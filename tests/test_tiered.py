"""The contract of TieredCache, against a real redis-server."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from dragonfly_cache import CacheError, CacheUnavailableError, TieredCache, _invalidation
from tests.helpers import CacheFactory, FakeClock, command_calls, run_threads, wait_until


def received(cache: TieredCache, count: int, *, read_before: bool = False) -> None:
    """Wait until ``cache`` has applied ``count`` invalidations from others.

    A write's invalidation may reach another cache after that cache already read the new
    value; tests that count L1 hits wait for it so the late message can't land mid-test.
    In tracking mode the server tells a cache only of keys it read: unless it read them
    ``read_before`` the write, nothing comes, and there is nothing to wait for.
    """
    if read_before or cache.stats()["coherence"].get("mode") != "tracking":
        wait_until(lambda: cache.stats()["coherence"]["received"] >= count)


# -- round trips -----------------------------------------------------------------------


def test_set_get_exists_delete_round_trip(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    assert cache.get("k") is None
    assert cache.exists("k") is False
    cache.set("k", b"v")
    assert cache.get("k") == b"v"
    assert cache.exists("k") is True
    cache.delete("k")
    assert cache.get("k") is None
    assert cache.exists("k") is False
    cache.delete("k")  # deleting a missing key is fine


def test_values_are_shared_through_l2(cache_factory: CacheFactory) -> None:
    writer, reader = cache_factory(), cache_factory()
    writer.set("k", b"\x00binary\xff")
    received(reader, 1)
    assert reader.get("k") == b"\x00binary\xff"
    assert reader.exists("k")
    assert reader.stats()["l2_stats"]["hits"] == 1
    assert reader.get("k") == b"\x00binary\xff"
    assert reader.stats()["l1_stats"]["hits"] == 1  # the L2 read filled L1


def test_get_many_and_set_many(cache_factory: CacheFactory, redis_server: Any) -> None:
    writer, reader = cache_factory(), cache_factory()
    writer.set_many({"a": b"1", "b": b"2", "c": b"3"})
    received(reader, 1)
    assert reader.get("a") == b"1"  # now in reader's L1
    raw = redis_server.client()
    raw.config_resetstat()
    found = reader.get_many(["a", "b", "c", "missing", "b"])
    assert found == {"a": b"1", "b": b"2", "c": b"3"}
    # One round trip for the L1 misses only: one MGET, PTTLs pipelined, no single GETs.
    assert command_calls(raw, "mget") == 1
    assert command_calls(raw, "get") == 0
    assert command_calls(raw, "pttl") == 3
    assert reader.get_many([]) == {}
    assert reader.get_many(iter(["a"])) == {"a": b"1"}


def test_set_many_is_one_pipeline_with_ttls(cache_factory: CacheFactory, redis_server: Any
                                            ) -> None:
    cache = cache_factory()
    raw = redis_server.client()
    cache.set_many({f"k{i}": b"v" for i in range(50)}, ttl=30)
    ttls = [raw.pttl(f"k{i}") for i in range(50)]
    assert all(29_000 < ttl <= 30_000 for ttl in ttls)
    cache.set_many({})


def test_get_or_load_loads_once_then_serves_from_cache(cache_factory: CacheFactory) -> None:
    cache, other = cache_factory(), cache_factory()
    calls: list[str] = []

    def loader() -> bytes:
        calls.append("x")
        return b"loaded"

    assert cache.get_or_load("k", loader, ttl=60) == b"loaded"
    assert cache.get_or_load("k", loader) == b"loaded"
    assert other.get_or_load("k", loader) == b"loaded"  # from L2
    assert calls == ["x"]
    assert cache.stats()["singleflight"]["loads"] == 1


def test_context_manager_and_from_env(redis_server: Any) -> None:
    env = {"DRAGONFLY_ADDRESSES": redis_server.address, "CACHE_KEY_PREFIX": "env:"}
    with TieredCache.from_env(env) as cache:
        cache.set("k", b"v")
        assert cache.get("k") == b"v"
    assert redis_server.client().get("env:k") == b"v"


def test_close_releases_connections_and_the_cache_reconnects(cache_factory: CacheFactory
                                                             ) -> None:
    cache = cache_factory()
    cache.set("k", b"v")
    cache.close()
    cache.set("k2", b"v")
    assert cache.get("k2") == b"v"


# -- prefixes and invalidation ---------------------------------------------------------


def test_key_prefix_isolation(cache_factory: CacheFactory, redis_server: Any) -> None:
    first, second = cache_factory(key_prefix="a:"), cache_factory(key_prefix="b:")
    first.set("k", b"from-a")
    second.set("k", b"from-b")
    assert first.get("k") == b"from-a"
    assert second.get("k") == b"from-b"
    raw = redis_server.client()
    assert raw.get("a:k") == b"from-a"
    assert raw.get("b:k") == b"from-b"
    assert first.invalidate("*") == 1
    assert raw.get("b:k") == b"from-b"
    assert second.get("k") == b"from-b"


@pytest.mark.parametrize(
    ("pattern", "removed"),
    [
        ("user:*", {"user:1", "user:2", "user:10"}),
        ("user:?", {"user:1", "user:2"}),
        ("user:[12]", {"user:1", "user:2"}),
        ("user:[^1]", {"user:2"}),
        ("user:1*", {"user:1", "user:10"}),
        (r"odd\*key", {"odd*key"}),
        ("*", {"user:1", "user:2", "user:10", "post:1", "odd*key"}),
        ("nothing:*", set()),
    ],
)
def test_invalidate_patterns_in_l1_and_l2(cache_factory: CacheFactory, redis_server: Any,
                                          pattern: str, removed: set[str]) -> None:
    keys = ["user:1", "user:2", "user:10", "post:1", "odd*key"]
    cache, observer = cache_factory(key_prefix="app:"), cache_factory(key_prefix="app:")
    cache.set_many({key: key.encode() for key in keys})
    assert cache.get_many(keys) == {key: key.encode() for key in keys}  # all in L1
    assert cache.invalidate(pattern) == len(removed)
    survivors = {key: key.encode() for key in keys if key not in removed}
    assert cache.get_many(keys) == survivors  # L1 dropped the matches too
    assert observer.get_many(keys) == survivors  # and so did L2
    assert redis_server.client().dbsize() == len(survivors)


@pytest.mark.parametrize(("prefix", "neighbour"), [("t*:", "tx:"), ("t[ab]:", "ta:"),
                                                   ("t?:", "tz:"), ("t\\:", "t:")])
def test_glob_characters_in_the_prefix_are_literal(cache_factory: CacheFactory,
                                                   redis_server: Any, prefix: str,
                                                   neighbour: str) -> None:
    cache, other = cache_factory(key_prefix=prefix), cache_factory(key_prefix=neighbour)
    cache.set("k", b"mine")
    other.set("k", b"neighbour")
    assert cache.invalidate("*") == 1
    assert cache.invalidate("k") == 0
    assert redis_server.client().get(neighbour + "k") == b"neighbour"
    assert other.get("k") == b"neighbour"


def test_invalidate_many_keys_in_batches(cache_factory: CacheFactory, redis_server: Any
                                         ) -> None:
    cache = cache_factory(key_prefix="bulk:")
    cache.set_many({f"item:{i}": b"v" for i in range(2500)})
    cache.set("keep", b"v")
    assert cache.invalidate("item:*") == 2500
    assert redis_server.client().dbsize() == 1
    raw = redis_server.client()
    assert command_calls(raw, "keys") == 0


# -- TTLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ttl", "expected_ms"), [(None, 3_600_000), (30, 30_000),
                                                  (1.5, 1_500), (timedelta(minutes=2), 120_000)])
def test_l2_ttl(cache_factory: CacheFactory, redis_server: Any, ttl: Any, expected_ms: int
                ) -> None:
    cache = cache_factory()
    cache.set("k", b"v", ttl=ttl)
    assert expected_ms - 1000 < redis_server.client().pttl("k") <= expected_ms


def test_l1_entry_dies_at_the_key_ttl(cache_factory: CacheFactory, fake_clock: FakeClock
                                      ) -> None:
    cache = cache_factory(timer=fake_clock)
    cache.set("k", b"v", ttl=10)
    fake_clock.advance(9.9)
    assert cache.get("k") == b"v"
    assert cache.stats()["l1_stats"]["hits"] == 1
    fake_clock.advance(0.2)
    assert cache.get("k") == b"v"  # L1 expired; L2 (real time) still has it
    stats = cache.stats()
    assert stats["l1_stats"]["expirations"] == 1
    assert stats["l2_stats"]["hits"] == 1


def test_l1_entry_dies_at_the_l1_ttl(cache_factory: CacheFactory, fake_clock: FakeClock
                                     ) -> None:
    cache = cache_factory(timer=fake_clock, l1_ttl=5)
    cache.set("k", b"v", ttl=3600)
    fake_clock.advance(5.1)
    cache.get("k")
    assert cache.stats()["l1_stats"]["expirations"] == 1


def test_l1_fill_never_outlives_the_l2_key_fake_clock(cache_factory: CacheFactory,
                                                      redis_server: Any,
                                                      fake_clock: FakeClock) -> None:
    redis_server.client().set("k", b"v", px=30_000)
    cache = cache_factory(timer=fake_clock)
    assert cache.get("k") == b"v"  # filled from L2 with the key's remaining PTTL
    fake_clock.advance(29.0)
    assert cache.get("k") == b"v"
    assert cache.stats()["l1_stats"]["hits"] == 1
    fake_clock.advance(1.01)
    cache.get("k")
    assert cache.stats()["l1_stats"]["expirations"] == 1


def test_l1_fill_never_outlives_the_l2_key_real_time(cache_factory: CacheFactory,
                                                     redis_server: Any) -> None:
    redis_server.client().set("k", b"v", px=300)
    cache = cache_factory(l1_ttl=300)
    assert cache.get("k") == b"v"
    time.sleep(0.35)  # real expiry on the server is what is under test here
    assert cache.get("k") is None


def test_key_without_server_ttl_is_bounded_by_l1_ttl(cache_factory: CacheFactory,
                                                     redis_server: Any,
                                                     fake_clock: FakeClock) -> None:
    redis_server.client().set("k", b"v")  # written by someone else, no expiry
    cache = cache_factory(timer=fake_clock, l1_ttl=5)
    assert cache.get("k") == b"v"
    fake_clock.advance(5.1)
    cache.get("k")
    assert cache.stats()["l1_stats"]["expirations"] == 1


# -- concurrency -----------------------------------------------------------------------


def test_l1_bound_holds_under_churn_from_16_threads(cache_factory: CacheFactory) -> None:
    cache = cache_factory(l1_max_size=64)
    sizes: list[int] = []

    def churn(worker: int) -> None:
        for i in range(100):
            key = f"w{worker}:{i % 40}"
            if i % 3:
                cache.get(key)
            else:
                cache.set(key, b"x")
            sizes.append(cache.stats()["l1_stats"]["size"])

    run_threads(16, churn)
    assert max(sizes) <= 64
    assert cache.stats()["l1_stats"]["evictions"] > 0


def test_singleflight_64_threads_one_load(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    threads = 64
    calls: list[int] = []
    results: list[bytes] = []

    def loader() -> bytes:
        calls.append(1)
        # Hold the flight open until every other caller has joined it.
        wait_until(lambda: cache.stats()["singleflight"]["coalesced"] == threads - 1)
        return b"value"

    def worker(_: int) -> None:
        results.append(cache.get_or_load("hot", loader))

    run_threads(threads, worker)
    stats = cache.stats()
    assert len(calls) == 1
    assert results == [b"value"] * threads
    assert stats["singleflight"] == {"loads": 1, "coalesced": threads - 1}
    hits = (stats["l1_stats"]["hits"] + stats["l2_stats"]["hits"]
            + stats["singleflight"]["coalesced"])
    assert hits == threads - 1
    assert len(cache._loading.flights) == 0
    assert cache.get("hot") == b"value"


def test_singleflight_late_callers_hit_the_cache(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    calls: list[int] = []

    def loader() -> bytes:
        calls.append(1)
        return b"v"

    def worker(_: int) -> None:
        assert cache.get_or_load("k", loader) == b"v"

    run_threads(64, worker)
    stats = cache.stats()
    assert len(calls) == 1
    assert (stats["l1_stats"]["hits"] + stats["l2_stats"]["hits"]
            + stats["singleflight"]["coalesced"]) == 63


def test_loader_exception_reaches_every_waiter_and_nothing_is_cached(
        cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory()
    threads = 16
    errors: list[BaseException] = []

    def failing() -> bytes:
        wait_until(lambda: cache.stats()["singleflight"]["coalesced"] == threads - 1)
        raise LookupError("row missing")

    def worker(_: int) -> None:
        try:
            cache.get_or_load("k", failing)
        except LookupError as exc:
            errors.append(exc)

    run_threads(threads, worker)
    assert len(errors) == threads
    assert cache.get("k") is None
    assert redis_server.client().exists("k") == 0
    assert len(cache._loading.flights) == 0
    assert cache.get_or_load("k", lambda: b"second try") == b"second try"


def test_singleflight_many_keys_at_once(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    keys = [f"k{i}" for i in range(8)]
    calls: dict[str, int] = dict.fromkeys(keys, 0)
    lock = threading.Lock()

    def make_loader(key: str) -> Any:
        def loader() -> bytes:
            with lock:
                calls[key] += 1
            return key.encode()
        return loader

    def worker(n: int) -> None:
        key = keys[n % 8]
        assert cache.get_or_load(key, make_loader(key)) == key.encode()

    run_threads(64, worker)
    assert calls == dict.fromkeys(keys, 1)
    assert len(cache._loading.flights) == 0


def test_a_fill_that_raced_a_delete_is_not_installed(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    cache.set("k", b"old")
    cache._tiers.l1.invalidate(["k"])  # forget it locally so the next get goes to L2
    real_get = cache._l2.get

    def get_then_race(key: str, **options: Any) -> Any:
        reply = real_get(key, **options)  # the old value is on its way back ...
        deleter = threading.Thread(target=cache.delete, args=(key,))
        deleter.start()  # ... and a delete lands before it is installed
        deleter.join()
        return reply

    cache._l2.get = get_then_race  # type: ignore[method-assign]
    assert cache.get("k") == b"old"  # the read happened before the delete: fine to return
    cache._l2.get = real_get  # type: ignore[method-assign]
    assert cache.stats()["l1_stats"]["size"] == 0  # ... but it must not stay in L1
    assert cache.get("k") is None


def test_a_fill_that_raced_a_set_keeps_the_new_value(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    cache.set("k", b"old")
    cache._tiers.l1.invalidate(["k"])
    real_get = cache._l2.get

    def get_then_race(key: str, **options: Any) -> Any:
        reply = real_get(key, **options)
        writer = threading.Thread(target=cache.set, args=(key, b"new"))
        writer.start()
        writer.join()
        return reply

    cache._l2.get = get_then_race  # type: ignore[method-assign]
    cache.get("k")
    cache._l2.get = real_get  # type: ignore[method-assign]
    assert cache.get("k") == b"new"


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
    assert cache._tiers.l1.get("k") is None
    assert cache.get_or_load("k", lambda: b"fresh") == b"fresh"  # the next call loads again


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
                cache._tiers.l1.clear()
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


# -- stats -----------------------------------------------------------------------------


def test_stats_counters_and_shape(cache_factory: CacheFactory) -> None:
    cache, other = cache_factory(l1_max_size=7), cache_factory()
    assert cache.get("k") is None  # L1 miss, L2 miss
    other.set("k", b"v")
    received(cache, 1, read_before=True)
    assert cache.get("k") == b"v"  # L1 miss, L2 hit
    assert cache.get("k") == b"v"  # L1 hit
    stats = cache.stats()
    assert stats["l1_stats"] == {"size": 1, "max_size": 7, "hits": 1, "misses": 2,
                                 "hit_rate": pytest.approx(1 / 3), "evictions": 0,
                                 "expirations": 0, "bytes": len(b"v") + 240,
                                 "max_bytes": 64 * 2**20, "too_large": 0,
                                 "evictions_by_cause": {"entries": 0, "bytes": 0}}
    assert stats["l2_stats"] == {"hits": 1, "misses": 1, "hit_rate": 0.5, "errors": 0,
                                 "errors_by_operation": {}, "rejected": 0, "corrupt": 0}
    assert stats["coherence"] == {"state": "subscribed", "received": 1, "applied": 1,
                                  "flushes": 0, "reconnects": 0, "sharded": False,
                                  "mode": "tracking"}  # what auto picks on this server
    assert stats["singleflight"] == {"loads": 0, "coalesced": 0}
    json.dumps(stats)


# -- health ----------------------------------------------------------------------------


def test_health_against_a_live_server(cache_factory: CacheFactory, redis_server: Any) -> None:
    report = cache_factory().health()
    assert report["status"] == "healthy"
    assert report["dragonfly"] == {"connected": True, "server": redis_server.kind,
                                   "version": redis_server.version, "mode": "standalone"}
    assert set(report) == {"status", "dragonfly", "breaker", "coherence", "invalidation",
                           "l1_stats", "l2_stats"}
    assert (report["coherence"], report["invalidation"]) == ("subscribed", "tracking")
    assert report["breaker"] == "closed"
    json.dumps(report)


def test_health_against_a_dead_server(cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory()
    redis_server.kill()
    report = cache.health()
    assert report["status"] == "unhealthy"
    assert report["dragonfly"]["connected"] is False
    assert "Connection refused" in report["dragonfly"]["error"]
    json.dumps(report)
    redis_server.restart()
    assert cache.health()["status"] == "healthy"  # recovery is automatic


def test_health_with_a_wrong_password_leaks_nothing(cache_factory: CacheFactory,
                                                    auth_redis_server: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Secret-Password"
    cache = cache_factory(auth_redis_server, password=wrong, subscribed=False)
    report = cache.health()
    assert report["status"] == "unhealthy"
    assert "auth" in report["dragonfly"]["error"].lower() or "password" in \
        report["dragonfly"]["error"].lower()
    assert cache.get("k") is None
    with pytest.raises(CacheUnavailableError) as exc:
        cache.set("k", b"v")
    for text in (json.dumps(report), repr(cache), str(cache.config), repr(cache.config),
                 str(exc.value), caplog.text, json.dumps(cache.stats())):
        assert wrong not in text
    right = cache_factory(auth_redis_server, password=auth_redis_server.password)
    assert right.health()["status"] == "healthy"
    right.set("k", b"v")
    assert right.get("k") == b"v"
    assert auth_redis_server.password not in repr(right) + caplog.text


@pytest.mark.parametrize(
    ("info", "server", "version"),
    [
        ({"redis_version": "7.4.0", "dragonfly_version": "df-v1.21.2"}, "dragonfly", "v1.21.2"),
        ({"redis_version": "7.2.4", "valkey_version": "8.0.1", "server_name": "valkey"},
         "valkey", "8.0.1"),
        ({"redis_version": "6.2.14"}, "redis", "6.2.14"),
    ],
)
def test_server_detection(info: dict[str, str], server: str, version: str) -> None:
    from dragonfly_cache._probe import detect_server

    assert detect_server(info) == (server, version)


# -- L2 unavailable --------------------------------------------------------------------


def test_reads_degrade_and_writes_report_when_l2_is_down(cache_factory: CacheFactory,
                                                         redis_server: Any) -> None:
    # Coherence off: L1 keeps serving through the outage (with coherence on it is flushed
    # when the listener loses the server, see test_coherence).
    cache = cache_factory(invalidation=False)
    cache.set("cached", b"in-l1")
    redis_server.kill()
    assert cache.get("cached") == b"in-l1"
    assert cache.get("missing") is None
    assert cache.get_many(["cached", "missing"]) == {"cached": b"in-l1"}
    assert cache.exists("cached") is True
    assert cache.exists("missing") is False
    assert cache.get_or_load("loaded", lambda: b"from-db") == b"from-db"
    assert cache.get("loaded") == b"from-db"  # kept in L1

    with pytest.raises(CacheUnavailableError):
        cache.set("new", b"local")
    assert cache.get("new") == b"local"  # applied to L1 before raising
    with pytest.raises(CacheUnavailableError):
        cache.set_many({"m1": b"1", "m2": b"2"})
    assert cache.get_many(["m1", "m2"]) == {"m1": b"1", "m2": b"2"}
    with pytest.raises(CacheUnavailableError):
        cache.delete("cached")
    assert cache.get("cached") is None  # a delete is never undone locally
    with pytest.raises(CacheUnavailableError):
        cache.invalidate("m*")
    assert cache.get_many(["m1", "m2"]) == {}
    l2_stats = cache.stats()["l2_stats"]
    assert l2_stats["errors"] + l2_stats["rejected"] >= 6

    redis_server.restart()
    # Recovery is automatic: within one breaker cooldown a probe finds the server again.
    wait_until(lambda: cache.health()["status"] == "healthy", timeout=3.0)
    cache.set("after", b"ok")
    assert cache.get("after") == b"ok"


def test_a_dead_server_fails_fast(cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory(max_retries=3)
    redis_server.kill()
    started = time.monotonic()
    assert cache.get("k") is None
    # connection refused x (1 + 3 retries) with <= 0.1 s backoff each
    assert time.monotonic() - started < 1.0


# -- bad input -------------------------------------------------------------------------


def _bad_calls() -> list[tuple[str, Any, type[Exception], str]]:
    def loader() -> bytes:
        return b"x"

    return [
        ("get None", lambda c: c.get(None), TypeError, "key must be a str"),
        ("get bytes", lambda c: c.get(b"k"), TypeError, "got bytes"),
        ("get empty", lambda c: c.get(""), ValueError, "non-empty"),
        ("set str value", lambda c: c.set("k", "text"), TypeError, "must be bytes, got str"),
        ("set bytearray", lambda c: c.set("k", bytearray(b"x")), TypeError, "bytearray"),
        ("set empty key", lambda c: c.set("", b"v"), ValueError, "non-empty"),
        ("set int key", lambda c: c.set(1, b"v"), TypeError, "got int"),
        ("ttl zero", lambda c: c.set("k", b"v", ttl=0), ValueError, "positive"),
        ("ttl negative", lambda c: c.set("k", b"v", ttl=-1), ValueError, "positive"),
        ("ttl nan", lambda c: c.set("k", b"v", ttl=math.nan), ValueError, "positive"),
        ("ttl inf", lambda c: c.set("k", b"v", ttl=math.inf), ValueError, "positive"),
        ("ttl timedelta 0", lambda c: c.set("k", b"v", ttl=timedelta(0)), ValueError,
         "positive"),
        ("ttl str", lambda c: c.set("k", b"v", ttl="5"), TypeError, "ttl must be"),
        ("ttl bool", lambda c: c.set("k", b"v", ttl=True), TypeError, "ttl must be"),
        ("set_many not mapping", lambda c: c.set_many([("k", b"v")]), TypeError, "Mapping"),
        ("set_many bad value", lambda c: c.set_many({"a": b"1", "b": "2"}), TypeError,
         "key 'b' must be bytes"),
        ("set_many empty key", lambda c: c.set_many({"a": b"1", "": b"2"}), ValueError,
         "non-empty"),
        ("set_many bad ttl", lambda c: c.set_many({"a": b"1"}, ttl=0), ValueError, "positive"),
        ("get_many str", lambda c: c.get_many("abc"), TypeError, "single str"),
        ("get_many int key", lambda c: c.get_many(["a", 2]), TypeError, "got int"),
        ("exists empty", lambda c: c.exists(""), ValueError, "non-empty"),
        ("delete None", lambda c: c.delete(None), TypeError, "key must be a str"),
        ("invalidate empty", lambda c: c.invalidate(""), ValueError, "non-empty"),
        ("invalidate bytes", lambda c: c.invalidate(b"*"), TypeError, "pattern must be"),
        ("get surrogate key", lambda c: c.get("\ud800"), ValueError, "UTF-8"),
        ("set surrogate key", lambda c: c.set("\ud800", b"v"), ValueError, "UTF-8"),
        ("set_many surrogate key", lambda c: c.set_many({"a": b"1", "\udfff": b"2"}),
         ValueError, "UTF-8"),
        ("get_many surrogate key", lambda c: c.get_many(["a", "\ud800"]), ValueError,
         "UTF-8"),
        ("invalidate surrogate", lambda c: c.invalidate("\ud800*"), ValueError, "UTF-8"),
        ("ttl too large", lambda c: c.set("k", b"v", ttl=1e308), ValueError, "at most"),
        ("ttl past redis limit", lambda c: c.set("k", b"v", ttl=1e16), ValueError, "at most"),
        ("get_or_load huge ttl", lambda c: c.get_or_load("k", loader, ttl=1e308), ValueError,
         "at most"),
        ("get_or_load not callable", lambda c: c.get_or_load("k", b"v"), TypeError,
         "callable"),
        ("get_or_load bad ttl", lambda c: c.get_or_load("k", loader, ttl=-5), ValueError,
         "positive"),
        ("get_or_load str result", lambda c: c.get_or_load("k", lambda: "text"), TypeError,
         "returned str"),
    ]


@pytest.mark.parametrize(("name", "call", "error", "message"), _bad_calls(),
                         ids=[case[0] for case in _bad_calls()])
def test_bad_input_is_rejected_and_changes_nothing(cache_factory: CacheFactory,
                                                   redis_server: Any, name: str, call: Any,
                                                   error: type[Exception], message: str
                                                   ) -> None:
    cache = cache_factory()
    cache.set("existing", b"v")
    before = (cache.stats()["l1_stats"]["size"], redis_server.client().dbsize())
    with pytest.raises(error, match=message):
        call(cache)
    assert (cache.stats()["l1_stats"]["size"], redis_server.client().dbsize()) == before
    assert cache.get("existing") == b"v"
    assert cache.get("k") is None


def test_pool_exhaustion_is_a_bounded_wait_then_a_miss_or_an_error(
        cache_factory: CacheFactory) -> None:
    cache = cache_factory(pool_size=1, pool_timeout=0.05)
    cache.set("k", b"v")
    cache._tiers.l1.clear()
    slots = cache._l2.router.nodes.node(cache._l2.address).slots
    assert slots.acquire(0.01)  # another thread holds the only connection
    try:
        started = time.monotonic()
        assert cache.get("k") is None  # a read degrades to a miss
        with pytest.raises(CacheUnavailableError, match=r"no free connection within 0\.05s"):
            cache.set("k", b"new")
        assert time.monotonic() - started < 1.0
        # The failed set still applied to L1 (asked while the journal cannot replay) ...
        assert cache.get("k") == b"new"
    finally:
        slots.release()
    cache._tiers.l1.clear()
    # ... while L2 kept the old value, which the journal deletes once L2 answers again.
    wait_until(lambda: cache.stats()["journal"]["pending"] == 0)
    assert cache.get("k") is None and cache.stats()["journal"]["replayed"] == 1


def test_more_threads_than_connections_do_not_starve(cache_factory: CacheFactory) -> None:
    # redis-py's LIFO pool let waiters starve past a 250 ms pool_timeout here.
    cache = cache_factory(pool_size=4)

    def worker(n: int) -> None:
        for i in range(100):
            cache.set(f"{n}:{i}", b"v")
            cache._tiers.l1.invalidate([f"{n}:{i}"])
            assert cache.get(f"{n}:{i}") == b"v"

    run_threads(16, worker)
    assert cache.stats()["l2_stats"]["errors"] == 0


def test_a_stalled_server_costs_one_timeout_not_one_per_retry(cache_factory: CacheFactory,
                                                              redis_server: Any) -> None:
    cache = cache_factory(max_retries=3, socket_timeout=0.2, connect_timeout=0.2)
    cache.set("warm", b"v")  # a pooled connection exists
    cache._tiers.l1.clear()
    redis_server.pause()  # accepts connections, never answers
    try:
        started = time.monotonic()
        assert cache.get("warm") is None
        assert time.monotonic() - started < 0.6  # one 0.2 s timeout, not four
    finally:
        redis_server.resume()
    assert cache.get("warm") == b"v"


def test_l1_deadline_of_a_write_counts_from_before_the_send(cache_factory: CacheFactory,
                                                            fake_clock: FakeClock) -> None:
    cache = cache_factory(timer=fake_clock)
    real_set_many = cache._l2.set_many

    def slow_set_many(values: Any, ttl: float, announce: Any = None) -> None:
        real_set_many(values, ttl, announce)
        fake_clock.advance(0.5)  # the reply takes 0.5 s to come back

    cache._l2.set_many = slow_set_many  # type: ignore[method-assign]
    cache.set("k", b"v", ttl=1)
    fake_clock.advance(0.6)  # 1.1 s after the SET was sent: the server key is gone
    assert cache._tiers.l1.get("k") is None


def test_a_loader_that_reenters_its_own_key_gets_an_error_not_a_deadlock(
        cache_factory: CacheFactory) -> None:
    cache = cache_factory()

    def loader() -> bytes:
        return cache.get_or_load("k", lambda: b"inner")

    with pytest.raises(CacheError, match="re-entrant"):
        cache.get_or_load("k", loader)
    assert cache.get_or_load("k", lambda: b"fine") == b"fine"


def test_least_privilege_acl_user_can_use_the_cache(cache_factory: CacheFactory,
                                                    redis_server_factory: Any) -> None:
    server = redis_server_factory(password="admin-secret")
    server.client().acl_setuser("app", enabled=True, passwords=["+app-secret"],
                                keys=["*"], channels=["*"],
                                commands=["+@read", "+@write", "+@keyspace", "+ping",
                                          "+info", "+publish", "+subscribe"])
    cache = cache_factory(server, username="app", password="app-secret")
    cache.set("k", b"v")
    assert cache.get_many(["k"]) == {"k": b"v"}
    assert cache.health()["status"] == "healthy"


def test_errors_do_not_mask_address_digits_with_a_short_password(
        cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory(password="1", subscribed=False)
    redis_server.kill()
    error = cache.health()["dragonfly"]["error"]
    assert redis_server.address in error
    assert "***" not in error


def test_config_is_hashable() -> None:
    from dragonfly_cache import CacheConfig

    assert hash(CacheConfig()) == hash(CacheConfig())
    assert len({CacheConfig(), CacheConfig()}) == 1


@pytest.mark.parametrize(("tls", "connection_class"), [(True, "SSLConnection"),
                                                       (False, "Connection")])
def test_tls_flag_selects_the_connection_class(tls: bool, connection_class: str) -> None:
    from dragonfly_cache import CacheConfig, DragonflyConfig

    cache = TieredCache(CacheConfig(dragonfly=DragonflyConfig(tls=tls, mode="standalone")))
    assert cache._l2.router.nodes.connection_class.__name__ == connection_class
    client = _invalidation.subscription(cache._l2, cache._l2.address)[0]
    assert client.connection_pool.connection_class.__name__ == connection_class
    cache.close()


def test_get_many_reloads_its_script_after_script_flush(cache_factory: CacheFactory,
                                                        redis_server: Any) -> None:
    cache = cache_factory()
    cache.set_many({"a": b"1", "b": b"2"})
    cache._tiers.l1.clear()
    redis_server.client().script_flush()
    assert cache.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
    assert cache._l2.scripting is True


def test_get_many_works_where_scripting_is_not_allowed(cache_factory: CacheFactory,
                                                       redis_server_factory: Any) -> None:
    server = redis_server_factory(password="admin-secret")
    server.client().acl_setuser("app", enabled=True, passwords=["+app-secret"], keys=["*"],
                                channels=["*"], commands=["+@all", "-@scripting"])
    cache = cache_factory(server, username="app", password="app-secret")
    cache.set_many({f"k{n}": b"v%d" % n for n in range(600)}, ttl=30)
    cache._tiers.l1.clear()
    found = cache.get_many([f"k{n}" for n in range(700)])
    assert found == {f"k{n}": b"v%d" % n for n in range(600)}
    assert cache._l2.scripting is False
    cache._tiers.l1.clear()
    assert cache.get_many(["k1", "k2"]) == {"k1": b"v1", "k2": b"v2"}


def test_get_many_of_more_keys_than_one_script_chunk(cache_factory: CacheFactory,
                                                     fake_clock: FakeClock) -> None:
    cache = cache_factory(timer=fake_clock)
    values = {f"k{n}": b"%d" % n for n in range(1234)}
    cache.set_many(values, ttl=60)
    cache._tiers.l1.clear()
    assert cache.get_many(list(values)) == values
    fake_clock.advance(59.0)
    assert cache._tiers.l1.get("k1233") == b"1233"  # filled with the key's remaining PTTL ...
    fake_clock.advance(1.1)
    assert cache._tiers.l1.get("k1233") is None  # ... never past it


def test_latency_observers_see_each_round_trip_and_never_fail_a_call(
        cache_factory: CacheFactory, caplog: pytest.LogCaptureFixture) -> None:
    cache = cache_factory()
    cache.exists("warm-up")  # the first call also asks the server whether it is a cluster
    seen: list[tuple[str, float]] = []

    def observer(operation: str, seconds: float) -> None:
        if operation != "INFO":  # the listener's once-a-second flush watch, not our calls
            seen.append((operation, seconds))

    def broken(operation: str, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    cache.add_latency_observer(observer)
    cache.add_latency_observer(observer)  # once is enough: not observed twice
    cache.add_latency_observer(broken)
    cache.set("k", b"v")
    cache._tiers.l1.clear()
    assert cache.get("k") == b"v"  # the broken observer did not fail the calls
    assert [operation for operation, _ in seen] == ["SET", "GET"]
    assert all(0 <= seconds < 5 for _, seconds in seen)
    assert "latency observer failed" in caplog.text
    cache.remove_latency_observer(observer)
    cache.remove_latency_observer(broken)
    cache.remove_latency_observer(broken)  # not an error
    cache.set("k", b"w")
    assert len(seen) == 2


def test_decode_counts_a_value_that_does_not_decode(cache_factory: CacheFactory) -> None:
    from dragonfly_cache import codecs

    cache = cache_factory()
    signed = codecs.SignedPickle(b"k" * 32)
    cache.set("good", signed.encode({"a": 1}))
    cache.set("tampered", b"\x01" + b"0" * 40 + b"payload")
    assert cache.decode(cache.get("good") or b"", signed) == {"a": 1}
    with pytest.raises(codecs.DecodeError):
        cache.decode(cache.get("tampered") or b"", signed)
    assert cache.stats()["loading"]["decode_failures"] == 1


def test_a_server_refusal_inside_incr_is_unavailable_not_a_bad_value(
        cache_factory: CacheFactory, redis_server_factory: Any) -> None:
    """Only "not an integer" and "overflow" are the caller's mistake (ValueError); an ACL
    that lets EVAL run but not the INCRBY inside it is the server's refusal."""
    server = redis_server_factory()
    server.client().execute_command(
        "ACL", "SETUSER", "counter", "on", ">pw-0123456789", "~*", "&*", "+@all", "-incrby")
    cache = cache_factory(server, username="counter", password="pw-0123456789")
    cache.set("n", b"1")
    with pytest.raises(CacheUnavailableError, match="INCR"):
        cache.incr("n")
    # A failed write: the journal deletes the key (its value is in doubt) as L2 answers.
    wait_until(lambda: cache.stats()["journal"] == {"pending": 0, "replayed": 1,
                                                    "dropped": 0})
    assert server.client().get("n") is None


def test_large_values_stay_out_of_l1_and_l1_stays_within_its_bytes(
        cache_factory: CacheFactory) -> None:
    """The defaults: 64 MiB of L1, no value over a tenth of it. Ten-megabyte values (nine of
    them took a worker from 47 MB to 210 MB) go to L2 only; small ones fill L1 up to it."""
    cache = cache_factory(l1={"max_bytes": 2**20, "max_entry_share": 0.25})  # 1 MiB, 256 KiB
    big = b"b" * (10 * 2**20)
    for n in range(3):
        cache.set(f"big:{n}", big)
        assert cache.get(f"big:{n}") == big  # from L2, every time
    stats = cache.stats()["l1_stats"]
    assert stats["too_large"] == 6 and stats["bytes"] == 0 and stats["size"] == 0
    for n in range(100):  # 100 x ~16 KiB: more than 1 MiB
        cache.set(f"small:{n}", b"s" * 16_000)
    stats = cache.stats()["l1_stats"]
    assert stats["bytes"] <= 2**20 and stats["evictions_by_cause"]["bytes"] > 0
    assert cache.get("small:99") == b"s" * 16_000
    default = cache_factory().config.l1
    assert (default.max_bytes, default.max_entry_share) == (64 * 2**20, 0.1)
