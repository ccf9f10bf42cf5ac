"""dragonfly_cache.testing: fake caches for apps' own tests, with no server process."""

from __future__ import annotations

import time

import pytest

from dragonfly_cache import CacheConfig, DragonflyConfig, NotFound, TieredCache
from dragonfly_cache.contrib._common import shared_cache
from dragonfly_cache.testing import fake_cache, fake_servers
from tests.helpers import wait_subscribed, wait_until

# A port nothing listens on: a cache that reached for a real server there would fail.
NOWHERE = CacheConfig(dragonfly=DragonflyConfig(addresses=["127.0.0.1:1"]), key_prefix="t:")


def test_a_fake_cache_does_everything_a_cache_does_without_a_server() -> None:
    with fake_cache(NOWHERE) as cache:
        cache.set("k", b"v", ttl=60)
        assert cache.get("k") == b"v" and cache.exists("k")
        assert cache.get_many(["k", "missing"]) == {"k": b"v"}  # get_many's Lua script
        assert cache.add("k", b"other") is False and cache.add("new", b"1") is True
        assert cache.incr("n", 5) == 5 and cache.decr("n") == 4 and cache.get("n") == b"4"
        remaining = cache.ttl("k")
        assert remaining is not None and 59 < remaining <= 60
        assert cache.touch("k", ttl=5) is True and cache.ttl("missing") is None
        assert cache.get_or_load("loaded", lambda: b"x") == b"x"
        assert cache.delete_many(["k", "new"]) == 2 and cache.get("k") is None
        with pytest.raises(NotFound):
            cache.get_or_load("absent", _not_found)
        assert cache.get("absent") is None  # the negative entry reads as a miss
        assert cache.invalidate("load*") == 1
        assert cache.clear() == 2  # n and the negative entry
        health = cache.health()
        assert health["status"] == "healthy"
        assert health["dragonfly"]["server"] == "fakeredis" and health["dragonfly"]["version"]
        assert cache.stats()["l2_stats"]["errors"] == 0


def _not_found() -> bytes:
    raise NotFound("no such record")


def test_two_fake_caches_on_one_address_are_coherent() -> None:
    with fake_cache(NOWHERE) as writer, fake_cache(NOWHERE) as reader:
        wait_subscribed(writer)
        wait_subscribed(reader)
        writer.set("shared", b"old")
        assert reader.get("shared") == b"old"  # one fake server: the same L2
        started = time.monotonic()
        writer.set("shared", b"new")
        wait_until(lambda: reader.get("shared") == b"new", timeout=0.1)
        assert time.monotonic() - started < 0.1
        remaining = reader.ttl("shared")
        assert remaining is not None and 3500 < remaining <= 3600  # l2.ttl, from the fake


def test_inside_fake_servers_every_cache_made_is_fake_the_adapters_too() -> None:
    with fake_servers():
        shared = shared_cache(NOWHERE)
        made = TieredCache(NOWHERE)
        assert shared is shared_cache(NOWHERE)  # one per process and config, as outside
        shared.set("k", b"v")
        assert made.get("k") == b"v"  # both on the fake server of 127.0.0.1:1
    real = shared_cache(NOWHERE)  # outside the block: a real cache, a different one
    assert real is not shared
    assert real.get("k") is None  # nothing listens on port 1: a miss, never an error
    for cache in (shared, made, real):
        cache.close()
