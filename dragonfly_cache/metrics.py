"""Prometheus series for the cache: ``dragonfly_cache_*``.

The hot path never touches Prometheus. The cache keeps plain counters (it needs them for
``stats()`` anyway); :meth:`CacheMetrics.sync` turns their growth since the last sync into
Prometheus counter increments and gauge updates. The Flask extension syncs after every
request and before every scrape. The only per-call cost is on the L2 path (already a
network round trip): one histogram observation of its latency.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` *before* the first
import of ``prometheus_client`` (``gunicorn.conf.py`` does): the client picks its storage
when it is imported, and a late variable silently leaves every worker writing to memory
no scrape can see (prometheus_flask_exporter #165). Counters then add up across
workers; gauges use ``livesum`` (L1 entries) or ``livemax`` (breaker state) or
``livemin`` (coherence) over the live workers.

Several caches in one process add into the same series.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ._extras import require

# Before the import it guards: without the extra, fail with its install line.
require("prometheus_client", "flask", __name__)

from prometheus_client import Counter, Gauge, Histogram

from . import _listener
from ._breaker import BreakerState
from .exceptions import ConfigError
from .types import Stats

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .tiered import TieredCache

__all__ = ["METRICS", "CacheMetrics", "multiprocess_mode", "register", "sync_all"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0)


def multiprocess_mode() -> bool:
    """Whether prometheus_client stores values in ``PROMETHEUS_MULTIPROC_DIR``: as it
    decides, the variable (or the old lower-case name it still honours) is *set*, even
    empty.

    Raises:
        ConfigError: it is set but names no directory (empty, or missing): prometheus_client
            would write its value files into the working directory.
    """
    names = [name for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
             if name in os.environ]
    if not names:
        return False
    directory = os.environ[names[0]]
    if not directory or not os.path.isdir(directory):
        raise ConfigError(f"{names[0]}={directory!r}: set, so prometheus_client runs in "
                          "multiprocess mode, but it names no directory (its files would "
                          "land in the working directory); unset it, or make the directory")
    return True


class _Families:
    """The metric families, created once per process and registered nowhere by default.

    In multiprocess mode the values live in files that a MultiProcessCollector reads; in
    single-process mode :func:`register` adds the families to the registry that serves
    /metrics (a collector may be registered with several registries).
    """

    def __init__(self) -> None:
        self.requests = Counter(
            "dragonfly_cache_requests", "Cache lookups by tier and result.",
            ["tier", "result"], registry=None)
        self.l2_errors = Counter(
            "dragonfly_cache_l2_errors", "Failed L2 commands by operation.",
            ["operation"], registry=None)
        self.l2_rejected = Counter(
            "dragonfly_cache_l2_rejected", "L2 calls refused by the open circuit breaker.",
            registry=None)
        self.l2_corrupt = Counter(
            "dragonfly_cache_l2_corrupt",
            "Compressed L2 values that did not decode (read as misses).", registry=None)
        self.replica_reads = Counter(
            "dragonfly_cache_replica_reads",
            "Keys of fill reads with read_from_replicas, by who answered (replica, "
            "primary, fallback: a primary after the replica failed).", ["served_by"],
            registry=None)
        self.l2_latency = Histogram(
            "dragonfly_cache_l2_latency_seconds", "L2 command latency by operation.",
            ["operation"], buckets=_LATENCY_BUCKETS, registry=None)
        self.l1_entries = Gauge(
            "dragonfly_cache_l1_entries", "Entries in the in-process L1.",
            registry=None, multiprocess_mode="livesum")
        self.l1_bytes = Gauge(
            "dragonfly_cache_l1_bytes",
            "Bytes the L1 entries count against l1.max_bytes (values plus 240 per entry).",
            registry=None, multiprocess_mode="livesum")
        self.l1_evictions = Counter(
            "dragonfly_cache_l1_evictions",
            "L1 entries dropped, by reason (size: max_size, bytes: max_bytes, expired).",
            ["reason"], registry=None)
        self.loads = Counter(
            "dragonfly_cache_loads", "Loader calls made by get_or_load.", registry=None)
        self.coalesced = Counter(
            "dragonfly_cache_coalesced", "get_or_load callers that shared another's load.",
            registry=None)
        self.stale_served = Counter(
            "dragonfly_cache_stale_served",
            "get_or_load answers with a stale value after a failed reload (stale_if_error).",
            registry=None)
        self.breaker_state = Gauge(
            "dragonfly_cache_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=None, multiprocess_mode="livemax")
        self.breaker_opened = Counter(
            "dragonfly_cache_breaker_opened", "Times the circuit breaker opened.", registry=None)
        self.invalidations = Counter(
            "dragonfly_cache_invalidations",
            "Invalidation messages from other caches, received and applied.",
            ["stage"], registry=None)
        self.l1_flushes = Counter(
            "dragonfly_cache_l1_flushes", "Whole-L1 flushes after the listener lost its channel.",
            registry=None)
        self.journal_pending = Gauge(
            "dragonfly_cache_journal_pending",
            "Failed invalidations waiting for L2 to come back (keys, patterns, clears).",
            registry=None, multiprocess_mode="livesum")
        self.journal = Counter(
            "dragonfly_cache_journal",
            "Failed invalidations replayed once L2 was back, or dropped (journal full).",
            ["outcome"], registry=None)
        self.coherence_subscribed = Gauge(
            "dragonfly_cache_coherence_subscribed",
            "1 while the invalidation listener is subscribed (or coherence is off), else 0.",
            registry=None, multiprocess_mode="livemin")
        self.coherence_mode = Gauge(
            "dragonfly_cache_coherence_mode",
            "Caches running each coherence mode (tracking, pubsub, off; auto while the "
            "server is asked).", ["mode"], registry=None, multiprocess_mode="livesum")

    def all(self) -> list[Any]:
        return list(vars(self).values())


METRICS = _Families()
_MODES = ("tracking", "pubsub", "off", "auto")  # coherence_mode's labels, 0 when unused
# livemin over every live process that imported this module, synced or not (a gunicorn
# master with preload_app counts): start at the neutral value, "no cache is unsubscribed".
METRICS.coherence_subscribed.set(1)

def _replicas(stats: Stats, counter: Literal["reads", "primary", "fallbacks"]) -> int:
    """A replica-read counter (0 without read_from_replicas)."""
    replicas = stats["l2_stats"].get("replicas")
    return 0 if replicas is None else replicas[counter]


# (name, how to read it from stats(), counter, labels): cumulative cache counters exported
# as Prometheus counters.
_COUNTERS: list[tuple[str, Callable[[Stats], float], Any, dict[str, str]]] = [
    ("l1_hits", lambda s: s["l1_stats"]["hits"], METRICS.requests,
     {"tier": "l1", "result": "hit"}),
    ("l1_misses", lambda s: s["l1_stats"]["misses"], METRICS.requests,
     {"tier": "l1", "result": "miss"}),
    ("l2_hits", lambda s: s["l2_stats"]["hits"], METRICS.requests,
     {"tier": "l2", "result": "hit"}),
    ("l2_misses", lambda s: s["l2_stats"]["misses"], METRICS.requests,
     {"tier": "l2", "result": "miss"}),
    ("l2_rejected", lambda s: s["l2_stats"]["rejected"], METRICS.l2_rejected, {}),
    ("l2_corrupt", lambda s: s["l2_stats"]["corrupt"], METRICS.l2_corrupt, {}),
    ("replica_reads", lambda s: _replicas(s, "reads"), METRICS.replica_reads,
     {"served_by": "replica"}),
    ("replica_primary", lambda s: _replicas(s, "primary"), METRICS.replica_reads,
     {"served_by": "primary"}),
    ("replica_fallbacks", lambda s: _replicas(s, "fallbacks"), METRICS.replica_reads,
     {"served_by": "fallback"}),
    ("l1_evictions", lambda s: s["l1_stats"]["evictions_by_cause"]["entries"],
     METRICS.l1_evictions, {"reason": "size"}),
    ("l1_evictions_bytes", lambda s: s["l1_stats"]["evictions_by_cause"]["bytes"],
     METRICS.l1_evictions, {"reason": "bytes"}),
    ("l1_expirations", lambda s: s["l1_stats"]["expirations"], METRICS.l1_evictions,
     {"reason": "expired"}),
    ("loads", lambda s: s["singleflight"]["loads"], METRICS.loads, {}),
    ("coalesced", lambda s: s["singleflight"]["coalesced"], METRICS.coalesced, {}),
    ("stale_served", lambda s: s["loading"]["stale_served"], METRICS.stale_served, {}),
    ("breaker_opened", lambda s: s["breaker"]["opened"], METRICS.breaker_opened, {}),
    ("received", lambda s: s["coherence"].get("received", 0), METRICS.invalidations,
     {"stage": "received"}),
    ("applied", lambda s: s["coherence"].get("applied", 0), METRICS.invalidations,
     {"stage": "applied"}),
    ("flushes", lambda s: s["coherence"].get("flushes", 0), METRICS.l1_flushes, {}),
    ("replayed", lambda s: s["journal"]["replayed"], METRICS.journal, {"outcome": "replayed"}),
    ("dropped", lambda s: s["journal"]["dropped"], METRICS.journal, {"outcome": "dropped"}),
]

# Every call into prometheus_client from this module holds _EXPORTING, and a fork waits
# until no thread holds it. prometheus_client guards its values with plain threading locks
# (in multiprocess mode one lock for every value), so a child forked while a parent thread
# was inside it would inherit that lock held and hang on its first observation: gunicorn
# --preload forks while the master's listener threads observe L2 latency (seen as workers
# that never answer; prometheus/client_python#431).
_EXPORTING = threading.Lock()
os.register_at_fork(before=_EXPORTING.acquire, after_in_parent=_EXPORTING.release,
                    after_in_child=_EXPORTING.release)

_registered: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()
_instances: weakref.WeakSet[CacheMetrics] = weakref.WeakSet()


def register(registry: CollectorRegistry) -> None:
    """Serve the cache families from ``registry`` (single-process mode; idempotent)."""
    if registry in _registered:
        return
    for family in METRICS.all():
        registry.register(family)
    _registered.add(registry)


class CacheMetrics:
    """Exports one cache's counters into the ``dragonfly_cache_*`` families.

    Args:
        cache: the cache to export. Its L2 latency is observed from now on.
    """

    def __init__(self, cache: TieredCache) -> None:
        self._cache = weakref.ref(cache)
        self._pid = os.getpid()
        self._last: dict[str, float] = {}
        self._entries = 0.0
        self._bytes = 0.0
        self._pending = 0.0
        self.breaker_state = 0
        self.subscribed = 1
        self.mode = "auto"  # the coherence mode, as of the last sync
        # One observer function for every cache: a cache exported by two apps' extensions
        # is observed once.
        cache.add_latency_observer(_observe_latency)
        _instances.add(self)

    def sync(self) -> None:
        """Push what the cache counted since the last sync into the Prometheus families."""
        cache = self._cache()
        if cache is None:
            return
        stats = cache.stats()
        with _EXPORTING:
            if self._pid != os.getpid():
                # A forked child: the cache's counters restarted from zero here.
                self._pid, self._last = os.getpid(), {}
                self._entries = self._bytes = self._pending = 0.0
            for name, read, counter, labels in _COUNTERS:
                self._add(name, float(read(stats)), counter.labels(**labels) if labels
                          else counter)
            for operation, count in stats["l2_stats"]["errors_by_operation"].items():
                self._add(f"errors:{operation}", float(count),
                          METRICS.l2_errors.labels(operation))
            size = float(stats["l1_stats"]["size"])
            METRICS.l1_entries.inc(size - self._entries)  # inc: several caches add up
            self._entries = size
            held = float(stats["l1_stats"]["bytes"])
            METRICS.l1_bytes.inc(held - self._bytes)
            self._bytes = held
            pending = float(stats["journal"]["pending"])
            METRICS.journal_pending.inc(pending - self._pending)
            self._pending = pending
            self.breaker_state = BreakerState(stats["breaker"]["state"]).severity
            self.subscribed = int(stats["coherence"]["state"] in ("subscribed", "disabled"))
            self.mode = stats["coherence"].get("mode", "off")
            # The worst state among this process's caches, as of their last syncs.
            live = [metrics for metrics in list(_instances) if metrics._cache() is not None]
            METRICS.breaker_state.set(max(metrics.breaker_state for metrics in live))
            METRICS.coherence_subscribed.set(min(metrics.subscribed for metrics in live))
            modes = collections.Counter(metrics.mode for metrics in live)
            for mode in (*_MODES, *modes):
                METRICS.coherence_mode.labels(mode).set(modes.get(mode, 0))

    def _add(self, name: str, value: float, counter: Any) -> None:
        """Increment ``counter`` by the growth of the cumulative ``value`` since last time."""
        delta = value - self._last.get(name, 0.0)
        if delta > 0:
            counter.inc(delta)
        self._last[name] = value


def _observe_latency(operation: str, seconds: float) -> None:
    with _EXPORTING:
        METRICS.l2_latency.labels(operation).observe(seconds)


def sync_all() -> None:
    """Sync every cache of this process (before a scrape, and when an invalidation
    listener subscribes or loses its server)."""
    for metrics in list(_instances):
        metrics.sync()


def _sync_soon() -> None:
    """A listener subscribed or lost its server: sync in a thread of its own, so that
    waiting for ``_EXPORTING`` (a scrape, an app thread inside prometheus_client) never
    holds up the listener's invalidations."""
    threading.Thread(target=sync_all, daemon=True, name="dragonfly_cache-metrics").start()


_listener.STATE_CHANGES.append(_sync_soon)
