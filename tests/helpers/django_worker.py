"""A process running a Django app's cache: our backend configured in ``CACHES``, driven over
a multiprocessing Pipe. Runs under ``spawn``, so each process configures Django itself and
shares nothing with the others but the server. Every command gets exactly one reply.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

from tests.helpers.spawned import Spawned

BACKEND = "dragonfly_cache.contrib.django.DragonflyCache"


def _counts(cache: Any) -> tuple[int, int]:
    """(L1 hits, L2 lookups) of the cache behind Django's ``cache``."""
    stats = cache.tiered.stats()
    return stats["l1_stats"]["hits"], stats["l2_stats"]["hits"] + stats["l2_stats"]["misses"]


def _watch(cache: Any, conn: Connection, key: str, old: object, timeout: float) -> None:
    """Read ``key`` until it is no longer ``old``; report when, and what the reads cost."""
    if cache.get(key) != old:
        conn.send(("error", f"{key!r} did not hold {old!r}"))
        return
    hits, lookups = _counts(cache)
    conn.send(("ready",))
    deadline = time.monotonic() + timeout
    value, reads = old, 0
    while value == old:
        value = cache.get(key)
        reads += 1
        if time.monotonic() > deadline:
            conn.send(("timeout", reads))
            return
    seen = time.monotonic()
    hits_after, lookups_after = _counts(cache)
    conn.send(("seen", seen, value, reads, hits_after - hits, lookups_after - lookups))


def worker_main(location: str, secret: str, conn: Connection) -> None:
    """Entry point of the spawned process: a Django configuration with one line for us."""
    import django
    from django.conf import settings

    settings.configure(SECRET_KEY=secret,
                       CACHES={"default": {"BACKEND": BACKEND, "LOCATION": location}})
    django.setup()
    from django.core.cache import cache

    try:
        cache.has_key("warm-up")  # the first call that reaches L2 starts the listener
        deadline = time.monotonic() + 5
        while (cache.tiered.stats()["coherence"]["state"] != "subscribed"
               and time.monotonic() < deadline):
            time.sleep(0.005)
        conn.send(("started", cache.tiered.stats()["coherence"]["state"]))
        while True:
            command: Any = conn.recv()
            name = command[0]
            if name == "set":
                cache.set(command[1], command[2])
                conn.send(("done",))
            elif name == "get":
                conn.send(("value", cache.get(command[1])))
            elif name == "watch":
                _watch(cache, conn, command[1], command[2], command[3])
            elif name == "stats":
                conn.send(("stats", cache.tiered.stats()))
            elif name == "stop":
                conn.send(("stopped",))
                return
            else:
                conn.send(("error", f"unknown command {name!r}"))
    finally:
        conn.close()


class DjangoWorker(Spawned):
    """A spawned process with Django's ``cache`` on our backend, driven over a pipe."""

    def __init__(self, location: str, secret: str) -> None:
        super().__init__(worker_main, location, secret)
        assert self.started[0] == "started", self.started
        self.coherence = self.started[1]
