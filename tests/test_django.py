"""The Django cache backend: Django's semantics on the shared cache, its settings, bad input.

Django's own suite (``BaseCacheTests`` and the middleware, template-tag and session tests)
runs against the backend in ``tests/test_upstream_django.py``; these tests check what that
suite does not: how values and timeouts reach the server, atomic ``incr``, singleflight,
one cache per process, signed pickles, settings errors, two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import pickle
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import CacheKeyWarning

from dragonfly_cache import CacheUnavailableError, ConfigError, TieredCache
from dragonfly_cache import _fork as fork_module
from dragonfly_cache.contrib.django import DragonflyCache
from tests.helpers import run_threads, wait_subscribed, wait_until
from tests.helpers.django_worker import BACKEND, DjangoWorker
from tests.helpers.servers import RedisServer, free_port

SECRET = "a-django-secret-key-for-the-tests-only-0123456789"
PWNED: list[int] = []  # what an unpickled "tampered" value would append to

Make = Callable[..., DragonflyCache]


@pytest.fixture
def configure() -> Iterator[Callable[..., None]]:
    """``settings.configure(**values)`` for one test. Django's settings are set back to
    what they were afterwards (unconfigured, or what the docs examples configured), so
    each test starts from nothing. Every cache made during the test is closed after it."""
    from django.conf import settings
    from django.utils.functional import empty

    # Django's LazySettings keeps the configured settings in _wrapped (``empty`` until
    # configure()); monkeypatch.setattr cannot be used: it asks the lazy object its class.
    saved = settings._wrapped
    settings._wrapped = empty
    before = set(fork_module._members)
    try:
        yield settings.configure
    finally:
        settings._wrapped = saved
        for cache in set(fork_module._members) - before:
            cache.close()  # shared_cache() replaces a closed cache: the next test's is new


@pytest.fixture
def make(configure: Callable[..., None], redis_server: RedisServer) -> Make:
    """``make(**params)``: ``DragonflyCache(LOCATION, params)`` as Django builds it from
    ``CACHES["default"]`` (the settings name that entry, with ``SECRET_KEY``)."""
    location = f"redis://{redis_server.address}/0"

    def make(location: Any = location, **params: Any) -> DragonflyCache:
        from django.conf import settings
        from django.utils.functional import empty

        settings._wrapped = empty  # each backend made as from its own settings
        configure(SECRET_KEY=SECRET, CACHES={
            "default": {"BACKEND": BACKEND, "LOCATION": location, **params}})
        backend = DragonflyCache(location, params)
        wait_subscribed(backend.tiered)
        return backend

    return make


# -- values ------------------------------------------------------------------------------


def test_objects_round_trip_and_a_miss_is_the_default(make: Make) -> None:
    cache = make()
    values = {"dict": {"a": [1, 2]}, "none": None, "bool": True, "tuple": (1, "x"),
              "bytes": b"\x00raw", "int": 42, "negative": -7, "big": 2**70, "float": 1.5}
    cache.set_many(values)
    assert cache.get_many([*values, "missing"]) == values
    for key, value in values.items():
        assert cache.get(key) == value and type(cache.get(key)) is type(value)
    assert cache.get("missing", "fallback") == "fallback"
    assert cache.get("none", "fallback") is None


def test_ints_are_stored_as_digits_and_the_rest_as_signed_pickles(
        make: Make, redis_server: RedisServer) -> None:
    cache = make()
    cache.set("n", 41)
    cache.set("flag", True)  # a bool is not an int here, as in Django's RedisSerializer
    cache.set("text", "41")
    raw = redis_server.client()
    assert raw.get(":1:n") == b"41"
    for key in (":1:flag", ":1:text"):
        stored = raw.get(key)
        # SignedPickle: a version byte, the 32-byte HMAC, then the pickle
        assert stored is not None and stored[:1] == b"\x01" and len(stored) > 33
    assert cache.get("flag") is True and cache.get("text") == "41"


def test_incr_is_one_atomic_incrby_and_get_reads_the_int(
        make: Make, redis_server: RedisServer, cache_factory: Any) -> None:
    cache = make()
    cache.set("hits", 0)
    run_threads(8, lambda _n: [cache.incr("hits") for _ in range(50)])
    assert cache.get("hits") == 400
    assert redis_server.client().get(":1:hits") == b"400"
    assert cache.decr("hits", 100) == 300 and cache.get("hits") == 300
    other = cache_factory()  # another process's view: the plain integer
    assert other.get(":1:hits") == b"300"
    assert cache.incr("hits", -300) == 0 and cache.get("hits") == 0


def test_get_or_set_calls_the_default_once_for_concurrent_misses(make: Make) -> None:
    cache = make()
    calls: list[int] = []
    results: list[Any] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        time.sleep(0.05)  # keep the load open while the other threads arrive
        return {"answer": 42}

    run_threads(8, lambda _n: results.append(cache.get_or_set("slow", compute, 60)))
    assert calls == [1]
    assert results == [{"answer": 42}] * 8
    assert cache.tiered.stats()["singleflight"]["coalesced"] >= 1
    assert cache.get_or_set("slow", lambda: "not called") == {"answer": 42}
    assert cache.get_or_set("absent", "plain", timeout=0) == "plain"  # stores nothing
    assert cache.get("absent") is None


# -- timeouts ------------------------------------------------------------------------------


def test_timeouts_reach_the_server_as_django_defines_them(make: Make) -> None:
    cache = make()
    ttl = cache.tiered.ttl
    cache.set("default", 1)
    assert 299 < (ttl(":1:default") or 0) <= 300  # TIMEOUT's default: 300 s
    cache.set("forever", 1, None)
    assert (ttl(":1:forever") or 0) > 99 * 365 * 86400  # None: for ever (100 years)
    cache.set("float", 1, 100.9)
    assert 99 < (ttl(":1:float") or 0) <= 100  # whole seconds, as RedisCache
    assert cache.touch("default", None) is True
    assert (ttl(":1:default") or 0) > 99 * 365 * 86400
    assert make(TIMEOUT=None).get_backend_timeout() is None
    assert make(TIMEOUT="60").get_backend_timeout() == 60


@pytest.mark.parametrize("timeout", [0, -5, 0.5])
def test_a_zero_or_negative_timeout_stores_nothing(make: Make, timeout: float) -> None:
    cache = make()
    cache.set_many({"a": 1, "b": 2, "c": 3, "d": 4})
    cache.set("a", "new", timeout)
    assert cache.add("fresh", 1, timeout) is True and cache.add("b", 1, timeout) is False
    assert cache.touch("c", timeout) is True
    cache.set_many({"d": 5}, timeout)
    assert cache.get_many(["a", "b", "c", "d", "fresh"]) == {"b": 2}
    assert cache.tiered.ttl(":1:fresh") is None


# -- one cache per process -------------------------------------------------------------------


def test_aliases_configured_alike_share_one_cache_and_close_keeps_it(make: Make) -> None:
    first, second = make(), make(KEY_PREFIX="other", VERSION=2)
    assert first.tiered is second.tiered  # Django's own key settings do not split it
    first.close()  # Django calls this after every request
    assert not first.tiered.closed
    first.set("k", "v")
    assert first.get("k") == "v" and second.get("k") is None
    third = make(OPTIONS={"CACHE_KEY_PREFIX": "app2:"})
    assert third.tiered is not first.tiered


def test_key_prefix_version_and_key_function_make_the_keys(
        make: Make, redis_server: RedisServer) -> None:
    cache = make(KEY_PREFIX="app", VERSION=3)
    cache.set("k", 1)
    raw = redis_server.client()
    assert raw.get("app:3:k") == b"1"
    assert cache.incr_version("k") == 4 and raw.get("app:3:k") is None
    assert raw.get("app:4:k") == b"1" and cache.get("k", version=4) == 1
    custom = make(KEY_FUNCTION="tests.test_django.custom_key")
    custom.set("k", 1)
    assert raw.get("custom/k") == b"1"


def custom_key(key: str, key_prefix: str, version: int) -> str:
    return f"custom{key_prefix}/{key}"


def test_keys_memcached_would_refuse_warn_as_in_django(make: Make) -> None:
    cache = make()
    with pytest.warns(CacheKeyWarning, match="memcached: ':1:has space'"):
        cache.set("has space", 1)
    with pytest.warns(CacheKeyWarning, match=r"longer than 250"):
        cache.get("k" * 248)  # 251 characters with Django's ":1:"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.get("k" * 247)  # 250: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheKeyWarning)
        assert cache.get("has space") == 1
    for bad in ("tab\there", "nul\x00", "del\x7f", "\x1f"):  # what Django warns about
        with pytest.warns(CacheKeyWarning, match="characters that will cause errors"):
            cache.get(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.get("clé-ünïcödé-\u00a0-\u2028")  # not printable, but memcached-safe: quiet


class PrefixedKeys(DragonflyCache):
    def make_key(self, key: Any, version: Any = None) -> str:
        return f"sub/{super().make_key(key, version)}"


def test_a_subclass_with_its_own_make_key_is_honoured(make: Make,
                                                       redis_server: RedisServer) -> None:
    make()  # the settings
    sub = PrefixedKeys(f"redis://{redis_server.address}/0", {})
    sub.set("k", 1)
    assert redis_server.client().get("sub/:1:k") == b"1" and sub.get("k") == 1


# -- signed pickles ------------------------------------------------------------------------


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, ("import tests.test_django as m; m.PWNED.append(1)",))


def test_a_tampered_or_foreign_value_is_a_counted_miss_never_unpickled(
        make: Make, redis_server: RedisServer) -> None:
    cache = make()
    raw = redis_server.client()
    forged = b"\x01" + b"\x00" * 32 + pickle.dumps(_Exploit())
    raw.set(":1:forged", forged)
    raw.set(":1:bare", pickle.dumps(_Exploit()))  # what django-redis would unpickle
    foreign = make(OPTIONS={"CACHE_PICKLE_SECRET": "another-secret-0123456789"})
    foreign.set("foreign", {"signed": "elsewhere"})
    before = cache.tiered.stats()["loading"]["decode_failures"]
    assert cache.get("forged", "miss") == "miss" and cache.get("bare", "miss") == "miss"
    assert cache.get("foreign", "miss") == "miss"
    assert cache.get_many(["forged", "bare", "foreign"]) == {}
    assert cache.get_or_set("forged", "default") == "default"
    assert PWNED == []
    assert cache.tiered.stats()["loading"]["decode_failures"] - before >= 7
    assert raw.get(":1:forged") == forged  # a miss, not a repair: nothing was changed


def test_cache_pickle_secret_signs_instead_of_secret_key(
        configure: Callable[..., None], redis_server: RedisServer) -> None:
    configure()  # no SECRET_KEY at all
    options = {"CACHE_PICKLE_SECRET": "a-shared-secret-0123456789"}
    cache = DragonflyCache(f"redis://{redis_server.address}/0", {"OPTIONS": options})
    cache.set("k", {"v": 1})
    assert cache.get("k") == {"v": 1}


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "message"), [
    ({"LOCATION": 6379}, r"\['LOCATION'\]: expected a redis:// URL"),
    ({"LOCATION": "memcached://h:11211"}, r"\['LOCATION'\]: .*scheme 'memcached'"),
    ({"LOCATION": ["redis://a/0", "redis://b/1"]}, r"\['LOCATION'\]: .*same scheme, db"),
    ({"LOCATION": []}, r"\['LOCATION'\]: an empty list names no server"),
    ({"OPTIONS": {"MAX_ENTRIES": 30}}, r"\['OPTIONS'\]: unknown option\(s\) 'MAX_ENTRIES'"),
    ({"OPTIONS": {"CACHE_L1_TTL": "soon"}}, r"\['OPTIONS'\]: .*CACHE_L1_TTL"),
    ({"OPTIONS": ["CACHE_L1_TTL"]}, r"\['OPTIONS'\]: expected a dict"),
    ({"TIMEOUT": "abc"}, r"\['TIMEOUT'\]: expected seconds"),
    ({"TIMEOUT": -1}, r"\['TIMEOUT'\]: expected seconds"),
    ({"TIMEOUT": True}, r"\['TIMEOUT'\]: expected seconds"),
    ({"VERSION": "2"}, r"\['VERSION'\]: expected an int"),
    ({"KEY_PREFIX": 5}, r"\['KEY_PREFIX'\]: expected a str"),
    ({"KEY_FUNCTION": "no.such.function"}, r"\['KEY_FUNCTION'\]: No module"),
    ({"KEY_FUNCTION": 5}, r"\['KEY_FUNCTION'\]: expected a function"),
])
def test_bad_settings_name_the_django_key(configure: Callable[..., None],
                                          redis_server: RedisServer, entry: dict[str, Any],
                                          message: str) -> None:
    params = {"LOCATION": f"redis://{redis_server.address}/0", **entry}
    configure(SECRET_KEY=SECRET, CACHES={"default": {"BACKEND": BACKEND, **params}})
    location = params.pop("LOCATION")
    before = set(fork_module._members)
    with pytest.raises(ConfigError, match=r"^CACHES\['default'\]" + message):
        DragonflyCache(location, params)
    assert set(fork_module._members) == before  # nothing was built


def test_a_password_in_location_is_never_echoed(configure: Callable[..., None]) -> None:
    configure(SECRET_KEY=SECRET)
    with pytest.raises(ConfigError) as caught:
        DragonflyCache("redis://:hunter2hunter2@h:port/0", {})
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.parametrize(("secret", "message"), [
    ("", r"^SECRET_KEY \(or CACHES\['default'\]\['OPTIONS'\]\['CACHE_PICKLE_SECRET'\]\) "
         r"is not set"),
    ("short", r"^SECRET_KEY .* must be at least 16 bytes"),
    (None, r"^SECRET_KEY .* is not set"),  # settings never configured
])
def test_no_usable_secret_is_a_config_error_naming_secret_key(
        configure: Callable[..., None], redis_server: RedisServer, secret: str | None,
        message: str) -> None:
    location = f"redis://{redis_server.address}/0"
    if secret is not None:
        configure(SECRET_KEY=secret,
                  CACHES={"default": {"BACKEND": BACKEND, "LOCATION": location}})
    with pytest.raises(ConfigError, match=message):
        DragonflyCache(location, {})


def test_bad_calls_raise_and_change_nothing(make: Make, redis_server: RedisServer) -> None:
    cache = make()
    cache.set_many({"n": 5, "text": "five"})
    snapshot = sorted(redis_server.client().keys())
    for call, error in [
        (lambda: cache.set("k", 1, "10"), TypeError),
        (lambda: cache.set("k", 1, math.nan), ValueError),
        (lambda: cache.add("k", 1, math.inf), ValueError),
        (lambda: cache.touch("n", [1]), TypeError),
        (lambda: cache.incr("n", "1"), TypeError),
        (lambda: cache.incr("n", 2**63), ValueError),
        (lambda: cache.decr("n", 1.5), TypeError),
        (lambda: cache.incr("missing"), ValueError),
        (lambda: cache.decr("missing"), ValueError),
        (lambda: cache.incr("text"), TypeError),  # what Django's BaseCacheTests expects
        (lambda: cache.incr_version("missing"), ValueError),
        (lambda: cache.set("n", lambda: None), (pickle.PicklingError, AttributeError)),
        (lambda: cache.set_many({"k": 1, "bad": lambda: None}),
         (pickle.PicklingError, AttributeError)),
        (lambda: cache.get_or_set("k"), TypeError),
    ]:
        with pytest.raises(error):
            call()
    assert sorted(redis_server.client().keys()) == snapshot
    assert cache.get_many(["n", "text", "k"]) == {"n": 5, "text": "five"}


def test_a_server_that_is_down_reads_as_misses_and_writes_raise(
        configure: Callable[..., None]) -> None:
    location = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    configure(SECRET_KEY=SECRET)
    cache = DragonflyCache(location, {"OPTIONS": {"CACHE_L1_INVALIDATION": "off"}})
    assert cache.get("k", "default") == "default"
    assert cache.get_many(["k"]) == {} and cache.has_key("k") is False
    with pytest.raises(CacheUnavailableError):
        cache.set("k", 1)
    with pytest.raises(ValueError, match="not found"):  # as for any key the server lacks
        cache.incr("k")


# -- where the servers are -------------------------------------------------------------------


def test_location_forms(configure: Callable[..., None],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    configure(SECRET_KEY=SECRET)

    def dragonfly(location: Any) -> Any:
        return DragonflyCache(location, {}).tiered.config.dragonfly

    assert dragonfly("rediss://h:7000/2").addresses == ["h:7000"]
    assert dragonfly("rediss://h:7000/2").tls and dragonfly("redis://h/2").db == 2
    assert dragonfly("a:1;b:2").addresses == ["a:1", "b:2"]  # split as RedisCache does
    assert dragonfly(["redis://a:1", "redis://b:2"]).addresses == ["a:1", "b:2"]
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", "from-env:6380")
    monkeypatch.setenv("DRAGONFLY_DB", "4")
    assert dragonfly("").addresses == ["from-env:6380"] and dragonfly("").db == 4
    assert dragonfly("redis://h:1").db == 4  # only what LOCATION says overrides


def test_a_list_of_cluster_seeds_is_a_cluster(configure: Callable[..., None],
                                              redis_cluster: Any) -> None:
    configure(SECRET_KEY=SECRET)
    cache = DragonflyCache([f"redis://{address}" for address in redis_cluster.addresses], {})
    values = {f"key{n}": {"n": n} for n in range(30)}  # spread over the three primaries
    cache.set_many(values)
    assert cache.get_many(values) == values
    cache.set("counter", 1)
    assert cache.incr("counter") == 2 and cache.get("counter") == 2
    cache.delete_many(list(values)[:10])
    assert len(cache.get_many(values)) == 20
    cache.clear()
    assert cache.get_many([*values, "counter"]) == {}


# -- async ---------------------------------------------------------------------------------


def test_the_async_variants_work(make: Make) -> None:
    cache = make()

    async def scenario() -> None:
        await cache.aset("a", {"x": 1})
        assert await cache.aget("a") == {"x": 1}
        assert await cache.aadd("a", 2) is False and await cache.ahas_key("a")
        await cache.aset_many({"n": 1, "b": "b"})
        assert await cache.aincr("n", 4) == 5 and await cache.adecr("n") == 4
        assert await cache.aget_many(["a", "n", "zz"]) == {"a": {"x": 1}, "n": 4}
        assert await cache.aget_or_set("g", lambda: [1]) == [1]
        assert await cache.atouch("a", 10) is True
        assert await cache.aincr_version("b") == 2
        assert await cache.adelete("a") is True
        await cache.adelete_many(["n"])
        assert await cache.aget_many(["a", "n"]) == {}
        await cache.aclear()
        assert await cache.aget("g") is None
        await cache.aclose()

    asyncio.run(scenario())
    assert not cache.tiered.closed


# -- two processes ---------------------------------------------------------------------------


def test_two_django_processes_see_each_others_writes_within_100_ms(
        redis_server: RedisServer) -> None:
    location = f"redis://{redis_server.address}/0"
    writer = reader = None
    try:
        writer, reader = DjangoWorker(location, SECRET), DjangoWorker(location, SECRET)
        assert writer.coherence == reader.coherence == "subscribed"
        assert writer.call("set", "page", {"v": "old"}) == ("done",)
        assert reader.call("watch", "page", {"v": "old"}, 2.0) == ("ready",)
        started = time.monotonic()
        writer.call("set", "page", {"v": "new"})
        outcome, seen, value, reads, l1_hits, l2_lookups = reader.call(timeout=10)
        assert outcome == "seen" and value == {"v": "new"}
        assert seen - started < 0.1
        # Until the invalidation arrived the reader was served from its L1: every read
        # but the one after it (and at most one racing it) was an L1 hit.
        assert l1_hits >= reads - 2 and l2_lookups <= 2, (reads, l1_hits, l2_lookups)
        assert reader.call("get", "page") == ("value", {"v": "new"})
    finally:
        for worker in (writer, reader):
            if worker is not None:
                with contextlib.suppress(Exception):
                    worker.close()


def test_values_written_by_the_backend_are_readable_by_plain_tieredcache(
        make: Make, cache_factory: Any) -> None:
    cache = make()
    cache.set("n", 7)
    plain: TieredCache = cache_factory()
    assert plain.get(":1:n") == b"7"
    plain.set(":1:n", b"8")  # an integer written by anyone reads as an int
    wait_until(lambda: cache.get("n") == 8, timeout=1)  # once the invalidation arrived
