"""Counting what happened: commands a server ran, percentiles of timings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from tests.helpers.cluster import ClusterNode

__all__ = ["command_calls", "percentile"]


def command_calls(server: redis.Redis | ClusterNode, command: str) -> int:
    """How many times one server ran ``command`` (lower case, e.g. ``"mget"``).

    Counted by the server's ``INFO commandstats`` since it started or since the last
    ``CONFIG RESETSTAT``.

    Args:
        server: a redis-py client of that server, or a cluster node.
        command: the command's name, lower case.
    """
    stats = (server.info("commandstats") if isinstance(server, redis.Redis)
             else server.command("INFO", "commandstats"))
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def percentile(samples: list[float], fraction: float) -> float:
    """The sample at ``fraction`` (0.5: the median, 0.99: p99) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
