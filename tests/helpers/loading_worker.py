"""Processes for the loading tests (spawned: they share only the server with the test)."""

from __future__ import annotations

import os
import threading
import time
from multiprocessing.synchronize import Barrier
from typing import Any

import redis

from dragonfly_cache import CacheConfig, DragonflyConfig, L2Config, TieredCache


def memo_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The memoize key of tests.helpers.memo.lookup for these arguments, in this process."""
    from tests.helpers.memo import lookup

    return lookup.cache_key(*args, **kwargs)  # type: ignore[attr-defined, no-any-return]


def fleet_member(address: str, barrier: Barrier, threads: int, load_seconds: float,
                 lock_ttl: float, die_in_loader: bool) -> None:
    """``threads`` threads of this process ask for one missing key with the fleet lock.

    Every loader call increments ``loads`` on the server, so the test counts calls across
    the fleet. With ``die_in_loader`` the process dies (SIGKILL) inside its loader.
    """
    raw = redis.Redis.from_url(f"redis://{address}")
    cache = TieredCache(CacheConfig(dragonfly=DragonflyConfig(addresses=[address]),
                                    l2=L2Config(fleet_lock_ttl=lock_ttl)))

    def loader() -> bytes:
        raw.incr("loads")
        if die_in_loader:
            os.kill(os.getpid(), 9)
        time.sleep(load_seconds)
        return b"value from pid %d" % os.getpid()

    results: list[bytes] = []

    def ask() -> None:
        results.append(cache.get_or_load("hot", loader, lock=True))

    barrier.wait()
    workers = [threading.Thread(target=ask) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert len(results) == threads and len(set(results)) == 1, results
    cache.close()
