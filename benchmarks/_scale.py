"""Fleet scale: what one write costs the server as the number of processes grows.

N member processes (spawned: they share nothing but the server) each build a TieredCache
in the given coherence mode, read their own keys once (so each key is held by exactly one
process: in L1, and in tracking mode tracked on that process's connection), then sit
idle, as most workers of a big fleet do at any moment. The parent then writes those keys
through its own cache at a fixed rate, round robin over the members. Measured on the
server (``INFO cpu``, the server's own user+system CPU time) and on the receivers (each
member's ``stats()["coherence"]["received"]``, reported when it stops):

    server CPU per write      = CPU time used during the writes / writes
    messages per write        = invalidation messages all members received / writes

In pub/sub mode every write is announced to every process (messages = writes x N), in
tracking mode only to the connections that read the key (here: one).
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import redis
from _systems import wait_subscribed

__all__ = ["measure_scale"]

KEYS_PER_MEMBER = 8
READY_TIMEOUT = 60.0


def _config(address: str, mode: str) -> Any:
    from dragonfly_cache import CacheConfig

    return CacheConfig.from_env({"DRAGONFLY_ADDRESSES": address,
                                 "CACHE_L1_INVALIDATION": mode, "CACHE_L1_TTL": "10m",
                                 "CACHE_L2_TTL": "10m"})


def _keys(member: int) -> list[str]:
    return [f"scale:{member}:{n}" for n in range(KEYS_PER_MEMBER)]


def member_main(address: str, mode: str, member: int, ready: Event, stop: Event,
                conn: Connection) -> None:
    """One idle process of the fleet: holds its keys in L1 until told to stop."""
    from dragonfly_cache import TieredCache

    cache = TieredCache(_config(address, mode))
    try:
        wait_subscribed(cache)
        for key in _keys(member):
            if cache.get(key) is None:
                raise RuntimeError(f"member {member} found no {key}")
        ready.set()
        stop.wait()
        coherence = cache.stats()["coherence"]
        conn.send(int(coherence.get("received", 0)))
    finally:
        cache.close()


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_scale(address: str, mode: str, members: int, writes: int,
                  rate: float) -> dict[str, Any]:
    """``writes`` writes at ``rate`` per second with ``members`` idle processes holding
    the keys; returns server CPU and messages per write."""
    from dragonfly_cache import TieredCache

    client = redis.Redis.from_url(f"redis://{address}")
    writer = TieredCache(_config(address, mode))
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    started: list[tuple[Any, Event, Connection]] = []
    try:
        wait_subscribed(writer)
        for member in range(max(members, 1)):
            writer.set_many({key: b"v0" for key in _keys(member)})
        for member in range(members):
            ready = context.Event()
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=member_main, daemon=True,
                                      name=f"scale-member-{member}",
                                      args=(address, mode, member, ready, stop, send))
            process.start()
            started.append((process, ready, receive))
        for process, ready, _ in started:
            if not ready.wait(READY_TIMEOUT):
                raise RuntimeError(f"{process.name} did not get ready")
        time.sleep(0.2)  # let the fleet settle (subscriptions, first pings)
        targets = [key for member in range(max(members, 1)) for key in _keys(member)]
        before = _server_cpu(client)
        start = time.monotonic()
        for n in range(writes):
            pause = start + n / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            writer.set(targets[n % len(targets)], b"v%d" % n)
        elapsed = time.monotonic() - start
        time.sleep(0.2)  # the last messages reach the members
        cpu = _server_cpu(client) - before
        stop.set()
        received = 0
        for process, _, receive in started:
            if not receive.poll(READY_TIMEOUT):
                raise RuntimeError(f"{process.name} sent no count")
            received += receive.recv()
    finally:
        stop.set()
        for process, _, _ in started:
            process.join(10.0)
            if process.is_alive():
                process.kill()
                process.join()
        writer.close()
        client.close()
    return {"mode": mode, "members": members, "writes": writes,
            "rate": round(writes / elapsed, 1),
            "server_cpu_us_per_write": cpu / writes * 1e6,
            "messages_per_write": received / writes}
