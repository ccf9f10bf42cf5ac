"""The workloads of issue 8, one module per family. Each returns a table (for the markdown)
and its raw data.

Rounds interleave the systems (the order rotates every round, so no system always runs
first or right after another), each round measures every system for the same time, and a
ratio is taken within a round before the median over rounds is reported.
"""

from __future__ import annotations

from collections.abc import Callable

from .adapters import adapter_hits
from .coherence import coherence_modes, cross_process_staleness, staleness_by_mode
from .common import VALUE_SIZE, Context, Result, Settings
from .hot_path import hot_reads_1t, hot_reads_8t, l1_bytes_bound, metrics_overhead, mixed_90_10
from .l2_reads import get_many_100, get_many_cluster, l2_path
from .memory import l1_memory
from .payload import compression_100k
from .scale import fleet_scale
from .stampedes import stampede, stampede_fleet

__all__ = ["VALUE_SIZE", "WORKLOADS", "Context", "Result", "Settings"]

# The JSON keys and the order of the tables.
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
    "staleness_by_mode": staleness_by_mode,
    "coherence_modes": coherence_modes,
    "metrics_overhead": metrics_overhead,
    "l1_bytes_bound": l1_bytes_bound,
    "l1_memory": l1_memory,
    "compression_100k": compression_100k,
    "adapter_hits": adapter_hits,
    "fleet_scale": fleet_scale,
}
