"""Public types: the ``ttl`` argument, the shapes of ``stats()`` and ``health()``, what
``memoize`` and ``lock`` return, and the latency hook.

``stats()`` and ``health()`` return plain dicts (JSON-ready, as the HTTP endpoints serve
them); these ``TypedDict`` s describe them for type checkers and readers. Keys marked
optional appear only in some setups (a cluster, coherence on).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal, ParamSpec, Protocol, TypedDict, TypeVar

__all__ = [
    "TTL",
    "BreakerStats",
    "CoherenceStats",
    "DragonflyHealth",
    "Health",
    "JournalStats",
    "L1Stats",
    "L2Stats",
    "LatencyObserver",
    "LoadingStats",
    "Memoized",
    "Mutex",
    "ReplicaStats",
    "SentinelHealth",
    "SingleflightStats",
    "Stats",
]

#: A time to live: seconds (int or float), a ``timedelta``, or None for the default
#: (``l2.ttl``). Every public method that takes a ttl takes this.
TTL = float | int | timedelta | None

#: ``observer(operation, seconds)``: called after every L2 command batch (one round trip;
#: ``operation`` is e.g. "GET", "MGET", "SET"); see ``TieredCache.add_latency_observer``.
LatencyObserver = Callable[[str, float], None]

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)


class Memoized(Protocol[P, R_co]):
    """What ``TieredCache.memoize`` makes of a function: call it like the function, plus
    three helpers that take the same arguments."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of this call."""
        ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the cached result of this call (everywhere, through coherence)."""
        ...

    def invalidate_all(self) -> int:
        """Drop every cached result of this function; returns how many L2 keys went."""
        ...

    # A method memoized in a class body binds its instance like a function does; the
    # bound form is typed loosely (Any), since it loses the first parameter.
    def __get__(self, instance: object, owner: type | None = None) -> Any: ...


class Mutex(Protocol):
    """What ``TieredCache.lock`` returns: a fleet-wide lock on one name, shaped like
    dogpile.cache's ``CacheMutex`` and usable as ``with cache.lock(name):``."""

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock, waiting until it is free (or, ``wait=False``, try once); True
        once taken."""
        ...

    def release(self) -> None:
        """Release the lock (from any thread); RuntimeError if this object does not hold
        it."""
        ...

    def locked(self) -> bool:
        """Whether anyone in the fleet holds it."""
        ...

    def __enter__(self) -> Mutex: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...



class L1Stats(TypedDict):
    """``stats()["l1_stats"]``: the in-process tier."""

    size: int
    max_size: int
    bytes: int  # what the entries count against max_bytes
    max_bytes: int
    hits: int
    misses: int
    hit_rate: float
    evictions: int  # pushed out by a bound (both causes)
    evictions_by_cause: dict[str, int]  # "entries" (max_size), "bytes" (max_bytes)
    too_large: int  # values not kept at all: over max_entry_share of max_bytes
    expirations: int  # dropped at their deadline


class ReplicaStats(TypedDict):
    """``stats()["l2_stats"]["replicas"]`` (with ``read_from_replicas``): the keys of fill
    reads each kind of server answered, and the replicas known now."""

    reads: int  # keys a replica answered
    primary: int  # keys read from a primary: invalidated lately, or no usable replica
    fallbacks: int  # keys whose replica failed, read again from the primary
    replicas: list[str]  # the replicas known now (host:port)


class _L2Stats(TypedDict):
    hits: int
    misses: int
    hit_rate: float
    errors: int
    errors_by_operation: dict[str, int]
    rejected: int  # calls the open circuit breaker refused without a socket attempt
    corrupt: int  # compressed values that did not decode (read as misses, among misses)


class L2Stats(_L2Stats, total=False):
    """``stats()["l2_stats"]``: the shared tier."""

    replicas: ReplicaStats  # with read_from_replicas only


class SingleflightStats(TypedDict):
    """``stats()["singleflight"]``: loader calls, and callers that shared one."""

    loads: int
    coalesced: int


class _BreakerStats(TypedDict):
    state: str  # a BreakerState value: "closed", "half_open" or "open"
    consecutive_failures: int
    cooldown: float
    opened: int
    closed: int
    rejected: int


class BreakerStats(_BreakerStats, total=False):
    """``stats()["breaker"]``; in a cluster the worst node's state, summed counters and
    ``nodes`` (address -> state)."""

    nodes: dict[str, str]


class _CoherenceState(TypedDict):
    state: str  # "disabled", "stopped", "connecting", "subscribed" or "down"


class CoherenceStats(_CoherenceState, total=False):
    """``stats()["coherence"]``: the invalidation listener (only ``state`` when disabled)."""

    received: int  # messages from other caches
    applied: int  # of those, the ones that reached L1
    flushes: int  # whole-L1 flushes (lost connection, malformed message, stop)
    reconnects: int
    sharded: bool  # the last subscription used sharded pub/sub (SSUBSCRIBE)
    mode: str  # "tracking", "pubsub", "off", or "auto" while the server is asked


class LoadingStats(TypedDict):
    """``stats()["loading"]``: early refreshes, undecodable memoized values, stale answers."""

    refreshes: int
    refresh_failures: int
    sync_refreshes: int
    decode_failures: int
    stale_served: int  # get_or_load answers with a stale value after a failed reload


class JournalStats(TypedDict):
    """``stats()["journal"]``: invalidations L2 did not take (failed writes), kept until
    it does (docs/failure-behaviour.md)."""

    pending: int  # keys, patterns and clears waiting to be replayed
    replayed: int  # replayed since the start
    dropped: int  # dropped because the journal was full


class Stats(TypedDict):
    """What ``TieredCache.stats()`` returns."""

    l1_stats: L1Stats
    l2_stats: L2Stats
    singleflight: SingleflightStats
    breaker: BreakerStats
    coherence: CoherenceStats
    loading: LoadingStats
    journal: JournalStats


class _SentinelHealth(TypedDict):
    service: str  # the service name (DRAGONFLY_SENTINEL_MASTER)
    primary: str | None  # the primary in use (the last known one if no sentinel answers)
    sentinels: int  # how many are configured
    answered: int  # how many answered the question asked for this report
    switches: int  # failovers followed since the cache was made


class SentinelHealth(_SentinelHealth, total=False):
    """``health()["dragonfly"]["sentinel"]``: what the sentinels say (with sentinels)."""

    subscribed: str  # the sentinel whose +switch-master events are followed now
    error: str  # no sentinel answered (the last known primary stays in use), or none
    # of those that answered monitors the service


class _DragonflyHealth(TypedDict):
    connected: bool
    version: str | None


class DragonflyHealth(_DragonflyHealth, total=False):
    """``health()["dragonfly"]``: what the probe (PING + INFO) found."""

    server: str  # "dragonfly", "redis" or "valkey"
    mode: str  # "standalone", "cluster" or "sentinel"
    nodes: dict[str, str]  # a cluster: primary address -> "ok" or its failure
    error: str  # why the server (or some cluster primary) is unreachable
    sentinel: SentinelHealth  # with sentinels: the service, its primary, who answered


class Health(TypedDict):
    """What ``TieredCache.health()`` returns."""

    status: Literal["healthy", "unhealthy"]
    dragonfly: DragonflyHealth
    breaker: str  # the breaker's state, as in stats()["breaker"]["state"]
    coherence: str  # the listener's state, as in stats()["coherence"]["state"]
    invalidation: str  # the coherence mode, as in stats()["coherence"]["mode"]
    l1_stats: L1Stats
    l2_stats: L2Stats
