"""Cross-process staleness: how long a reader process keeps serving a version after a
writer process has replaced it.

Process A (the writer) sets a new version of one key every ``period`` seconds through its
own TieredCache and notes the time each ``set()`` returned. Process B (the reader) reads
the key in a tight loop through its own TieredCache (L1 hits, until the invalidation
arrives) and notes when it first saw each version. Both are started with the ``spawn``
method, so they share nothing but the server; both use ``time.monotonic``
(CLOCK_MONOTONIC, one clock for the whole machine), so their times compare directly.

Per version v (written at ``w[v]``, when A's set returned):
    delay[v]     = first time B saw v, minus w[v]     (versions B saw; clamped at 0, since
                   B may see v before A's reply arrives)
    staleness[v] = first time B saw v *or a later one*, minus w[v]   (every version: how
                   long after the write B still answered something older)
    answered[v]  = the last time a read of B that *began* then answered a version older
                   than v, minus w[v] (clamped at 0): how long after the write a new read
                   could still get the replaced value (a read that began before and was
                   then descheduled is not counted against the cache). A
                   delay can be long while nothing stale is answered: once the
                   invalidation is applied, B's reads go to L2, and the read that brings
                   the new version may itself wait (for the server, or for the CPU).
A version B never saw was overwritten before B caught up with it.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from _measure import percentile
from _systems import open_dragonfly

__all__ = ["measure_staleness"]

KEY = "staleness:key"
VALUE_SIZE = 100
READY_TIMEOUT = 30.0


def _encode(version: int) -> bytes:
    return f"{version:010d}".encode().ljust(VALUE_SIZE, b".")


def _decode(value: bytes) -> int:
    return int(value[:10])


def writer_main(address: str, count: int, period: float, ready: Event, go: Event,
                conn: Connection, mode: str = "auto", raw: bool = False) -> None:
    """Process A: write versions 1..count, one every ``period``; send the write times.
    ``raw``: through a plain redis-py client (another application), not a TieredCache."""
    import redis

    cache: Any = (redis.Redis.from_url(f"redis://{address}") if raw
                  else open_dragonfly(address, 1000, mode))
    try:
        ready.set()
        go.wait()
        written: list[float] = []
        start = time.monotonic()
        for version in range(1, count + 1):
            pause = start + version * period - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            cache.set(KEY, _encode(version))
            written.append(time.monotonic())
        conn.send(written)
    finally:
        cache.close()


def reader_main(address: str, count: int, budget: float, ready: Event, go: Event,
                conn: Connection, mode: str = "auto") -> None:
    """Process B: read in a tight loop until version ``count`` (or ``budget`` s) is seen."""
    cache = open_dragonfly(address, 1000, mode)
    try:
        get, clock = cache.get, time.monotonic
        if get(KEY) != _encode(0) or get(KEY) != _encode(0):  # fill L1, then hit it
            raise RuntimeError("the reader did not find version 0")
        ready.set()
        go.wait()
        seen: dict[int, float] = {}
        answered: dict[int, float] = {}  # version -> the last time a read returned it
        last: object = None
        version = 0
        reads = 0
        deadline = clock() + budget
        while True:
            began = clock()
            value = get(KEY)
            now = clock()
            reads += 1
            if value is not last:  # a new object: refetched from L2, maybe a new version
                last = value
                if value is not None:
                    version = _decode(value)
                    if version not in seen:
                        seen[version] = now
                    if version >= count:
                        break
            if value is not None:  # a read that began then still answered this version
                answered[version] = began
            if not reads & 1023 and now > deadline:
                break
        conn.send((seen, answered, reads, cache.stats()["l2_stats"]))
    finally:
        cache.close()


def measure_staleness(address: str, seconds: float, period: float, mode: str = "auto",
                      raw: bool = False) -> dict[str, Any]:
    """Run one writer and one reader process for ``seconds``; return the measurements.

    Args:
        mode: both caches' ``l1.invalidation``.
        raw: the writer is a plain redis-py client (``SET``), not a TieredCache.
    """
    count = max(2, round(seconds / period))
    seed = open_dragonfly(address, 10)
    try:
        seed.set(KEY, _encode(0))
    finally:
        seed.close()
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    writer_ready, reader_ready = context.Event(), context.Event()
    writer_conn, writer_end = context.Pipe(duplex=False)
    reader_conn, reader_end = context.Pipe(duplex=False)
    reader = context.Process(target=reader_main, name="staleness-reader", daemon=True,
                             args=(address, count, seconds + 5.0, reader_ready, go, reader_end,
                                   mode))
    writer = context.Process(target=writer_main, name="staleness-writer", daemon=True,
                             args=(address, count, period, writer_ready, go, writer_end, mode,
                                   raw))
    processes = [reader, writer]
    try:
        for process in processes:
            process.start()
        for name, event in (("reader", reader_ready), ("writer", writer_ready)):
            if not event.wait(READY_TIMEOUT):
                raise RuntimeError(f"the staleness {name} process did not get ready")
        go.set()
        budget = seconds + 15.0
        if not writer_conn.poll(budget) or not reader_conn.poll(budget):
            raise RuntimeError("a staleness process sent no result")
        written: list[float] = writer_conn.recv()
        seen, answered, reads, reader_l2 = reader_conn.recv()
    finally:
        for process in processes:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
    return _summarise(written, seen, answered, reads, reader_l2, period)


def _summarise(written: list[float], seen: dict[int, float], answered: dict[int, float],
               reads: int, reader_l2: dict[str, Any], period: float) -> dict[str, Any]:
    count = len(written)
    stale_answers = []
    latest = -float("inf")  # the last time B answered a version older than v
    for version in range(1, count + 1):
        latest = max(latest, answered.get(version - 1, -float("inf")))
        stale_answers.append(max(0.0, latest - written[version - 1]))
    stale_answers.sort()
    delays, staleness = [], []
    caught_up = float("inf")  # earliest time B saw version >= v, walking v downwards
    for version in range(count, 0, -1):
        at = written[version - 1]
        if version in seen:
            caught_up = min(caught_up, seen[version])
            delays.append(max(0.0, seen[version] - at))
        staleness.append(caught_up - at)
    delays.sort()
    staleness.sort()
    missed = [v for v in range(1, count + 1) if v not in seen]
    return {
        "versions_written": count,
        "write_period_ms": period * 1000,
        "versions_seen": count - len(missed),
        "versions_never_seen": len(missed),
        "delay_p50_ms": percentile(delays, 50) * 1000,
        "delay_p99_ms": percentile(delays, 99) * 1000,
        "delay_max_ms": (delays[-1] if delays else float("nan")) * 1000,
        "longest_stale_ms": staleness[-1] * 1000 if staleness else float("nan"),
        "stale_p99_ms": percentile(staleness, 99) * 1000,
        "stale_answers_p50_ms": percentile(stale_answers, 50) * 1000,
        "stale_answers_p99_ms": percentile(stale_answers, 99) * 1000,
        "reader_reads": reads,
        "reader_l2_lookups": int(reader_l2["hits"] + reader_l2["misses"]),
    }
