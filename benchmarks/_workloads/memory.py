"""What L1 costs in memory: bytes per entry, counted by tracemalloc, against the
cachetools floor."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from _measure import median, ratio_median
from _systems import DRAGONFLY, FLOOR, Dragonfly, Floor, open_dragonfly

from .common import VALUE_SIZE, Context, Result, fmt, fmt_x, progress

__all__ = ["l1_memory"]


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
        progress(f"L1 memory: round {r + 1}")

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
        rows.append([name, fmt(per_entry, 0), fmt(entry["overhead_bytes_per_entry"], 0),
                     fmt_x(entry["vs_floor"])])
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
