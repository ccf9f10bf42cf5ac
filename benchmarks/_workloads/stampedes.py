"""Loading under contention: many callers of one missing key at once, in one process
(threads on a Barrier) and across a fleet of processes (with and without the fleet
lock). Counts loader calls and the wall time against the loader's own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from _fleet import fleet_stampede
from _measure import median
from _systems import DOGPILE, DRAGONFLY, FLASK, FLOOR

from .common import Context, Result, fmt, fmt_x, progress, rotated, target

__all__ = ["stampede", "stampede_fleet"]


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
        progress(f"stampede: round {r + 1}/{s.stampede_rounds}")
        for system in rotated(contenders, r):
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
                     f"(max {entry['loader_calls_max']})", fmt(entry["wall_ms"], 1),
                     fmt_x(entry["wall_vs_loader"]), "yes" if correct[n] else "NO"])
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
            target("Stampede: exactly 1 loader call per round", 1.0 if once else 0.0, 1.0,
                   ">=", s.judge, shown=f"{ours['loader_calls_min']}..."
                   f"{ours['loader_calls_max']} calls"),
            target("Stampede wall ≤ 1.2x the loader time", ours["wall_vs_loader"], 1.2, "<=",
                   s.judge)],
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
            progress(f"fleet stampede (lock={lock}): round {r + 1}/{rounds}")
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
        "targets": [target("Fleet lock: exactly 1 loader call across the fleet per round",
                           float(max(locked)), 1.0, "<=", s.judge,
                           shown=f"{min(locked)}...{max(locked)} calls")],
    }
