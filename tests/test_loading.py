"""Loading features: negative caching, batch loads, memoize, the fleet lock, early refresh,
serve stale on error."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from dragonfly_cache import NotFound, codecs
from dragonfly_cache._loading import NEGATIVE
from tests.helpers import CacheFactory, FakeClock, metric, run_threads, wait_until
from tests.helpers.loading_worker import fleet_member, memo_key

# -- negative caching ------------------------------------------------------------------


def test_not_found_is_cached_for_the_negative_ttl(cache_factory: CacheFactory,
                                                  redis_server: Any) -> None:
    cache, other = cache_factory(), cache_factory()
    calls: list[int] = []

    def loader() -> bytes:
        calls.append(1)
        raise NotFound("no such user")

    for _ in range(3):
        with pytest.raises(NotFound):
            cache.get_or_load("user:404", loader)
    with pytest.raises(NotFound):
        other.get_or_load("user:404", loader)  # another process: from L2, no load
    assert calls == [1]
    assert cache.get("user:404") is None
    assert other.get("user:404") is None
    assert cache.exists("user:404") is False
    assert cache.get_many(["user:404"]) == {}
    pttl = redis_server.client().pttl("user:404")
    assert 25_000 < pttl <= 30_000  # l2.negative_ttl, not l2.ttl
    assert issubclass(NotFound, LookupError)


def test_negative_entries_expire_and_writes_replace_them(cache_factory: CacheFactory,
                                                         fake_clock: FakeClock) -> None:
    cache = cache_factory(timer=fake_clock)
    with pytest.raises(NotFound):
        cache.get_or_load("k", lambda: (_ for _ in ()).throw(NotFound()))
    cache.set("k", b"now it exists")
    assert cache.get_or_load("k", lambda: b"unused") == b"now it exists"


# -- batch loads -----------------------------------------------------------------------


def test_get_or_load_many_loads_only_what_is_missing_in_one_call(
        cache_factory: CacheFactory) -> None:
    cache, other = cache_factory(), cache_factory()
    cache.set("a", b"1")  # in cache's L1
    other.set("b", b"2")  # in L2 only, as far as cache's L1 is concerned
    if cache.stats()["coherence"]["mode"] == "pubsub":  # tracking: cache never read "b"
        wait_until(lambda: cache.stats()["coherence"]["received"] >= 1)
    calls: list[list[str]] = []

    def load(missing: list[str]) -> dict[str, bytes]:
        calls.append(sorted(missing))
        return {key: key.upper().encode() for key in missing if key != "gone"}

    found = cache.get_or_load_many(["a", "b", "c", "d", "gone", "c"], load)
    assert found == {"a": b"1", "b": b"2", "c": b"C", "d": b"D"}
    assert calls == [["c", "d", "gone"]]
    assert other.get_many(["c", "d"]) == {"c": b"C", "d": b"D"}  # stored in L2
    assert cache.get_or_load_many(["c", "d"], load) == {"c": b"C", "d": b"D"}
    assert len(calls) == 1


def test_overlapping_batches_load_each_key_once(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    calls: list[list[str]] = []
    first_started, release = threading.Event(), threading.Event()

    def slow(missing: list[str]) -> dict[str, bytes]:
        calls.append(sorted(missing))
        first_started.set()
        release.wait(5)
        return {key: key.encode() for key in missing}

    def fast(missing: list[str]) -> dict[str, bytes]:
        calls.append(sorted(missing))
        return {key: key.encode() for key in missing}

    results: dict[str, dict[str, bytes]] = {}
    first = threading.Thread(target=lambda: results.update(
        first=cache.get_or_load_many(["k1", "k2", "k3"], slow)))
    first.start()
    first_started.wait(5)
    second = threading.Thread(target=lambda: results.update(
        second=cache.get_or_load_many(["k2", "k3", "k4"], fast)))
    second.start()
    wait_until(lambda: cache.stats()["singleflight"]["coalesced"] >= 2)
    release.set()
    first.join(5)
    second.join(5)
    assert sorted(calls) == [["k1", "k2", "k3"], ["k4"]]
    assert results["first"] == {"k1": b"k1", "k2": b"k2", "k3": b"k3"}
    assert results["second"] == {"k2": b"k2", "k3": b"k3", "k4": b"k4"}
    assert len(cache._loading.flights) == 0


def test_a_failing_batch_loader_reaches_waiters_and_caches_nothing(
        cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory()
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def failing(missing: list[str]) -> dict[str, bytes]:
        started.set()
        release.wait(5)
        raise RuntimeError("database down")

    def call(keys: list[str]) -> None:
        try:
            cache.get_or_load_many(keys, failing)
        except RuntimeError as exc:
            errors.append(exc)

    first = threading.Thread(target=call, args=(["a", "b"],))
    first.start()
    started.wait(5)
    second = threading.Thread(target=call, args=(["b"],))
    second.start()
    wait_until(lambda: cache.stats()["singleflight"]["coalesced"] >= 1)
    release.set()
    first.join(5)
    second.join(5)
    assert len(errors) == 2
    assert redis_server.client().dbsize() == 0
    assert len(cache._loading.flights) == 0


def test_get_or_load_many_rejects_bad_input(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    with pytest.raises(TypeError, match="single str"):
        cache.get_or_load_many("abc", lambda keys: {})
    with pytest.raises(TypeError, match="callable"):
        cache.get_or_load_many(["a"], "nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected bytes"):
        cache.get_or_load_many(["a"], lambda keys: {"a": "text"})  # type: ignore[dict-item]
    assert cache.get("a") is None


# -- memoize ---------------------------------------------------------------------------


def test_memoize_caches_results_and_invalidates(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    calls: list[tuple[Any, ...]] = []

    @cache.memoize(ttl=60)
    def profile(user_id: int, *, detail: str = "short") -> dict[str, Any]:
        calls.append((user_id, detail))
        return {"id": user_id, "detail": detail, "tags": ["a", "b"]}

    assert profile(1) == {"id": 1, "detail": "short", "tags": ["a", "b"]}
    assert profile(1) == profile(user_id=1) == profile(1, detail="short")
    assert profile(2, detail="long")["detail"] == "long"
    assert calls == [(1, "short"), (2, "long")]
    profile.invalidate(1)  # type: ignore[attr-defined]
    profile(1)
    assert calls[-1] == (1, "short")
    profile.invalidate_all()  # type: ignore[attr-defined]
    profile(1)
    profile(2, detail="long")
    assert len(calls) == 5


def test_memoize_keys_are_stable_across_processes() -> None:
    from tests.helpers.memo import lookup

    here = [lookup.cache_key(7), lookup.cache_key(7, "eu"),  # type: ignore[attr-defined]
            lookup.cache_key(region="eu", user_id=7),  # type: ignore[attr-defined]
            lookup.cache_key(7, verbose=False)]  # type: ignore[attr-defined]
    assert len(set(here)) == 1  # defaults applied, keyword order irrelevant
    assert here[0].startswith("memoize:tests.helpers.memo.lookup:")
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        there = pool.starmap(memo_key, [((7,), {}), ((), {"region": "eu", "user_id": 7})])
    assert there == [here[0], here[0]]
    assert lookup.cache_key(8) != here[0]  # type: ignore[attr-defined]


def test_memoize_methods_use_cache_key_and_custom_keys(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    calls: list[str] = []

    class Repository:
        def __init__(self, name: str) -> None:
            self.name = name

        def __cache_key__(self) -> str:
            return self.name

        @cache.memoize(ttl=60)
        def find(self, item: int) -> list[int]:
            calls.append(self.name)
            return [item]

    assert Repository("db1").find(1) == [1]
    assert Repository("db1").find(1) == [1]  # another instance, same __cache_key__
    assert Repository("db2").find(1) == [1]
    assert calls == ["db1", "db2"]

    @cache.memoize(key=lambda user_id, **_: f"user:{user_id}")
    def user(user_id: int) -> str:
        return f"user {user_id}"

    assert user(5) == "user 5"
    assert cache.exists("memoize:" + user.__module__ + "." + user.__qualname__ + ":user:5")


def test_memoize_codecs_and_not_found(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    secret = b"0123456789abcdef-secret"

    @cache.memoize(codec=codecs.SignedPickle(secret))
    def objects() -> set[int]:
        return {1, 2, 3}

    @cache.memoize(codec="bytes")
    def raw() -> bytes:
        return b"\x00\x01"

    calls: list[int] = []

    @cache.memoize()
    def missing(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        raise NotFound(f"no user {user_id}")

    assert objects() == {1, 2, 3}
    assert raw() == b"\x00\x01"
    for _ in range(2):
        with pytest.raises(NotFound):
            missing(9)
    assert calls == [9]
    with pytest.raises(ValueError, match="secret"):
        cache.memoize(codec="pickle")


def test_memoize_treats_an_undecodable_value_as_a_miss(cache_factory: CacheFactory,
                                                       redis_server: Any) -> None:
    cache = cache_factory()
    calls: list[int] = []

    @cache.memoize(ttl=60)
    def value() -> dict[str, int]:
        calls.append(1)
        return {"n": 1}

    key = value.cache_key()  # type: ignore[attr-defined]
    cache.set(key, b"\xff not json")  # e.g. written by an older version
    assert value() == {"n": 1}
    assert calls == [1]
    assert cache.stats()["loading"]["decode_failures"] == 1
    assert value() == {"n": 1}
    assert calls == [1]  # the recomputed value replaced the bad one


# -- fleet-wide lock -------------------------------------------------------------------


def test_fleet_lock_one_loader_call_across_4_processes(redis_server: Any) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    processes = [context.Process(target=fleet_member,
                                 args=(redis_server.address, barrier, 16, 0.3, 5.0, False))
                 for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    raw = redis_server.client()
    assert raw.get("loads") == b"1"
    assert raw.get("hot") is not None
    assert list(raw.scan_iter(match="\x1flock:*")) == []  # released, nothing left behind


def test_fleet_lock_holder_killed_mid_load_another_process_loads(redis_server: Any) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(1)
    doomed = context.Process(target=fleet_member,
                             args=(redis_server.address, barrier, 1, 0.0, 1.0, True))
    doomed.start()
    doomed.join(30)
    assert doomed.exitcode == -9
    raw = redis_server.client()
    assert raw.get("loads") == b"1"
    assert raw.exists("\x1flock:hot") == 1  # the dead holder's lock, until its TTL
    started = time.monotonic()
    survivor_barrier = context.Barrier(1)  # kept referenced until the child has it
    survivor = context.Process(target=fleet_member,
                               args=(redis_server.address, survivor_barrier, 4, 0.0, 1.0,
                                     False))
    survivor.start()
    survivor.join(30)
    assert survivor.exitcode == 0
    assert 0.5 < time.monotonic() - started < 10
    assert raw.get("loads") == b"2"
    wait_until(lambda: raw.exists("\x1flock:hot") == 0, timeout=3)


# -- early refresh ---------------------------------------------------------------------


def test_early_refresh_serves_the_old_value_while_exactly_one_refresh_runs(
        cache_factory: CacheFactory, fake_clock: FakeClock) -> None:
    cache = cache_factory(timer=fake_clock)
    version = [0]
    loads: list[int] = []
    release = threading.Event()

    def loader() -> bytes:
        loads.append(1)
        if version[0]:
            release.wait(5)  # the background refresh takes a while
        return b"v%d" % version[0]

    assert cache.get_or_load("k", loader, ttl=10, refresh_ahead=0.5) == b"v0"
    version[0] = 1
    fake_clock.advance(8.0)  # inside the last half of the 10 s life
    seen: list[bytes] = []

    def reader(_: int) -> None:
        seen.append(cache.get_or_load("k", loader, ttl=10, refresh_ahead=0.5))

    run_threads(64, reader)
    assert seen == [b"v0"] * 64  # nobody waited for the refresh
    assert len(loads) == 2  # the first load, and exactly one refresh
    release.set()
    wait_until(lambda: cache.get("k") == b"v1")
    assert len(loads) == 2


def test_a_failed_refresh_keeps_the_old_value_until_it_expires(cache_factory: CacheFactory
                                                               ) -> None:
    cache = cache_factory()
    failing = [False]
    loads: list[bool] = []

    def loader() -> bytes:
        loads.append(failing[0])
        if failing[0]:
            raise RuntimeError("database down")
        return b"old"

    assert cache.get_or_load("k", loader, ttl=0.6, refresh_ahead=0.9) == b"old"
    failing[0] = True
    time.sleep(0.3)  # real time: the L2 key's own expiry is part of what is tested
    assert cache.get_or_load("k", loader, ttl=0.6, refresh_ahead=0.9) == b"old"
    wait_until(lambda: len(loads) == 2)  # the background refresh ran, and failed
    assert cache.get_or_load("k", loader, ttl=0.6, refresh_ahead=0.9) == b"old"
    time.sleep(0.4)  # past the hard expiry: now the failure reaches the caller
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_load("k", loader, ttl=0.6, refresh_ahead=0.9)


def test_refresh_ahead_must_be_a_fraction(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="refresh_ahead"):
            cache.get_or_load("k", lambda: b"v", refresh_ahead=bad)
    assert cache.get("k") is None
    assert NEGATIVE not in (b"", b"null")


def test_refresh_jitter_spreads_the_refresh_point_within_the_window(
        cache_factory: CacheFactory, fake_clock: FakeClock) -> None:
    exact = cache_factory(timer=fake_clock, subscribed=False, l2={"refresh_jitter": 0.0})
    spread_out = cache_factory(timer=fake_clock, subscribed=False, l2={"refresh_jitter": 0.5})

    def due_after(cache: Any, key: str = "k") -> float:
        cache._loading.refresh.schedule(key, fake_clock.now, 10.0, 10.0, 0.4)
        return cache._loading.refresh.due_in(key)  # type: ignore[no-any-return]

    assert due_after(exact) == pytest.approx(6.0)  # exactly the start of the last 40 %
    spread = [due_after(spread_out, f"k{n}") for n in range(50)]
    assert due_after(spread_out, "k0") == spread[0]  # the same entry keeps its point
    assert all(6.0 <= due <= 8.0 for due in spread)  # moved up to half the window later
    assert max(spread) - min(spread) > 0.5


def test_refresh_sync_makes_callers_wait_for_one_reload_near_expiry(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2={"refresh_sync": 0.1})
    version = [0]
    loads: list[int] = []

    def loader() -> bytes:
        loads.append(1)
        if version[0]:
            wait_until(lambda: cache.stats()["singleflight"]["coalesced"] >= 15)
        return b"v%d" % version[0]

    assert cache.get_or_load("k", loader, ttl=10, refresh_ahead=0.5) == b"v0"
    version[0] = 1
    fake_clock.advance(9.5)  # within the last 10 %: too close to expiry to serve stale
    seen: list[bytes] = []

    def reader(_: int) -> None:
        seen.append(cache.get_or_load("k", loader, ttl=10, refresh_ahead=0.5))

    run_threads(16, reader)
    assert seen == [b"v1"] * 16  # everyone waited for the new value ...
    assert len(loads) == 2  # ... loaded once
    assert cache.stats()["loading"]["sync_refreshes"] >= 1


@pytest.mark.parametrize(
    ("env", "message"),
    [({"CACHE_REFRESH_AHEAD": "0.2", "CACHE_REFRESH_SYNC": "0.3"}, "CACHE_REFRESH_SYNC"),
     ({"CACHE_REFRESH_JITTER": "1"}, "CACHE_REFRESH_JITTER"),
     ({"CACHE_REFRESH_JITTER": "-0.1"}, "CACHE_REFRESH_JITTER"),
     ({"CACHE_FLEET_LOCK_TTL": "0s"}, "CACHE_FLEET_LOCK_TTL")],
)
def test_refresh_and_lock_settings_are_validated(env: dict[str, str], message: str) -> None:
    from dragonfly_cache import CacheConfig, ConfigError

    with pytest.raises(ConfigError, match=message):
        CacheConfig.from_env(env)


# -- regressions from review -----------------------------------------------------------


def test_a_delete_landing_just_before_the_store_takes_the_store_back(
        cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory()
    real_store = cache._l2.set_if_absent

    def store_after_a_delete(key: str, value: bytes, ttl: float, announce: Any = None) -> bool:
        if not key.startswith("\x1f"):
            cache.delete(key)  # the delete's UNLINK reaches L2 just before our SET NX
        return real_store(key, value, ttl, announce)

    cache._l2.set_if_absent = store_after_a_delete  # type: ignore[method-assign]
    assert cache.get_or_load("k", lambda: b"old") == b"old"
    cache._l2.set_if_absent = real_store  # type: ignore[method-assign]
    assert redis_server.client().exists("k") == 0  # the deleted generation does not live on
    assert cache.get("k") is None


def test_a_cancelled_synchronous_refresh_never_hands_out_the_removed_value(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2={"refresh_sync": 0.3})
    version = [1]

    def loader() -> bytes:
        if version[0] == 2:
            cache.delete("k")  # the key is deleted while the refresh loads
        return b"v%d" % version[0]

    assert cache.get_or_load("k", loader, ttl=10, refresh_ahead=0.5) == b"v1"
    version[0] = 2
    fake_clock.advance(8.0)  # within refresh_sync: a synchronous refresh
    assert cache.get_or_load("k", loader, ttl=10, refresh_ahead=0.5) == b"v2"
    assert redis_server.client().exists("k") == 0  # and nothing was stored


def test_get_or_load_joining_a_batch_that_omitted_its_key_loads_it_itself(
        cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    started, release = threading.Event(), threading.Event()

    def batch(missing: list[str]) -> dict[str, bytes]:
        started.set()
        release.wait(5)
        return {}  # "gone" is omitted

    thread = threading.Thread(target=lambda: cache.get_or_load_many(["gone"], batch))
    thread.start()
    started.wait(5)
    result: list[bytes] = []
    follower = threading.Thread(target=lambda: result.append(
        cache.get_or_load("gone", lambda: b"loaded by the follower")))
    follower.start()
    wait_until(lambda: cache.stats()["singleflight"]["coalesced"] >= 1)
    release.set()
    thread.join(5)
    follower.join(5)
    assert result == [b"loaded by the follower"]


def test_memoize_keys_tell_lookalike_arguments_apart(cache_factory: CacheFactory) -> None:
    from decimal import Decimal

    cache = cache_factory()

    @cache.memoize()
    def echo(value: Any) -> str:
        return repr(value)

    pairs = [(b"ab", "6162"), ({1: 1}, {"1": 1}), (Decimal(1), "Decimal('1')"),
             ((1, 2), [1, 2]), (1, 1.0), (True, 1)]
    for left, right in pairs:
        assert echo.cache_key(left) != echo.cache_key(right), (left, right)
        assert echo(left) == repr(left)
        assert echo(right) == repr(right)
    assert echo({1: "a", "b": 2}) == repr({1: "a", "b": 2})  # mixed key types sort fine
    assert echo.cache_key({"a": 1, "b": 2}) == echo.cache_key({"b": 2, "a": 1})


def test_memoized_methods_invalidate_through_the_instance(cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    calls: list[int] = []

    class Users:
        __cache_key__ = "users"

        @cache.memoize()
        def name(self, user_id: int, suffix: str = "") -> str:
            calls.append(user_id)
            return f"user {user_id}{suffix}"

    users = Users()
    assert users.name(0) == "user 0"
    assert users.name(0) == "user 0"
    users.name.invalidate(0)
    assert users.name(0) == "user 0"
    assert calls == [0, 0]
    assert users.name.cache_key(0) == Users.name.cache_key(users, 0)


def test_invalidation_and_negative_answers_drop_refresh_schedules(
        cache_factory: CacheFactory) -> None:
    cache = cache_factory()
    cache.get_or_load("k", lambda: b"v", ttl=10, refresh_ahead=0.5)
    assert "k" in cache._loading.refresh
    cache.delete("k")
    assert "k" not in cache._loading.refresh
    cache.get_or_load("p:1", lambda: b"v", ttl=10, refresh_ahead=0.5)
    cache.invalidate("p:*")
    assert "p:1" not in cache._loading.refresh


# -- serve stale on error --------------------------------------------------------------
#
# The L1 deadlines run on a fake clock; a key's expiry in L2 is played by a raw DEL, which
# (like a real expiry) announces nothing to the caches in pub/sub mode: these tests pin
# it. In tracking mode the server announces the expiry too, which ends the kept value
# (tests/test_tracking.py, test_an_expiry_push_ends_a_kept_stale_value).

STALE = {"stale_if_error": 30.0}


class Flaky:
    """A loader returning ``value`` until ``failing`` is set; counts its calls."""

    def __init__(self, value: bytes = b"v1") -> None:
        self.value, self.failing, self.calls = value, False, 0

    def __call__(self) -> bytes:
        self.calls += 1
        if self.failing:
            raise RuntimeError("database down")
        return self.value


def expire(redis_server: Any, clock: FakeClock, seconds: float, *keys: str) -> None:
    """Move the clock ``seconds`` on and take ``keys`` out of L2 as their expiry would."""
    clock.advance(seconds)
    redis_server.client().delete(*keys)


def test_a_failing_reload_serves_the_old_value_within_the_bound_and_raises_past_it(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2=STALE, invalidation="pubsub")
    plain = cache_factory(timer=fake_clock, invalidation="pubsub")  # stale_if_error off
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"  # L1 deadline: 10 s from now
    assert plain.get_or_load("p", loader, ttl=10) == b"v1"
    loader.failing = True
    expire(redis_server, fake_clock, 15.0, "k", "p")  # expired 5 s ago
    with pytest.raises(RuntimeError, match="database down"):
        plain.get_or_load("p", loader, ttl=10)
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    fake_clock.advance(24.9)  # 29.9 s past expiry, past the backoff: the load is tried again
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    assert loader.calls == 5
    fake_clock.advance(0.1)  # 30 s past expiry: never served
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_load("k", loader, ttl=10)
    assert loader.calls == 6  # within the backoff, but with nothing to serve: loaded
    assert cache.get("k") is None and redis_server.client().exists("k") == 0
    assert cache.stats()["loading"]["stale_served"] == 2
    assert plain.stats()["loading"]["stale_served"] == 0


def test_not_found_is_never_turned_into_a_stale_value(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2=STALE, invalidation="pubsub")
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    expire(redis_server, fake_clock, 15.0, "k")

    def gone() -> bytes:
        raise NotFound("deleted upstream")

    with pytest.raises(NotFound):  # the record is gone: the old value is not served
        cache.get_or_load("k", gone, ttl=10)
    loader.failing = True
    with pytest.raises(NotFound):  # the negative answer stays one
        cache.get_or_load("k", loader, ttl=10)
    expire(redis_server, fake_clock, 31.0, "k")  # the negative answer (30 s) expired 1 s ago
    with pytest.raises(RuntimeError, match="database down"):  # neither v1 nor NotFound
        cache.get_or_load("k", loader, ttl=10)
    with pytest.raises(RuntimeError):
        cache.get_or_load_many(["k"], lambda keys: loader() and {})
    assert cache.stats()["loading"]["stale_served"] == 0


@pytest.mark.parametrize("remove", ["delete", "delete_many", "invalidate", "clear", "set",
                                    "delete elsewhere", "invalidate elsewhere"])
def test_nothing_serves_a_value_that_a_delete_removed(
        remove: str, cache_factory: CacheFactory, fake_clock: FakeClock,
        redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2=STALE, invalidation="pubsub")
    other = cache_factory(l2=STALE, invalidation="pubsub")  # another process
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    loader.failing = True
    expire(redis_server, fake_clock, 15.0, "k")
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"  # stale, until ...
    applied = cache.stats()["coherence"]["applied"]
    {"delete": lambda: cache.delete("k"),
     "delete_many": lambda: cache.delete_many(["k", "x"]),
     "invalidate": lambda: cache.invalidate("k*"),
     "clear": cache.clear,
     "set": lambda: cache.set("k", b"v2", ttl=1),  # a newer value, expired in turn below
     "delete elsewhere": lambda: other.delete("k"),
     "invalidate elsewhere": lambda: other.invalidate("*")}[remove]()
    if remove.endswith("elsewhere"):
        wait_until(lambda: cache.stats()["coherence"]["applied"] > applied)
    if remove == "set":
        assert cache.get_or_load("k", loader, ttl=10) == b"v2"
        expire(redis_server, fake_clock, 2.0, "k")
        assert cache.get_or_load("k", loader, ttl=10) == b"v2"  # the last good value now
        cache.delete("k")
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_load("k", loader, ttl=10)


def test_l2_unreachable_during_a_reload_serves_stale_without_calling_the_loader(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    # Coherence off: with it on, losing the server also loses the invalidation channel,
    # and L1 (stale values too) is flushed (next test).
    cache = cache_factory(timer=fake_clock, invalidation=False, l2=STALE)
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    fake_clock.advance(15.0)
    redis_server.stop()
    loader.value = b"v2"
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    assert loader.calls == 1  # no load: every process would load on its own meanwhile
    fake_clock.advance(1.0)  # the backoff passed: one caller tries L2 again, still away
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    assert loader.calls == 1
    assert cache.stats()["l2_stats"]["errors"] >= 2
    fake_clock.advance(30.0)  # past the bound: as without stale_if_error, the loader answers
    assert cache.get_or_load("k", loader, ttl=10) == b"v2"
    assert loader.calls == 2
    assert cache.stats()["loading"]["stale_served"] == 3


def test_no_stale_value_once_the_invalidation_channel_is_lost(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2=STALE, invalidation="pubsub")
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    fake_clock.advance(15.0)
    redis_server.stop()
    # A delete may be missed from now on: L1 is flushed, kept values with it.
    wait_until(lambda: cache.stats()["coherence"]["state"] != "subscribed")
    loader.value = b"v2"
    assert cache.get_or_load("k", loader, ttl=10) == b"v2"
    assert cache.stats()["loading"]["stale_served"] == 0


def test_a_failing_loader_is_retried_with_backoff_counted_and_logged(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from dragonfly_cache.metrics import CacheMetrics, register

    registry = CollectorRegistry()
    register(registry)

    def exported() -> float:
        return metric(generate_latest(registry).decode(), "dragonfly_cache_stale_served_total")

    before = exported()
    cache = cache_factory(timer=fake_clock, l2=STALE, invalidation="pubsub")
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    loader.failing = True
    expire(redis_server, fake_clock, 11.0, "k")
    with caplog.at_level(logging.WARNING, logger="dragonfly_cache._stale"):
        for _ in range(10):
            assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    assert loader.calls == 2  # the first load, and one failed reload
    [record] = caplog.records  # one line per failed reload, not per answer
    assert "'k'" in record.getMessage() and "RuntimeError: database down" in record.getMessage()
    for wait in (1.0, 2.0, 4.0):  # the wait doubles after each failed try
        calls = loader.calls
        fake_clock.advance(wait / 2)
        assert cache.get_or_load("k", loader, ttl=10) == b"v1"
        assert loader.calls == calls
        fake_clock.advance(wait / 2)
        assert cache.get_or_load("k", loader, ttl=10) == b"v1"
        assert loader.calls == calls + 1
    loader.failing, loader.value = False, b"v2"
    fake_clock.advance(8.0)
    assert cache.get_or_load("k", loader, ttl=10) == b"v2"  # recovered: stored again
    assert cache.get_or_load("k", loader, ttl=10) == b"v2"
    assert loader.calls == 6
    assert cache.stats()["loading"]["stale_served"] == 16
    CacheMetrics(cache).sync()
    assert exported() - before == 16


def test_after_the_backoff_one_caller_tries_again_while_the_others_get_the_stale_value(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2=STALE, invalidation="pubsub")
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    loader.failing = True
    expire(redis_server, fake_clock, 15.0, "k")
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    fake_clock.advance(1.0)
    tries: list[bool] = []
    served: list[bytes] = []

    def slow_and_failing() -> bytes:
        try:
            wait_until(lambda: len(served) >= 15)  # the others do not wait for this try
            tries.append(True)
        except AssertionError:
            tries.append(False)  # they did
        raise RuntimeError("database down")

    def reader(_: int) -> None:
        served.append(cache.get_or_load("k", slow_and_failing, ttl=10))

    run_threads(16, reader)
    assert served == [b"v1"] * 16
    assert tries == [True]


def test_no_stale_value_while_the_listener_is_not_subscribed(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2=STALE, invalidation="pubsub")
    cache.close()  # the listener stops: a delete elsewhere would now go unheard
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"  # kept l1.degraded_ttl (1 s)
    loader.failing = True
    expire(redis_server, fake_clock, 2.0, "k")
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_load("k", loader, ttl=10)


def test_stale_if_error_per_call_and_bad_values(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, invalidation="pubsub")  # off in the configuration
    loader = Flaky()
    assert cache.get_or_load("k", loader, ttl=10) == b"v1"
    loader.failing = True
    expire(redis_server, fake_clock, 15.0, "k")
    assert cache.get_or_load("k", loader, ttl=10, stale_if_error=timedelta(seconds=30)) == b"v1"
    with pytest.raises(RuntimeError):
        cache.get_or_load("k", loader, ttl=10, stale_if_error=0)  # off for this call
    assert cache.get_or_load("k", loader, ttl=10, stale_if_error=30) == b"v1"
    with pytest.raises(RuntimeError):
        cache.get_or_load("k", loader, ttl=10, stale_if_error=5)  # 15 s is too old for it
    for bad in (-1, -0.5, timedelta(seconds=-1), float("nan"), float("inf")):
        with pytest.raises(ValueError, match="stale_if_error"):
            cache.get_or_load("new", lambda: b"x", stale_if_error=bad)
        with pytest.raises(ValueError, match="stale_if_error"):
            cache.get_or_load_many(["new"], lambda keys: {}, stale_if_error=bad)
    for wrong in ("30s", True, [30]):
        with pytest.raises(TypeError, match="stale_if_error"):
            cache.get_or_load("new", lambda: b"x", stale_if_error=wrong)  # type: ignore[arg-type]
    assert cache.get("new") is None and redis_server.client().exists("new") == 0


def test_get_or_load_many_serves_stale_values_only_for_all_of_a_failed_batch(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, l2=STALE, invalidation="pubsub")
    calls: list[list[str]] = []
    failing = [False]

    def load(keys: list[str]) -> dict[str, bytes]:
        calls.append(sorted(keys))
        if failing[0]:
            raise RuntimeError("database down")
        return {key: key.encode() for key in keys}

    assert cache.get_or_load_many(["a", "b"], load, ttl=10) == {"a": b"a", "b": b"b"}
    failing[0] = True
    expire(redis_server, fake_clock, 15.0, "a", "b")
    assert cache.get_or_load_many(["a", "b"], load, ttl=10) == {"a": b"a", "b": b"b"}
    assert cache.get_or_load_many(["b", "a"], load, ttl=10) == {"a": b"a", "b": b"b"}
    assert calls == [["a", "b"], ["a", "b"]]  # the second call backed off
    with pytest.raises(RuntimeError):  # "c" has no stale value: the error is not hidden
        cache.get_or_load_many(["a", "c"], load, ttl=10)
    assert calls[-1] == ["c"]  # "a" still backs off
    fake_clock.advance(5.0)

    def gone(keys: list[str]) -> dict[str, bytes]:
        raise NotFound("no such records")

    with pytest.raises(NotFound):
        cache.get_or_load_many(["a", "b"], gone, ttl=10)
    assert cache.stats()["loading"]["stale_served"] == 4  # answers given: not the raised "a"


def test_get_or_load_many_with_l2_unreachable_serves_what_is_stale_and_loads_the_rest(
        cache_factory: CacheFactory, fake_clock: FakeClock, redis_server: Any) -> None:
    cache = cache_factory(timer=fake_clock, invalidation=False, l2=STALE)
    calls: list[list[str]] = []
    version = [1]

    def load(keys: list[str]) -> dict[str, bytes]:
        calls.append(sorted(keys))
        return {key: b"%s v%d" % (key.encode(), version[0]) for key in keys}

    assert cache.get_or_load_many(["a"], load, ttl=10) == {"a": b"a v1"}
    fake_clock.advance(15.0)
    redis_server.stop()
    version[0] = 2
    assert cache.get_or_load_many(["a", "z"], load, ttl=10) == {"a": b"a v1", "z": b"z v2"}
    assert calls == [["a"], ["z"]]
    assert cache.stats()["loading"]["stale_served"] == 1
