"""The hot path: every key cached, so dragonfly_cache answers from L1. Latency and
throughput against the in-process floor and the Redis-backed peers, with 1, 4 and 8
threads, and what attaching metrics costs there."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from _measure import (
    median,
    mixed_loop,
    ops_per_second,
    percentile,
    ratio_median,
    read_loop,
    threaded_ops_per_second,
    timed_calls_ns,
)
from _systems import DRAGONFLY, FLOOR, RAW, System

from .common import Context, Result, fmt, fmt_x, progress, rotated, target

__all__ = ["hot_reads_1t", "hot_reads_8t", "l1_bytes_bound", "metrics_overhead", "mixed_90_10"]


def hot_reads_1t(ctx: Context) -> Result:
    s = ctx.settings
    names = [system.name for system in ctx.systems]
    ops: dict[str, list[float]] = {n: [] for n in names}
    p50: dict[str, list[float]] = {n: [] for n in names}
    p99: dict[str, list[float]] = {n: [] for n in names}
    shifted = ctx.zipf[len(ctx.zipf) // 2:] + ctx.zipf[:len(ctx.zipf) // 2]
    for system in ctx.systems:  # warm-up: connections, L1, code paths
        ops_per_second(system.get, ctx.zipf, s.duration / 4)
    for r in range(s.rounds):
        progress(f"hot reads, 1 thread: round {r + 1}/{s.rounds}")
        for system in rotated(ctx.systems, r):
            ops[system.name].append(ops_per_second(system.get, ctx.zipf, s.duration))
            samples = timed_calls_ns(system.get, shifted, s.duration, ctx.overhead_ns)
            p50[system.name].append(percentile(samples, 50) / 1000)
            p99[system.name].append(percentile(samples, 99) / 1000)
    rows, data = [], {}
    for n in names:
        entry = {
            "ops_per_s": median(ops[n]), "p50_us": median(p50[n]), "p99_us": median(p99[n]),
            "p50_vs_floor": ratio_median(p50[n], p50[FLOOR]),
            "ops_vs_floor": ratio_median(ops[n], ops[FLOOR]),
            "p50_vs_redis_py": ratio_median(p50[n], p50[RAW]),
            "rounds": {"ops_per_s": ops[n], "p50_us": p50[n], "p99_us": p99[n]},
        }
        data[n] = entry
        rows.append([n, fmt(entry["ops_per_s"], 0), fmt(entry["p50_us"], 2),
                     fmt(entry["p99_us"], 2), fmt_x(entry["p50_vs_floor"]),
                     fmt_x(entry["ops_vs_floor"]), fmt_x(entry["p50_vs_redis_py"])])
    return {
        "title": f"Hot reads, 1 thread, Zipf(1.0) over {s.keys:,} keys",
        "note": f"p50/p99 per call in µs, each call timed with perf_counter_ns "
                f"(its own {ctx.overhead_ns:.0f} ns subtracted); ops/s from an untimed loop.",
        "columns": ["system", "ops/s", "p50 µs", "p99 µs", "p50 vs floor", "ops/s vs floor",
                    "p50 vs redis-py"],
        "rows": rows, "data": data,
        "targets": [target("L1 hit p50 ≤ 1.5x the cachetools+RLock floor",
                           data[DRAGONFLY]["p50_vs_floor"], 1.5, "<=", s.judge)],
    }


def _threaded(ctx: Context, title: str, threads: int,
              loop_for: Callable[[System], Callable[[int, float], int]]) -> dict[str, Any]:
    s = ctx.settings
    names = [system.name for system in ctx.systems]
    ops: dict[str, list[float]] = {n: [] for n in names}
    for system in ctx.systems:
        threaded_ops_per_second(loop_for(system), threads, s.duration / 4)
    for r in range(s.rounds):
        progress(f"{title}: round {r + 1}/{s.rounds}")
        for system in rotated(ctx.systems, r):
            ops[system.name].append(
                threaded_ops_per_second(loop_for(system), threads, s.duration))
    rows, data = [], {}
    for n in names:
        entry = {"ops_per_s": median(ops[n]), "vs_floor": ratio_median(ops[n], ops[FLOOR]),
                 "vs_redis_py": ratio_median(ops[n], ops[RAW]), "rounds": ops[n]}
        data[n] = entry
        rows.append([n, fmt(entry["ops_per_s"], 0), fmt_x(entry["vs_floor"]),
                     fmt_x(entry["vs_redis_py"])])
    return {"columns": ["system", "ops/s (all threads)", "vs floor", "vs redis-py"],
            "rows": rows, "data": data}


def hot_reads_8t(ctx: Context) -> Result:
    threads = 8
    stride = len(ctx.zipf) // threads

    def loop_for(system: System) -> Callable[[int, float], int]:
        return lambda index, deadline: read_loop(system.get, ctx.zipf, index * stride, deadline)

    result = _threaded(ctx, "hot reads, 8 threads", threads, loop_for)
    result["title"] = f"Hot reads, {threads} threads, Zipf(1.0) over {ctx.settings.keys:,} keys"
    result["note"] = "Aggregate ops/s of all threads (one GIL: threads interleave)."
    result["targets"] = [target("8-thread hot reads ≥ 0.8x the floor's ops/s",
                                result["data"][DRAGONFLY]["vs_floor"], 0.8, ">=",
                                ctx.settings.judge)]
    return result


def mixed_90_10(ctx: Context) -> Result:
    threads = 4
    rng = random.Random(90)
    writes = [rng.random() < 0.1 for _ in ctx.zipf]
    stride = len(ctx.zipf) // threads

    def loop_for(system: System) -> Callable[[int, float], int]:
        def loop(index: int, deadline: float) -> int:
            return mixed_loop(system.get, system.set, ctx.zipf, writes, ctx.value,
                              index * stride, deadline)
        return loop

    result = _threaded(ctx, "90/10 get/set, 4 threads", threads, loop_for)
    data = result["data"][DRAGONFLY]
    result["title"] = f"90% get / 10% set, {threads} threads, Zipf(1.0)"
    result["note"] = ("Aggregate ops/s; sets go to Redis (dragonfly_cache also publishes "
                      "the invalidation in the same round trip).")
    result["targets"] = [
        target("90/10 mixed ≥ 0.5x the floor's ops/s", data["vs_floor"], 0.5, ">=",
               ctx.settings.judge),
        target("90/10 mixed ≥ 10x raw redis-py's ops/s", data["vs_redis_py"], 10.0, ">=",
               ctx.settings.judge)]
    return result


def _paired_hit_p50(ctx: Context, gets: dict[str, Callable[[str], Any]], label: str
                    ) -> dict[str, list[float]]:
    """Per-call p50 (µs) of each of ``gets`` (an L1 hit: every key already set) over the
    Zipf keys, taking turns within each round: their ratios are read inside one run.

    Each round's time is cut into slices of about 40 ms, and the ``gets`` take turns
    slice by slice: this machine's speed swings within a round (a round's p50 of one
    and the same cache moved between 0.6 and 1.1 µs), and a turn per slice spreads
    every swing over all of them instead of giving it to whoever was timed then."""
    s = ctx.settings
    for get in gets.values():
        ops_per_second(get, ctx.zipf, s.duration / 4)
    slices = max(1, round(s.duration / 0.04))
    p50: dict[str, list[float]] = {name: [] for name in gets}
    for r in range(s.rounds):
        progress(f"{label}: round {r + 1}/{s.rounds}")
        samples: dict[str, list[float]] = {name: [] for name in gets}
        for n in range(slices):
            for name in rotated(list(gets), r + n):
                samples[name] += timed_calls_ns(gets[name], ctx.zipf, s.duration / slices,
                                                ctx.overhead_ns)
        for name, taken in samples.items():
            p50[name].append(percentile(sorted(taken), 50) / 1000)
    return p50


def _fill_alike(ctx: Context, dragonfly: Any, caches: dict[str, Any]) -> None:
    """Every key into each of ``caches``' L1 the same way: written to L2 by another cache
    first (a write by one of them would leave the others' L1 to be filled differently),
    then read with ``get_many``, so each L1 holds values of its own from the reply
    parser. (A cache whose L1 held one shared value object for every key answered its
    hits up to 10% faster than one holding 10,000 values: fewer memory cache misses.)"""
    dragonfly.populate(ctx.keys, ctx.value)
    for cache in caches.values():
        cache.get_many(ctx.keys)


def metrics_overhead(ctx: Context) -> Result:
    """The L1 hit path with Prometheus metrics attached vs not, plus the cost of one sync.

    "On" is a cache with :class:`dragonfly_cache.metrics.CacheMetrics` attached, as the
    Flask extension does: the hit path itself never touches Prometheus, and the counters
    are pushed by ``sync()`` (after each HTTP request), whose cost is reported apart.
    """
    from dragonfly_cache.metrics import CacheMetrics

    s = ctx.settings
    dragonfly = ctx.system(DRAGONFLY)
    caches = {"off": dragonfly.fresh(), "on": dragonfly.fresh()}
    exporter = CacheMetrics(caches["on"])
    try:
        _fill_alike(ctx, dragonfly, caches)
        p50 = _paired_hit_p50(ctx, {name: cache.get for name, cache in caches.items()},
                              "metrics on vs off")
        sync_us = []
        for _ in range(200):
            started = time.perf_counter()
            exporter.sync()
            sync_us.append((time.perf_counter() - started) * 1e6)
        cost = ratio_median(p50["on"], p50["off"]) - 1
    finally:
        for cache in caches.values():
            cache.close()
    data = {"p50_off_us": median(p50["off"]), "p50_on_us": median(p50["on"]), "cost": cost,
            "sync_us_p50": percentile(sorted(sync_us), 50),
            "rounds": {"p50_off_us": p50["off"], "p50_on_us": p50["on"]}}
    return {
        "title": "Metrics on vs off (L1 hit path)",
        "note": "Per-call p50 of get() on two warm caches, one with CacheMetrics attached; "
                "sync() pushes the counters to Prometheus once per HTTP request.",
        "columns": ["measure", "value"],
        "rows": [["L1 hit p50, metrics off", f"{data['p50_off_us']:.2f} µs"],
                 ["L1 hit p50, metrics on", f"{data['p50_on_us']:.2f} µs"],
                 ["cost on the hit path", f"{cost * 100:+.1f}%"],
                 ["one sync() (per HTTP request)", f"{data['sync_us_p50']:.1f} µs"]],
        "data": data,
        "targets": [target("Metrics on costs ≤ 5% on the L1 hit path", cost, 0.05, "<=",
                           s.judge, shown=f"{cost * 100:+.1f}%")],
    }


def l1_bytes_bound(ctx: Context) -> Result:
    """What bounding L1 in bytes (``l1.max_bytes``, issue 16) costs on the L1 hit path.

    Three warm L1s answer the same Zipf reads in turns: dragonfly_cache with the default
    byte bound (64 MiB), dragonfly_cache with a bound too large to ever bind (the entry
    count alone bounds it, as before issue 16), and the cachetools+RLock floor. A hit
    moves the entry to the end of the LRU order and counts no bytes (bytes are counted
    when an entry is stored or leaves), so the first two should match; the ratio to the
    floor is the whole L1 hit path's.
    """
    from _systems import open_dragonfly

    from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config, TieredCache

    dragonfly = ctx.system(DRAGONFLY)
    floor = ctx.system(FLOOR)
    unbound = TieredCache(CacheConfig(
        dragonfly=DragonflyConfig(addresses=[dragonfly.server.address]),
        l1=L1Config(max_size=dragonfly.max_size, ttl=3600.0, max_bytes=2**50),
        l2=L2Config(ttl=3600.0)))
    caches = {"default bound": open_dragonfly(dragonfly.server.address, dragonfly.max_size),
              "never binds": unbound}
    try:
        _fill_alike(ctx, dragonfly, caches)
        misses = {name: cache.stats()["l1_stats"]["misses"] for name, cache in caches.items()}
        p50 = _paired_hit_p50(ctx, {**{name: cache.get for name, cache in caches.items()},
                                    FLOOR: floor.get}, "L1 bytes bound")
        for name, cache in caches.items():
            if cache.stats()["l1_stats"]["misses"] != misses[name]:
                raise RuntimeError(f"l1_bytes_bound: a read of {name!r} missed L1")
    finally:
        for cache in caches.values():
            cache.close()
    cost = ratio_median(p50["default bound"], p50["never binds"]) - 1
    data = {name.replace(" ", "_") + "_p50_us": median(values) for name, values in p50.items()}
    data.update(cost=cost, vs_floor=ratio_median(p50["default bound"], p50[FLOOR]),
                rounds=p50)
    return {
        "title": "l1.max_bytes on the L1 hit path",
        "note": "Per-call p50 of get() on warm L1s read in turns; the floor is cachetools' "
                "TTLCache behind an RLock.",
        "columns": ["measure", "value"],
        "rows": [[f"L1 hit p50, {name}", f"{median(values):.2f} µs"]
                 for name, values in p50.items()]
                + [["cost of the byte bound on the hit path", f"{cost * 100:+.1f}%"],
                   ["hit p50 with the bound vs the floor", fmt_x(data["vs_floor"])]],
        "data": data,
        "targets": [target("l1.max_bytes costs ≤ 5% on the L1 hit path", cost, 0.05, "<=",
                           ctx.settings.judge, shown=f"{cost * 100:+.1f}%")],
    }
