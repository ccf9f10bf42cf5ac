"""Timing loops and statistics shared by the workloads.

Every loop reads its keys from a precomputed list, so key generation costs nothing inside
the timed region and every system pays the same loop overhead. Loops check the clock once
per :data:`CHUNK` operations: often enough for a ~100 µs network op, rarely enough to be
noise next to a ~1 µs L1 hit.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "CHUNK",
    "median",
    "mixed_loop",
    "ops_per_second",
    "percentile",
    "ratio_median",
    "read_loop",
    "threaded_ops_per_second",
    "timed_calls_ns",
    "timer_overhead_ns",
    "zipf_keys",
]

CHUNK = 64


def zipf_keys(keys: Sequence[str], count: int, seed: int, exponent: float = 1.0) -> list[str]:
    """``count`` keys drawn with Zipf(``exponent``) popularity (rank r has weight 1/r^s).

    Ranks are assigned to keys in a shuffled order, so the hottest keys are not neighbours.
    The length is rounded up to a multiple of :data:`CHUNK` so loops can wrap cleanly.
    """
    rng = random.Random(seed)
    ranked = list(keys)
    rng.shuffle(ranked)
    total, cumulative = 0.0, []
    for rank in range(1, len(ranked) + 1):
        total += 1.0 / rank**exponent
        cumulative.append(total)
    count += -count % CHUNK
    return rng.choices(ranked, cum_weights=cumulative, k=count)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])


def median(values: Sequence[float]) -> float:
    """Median of the values that are not None/NaN (NaN if none are)."""
    clean = [v for v in values if v is not None and v == v]
    return statistics.median(clean) if clean else float("nan")


def ratio_median(values: Sequence[float], references: Sequence[float]) -> float:
    """Median over rounds of ``value / reference`` taken within the same round.

    A per-round ratio cancels the machine's drift between rounds (both numbers were measured
    seconds apart), which a ratio of the two overall medians does not.
    """
    ratios = [v / r for v, r in zip(values, references, strict=True)
              if v == v and r == r and r]
    return statistics.median(ratios) if ratios else float("nan")


def timer_overhead_ns(samples: int = 20001) -> float:
    """Median cost of the ``perf_counter_ns()`` pair that brackets each timed call."""
    clock = time.perf_counter_ns
    costs = []
    for _ in range(samples):
        start = clock()
        costs.append(clock() - start)
    return statistics.median(costs)


def read_loop(op: Callable[[Any], object], keys: Sequence[Any], offset: int,
              deadline: float) -> int:
    """Call ``op(key)`` over ``keys`` (wrapping, from ``offset``) until ``deadline``.

    Returns:
        How many calls were made (a whole number of chunks).
    """
    clock = time.perf_counter
    size = len(keys)
    index = offset % size
    index -= index % CHUNK
    done = 0
    while True:
        for key in keys[index:index + CHUNK]:
            op(key)
        done += CHUNK
        index = (index + CHUNK) % size
        if clock() >= deadline:
            return done


def ops_per_second(op: Callable[[Any], object], keys: Sequence[Any], duration: float) -> float:
    """Single-thread throughput of ``op`` over ``keys`` for ``duration`` seconds."""
    start = time.perf_counter()
    done = read_loop(op, keys, 0, start + duration)
    return done / (time.perf_counter() - start)


def timed_calls_ns(op: Callable[[Any], object], keys: Sequence[Any], duration: float,
                   overhead_ns: float, wrap: bool = True) -> list[float]:
    """Time each ``op(key)`` call (ns, minus the timer's own overhead); sorted.

    Args:
        wrap: cycle over ``keys`` until ``duration``; if False stop at the end of ``keys``
            too (for workloads whose keys may be read only once).
    """
    clock = time.perf_counter_ns
    samples: list[float] = []
    append = samples.append
    deadline = clock() + int(duration * 1e9)
    size = len(keys)
    index = 0
    while True:
        for key in keys[index:index + CHUNK]:
            start = clock()
            op(key)
            append(clock() - start - overhead_ns)
        index += CHUNK
        if index >= size:
            if not wrap:
                break
            index = 0
        if clock() >= deadline:
            break
    samples.sort()
    return samples


def threaded_ops_per_second(loop: Callable[[int, float], int], threads: int,
                            duration: float) -> float:
    """Aggregate throughput of ``threads`` threads each running ``loop(index, deadline)``.

    The threads start together on a Barrier; the wall time runs from the barrier to the
    last thread's end, and every call a thread made (including its last chunk) counts.
    """
    counts = [0] * threads
    deadline = [0.0]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        barrier.wait()
        try:
            counts[index] = loop(index, deadline[0])
        except BaseException as exc:  # reported by the main thread, never swallowed
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    deadline[0] = time.perf_counter() + duration
    barrier.wait()
    start = time.perf_counter()
    for thread in workers:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / wall


def mixed_loop(get: Callable[[Any], object], set_: Callable[[Any, bytes], object],
               keys: Sequence[Any], writes: Sequence[bool], value: bytes, offset: int,
               deadline: float) -> int:
    """Like :func:`read_loop`, but ``set_(key, value)`` where ``writes`` says so."""
    clock = time.perf_counter
    size = len(keys)
    index = offset % size
    index -= index % CHUNK
    done = 0
    while True:
        for key, write in zip(keys[index:index + CHUNK], writes[index:index + CHUNK],
                              strict=True):
            if write:
                set_(key, value)
            else:
                get(key)
        done += CHUNK
        index = (index + CHUNK) % size
        if clock() >= deadline:
            return done
