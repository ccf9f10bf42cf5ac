"""Cross-process coherence: how long another process's L1 keeps answering a value that
was overwritten (the processes themselves live in ``_staleness.py``)."""

from __future__ import annotations

import sys

from _staleness import measure_staleness
from _systems import DRAGONFLY, Dragonfly

from .common import Context, Result, fmt, progress, target

__all__ = ["cross_process_staleness"]


def cross_process_staleness(ctx: Context) -> Result:
    s = ctx.settings
    dragonfly: Dragonfly = ctx.system(DRAGONFLY)
    assert dragonfly.server is not None
    progress(f"cross-process staleness: {s.staleness_seconds:g} s")
    data = measure_staleness(dragonfly.server.address, s.staleness_seconds, s.write_period)
    data["gil_switch_interval_ms"] = sys.getswitchinterval() * 1000
    rows = [
        ["versions written (one every "
         f"{data['write_period_ms']:g} ms)", str(data["versions_written"])],
        ["delay until B sees a version, p50", f"{fmt(data['delay_p50_ms'], 2)} ms"],
        ["delay until B sees a version, p99", f"{fmt(data['delay_p99_ms'], 2)} ms"],
        ["delay, max", f"{fmt(data['delay_max_ms'], 2)} ms"],
        ["versions B never saw", str(data["versions_never_seen"])],
        ["longest time B answered an older version", f"{fmt(data['longest_stale_ms'], 2)} ms"],
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
            target("Cross-process staleness p99 ≤ 5 ms", data["delay_p99_ms"], 5.0, "<=",
                   s.judge, shown=f"{fmt(data['delay_p99_ms'], 2)} ms"),
            target("No version missed for longer than 10 ms", data["longest_stale_ms"], 10.0,
                   "<=", s.judge, shown=f"{fmt(data['longest_stale_ms'], 2)} ms longest "
                   f"({data['versions_never_seen']} never seen)")],
    }
