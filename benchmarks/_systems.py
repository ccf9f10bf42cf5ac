"""The systems under comparison, behind one small adapter shape, and their servers.

Each Redis-backed system gets its own private redis-server (127.0.0.1, persistence off,
started through ``tests.helpers.servers`` so there is one implementation of that), so one
system's keys, pub/sub traffic or memory never touch another's.

Every adapter exposes plain callables (``get``, ``set``, ``get_many``) bound once, so the
timed loops call the system's own method with no extra frame of ours in between, except
for the floor, whose "method" *is* the two lines a user would write around cachetools.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cachetools
import redis
from dogpile.cache import make_region
from dogpile.cache.api import NO_VALUE
from flask import Flask
from flask_caching import Cache as FlaskCache
from flask_caching.backends.rediscache import RedisCache as FlaskRedisCache

from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config, TieredCache
from tests.helpers.servers import RedisServer, find_redis_server

__all__ = [
    "DOGPILE",
    "DRAGONFLY",
    "FLASK",
    "FLOOR",
    "RAW",
    "Pinning",
    "System",
    "open_dragonfly",
    "start_server",
    "wait_subscribed",
]

FLOOR = "cachetools+RLock (floor)"
DRAGONFLY = "dragonfly_cache"
RAW = "redis-py"
FLASK = "flask-caching"
DOGPILE = "dogpile.cache"

TTL = 3600  # seconds; long enough that nothing expires during a run
L1_SLACK = 2  # L1 holds twice the key space: no eviction ever interferes


class Pinning:
    """Where the benchmark process and the redis-servers run.

    Modes:
        same (default): this process (every thread and child it starts inherits it) and
            every redis-server on the first allowed CPU. A round trip is then a hand-off
            between two tasks on one core: no cross-CPU wake-up, whose latency on this
            shared 2-vCPU machine swings with the other tenants' load (measured: redis-py
            GET p50 76-78 µs across rounds pinned to one CPU, 215-240 µs split across
            two). Client CPU cost is fully visible in latency, which is what we optimise.
        split: this process on the first allowed CPU, the redis-servers on the second.
        none: leave the scheduler alone.
    """

    def __init__(self, mode: str) -> None:
        allowed = sorted(os.sched_getaffinity(0))
        self.mode = mode
        self.allowed = allowed
        self.client: set[int] | None = None
        self.server: set[int] | None = None
        if mode == "split" and len(allowed) >= 2:
            self.client, self.server = {allowed[0]}, {allowed[1]}
        elif mode in ("split", "same"):
            self.client = self.server = {allowed[0]}

    def pin_self(self) -> None:
        """Pin this process; call before any thread or child is started (they inherit it)."""
        if self.client is not None:
            os.sched_setaffinity(0, self.client)

    def pin_server(self, pid: int) -> None:
        """Pin every thread of a redis-server (main, bio and io threads)."""
        if self.server is None:
            return
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), self.server)
            except ProcessLookupError:
                continue  # a thread that just exited

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "allowed_cpus": self.allowed,
                "benchmark_cpus": sorted(self.client) if self.client else None,
                "redis_server_cpus": sorted(self.server) if self.server else None}


def start_server(pinning: Pinning) -> RedisServer:
    """A private redis-server (``--save '' --appendonly no`` on 127.0.0.1), pinned."""
    server = RedisServer(find_redis_server()).start()
    assert server.pid is not None
    pinning.pin_server(server.pid)
    return server


def wait_subscribed(cache: TieredCache, timeout: float = 10.0) -> None:
    """Make ``cache`` start its invalidation listener and wait until it is subscribed.

    Entries stored before that live only ``l1.degraded_ttl``; measuring a steady state
    means storing them after it.
    """
    cache.get("__benchmark_warmup__")
    deadline = time.monotonic() + timeout
    while cache.stats()["coherence"]["state"] != "subscribed":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{cache!r}: invalidation listener not subscribed in {timeout}s")
        time.sleep(0.002)


def open_dragonfly(address: str | list[str], max_size: int,
                   invalidation: str = "auto", key_prefix: str = "") -> TieredCache:
    """A TieredCache with its listener subscribed, L1 big enough to never evict (a list of
    addresses: a cluster's seeds), in the coherence mode ``invalidation``."""
    addresses = address if isinstance(address, list) else [address]
    config = CacheConfig(dragonfly=DragonflyConfig(addresses=addresses),
                         l1=L1Config(max_size=max_size, ttl=TTL, invalidation=invalidation),
                         l2=L2Config(ttl=TTL), key_prefix=key_prefix)
    cache = TieredCache(config)
    wait_subscribed(cache)
    return cache


class System:
    """One system under test.

    Attributes:
        name: the row label.
        get, set, get_many: bound callables; ``get_many`` takes a list of keys.
        get_or_load: ``(key, loader) -> bytes`` where the system has a loader API, else None.
        remote_reads: whether every read goes to Redis.
        server: its private redis-server (None for the floor).
    """

    name: str
    remote_reads: bool
    server: RedisServer | None = None
    get: Callable[[str], object]
    set: Callable[[str, bytes], object]
    get_many: Callable[[list[str]], object]
    get_or_load: Callable[[str, Callable[[], bytes]], bytes] | None = None

    def populate(self, keys: Sequence[str], value: bytes) -> None:
        for key in keys:
            self.set(key, value)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class Floor(System):
    """``cachetools.TTLCache`` behind a ``threading.RLock``: what an in-process hit costs."""

    name = FLOOR
    remote_reads = False

    def __init__(self, max_size: int) -> None:
        self.cache: cachetools.TTLCache[str, bytes] = cachetools.TTLCache(max_size, TTL)
        self.lock = threading.RLock()
        cache, lock = self.cache, self.lock

        def get(key: str) -> bytes | None:
            with lock:
                return cache.get(key)

        def set_(key: str, value: bytes) -> None:
            with lock:
                cache[key] = value

        def get_many(keys: list[str]) -> dict[str, bytes]:
            with lock:
                return {key: cache[key] for key in keys if key in cache}

        self.get, self.set, self.get_many = get, set_, get_many
        # cachetools' own singleflight: the decorator with a Condition (cachetools >= 5.4).
        condition = threading.Condition(threading.RLock())
        loaders: dict[str, Callable[[], bytes]] = {}

        @cachetools.cached(cache, lock=condition, condition=condition)
        def load(key: str) -> bytes:
            return loaders[key]()

        def get_or_load(key: str, loader: Callable[[], bytes]) -> bytes:
            loaders[key] = loader
            return load(key)

        self.get_or_load = get_or_load


class Dragonfly(System):
    """dragonfly_cache.TieredCache, L1 warm for the hot workloads."""

    name = DRAGONFLY
    remote_reads = False

    def __init__(self, server: RedisServer, max_size: int) -> None:
        self.server = server
        self.max_size = max_size
        self.cache = open_dragonfly(server.address, max_size)
        self.get, self.set, self.get_many = self.cache.get, self.cache.set, self.cache.get_many
        self.get_or_load = self.cache.get_or_load

    def fresh(self) -> TieredCache:
        """Another TieredCache on the same server: an empty L1 (the caller closes it)."""
        assert self.server is not None
        return open_dragonfly(self.server.address, self.max_size)

    def populate(self, keys: Sequence[str], value: bytes) -> None:
        for start in range(0, len(keys), 1000):
            self.cache.set_many(dict.fromkeys(keys[start:start + 1000], value))

    def close(self) -> None:
        self.cache.close()
        super().close()


class RawRedis(System):
    """redis-py itself: one GET per read (hiredis parser, default pool)."""

    name = RAW
    remote_reads = True

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.client = redis.Redis(host=server.host, port=server.port)
        client = self.client
        self.get = client.get
        self.get_many = client.mget

        def set_(key: str, value: bytes) -> None:
            client.set(key, value, ex=TTL)

        self.set = set_

    def get_with_pttl(self, key: str) -> tuple[bytes | None, int]:
        """GET + PTTL pipelined: what the L1's "never outlive the L2 key" rule needs."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        value, pttl = pipe.execute()
        return value, pttl

    def populate(self, keys: Sequence[str], value: bytes) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, value, ex=TTL)
        pipe.execute()

    def close(self) -> None:
        self.client.close()
        super().close()


class FlaskCaching(System):
    """Flask-Caching's RedisCache (values pickled; every read is a Redis GET)."""

    name = FLASK
    remote_reads = True

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.cache = FlaskRedisCache(host=server.host, port=server.port, default_timeout=TTL)
        cache = self.cache
        self.get = cache.get

        def set_(key: str, value: bytes) -> None:
            cache.set(key, value)

        def get_many(keys: list[str]) -> list[Any]:
            return cache.get_many(*keys)

        self.set, self.get_many = set_, get_many
        # The loader API: @memoize on the Flask extension (a second RedisCache, same server).
        app = Flask("benchmarks")
        self.extension = FlaskCache(app, config={
            "CACHE_TYPE": "RedisCache", "CACHE_REDIS_HOST": server.host,
            "CACHE_REDIS_PORT": server.port, "CACHE_DEFAULT_TIMEOUT": TTL,
            "CACHE_KEY_PREFIX": "memoize:"})
        loaders: dict[str, Callable[[], bytes]] = {}

        @self.extension.memoize(timeout=TTL)
        def load(key: str) -> bytes:
            return loaders[key]()

        def get_or_load(key: str, loader: Callable[[], bytes]) -> bytes:
            loaders[key] = loader
            return load(key)  # type: ignore[no-any-return]

        self.get_or_load = get_or_load

    def populate(self, keys: Sequence[str], value: bytes) -> None:
        for start in range(0, len(keys), 1000):
            self.cache.set_many(dict.fromkeys(keys[start:start + 1000], value))


class Dogpile(System):
    """dogpile.cache region on its redis backend (default in-process dogpile lock)."""

    name = DOGPILE
    remote_reads = True

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.region = make_region().configure(
            "dogpile.cache.redis", expiration_time=TTL,
            arguments={"host": server.host, "port": server.port,
                       "redis_expiration_time": TTL * 2})
        region = self.region
        self.get, self.set, self.get_many = region.get, region.set, region.get_multi

        def get_or_load(key: str, loader: Callable[[], bytes]) -> bytes:
            return region.get_or_create(key, loader)  # type: ignore[no-any-return]

        self.get_or_load = get_or_load

    def populate(self, keys: Sequence[str], value: bytes) -> None:
        for start in range(0, len(keys), 1000):
            self.region.set_multi(dict.fromkeys(keys[start:start + 1000], value))


def is_hit(value: object) -> bool:
    """Whether a system's read answered a value (dogpile says NO_VALUE, the others None)."""
    return value is not None and value is not NO_VALUE


def open_systems(pinning: Pinning, max_size: int) -> list[System]:
    """Start the servers and build every system (floor first)."""
    systems: list[System] = [Floor(max_size)]
    builders: Iterable[Callable[[RedisServer], System]] = (
        lambda server: Dragonfly(server, max_size), RawRedis, FlaskCaching, Dogpile)
    try:
        for build in builders:
            server = start_server(pinning)
            try:
                systems.append(build(server))
            except BaseException:
                server.close()
                raise
    except BaseException:
        for system in systems:
            system.close()
        raise
    return systems
