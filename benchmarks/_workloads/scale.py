"""Fleet scale: the server CPU and the invalidation messages one write costs with N idle
processes holding keys, in each coherence mode (the processes live in ``_scale.py``)."""

from __future__ import annotations

from typing import Any

from _scale import measure_scale
from _systems import DRAGONFLY, Dragonfly

from .common import Context, Result, fmt, fmt_x, progress, target

__all__ = ["MODES", "fleet_scale"]

#: The coherence modes compared: the row label, and the ``CACHE_L1_INVALIDATION`` value.
MODES = {"pubsub": "pubsub", "tracking": "tracking"}
RATE = 500.0  # writes per second: well under what one server core takes in every case


def _plan(mode: str) -> tuple[tuple[int, ...], int]:
    """Fleet sizes and writes per size for a run mode."""
    if mode == "smoke":
        return (0, 2), 40
    if mode == "quick":
        return (0, 4, 16, 32), 1000
    return (0, 4, 16, 32), 2500


def fleet_scale(ctx: Context) -> Result:
    dragonfly: Dragonfly = ctx.system(DRAGONFLY)
    assert dragonfly.server is not None
    sizes, writes = _plan(ctx.settings.mode)
    points: list[dict[str, Any]] = []
    for mode, setting in MODES.items():
        for members in sizes:
            progress(f"fleet scale: {mode}, {members} idle processes, {writes} writes")
            point = measure_scale(dragonfly.server.address, setting, members, writes, RATE)
            points.append({**point, "mode": mode})
    rows, targets = [], []
    for mode in MODES:
        alone = next(p for p in points if p["mode"] == mode and p["members"] == 0)
        for point in (p for p in points if p["mode"] == mode):
            point["cpu_ratio_to_alone"] = (point["server_cpu_us_per_write"]
                                           / alone["server_cpu_us_per_write"])
            rows.append([mode, str(point["members"]),
                         fmt(point["server_cpu_us_per_write"]),
                         fmt_x(point["cpu_ratio_to_alone"]),
                         fmt(point["messages_per_write"], 2)])
        biggest = max((p for p in points if p["mode"] == mode), key=lambda p: p["members"])
        if mode == "tracking":
            targets.append(target(
                f"tracking: server CPU per write with {biggest['members']} processes "
                "≤ 2x alone", biggest["cpu_ratio_to_alone"], 2.0, "<=",
                ctx.settings.judge, shown=fmt_x(biggest["cpu_ratio_to_alone"])))
    return {
        "title": "Fleet scale: server cost of one write with N idle processes",
        "note": "N spawned processes each hold 8 keys of their own in L1 and sit idle; "
                f"the parent writes those keys round robin at {RATE:g}/s through its own "
                "cache. Server CPU is the server's user+system time (INFO cpu) over the "
                "writes, per write; messages are the invalidations all N processes "
                "received, per write. 'alone' is the same writes with no other process. "
                "docs/scaling-out.md turns these into fleet sizes.",
        "columns": ["mode", "processes", "server CPU µs/write", "vs alone",
                    "messages/write"],
        "rows": rows, "data": {"points": points, "rate": RATE},
        "targets": targets,
    }
