"""Fleet stampede: several processes, many threads each, one missing key, one loader.

Each process is spawned (nothing shared but the server), builds its own TieredCache, and
waits on a cross-process Barrier with the parent; the parent's release time starts the
clock. Loader calls are counted on the server (INCR), so they add up across processes.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def member_main(address: str, key: str, threads: int, loader_seconds: float, lock: bool,
                barrier: Barrier, results: Connection) -> None:
    """One process of the fleet: ``threads`` callers of ``key``; reports when all returned."""
    sys.path.insert(0, str(ROOT))
    import redis

    from dragonfly_cache import CacheConfig, DragonflyConfig, TieredCache

    raw = redis.Redis.from_url(f"redis://{address}")
    cache = TieredCache(CacheConfig(dragonfly=DragonflyConfig(addresses=[address])))
    cache.exists("warm-up")  # connections and the listener, before the clock starts

    def loader() -> bytes:
        raw.incr(f"{key}:loads")
        time.sleep(loader_seconds)
        return b"x" * 100

    inner = threading.Barrier(threads + 1)
    got: list[bool] = []

    def caller() -> None:
        inner.wait()
        got.append(cache.get_or_load(key, loader, lock=lock) == b"x" * 100)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    inner.wait()
    for worker in workers:
        worker.join(60)
    results.send((time.monotonic(), all(got) and len(got) == threads))
    cache.close()


def fleet_stampede(address: str, key: str, processes: int, threads: int,
                   loader_seconds: float, lock: bool) -> dict[str, Any]:
    """Run one round; returns loader calls, wall seconds and whether every caller got it."""
    import redis

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    pipes = [context.Pipe(duplex=False) for _ in range(processes)]
    members = [context.Process(target=member_main, daemon=True,
                               args=(address, key, threads, loader_seconds, lock, barrier,
                                     sender))
               for _, sender in pipes]
    for member in members:
        member.start()
    barrier.wait(60)
    released = time.monotonic()
    finished, ok = [], True
    for receiver, _ in pipes:
        if not receiver.poll(60):
            raise RuntimeError("a fleet member sent no result")
        done, all_got = receiver.recv()
        finished.append(done)
        ok = ok and all_got
    for member in members:
        member.join(10)
    loads = int(redis.Redis.from_url(f"redis://{address}").get(f"{key}:loads") or 0)
    return {"loader_calls": loads, "wall": max(finished) - released, "ok": ok}
