"""The workloads of issue 8. Each returns a table (for the markdown) and its raw data.

Rounds interleave the systems (the order rotates every round, so no system always runs
first or right after another), each round measures every system for the same time, and a
ratio is taken within a round before the median over rounds is reported.
"""

from __future__ import annotations

import functools
import gc
import random
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _fleet import fleet_stampede
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
from _staleness import measure_staleness
from _systems import (
    DOGPILE,
    DRAGONFLY,
    FLASK,
    FLOOR,
    RAW,
    Dragonfly,
    Floor,
    RawRedis,
    System,
    open_dragonfly,
)
from redis.cluster import RedisCluster

from dragonfly_cache import TieredCache
from tests.helpers.cluster import LocalCluster

__all__ = ["WORKLOADS", "Context", "Settings"]

VALUE_SIZE = 100


@dataclass(frozen=True)
class Settings:
    """How big and how long; one instance per mode (see ``run.py``)."""

    mode: str
    rounds: int
    duration: float  # seconds each system is measured per round (per measurement)
    keys: int  # key space of the hot workloads
    sample: int  # length of the precomputed Zipf key sequence
    stampede_rounds: int
    stampede_threads: int
    loader_seconds: float
    staleness_seconds: float
    write_period: float
    memory_entries: int
    judge: bool  # compare with the targets (never in smoke mode)


@dataclass
class Context:
    settings: Settings
    systems: list[System]
    keys: list[str]
    zipf: list[str]
    value: bytes
    overhead_ns: float

    def system(self, name: str) -> Any:
        return next(s for s in self.systems if s.name == name)


Result = dict[str, Any]


def _fmt(value: float, digits: int = 1) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _x(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}x"


def _target(text: str, measured: float, limit: float, op: str, judge: bool,
            shown: str | None = None) -> dict[str, Any]:
    """One target of issue 8; ``met`` is None when not judged (smoke mode) or unmeasured."""
    met: bool | None = None
    if judge and measured == measured:
        met = measured <= limit if op == "<=" else measured >= limit
    if shown is None:
        # Two decimals, or three where two would round onto the limit and hide the verdict.
        close = measured == measured and round(measured, 2) == limit
        shown = f"{measured:.3f}x" if close else _x(measured)
    return {"target": text, "measured": measured, "limit": limit, "op": op,
            "shown": shown, "met": met}


def _rotated(items: Sequence[Any], round_index: int) -> list[Any]:
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- hot reads -------------------------------------------------------------------------


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
        _progress(f"hot reads, 1 thread: round {r + 1}/{s.rounds}")
        for system in _rotated(ctx.systems, r):
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
        rows.append([n, _fmt(entry["ops_per_s"], 0), _fmt(entry["p50_us"], 2),
                     _fmt(entry["p99_us"], 2), _x(entry["p50_vs_floor"]),
                     _x(entry["ops_vs_floor"]), _x(entry["p50_vs_redis_py"])])
    return {
        "title": f"Hot reads, 1 thread, Zipf(1.0) over {s.keys:,} keys",
        "note": f"p50/p99 per call in µs, each call timed with perf_counter_ns "
                f"(its own {ctx.overhead_ns:.0f} ns subtracted); ops/s from an untimed loop.",
        "columns": ["system", "ops/s", "p50 µs", "p99 µs", "p50 vs floor", "ops/s vs floor",
                    "p50 vs redis-py"],
        "rows": rows, "data": data,
        "targets": [_target("L1 hit p50 ≤ 1.5x the cachetools+RLock floor",
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
        _progress(f"{title}: round {r + 1}/{s.rounds}")
        for system in _rotated(ctx.systems, r):
            ops[system.name].append(
                threaded_ops_per_second(loop_for(system), threads, s.duration))
    rows, data = [], {}
    for n in names:
        entry = {"ops_per_s": median(ops[n]), "vs_floor": ratio_median(ops[n], ops[FLOOR]),
                 "vs_redis_py": ratio_median(ops[n], ops[RAW]), "rounds": ops[n]}
        data[n] = entry
        rows.append([n, _fmt(entry["ops_per_s"], 0), _x(entry["vs_floor"]),
                     _x(entry["vs_redis_py"])])
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
    result["targets"] = [_target("8-thread hot reads ≥ 0.8x the floor's ops/s",
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
        _target("90/10 mixed ≥ 0.5x the floor's ops/s", data["vs_floor"], 0.5, ">=",
                ctx.settings.judge),
        _target("90/10 mixed ≥ 10x raw redis-py's ops/s", data["vs_redis_py"], 10.0, ">=",
                ctx.settings.judge)]
    return result


# -- the L2 path -----------------------------------------------------------------------


def l2_path(ctx: Context) -> Result:
    """A key in Redis but not in this process's L1: a fresh TieredCache per round, each key
    read once by it; the others always go to Redis anyway."""
    s = ctx.settings
    dragonfly: Dragonfly = ctx.system(DRAGONFLY)
    raw: RawRedis = ctx.system(RAW)
    variants: list[tuple[str, Callable[[], Callable[[str], object] | None]]] = [
        (DRAGONFLY, lambda: None),  # built per round, below
        (RAW + " GET", lambda: raw.get),
        (RAW + " GET+PTTL pipeline", lambda: raw.get_with_pttl),
        (FLASK, lambda: ctx.system(FLASK).get),
        (DOGPILE, lambda: ctx.system(DOGPILE).get),
    ]
    p50: dict[str, list[float]] = {n: [] for n, _ in variants}
    p99: dict[str, list[float]] = {n: [] for n, _ in variants}
    rng = random.Random(2)
    for r in range(s.rounds):
        _progress(f"L2 path: round {r + 1}/{s.rounds}")
        keys = list(ctx.keys)
        rng.shuffle(keys)
        for name, op_for in _rotated(variants, r):
            if name == DRAGONFLY:
                cache = dragonfly.fresh()
                try:
                    samples = timed_calls_ns(cache.get, keys, s.duration, ctx.overhead_ns,
                                             wrap=False)
                    l2 = cache.stats()["l2_stats"]
                    if l2["misses"] > 1 or l2["hits"] < len(samples):  # 1: the warm-up key
                        raise RuntimeError(f"L2 path: not every read reached L2 as a hit: {l2}")
                finally:
                    cache.close()
            else:
                op = op_for()
                assert op is not None
                samples = timed_calls_ns(op, keys, s.duration, ctx.overhead_ns)
            p50[name].append(percentile(samples, 50) / 1000)
            p99[name].append(percentile(samples, 99) / 1000)
    reference = p50[RAW + " GET"]
    rows, data = [], {}
    for name, _ in variants:
        entry = {"p50_us": median(p50[name]), "p99_us": median(p99[name]),
                 "vs_redis_py_get": ratio_median(p50[name], reference),
                 "rounds": {"p50_us": p50[name], "p99_us": p99[name]}}
        data[name] = entry
        rows.append([name, _fmt(entry["p50_us"], 1), _fmt(entry["p99_us"], 1),
                     _x(entry["vs_redis_py_get"])])
    return {
        "title": "L2 path: key in Redis, not in this process's L1",
        "note": "Per-call µs. dragonfly_cache: a fresh TieredCache (empty L1, listener "
                "subscribed) each round, each key read once (one GET+PTTL round trip, "
                "then the L1 fill).",
        "columns": ["system", "p50 µs", "p99 µs", "p50 vs redis-py GET"],
        "rows": rows, "data": data,
        "targets": [_target("L2 path p50 ≤ 1.2x a raw redis-py GET",
                            data[DRAGONFLY]["vs_redis_py_get"], 1.2, "<=", s.judge)],
    }


# -- get_many --------------------------------------------------------------------------


def _shuffled_batches(keys: Sequence[str], size: int, rng: random.Random) -> list[list[str]]:
    """``keys`` in a new random order, cut into whole batches of ``size``."""
    shuffled = list(keys)
    rng.shuffle(shuffled)
    return [shuffled[i:i + size] for i in range(0, len(shuffled) - size + 1, size)]


def _cold_p50_us(name: str, cache: TieredCache, read: Callable[[list[str]], object],
                 batches: list[list[str]], ctx: Context) -> float:
    """p50 µs of ``read(batch)`` (a read through ``cache``) over ``batches``, each read
    once, so ``cache`` must stay L1-cold; it is closed afterwards."""
    try:
        samples = timed_calls_ns(read, batches, ctx.settings.duration, ctx.overhead_ns,
                                 wrap=False)
        if cache.stats()["l1_stats"]["hits"]:
            raise RuntimeError(f"{name}: keys were not L1-cold")
    finally:
        cache.close()
    return percentile(samples, 50) / 1000


def _p50_rows(p50: dict[str, list[float]], reference: str, ratio: str
              ) -> tuple[list[list[str]], dict[str, Any]]:
    """Table rows and data of per-round p50s: the median, and the per-round ratio to
    ``reference`` stored under ``ratio``."""
    rows, data = [], {}
    for name, rounds in p50.items():
        entry = {"p50_us": median(rounds), ratio: ratio_median(rounds, p50[reference]),
                 "rounds": rounds}
        data[name] = entry
        rows.append([name, _fmt(entry["p50_us"], 0), _x(entry[ratio])])
    return rows, data


def get_many_100(ctx: Context) -> Result:
    s = ctx.settings
    size = min(100, len(ctx.keys))
    dragonfly: Dragonfly = ctx.system(DRAGONFLY)
    raw: RawRedis = ctx.system(RAW)
    flask, dogpile = ctx.system(FLASK), ctx.system(DOGPILE)

    def singles(get: Callable[[str], object]) -> Callable[[list[str]], None]:
        def each(batch: list[str]) -> None:
            for key in batch:
                get(key)
        return each

    def mget_pttl(batch: list[str]) -> list[Any]:
        pipe = raw.client.pipeline(transaction=False)
        pipe.mget(batch)
        for key in batch:
            pipe.pttl(key)
        return pipe.execute()  # type: ignore[no-any-return]

    fresh_variants = {  # need an L1-cold TieredCache: built per round
        f"{DRAGONFLY} get_many({size})": lambda cache: cache.get_many,
        f"{DRAGONFLY} {size}x get": lambda cache: singles(cache.get),
    }
    variants: dict[str, Callable[[], Callable[[list[str]], object]]] = {
        f"{RAW} MGET({size})": lambda: raw.client.mget,
        f"{RAW} {size}x GET": lambda: singles(raw.get),
        f"{RAW} MGET+{size}xPTTL pipeline": lambda: mget_pttl,
        f"{FLASK} get_many({size})": lambda: lambda batch: flask.cache.get_many(*batch),
        f"{DOGPILE} get_multi({size})": lambda: dogpile.region.get_multi,
    }
    names = [*fresh_variants, *variants]
    p50: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(100)
    for r in range(s.rounds):
        _progress(f"get_many: round {r + 1}/{s.rounds}")
        batches = _shuffled_batches(ctx.keys, size, rng)
        for name in _rotated(names, r):
            if name in fresh_variants:
                cache = dragonfly.fresh()
                p50[name].append(_cold_p50_us(name, cache, fresh_variants[name](cache),
                                              batches, ctx))
            else:
                samples = timed_calls_ns(variants[name](), batches, s.duration,
                                         ctx.overhead_ns)
                p50[name].append(percentile(samples, 50) / 1000)
    rows, data = _p50_rows(p50, f"{RAW} MGET({size})", "vs_mget")
    return {
        "title": f"get_many of {size} L1-cold keys vs {size} single gets vs raw MGET",
        "note": f"µs per call of {size} keys (p50). dragonfly_cache: a fresh TieredCache per "
                "variant and round, each batch read once.",
        "columns": ["variant", "p50 µs / call", "vs redis-py MGET"],
        "rows": rows, "data": data,
        "targets": [_target(f"get_many({size}) ≤ 1.3x a raw redis-py MGET of the same keys",
                            data[f"{DRAGONFLY} get_many({size})"]["vs_mget"], 1.3, "<=",
                            s.judge)],
    }


def get_many_cluster(ctx: Context) -> Result:
    """get_many(100) on a 3-primary Redis Cluster vs on one server, and redis-py's own
    cluster batch read (``RedisCluster.mget_nonatomic``) as the reference.

    The cluster's nodes are started here, unpinned (``--pin`` applies to the standalone
    servers only): on this 2-core machine three servers and the client share the cores.
    """
    s = ctx.settings
    size = min(100, len(ctx.keys))
    dragonfly: Dragonfly = ctx.system(DRAGONFLY)
    with LocalCluster() as cluster:
        addresses = list(cluster.addresses)
        seed = open_dragonfly(addresses, len(ctx.keys) + 10)
        reference_client = RedisCluster(host=cluster.host, port=cluster.nodes[0].port,
                                        protocol=2)
        try:
            for start in range(0, len(ctx.keys), 1000):
                seed.set_many(dict.fromkeys(ctx.keys[start:start + 1000], ctx.value))
            fresh_variants: dict[str, Callable[[], TieredCache]] = {
                f"{DRAGONFLY} get_many({size}), one server": dragonfly.fresh,
                f"{DRAGONFLY} get_many({size}), 3-node cluster": functools.partial(
                    open_dragonfly, addresses, len(ctx.keys) + 10),
            }
            reference = f"redis-py RedisCluster.mget_nonatomic({size}), 3-node cluster"
            names = [*fresh_variants, reference]
            p50: dict[str, list[float]] = {n: [] for n in names}
            rng = random.Random(101)
            for r in range(s.rounds):
                _progress(f"get_many_cluster: round {r + 1}/{s.rounds}")
                batches = _shuffled_batches(ctx.keys, size, rng)
                for name in _rotated(names, r):
                    if name == reference:
                        samples = timed_calls_ns(reference_client.mget_nonatomic, batches,
                                                 s.duration, ctx.overhead_ns)
                        p50[name].append(percentile(samples, 50) / 1000)
                    else:
                        cache = fresh_variants[name]()
                        p50[name].append(_cold_p50_us(name, cache, cache.get_many, batches,
                                                      ctx))
        finally:
            reference_client.close()
            seed.close()
    rows, data = _p50_rows(p50, names[0], "vs_one_server")
    return {
        "title": f"get_many of {size} L1-cold keys: 3-primary cluster vs one server",
        "note": f"µs per call of {size} keys (p50), keys spread over every node. The cluster "
                "sends GET+PTTL per key (a script or MGET may only touch one slot), one "
                "pipeline per node, every node written before any is read.",
        "columns": ["variant", "p50 µs / call", "vs one server"],
        "rows": rows, "data": data, "targets": [],
    }


# -- stampede --------------------------------------------------------------------------


def _stampede_once(get_or_load: Callable[[str, Callable[[], bytes]], bytes], key: str,
                   threads: int, loader_seconds: float, value: bytes) -> tuple[int, float, bool]:
    """``threads`` callers of one missing key, released together by a Barrier.

    Returns:
        (loader calls, wall seconds from the barrier to the last caller's return,
        whether every caller got the value)
    """
    calls = [0]
    calls_lock = threading.Lock()

    def loader() -> bytes:
        with calls_lock:
            calls[0] += 1
        time.sleep(loader_seconds)
        return value

    start = [0.0]
    barrier = threading.Barrier(threads, action=lambda: start.__setitem__(0, time.perf_counter()))
    ends = [0.0] * threads
    answers: list[object] = [None] * threads

    def caller(index: int) -> None:
        barrier.wait()
        try:
            answers[index] = get_or_load(key, loader)
        except Exception as exc:  # counted as a wrong answer
            answers[index] = exc
        ends[index] = time.perf_counter()

    workers = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return calls[0], max(ends) - start[0], all(a == value for a in answers)


def stampede(ctx: Context) -> Result:
    s = ctx.settings
    contenders = [system for system in ctx.systems if system.get_or_load is not None]
    api = {FLOOR: "@cached(condition=)", DRAGONFLY: "get_or_load", FLASK: "@memoize",
           DOGPILE: "get_or_create"}
    calls: dict[str, list[int]] = {c.name: [] for c in contenders}
    walls: dict[str, list[float]] = {c.name: [] for c in contenders}
    correct: dict[str, bool] = {c.name: True for c in contenders}
    for r in range(s.stampede_rounds):
        _progress(f"stampede: round {r + 1}/{s.stampede_rounds}")
        for system in _rotated(contenders, r):
            assert system.get_or_load is not None
            n, wall, ok = _stampede_once(system.get_or_load, f"stampede:{r}", s.stampede_threads,
                                         s.loader_seconds, ctx.value)
            calls[system.name].append(n)
            walls[system.name].append(wall)
            correct[system.name] = correct[system.name] and ok
    rows, data = [], {}
    for c in contenders:
        n = c.name
        entry = {"api": api.get(n, "?"), "loader_calls_median": median(calls[n]),
                 "loader_calls_max": max(calls[n]), "loader_calls_min": min(calls[n]),
                 "wall_ms": median(walls[n]) * 1000,
                 "wall_vs_loader": median(walls[n]) / s.loader_seconds,
                 "all_callers_got_value": correct[n],
                 "rounds": {"loader_calls": calls[n], "wall_ms": [w * 1000 for w in walls[n]]}}
        data[n] = entry
        rows.append([n, entry["api"], f"{entry['loader_calls_median']:g} "
                     f"(max {entry['loader_calls_max']})", _fmt(entry["wall_ms"], 1),
                     _x(entry["wall_vs_loader"]), "yes" if correct[n] else "NO"])
    ours = data[DRAGONFLY]
    once = (ours["loader_calls_max"] == 1 and ours["loader_calls_min"] == 1
            and ours["all_callers_got_value"])
    return {
        "title": f"Stampede: {s.stampede_threads} threads on a Barrier, one missing key, "
                 f"{s.loader_seconds * 1000:.0f} ms loader",
        "note": f"Median over {s.stampede_rounds} rounds (a new key each round). Wall: from "
                "the barrier's release to the last caller's return. redis-py has no loader "
                "API.",
        "columns": ["system", "API", "loader calls / round", "wall ms", "wall vs loader",
                    "every caller got the value"],
        "rows": rows, "data": data,
        "targets": [
            _target("Stampede: exactly 1 loader call per round", 1.0 if once else 0.0, 1.0,
                    ">=", s.judge, shown=f"{ours['loader_calls_min']}..."
                    f"{ours['loader_calls_max']} calls"),
            _target("Stampede wall ≤ 1.2x the loader time", ours["wall_vs_loader"], 1.2, "<=",
                    s.judge)],
    }


# -- cross-process staleness -----------------------------------------------------------


def cross_process_staleness(ctx: Context) -> Result:
    s = ctx.settings
    dragonfly: Dragonfly = ctx.system(DRAGONFLY)
    assert dragonfly.server is not None
    _progress(f"cross-process staleness: {s.staleness_seconds:g} s")
    data = measure_staleness(dragonfly.server.address, s.staleness_seconds, s.write_period)
    data["gil_switch_interval_ms"] = sys.getswitchinterval() * 1000
    rows = [
        ["versions written (one every "
         f"{data['write_period_ms']:g} ms)", str(data["versions_written"])],
        ["delay until B sees a version, p50", f"{_fmt(data['delay_p50_ms'], 2)} ms"],
        ["delay until B sees a version, p99", f"{_fmt(data['delay_p99_ms'], 2)} ms"],
        ["delay, max", f"{_fmt(data['delay_max_ms'], 2)} ms"],
        ["versions B never saw", str(data["versions_never_seen"])],
        ["longest time B answered an older version", f"{_fmt(data['longest_stale_ms'], 2)} ms"],
        ["B's reads (L2 lookups among them)",
         f"{data['reader_reads']:,} ({data['reader_l2_lookups']:,})"],
    ]
    return {
        "title": "Cross-process staleness (dragonfly_cache, two spawned processes)",
        "note": "A writes a new version every period and notes when set() returned; B reads "
                "in a tight loop through its own TieredCache. Delays are measured from A's "
                "acknowledged write to B's first read of that version (both on the "
                "machine-wide monotonic clock). Both processes inherit the benchmark's "
                "CPU pinning. "
                f"CPython's GIL switch interval here: {data['gil_switch_interval_ms']:g} ms.",
        "columns": ["measure", "value"],
        "rows": rows, "data": data,
        "targets": [
            _target("Cross-process staleness p99 ≤ 5 ms", data["delay_p99_ms"], 5.0, "<=",
                    s.judge, shown=f"{_fmt(data['delay_p99_ms'], 2)} ms"),
            _target("No version missed for longer than 10 ms", data["longest_stale_ms"], 10.0,
                    "<=", s.judge, shown=f"{_fmt(data['longest_stale_ms'], 2)} ms longest "
                    f"({data['versions_never_seen']} never seen)")],
    }


# -- metrics on vs off (placeholder) ---------------------------------------------------


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
        for cache in caches.values():
            cache.set_many({key: ctx.value for key in ctx.keys})
            ops_per_second(cache.get, ctx.zipf, s.duration / 4)
        p50: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(s.rounds):
            _progress(f"metrics on vs off: round {r + 1}/{s.rounds}")
            for name in _rotated(["off", "on"], r):
                samples = timed_calls_ns(caches[name].get, ctx.zipf, s.duration,
                                         ctx.overhead_ns)
                p50[name].append(percentile(samples, 50) / 1000)
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
        "targets": [_target("Metrics on costs ≤ 5% on the L1 hit path", cost, 0.05, "<=",
                            s.judge, shown=f"{cost * 100:+.1f}%")],
    }


def stampede_fleet(ctx: Context) -> Result:
    """4 processes x 16 threads on one missing key, with and without the fleet lock."""
    s = ctx.settings
    dragonfly = ctx.system(DRAGONFLY)
    processes, threads = 4, 16 if s.judge else 2
    rounds = max(1, min(s.stampede_rounds, 5))
    loader = s.loader_seconds
    data: dict[str, Any] = {}
    rows = []
    for lock in (False, True):
        calls, walls, oks = [], [], []
        for r in range(rounds):
            _progress(f"fleet stampede (lock={lock}): round {r + 1}/{rounds}")
            result = fleet_stampede(dragonfly.server.address, f"fleet:{lock}:{r}", processes,
                                    threads, loader, lock)
            calls.append(result["loader_calls"])
            walls.append(result["wall"])
            oks.append(result["ok"])
        name = "get_or_load(lock=True)" if lock else "get_or_load (per-process singleflight)"
        data[str(lock)] = {"loader_calls": calls, "wall_ms": [w * 1000 for w in walls],
                           "all_got_value": all(oks)}
        rows.append([name, f"{median([float(c) for c in calls]):.0f} (max {max(calls)})",
                     f"{median(walls) * 1000:.1f}", f"{median(walls) / loader:.2f}x",
                     "yes" if all(oks) else "no"])
    locked = data["True"]["loader_calls"]
    return {
        "title": f"Fleet stampede: {processes} processes x {threads} threads, one missing key, "
                 f"{loader * 1000:.0f} ms loader",
        "note": "Spawned processes, released together by a cross-process Barrier; loader "
                "calls counted on the server. Wall: from the release to the last caller's "
                "return in any process.",
        "columns": ["API", "loader calls / round", "wall ms", "wall vs loader",
                    "every caller got the value"],
        "rows": rows, "data": data,
        "targets": [_target("Fleet lock: exactly 1 loader call across the fleet per round",
                            float(max(locked)), 1.0, "<=", s.judge,
                            shown=f"{min(locked)}...{max(locked)} calls")],
    }


# -- L1 memory -------------------------------------------------------------------------


def _traced_bytes(fill: Callable[[], None]) -> int:
    """Bytes that ``fill()`` allocated and that are still alive after it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


def l1_memory(ctx: Context) -> Result:
    """Bytes per L1 entry, counted by tracemalloc, key and value objects included.

    Keys and values are created inside the traced region (the floor's by us, dragonfly's
    values by the Redis reply parser on a read-through fill), so both columns count the
    same objects; "overhead" subtracts the key's and value's own sizes.
    """
    s = ctx.settings
    n = s.memory_entries
    key_size = sys.getsizeof(f"mem:{0:06d}")
    value_size = sys.getsizeof(bytes(VALUE_SIZE))
    dragonfly: Dragonfly = ctx.system(DRAGONFLY)
    assert dragonfly.server is not None
    names = [f"mem:{i:06d}" for i in range(n)]
    for start in range(0, n, 1000):  # L2 holds them, for the read-through fills below
        dragonfly.cache.set_many(dict.fromkeys(names[start:start + 1000], ctx.value))
    results: dict[str, list[float]] = {FLOOR: [], DRAGONFLY: []}
    for r in range(max(1, min(3, s.rounds))):
        _progress(f"L1 memory: round {r + 1}")

        floor = Floor(2 * n)

        def fill_floor(floor: Floor = floor) -> None:
            for i in range(n):
                floor.set(f"mem:{i:06d}", i.to_bytes(4, "big") * (VALUE_SIZE // 4))

        cache = open_dragonfly(dragonfly.server.address, 2 * n)
        cache.get_many([f"mem:{i:06d}" for i in range(min(n, 100))])  # warm buffers
        cache.invalidate("mem:__none__")  # and the invalidation path

        def fill_dragonfly(cache: Any = cache) -> None:
            for start in range(0, n, 500):
                cache.get_many([f"mem:{i:06d}" for i in range(start, min(n, start + 500))])

        try:
            results[FLOOR].append(_traced_bytes(fill_floor) / n)
            results[DRAGONFLY].append(_traced_bytes(fill_dragonfly) / n)
            if cache.stats()["l1_stats"]["size"] < n or len(floor.cache) < n:
                raise RuntimeError("L1 memory: not every entry reached L1")
        finally:
            cache.close()
    rows, data = [], {}
    for name, values in results.items():
        per_entry = median(values)
        entry = {"bytes_per_entry": per_entry,
                 "overhead_bytes_per_entry": per_entry - key_size - value_size,
                 "vs_floor": ratio_median(values, results[FLOOR]), "rounds": values}
        data[name] = entry
        rows.append([name, _fmt(per_entry, 0), _fmt(entry["overhead_bytes_per_entry"], 0),
                     _x(entry["vs_floor"])])
    data["entries"] = n
    data["key_object_bytes"] = key_size
    data["value_object_bytes"] = value_size
    return {
        "title": f"L1 memory per entry ({n:,} entries of {VALUE_SIZE} bytes)",
        "note": f"tracemalloc, key ({key_size} B) and value ({value_size} B) objects included; "
                "overhead = per entry minus those two.",
        "columns": ["system", "bytes / entry", "overhead / entry", "vs floor"],
        "rows": rows, "data": data, "targets": [],
    }


WORKLOADS: dict[str, Callable[[Context], Result]] = {
    "hot_reads_1t": hot_reads_1t,
    "hot_reads_8t": hot_reads_8t,
    "mixed_90_10_4t": mixed_90_10,
    "l2_path": l2_path,
    "stampede": stampede,
    "stampede_fleet": stampede_fleet,
    "get_many_100": get_many_100,
    "get_many_cluster": get_many_cluster,
    "cross_process_staleness": cross_process_staleness,
    "metrics_overhead": metrics_overhead,
    "l1_memory": l1_memory,
}
