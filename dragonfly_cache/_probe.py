"""The health report: PING + INFO of every server, what kind of server answered, what the
sentinels say (with sentinels), and the state of the breaker, the listener and the
counters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._router import Router
from ._tiers import Tiers
from ._topology import parse_info
from .exceptions import CacheUnavailableError
from .types import DragonflyHealth, Health

__all__ = ["detect_server", "health", "probe"]

_COMMANDS = (("PING",), ("INFO", "server"), ("INFO", "cluster"))


def detect_server(info: Mapping[str, Any]) -> tuple[str, str]:
    """Tell the server kind and version from an ``INFO server`` reply.

    Dragonfly reports a fake ``redis_version`` (7.4.0) next to ``dragonfly_version``
    ("df-v1.x.y"), so it is recognised by the latter and "df-" is stripped. Valkey reports
    ``valkey_version`` (and ``server_name:valkey``) next to a compatibility redis_version.
    """
    if "dragonfly_version" in info:
        version = str(info["dragonfly_version"])
        return "dragonfly", version.removeprefix("df-")
    if "valkey_version" in info or info.get("server_name") == "valkey":
        return "valkey", str(info.get("valkey_version", info.get("redis_version", "")))
    return "redis", str(info.get("redis_version", ""))


def probe(router: Router) -> DragonflyHealth:
    """PING and INFO of the server, or of every primary of a cluster.

    The probe goes through the circuit breakers like any call.

    Returns:
        ``{"connected": True, "server": "dragonfly"|"redis"|"valkey", "version": str,
        "mode": "standalone"|"cluster"|"sentinel"}``; a cluster adds ``nodes`` (address ->
        "ok" or the failure) and, when some primary failed, ``error``.

    Raises:
        CacheUnavailableError: no server answered.
    """
    transport = router.nodes.transport
    if transport is not None and transport.server is not None:  # a server without INFO
        router.call("PING", lambda c: c.roundtrip((("PING",),)))
        kind, version = transport.server
        return {"connected": True, "server": kind, "version": version, "mode": "standalone"}
    addresses = router.primaries()
    info: DragonflyHealth | None = None
    states: dict[str, str] = {}
    failures: list[CacheUnavailableError] = []
    for address in addresses:
        try:
            _pong, server_info, cluster_info = router.call(
                "PING", lambda c: c.roundtrip(_COMMANDS), address)
        except CacheUnavailableError as exc:
            failures.append(exc)
            states[address] = str(exc)
            continue
        states[address] = "ok"
        if info is None:
            server, version = detect_server(parse_info(server_info))
            cluster_enabled = parse_info(cluster_info).get("cluster_enabled") == "1"
            mode = "cluster" if cluster_enabled else "standalone"
            info = {"connected": True, "server": server, "version": version,
                    "mode": "sentinel" if router.sentinel is not None else mode}
    if info is None:
        raise failures[0]
    if router.is_cluster():
        info["nodes"] = states
        if failures:
            info["error"] = (f"{len(failures)} of {len(addresses)} cluster primaries "
                             f"unreachable: " + "; ".join(str(f) for f in failures))
    return info


def health(tiers: Tiers) -> Health:
    """``TieredCache.health()``: the probe of :func:`probe` (an unreachable server is a
    report, not an error), the breaker's and the listener's states, and the counters."""
    dragonfly: DragonflyHealth
    tiers.listen()
    sentinel = tiers.l2.router.sentinel
    # The sentinels first: the probe then reaches the primary they name now. Their
    # trouble alone (the last known primary answers) leaves the cache healthy.
    sentinels = sentinel.report() if sentinel is not None else None
    try:
        dragonfly = probe(tiers.l2.router)
    except CacheUnavailableError as exc:
        dragonfly = {"connected": False, "version": None, "error": str(exc)}
    if sentinels is not None:
        dragonfly["mode"] = "sentinel"
        dragonfly["sentinel"] = sentinels
    coherence = tiers.coherence_stats()
    return {
        # A cluster with some primary unreachable is connected but not healthy.
        "status": "healthy" if dragonfly["connected"] and "error" not in dragonfly
        else "unhealthy",
        "dragonfly": dragonfly,
        "breaker": tiers.l2.breaker_stats()["state"],
        "coherence": coherence["state"],
        "invalidation": coherence.get("mode", "off"),
        "l1_stats": tiers.l1.stats(),
        "l2_stats": tiers.l2.stats(),
    }
