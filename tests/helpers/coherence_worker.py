"""A second process for coherence tests: a TieredCache driven over a multiprocessing Pipe.

Runs under the ``spawn`` start method, so it shares nothing with the test process but the
server. Commands are tuples; every command gets exactly one reply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, TieredCache
from tests.helpers.spawned import Spawned


def _l2_lookups(cache: TieredCache) -> int:
    stats = cache.stats()["l2_stats"]
    return int(stats["hits"] + stats["misses"])


def _watch(cache: TieredCache, conn: Connection, key: str, old: bytes, timeout: float
           ) -> None:
    """Fill L1 with ``old``, say "ready", then spin on L1 until the value changes."""
    if cache.get(key) != old or cache.get(key) != old:  # the second read is an L1 hit
        conn.send(("error", f"{key!r} did not hold {old!r}"))
        return
    before = _l2_lookups(cache)
    conn.send(("ready",))
    deadline = time.monotonic() + timeout
    value = old
    while value == old:
        value = cache.get(key)
        if time.monotonic() > deadline:
            conn.send(("timeout", _l2_lookups(cache) - before))
            return
    conn.send(("seen", time.monotonic(), value, _l2_lookups(cache) - before))


def _first_read(config: CacheConfig, conn: Connection, key: str, old: bytes,
                timeout: float) -> None:
    """Make a new cache and read ``key`` at once (its first operation, the listener just
    started), say "read", then spin until the value is no longer ``old``."""
    with TieredCache(config) as fresh:
        value = fresh.get(key)
        conn.send(("read", value, fresh.stats()["coherence"]["state"]))
        deadline = time.monotonic() + timeout
        while value == old and time.monotonic() < deadline:
            value = fresh.get(key)
        conn.send(("seen" if value != old else "timeout", time.monotonic(), value))


class _Stress:
    """Reader threads that hammer ``keys`` and remember any value other than the final."""

    def __init__(self, cache: TieredCache, keys: list[str], threads: int) -> None:
        self.cache = cache
        self.keys = keys
        self.final: dict[str, bytes | None] | None = None
        self.wrong: list[tuple[str, bytes | None]] = []
        self.reads = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True)
                         for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for key in self.keys:
                value = self.cache.get(key)
                self.reads += 1
                final = self.final
                if final is not None and value != final[key]:
                    self.wrong.append((key, value))

    def check(self, final: dict[str, bytes | None], settle: float, observe: float
              ) -> tuple[list[tuple[str, bytes | None]], int]:
        time.sleep(settle)  # let in-flight invalidations land (the documented settle time)
        self.final = final
        time.sleep(observe)  # keep reading: every value seen now must be the final one
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for key in self.keys:
            value = self.cache.get(key)
            if value != final[key]:
                self.wrong.append((key, value))
        return self.wrong, self.reads


def worker_main(address: str | list[str], prefix: str, invalidation: str | bool,
                conn: Connection) -> None:
    """Entry point of the spawned process (``address``: one, or a cluster's list)."""
    addresses = address if isinstance(address, list) else [address]
    config = CacheConfig(dragonfly=DragonflyConfig(addresses=addresses),
                         l1=L1Config(invalidation=invalidation), key_prefix=prefix)
    cache = TieredCache(config)
    stress: _Stress | None = None
    try:
        deadline = time.monotonic() + 5
        while (invalidation not in (False, "off")
               and cache.stats()["coherence"]["state"] != "subscribed"
               and time.monotonic() < deadline):
            time.sleep(0.005)
        conn.send(("started", cache.stats()["coherence"]["state"]))
        while True:
            command: Any = conn.recv()
            name = command[0]
            if name == "watch":
                _watch(cache, conn, command[1], command[2], command[3])
            elif name == "first_read":
                _first_read(config, conn, command[1], command[2], command[3])
            elif name == "get":
                conn.send(("value", cache.get(command[1])))
            elif name == "get_many":
                conn.send(("values", cache.get_many(command[1])))
            elif name == "stats":
                conn.send(("stats", cache.stats()))
            elif name == "stress_start":
                stress = _Stress(cache, command[1], command[2])
                conn.send(("started",))
            elif name == "stress_check":
                assert stress is not None
                conn.send(("checked", *stress.check(command[1], command[2], command[3])))
            elif name == "stop":
                conn.send(("stopped",))
                return
            else:
                conn.send(("error", f"unknown command {name!r}"))
    finally:
        cache.close()
        conn.close()


# -- the test process's side -------------------------------------------------------------


class Worker(Spawned):
    """Process B: a TieredCache in a spawned process, driven over a pipe."""

    def __init__(self, address: str | list[str], prefix: str,
                 invalidation: str | bool = "auto") -> None:
        super().__init__(worker_main, address, prefix, invalidation)
        assert self.started[0] == "started", self.started
        self.coherence = self.started[1]

    def stats(self) -> dict[str, Any]:
        return self.call("stats")[1]  # type: ignore[no-any-return]


def measure(writer: TieredCache, b: Worker, key: str, old: bytes,
            write: Callable[[], None], timeout: float = 2.0) -> tuple[str, float, Any, int]:
    """B holds ``key`` = ``old`` in L1; A runs ``write``; how long until B serves the change?"""
    reply = b.call("watch", key, old, timeout)
    assert reply == ("ready",), reply
    started = time.monotonic()
    write()
    outcome = b.call(timeout=timeout + 5)
    if outcome[0] == "seen":
        return "seen", outcome[1] - started, outcome[2], outcome[3]
    return outcome[0], timeout, None, outcome[1]
