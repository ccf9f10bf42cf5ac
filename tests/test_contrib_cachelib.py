"""The cachelib adapter: cachelib's semantics on the shared cache, signed pickles, bad input.

cachelib's own generic tests run in tests/test_upstream_cachelib.py; these cover what they
do not: the stored format, the ASCII counters, the timeouts, the configuration, failures
and refused input (each changing nothing).
"""

from __future__ import annotations

import datetime as dt
import logging
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dragonfly_cache import ConfigError, codecs
from dragonfly_cache.contrib import _common
from dragonfly_cache.contrib._common import pickle_codec
from dragonfly_cache.contrib.cachelib import DragonflyCache
from tests.helpers.servers import RedisServer, free_port

SECRET = "cachelib-adapter-test-secret"
YEAR = 365 * 86400

Make = Callable[..., DragonflyCache]


@pytest.fixture
def make(redis_server: RedisServer, clean_env: None) -> Iterator[Make]:
    """``make(**kwargs)``: an adapter on the test's server; its shared cache closed after."""
    made: list[DragonflyCache] = []

    def build(**kwargs: Any) -> DragonflyCache:
        if "cache" not in kwargs:
            kwargs.setdefault("url", f"redis://{redis_server.address}/0")
        kwargs.setdefault("pickle_secret", SECRET)
        cache = DragonflyCache(**kwargs)
        made.append(cache)
        return cache

    yield build
    for cache in made:
        cache.tiered.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"redis://{redis_server.address}/0")
    yield client
    client.close()


def decode_failures(cache: DragonflyCache) -> int:
    return cache.tiered.stats()["loading"]["decode_failures"]


def test_objects_are_stored_as_signed_pickles(make: Make, raw: redis.Redis) -> None:
    cache = make(key_prefix="app:")
    values = {"dict": {"a": [1, 2], 3: (4, 5)}, "str": "spam", "bytes": b"\x00raw",
              "none": None, "true": True, "false": False, "float": 1.5, "set": {1, 2}}
    for key, value in values.items():
        assert cache.set(key, value) is True
    for key, value in values.items():
        assert cache.get(key) == value and type(cache.get(key)) is type(value)
        stored = raw.get(f"app:{key}")
        assert stored is not None and stored[:1] == codecs.SignedPickle.VERSION
        # Signed with a key derived from the secret, not the secret itself.
        assert pickle_codec(SECRET, setting="x").decode(stored) == value
        with pytest.raises(codecs.DecodeError):
            codecs.SignedPickle(SECRET.encode()).decode(stored)


def test_ints_are_ascii_counters_that_get_reads_back(make: Make, raw: redis.Redis) -> None:
    cache = make()
    assert cache.set("n", 10) and raw.get("n") == b"10"
    assert cache.inc("n", 5) == 15 and cache.get("n") == 15
    assert cache.dec("n", 3) == 12 and cache.get("n") == 12
    assert cache.inc("fresh") == 1 and cache.dec("fresh-down", 4) == -4
    raw.incrby("counted-elsewhere", 7)  # e.g. cachelib's RedisCache.inc in another app
    assert cache.get("counted-elsewhere") == 7
    huge = 2**70  # beyond INCRBY: pickled, read back as it was
    assert cache.set("huge", huge) and cache.get("huge") == huge
    assert raw.get("huge")[:1] == codecs.SignedPickle.VERSION  # type: ignore[index]
    assert cache.set("flag", True) and raw.get("flag") != b"1" and cache.get("flag") is True


def test_a_new_counter_lives_default_timeout_and_an_old_one_keeps_its_own(make: Make) -> None:
    cache = make(default_timeout=120)
    cache.inc("c")
    assert 110 < (cache.tiered.ttl("c") or 0) <= 120
    cache.set("d", 1, timeout=30)
    cache.inc("d")
    assert (cache.tiered.ttl("d") or 0) <= 30


def test_timeouts_as_cachelib_defines_them(make: Make) -> None:
    cache = make(default_timeout=300)
    cache.set("default", 1)
    cache.set("zero", 1, timeout=0)
    cache.set("delta", 1, timeout=dt.timedelta(milliseconds=1500))
    cache.add("added", 1, timeout=7)
    cache.set_many({"many": 1}, timeout=9)
    ttl = cache.tiered.ttl
    assert 290 < (ttl("default") or 0) <= 300
    assert (ttl("zero") or 0) > 99 * YEAR  # 0: never expires (our longest ttl)
    assert 1.5 < (ttl("delta") or 0) <= 2  # rounded up to whole seconds, as cachelib does
    assert 6 < (ttl("added") or 0) <= 7 and 8 < (ttl("many") or 0) <= 9
    with pytest.warns(DeprecationWarning, match="Float timeouts"):
        cache.set("float", 1, timeout=2.5)
    assert 2 < (ttl("float") or 0) <= 3
    forever = make(default_timeout=0)
    forever.set("f", 1)
    assert (ttl("f") or 0) > 99 * YEAR


@pytest.mark.parametrize(("timeout", "error", "message"), [
    (-1, ValueError, "timeout must be >= 0"),
    (True, TypeError, "got bool"),
    ("60", TypeError, "timeout must be an int or datetime.timedelta"),
    (200 * YEAR, ValueError, "at most"),
])
def test_a_bad_timeout_is_refused_and_changes_nothing(make: Make, timeout: Any,
                                                      error: type[Exception],
                                                      message: str) -> None:
    cache = make()
    cache.set("k", "old")
    for call in (lambda: cache.set("k", "new", timeout), lambda: cache.add("j", 1, timeout),
                 lambda: cache.set_many({"k": "new", "j": 1}, timeout)):
        with pytest.raises(error, match=message):
            call()
    assert cache.get("k") == "old" and not cache.has("j")


def test_return_values_are_cachelibs(make: Make) -> None:
    cache = make(key_prefix="p:")
    assert cache.set_many({"a": 1, "b": "two"}) == ["a", "b"]
    assert cache.get_many("b", "missing", "a", "b") == ["two", None, 1, "two"]
    assert cache.get_dict("a", "missing") == {"a": 1, "missing": None}
    assert cache.add("a", 9) is False and cache.get("a") == 1
    assert cache.add("c", 3) is True
    assert cache.has("c") is True and cache.has("missing") is False
    assert cache.delete("c") is True and cache.delete("c") is False
    assert cache.delete_many("a", "missing") == ["a", "missing"]
    assert cache.delete_many() == []
    assert cache.get_many() == [] and cache.set_many({}) == []
    assert cache.clear() is True and cache.get("b") is None


def test_prefixes_share_one_cache_and_clear_only_their_own_keys(make: Make) -> None:
    sessions, views = make(key_prefix="session:"), make(key_prefix=lambda: "view:")
    assert sessions.tiered is views.tiered  # configured alike: one TieredCache
    sessions.set("1", {"user": 1})
    views.set("1", "<html>")
    assert sessions.get("1") == {"user": 1} and views.get("1") == "<html>"
    assert views.clear() is True
    assert views.get("1") is None and sessions.get("1") == {"user": 1}
    everything = make()  # no prefix: clear() is the cache's clear(), the whole db here
    everything.set("x", 1)
    assert everything.clear() is True
    assert sessions.get("1") is None and everything.get("x") is None


def test_tampered_and_foreign_values_are_misses_counted_never_unpickled(
        make: Make, raw: redis.Redis) -> None:
    cache = make()
    before = decode_failures(cache)
    signed = pickle_codec(SECRET, setting="x").encode({"role": "user"})
    raw.set("tampered", signed.replace(b"user", b"root"))
    raw.set("unsigned", pickle.dumps({"role": "root"}))
    raw.set("cachelib", b"!" + pickle.dumps({"role": "root"}))  # cachelib RedisCache's format
    raw.set("text", b"not a pickle")
    other = make(pickle_secret="another-secret-of-16+-bytes", options={"CACHE_L1_TTL": "1m"})
    other.set("other-secret", {"role": "root"})
    keys = ("tampered", "unsigned", "cachelib", "text", "other-secret")
    assert [cache.get(key) for key in keys] == [None] * 5
    assert cache.get_many(*keys) == [None] * 5
    assert decode_failures(cache) - before == 10
    assert cache.has("tampered")  # has() looks at presence, as cachelib's does


@pytest.mark.parametrize(("key", "error"), [
    (None, TypeError), (1, TypeError), (b"k", TypeError), ("", ValueError)])
def test_bad_keys_are_refused_by_every_operation(make: Make, key: Any,
                                                 error: type[Exception]) -> None:
    cache = make(key_prefix="p:")  # a prefix does not make an empty key acceptable
    cache.set("good", 1)
    calls: list[Callable[[], object]] = [
        lambda: cache.get(key), lambda: cache.set(key, 1), lambda: cache.add(key, 1),
        lambda: cache.has(key), lambda: cache.delete(key), lambda: cache.inc(key),
        lambda: cache.dec(key), lambda: cache.get_many("good", key),
        lambda: cache.set_many({"good": 2, key: 1}), lambda: cache.delete_many("good", key)]
    for call in calls:
        with pytest.raises(error, match="key must be"):
            call()
    assert cache.get("good") == 1


def test_bad_values_and_deltas_change_nothing(make: Make) -> None:
    cache = make()
    cache.set("k", "old")
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        cache.set("k", lambda: None)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        cache.set_many({"k": "new", "j": lambda: None})
    assert cache.get("k") == "old" and not cache.has("j")
    with pytest.raises(ValueError, match="not an integer"):
        cache.inc("k")
    with pytest.raises(TypeError, match="delta must be an int"):
        cache.inc("n", "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="delta must be an int"):
        cache.dec("n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping must be a Mapping"):
        cache.set_many([("k", 1)])  # type: ignore[arg-type]
    assert cache.get("k") == "old" and not cache.has("n")


def test_a_server_that_cannot_be_reached_gives_cachelibs_failure_values(
        clean_env: None, caplog: pytest.LogCaptureFixture) -> None:
    cache = DragonflyCache(url=f"redis://127.0.0.1:{free_port()}", pickle_secret=SECRET,
                           options={"DRAGONFLY_MAX_RETRIES": 0})
    try:
        with caplog.at_level(logging.WARNING, "dragonfly_cache.contrib.cachelib"):
            assert cache.get("secret-session-id") is None and not cache.has("k")
            assert cache.get_many("a", "b") == [None, None]
            assert cache.set("secret-session-id", 1) is False
            assert cache.add("k", 1) is False and cache.delete("k") is False
            assert cache.set_many({"a": 1}) == [] and cache.delete_many("a") == []
            assert cache.clear() is False
            assert cache.inc("n") is None and cache.dec("n") is None
        assert "cachelib set: the cache server did not take it" in caplog.text
        assert "secret-session-id" not in caplog.text  # keys may be session ids
        strict = DragonflyCache(cache=cache.tiered, pickle_secret=SECRET,
                                ignore_delete_many_errors=False)
        with pytest.raises(RuntimeError, match="Failed to delete keys"):
            strict.delete_many("a")
        with pytest.raises(RuntimeError, match="could not connect"):
            DragonflyCache(cache=cache.tiered, pickle_secret=SECRET, check_connection=True)
    finally:
        cache.tiered.close()


def test_settings_come_from_arguments_options_then_the_environment(
        make: Make, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    host, _, port = redis_server.address.rpartition(":")
    by_host = make(url=None, host=host, port=int(port), db=2,
                   options={"CACHE_L1_TTL": "7s", "CACHE_KEY_PREFIX": "app:"},
                   socket_timeout=0.5)
    config = by_host.tiered.config
    assert config.dragonfly.addresses == [redis_server.address] and config.dragonfly.db == 2
    assert config.l1.ttl == 7.0 and config.key_prefix == "app:"
    assert config.dragonfly.socket_timeout == 0.5
    assert make(url=f"redis://{redis_server.address}/3").tiered.config.dragonfly.db == 3
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", redis_server.address)
    monkeypatch.setenv("CACHE_PICKLE_SECRET", "from-the-environment-secret")
    from_env = make(url=None, pickle_secret=None)
    assert from_env.tiered.config.dragonfly.addresses == [redis_server.address]
    assert from_env.set("k", 1) and from_env.get("k") == 1
    assert DragonflyCache(check_connection=True).tiered is from_env.tiered


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pickle_secret": None}, r"pickle_secret \(or CACHE_PICKLE_SECRET\) is not set"),
    ({"pickle_secret": "short"}, "at least 16 bytes"),
    ({"options": {"CACHE_L1_TTLL": "5s"}}, r"options=\.\.\.\): unknown option.*CACHE_L1_TTLL"),
    ({"options": {"CACHE_L1_TTL": "soon"}}, "CACHE_L1_TTL"),
    ({"retry_on_timeout": True}, "unknown argument.*retry_on_timeout"),
    ({"host": object()}, "host must be a host name"),
    ({"host": "h", "url": "redis://h"}, "not both"),
    ({"url": "redis://:hunter2hunter2@h:port"}, r"url=\.\.\.\).*invalid port"),
    ({"url": None, "port": 70000}, "port must be an int"),
    ({"url": None, "db": -1}, "db must be an int"),
    ({"default_timeout": -5}, "default_timeout must be >= 0"),
    ({"key_prefix": 5}, "key_prefix must be a str or a callable"),
])
def test_bad_configuration_is_a_config_error_naming_the_argument(
        make: Make, kwargs: dict[str, Any], message: str) -> None:
    shared = dict(_common._shared)
    with pytest.raises(ConfigError, match=message) as caught:
        make(**kwargs)
    assert "hunter2" not in str(caught.value)
    assert _common._shared == shared  # refused before any cache was made


def test_a_given_cache_is_used_as_is_and_excludes_server_settings(make: Make) -> None:
    first = make()
    assert make(cache=first.tiered).tiered is first.tiered
    assert make(cache=first.tiered.config).tiered is first.tiered  # its shared cache
    with pytest.raises(ConfigError, match="not both"):
        make(cache=first.tiered, host="h")
    with pytest.raises(TypeError, match="got bool"):
        make(default_timeout=True)
