"""A Flask app using Flask-Caching on our backend, in a spawned process driven over a Pipe.

Two of these against one server are two app processes: what one writes through
Flask-Caching, the other must serve within 100 ms although it held the old value in L1.
Every command gets exactly one reply, except ``watch``, which replies "ready" and then,
once it has seen the change, "seen".
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

from tests.helpers.spawned import Spawned

BACKEND = "dragonfly_cache.contrib.flask_caching.DragonflyCache"


def _lookups(stats: Any) -> tuple[int, int]:
    """(L1 hits, L2 lookups) of a ``stats()``."""
    return stats["l1_stats"]["hits"], stats["l2_stats"]["hits"] + stats["l2_stats"]["misses"]


def _watch(cache: Any, conn: Connection, key: str, old: Any, timeout: float) -> None:
    """Read ``key`` twice (the second must be an L1 hit, by the counters), say "ready",
    then read until the value changes."""
    tiered = cache.cache.tiered
    if cache.get(key) != old:
        conn.send(("error", f"{key!r} did not hold {old!r}"))
        return
    hits, l2 = _lookups(tiered.stats())
    second = cache.get(key)
    after_hits, after_l2 = _lookups(tiered.stats())
    conn.send(("ready", second == old and after_hits == hits + 1 and after_l2 == l2))
    deadline = time.monotonic() + timeout
    value = old
    while value == old:
        value = cache.get(key)
        if time.monotonic() > deadline:
            conn.send(("timeout", value))
            return
    conn.send(("seen", time.monotonic(), value))


def worker_main(address: str, secret_key: str, conn: Connection) -> None:
    """Entry point of the spawned process: the app, then commands until "stop"."""
    from flask import Flask
    from flask_caching import Cache

    app = Flask("flask_caching_worker")
    app.config.update(CACHE_TYPE=BACKEND, SECRET_KEY=secret_key,
                      CACHE_REDIS_URL=f"redis://{address}/0")
    cache = Cache(app)
    with app.app_context():
        tiered = cache.cache.tiered
        try:
            tiered.exists("warm-up")  # starts the invalidation listener
            deadline = time.monotonic() + 5
            while (tiered.stats()["coherence"]["state"] != "subscribed"
                   and time.monotonic() < deadline):
                time.sleep(0.005)
            conn.send(("started", tiered.stats()["coherence"]["state"]))
            while True:
                command: Any = conn.recv()
                if command[0] == "set":
                    started = time.monotonic()
                    conn.send(("done", started, cache.set(command[1], command[2])))
                elif command[0] == "get":
                    conn.send(("value", cache.get(command[1])))
                elif command[0] == "watch":
                    _watch(cache, conn, *command[1:])
                elif command[0] == "stop":
                    conn.send(("stopped",))
                    return
                else:
                    conn.send(("error", f"unknown command {command[0]!r}"))
        finally:
            tiered.close()
            conn.close()


class FlaskCachingWorker(Spawned):
    """The test process's handle on one worker process."""

    def __init__(self, address: str, secret_key: str) -> None:
        super().__init__(worker_main, address, secret_key, call_timeout=20.0)
        assert self.started == ("started", "subscribed"), self.started
