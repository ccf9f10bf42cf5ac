"""Processes for the fleet-mutex and dogpile tests (spawned: they share only the server)."""

from __future__ import annotations

import time
from multiprocessing.synchronize import Barrier

import redis

from dragonfly_cache import CacheConfig, DragonflyConfig, TieredCache


def lock_member(address: str, barrier: Barrier, rounds: int) -> None:
    """``rounds`` times: take ``cache.lock("critical")`` and, inside, count this process in
    (``inside`` on the server must then be 1: nobody else is in) and out again.

    Every entry increments ``entries``; an entry that found someone else inside increments
    ``overlaps``, and one that had to wait for the lock ``contended``: the test reads them
    from the server.
    """
    raw = redis.Redis.from_url(f"redis://{address}")
    cache = TieredCache(CacheConfig(dragonfly=DragonflyConfig(addresses=[address])))
    barrier.wait()
    for _ in range(rounds):
        mutex = cache.lock("critical", ttl=10, poll=0.01)
        if not mutex.acquire(wait=False):
            raw.incr("contended")
            mutex.acquire()
        try:
            if raw.incr("inside") != 1:
                raw.incr("overlaps")
            raw.incr("entries")
            time.sleep(0.005)  # hold it a while, so the other process is kept waiting
            raw.decr("inside")
        finally:
            mutex.release()
    cache.close()
    raw.close()


def region_member(address: str, secret: str, barrier: Barrier, distributed: bool) -> None:
    """A dogpile region on our backend asks for one missing key; its creator counts its
    calls in ``creations`` on the server and takes 0.3 s."""
    from dogpile.cache import make_region

    raw = redis.Redis.from_url(f"redis://{address}")
    region = make_region().configure("dragonfly_cache", expiration_time=60, arguments={
        "url": f"redis://{address}/0", "pickle_secret": secret,
        "distributed_lock": distributed, "thread_local_lock": False})

    def create() -> dict[str, int]:
        raw.incr("creations")
        time.sleep(0.3)
        return {"answer": 42}

    barrier.wait()
    assert region.get_or_create("report", create) == {"answer": 42}
    region.backend.cache.close()
    raw.close()
