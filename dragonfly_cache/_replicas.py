"""Replica reads (``read_from_replicas``): the L2 reads that fill L1 may go to a replica.

Only those reads come here (``get``, ``get_many``, ``exists`` and the L2 read of
``get_or_load``: GET + PTTL, or MGET and the PTTL script, which only reads); writes,
locks, scripts that write and every other command stay on the primaries (the
:class:`~dragonfly_cache._router.Router`'s surface).

Where a read goes. With sentinels, to a replica the winning sentinel reports healthy
(``SENTINEL REPLICAS``: not down, not disconnected, its link to the primary up), asked
again whenever the sentinels are (:mod:`dragonfly_cache._sentinel`). In a cluster, to a
replica of the key's slot from ``CLUSTER SLOTS`` (which lists no failed replica; fetched
again every :data:`MAP_INTERVAL` seconds, and after a failure), over connections that sent
``READONLY``. Several replicas take turns; a replica whose breaker
is open is skipped, and one that fails (down, loading, a timeout) costs that read a second
round trip, to the primary: no read fails because of a replica. With no usable replica
(none known, or a standalone server found by ``mode: auto``) reads go to the primary.

Staleness. Replication is asynchronous, so a replica may answer with a value its primary
has already replaced or deleted. Coherence still bounds what L1 keeps:

* invalidations come from the primary's side (a write's announcement on the primary's
  channel, or in tracking mode the server's push). A process that just heard one, or
  wrote the key itself, must not refill L1 from a replica that has not applied the write
  yet: so the keys invalidated (or written, or deleted) in the last :data:`RECENT_WINDOW`
  seconds are read from the primary (:class:`Recent`), and after a pattern
  invalidation, a clear or an L1 flush, every read is, for that long;
* in tracking mode a replica connection tracks what it read, and the replica sends the
  invalidation when replication applies the write (verified on Redis 7, see the tests),
  so a value a lagging replica served leaves L1 when the replica catches up;
* in pub/sub mode nothing comes after the announcement: a replica lagging by more than
  the window can refill L1 with the old value, which then lives until ``l1.ttl`` (or its
  L2 ttl). Run replicas with ``replica-serve-stale-data no`` so a replica that lost its
  primary answers an error (the read then goes to the primary) instead of old data.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ._connections import Connections
from ._router import Group, Result, Router, Scatter, replies_of
from .exceptions import CacheUnavailableError
from .types import ReplicaStats

__all__ = ["MAP_INTERVAL", "RECENT_SIZE", "RECENT_WINDOW", "Recent", "ReplicaReads"]

RECENT_WINDOW = 1.0  # seconds a key invalidated lately is read from the primary
RECENT_SIZE = 10_000  # keys remembered; past that, every read goes to the primaries
MAP_INTERVAL = 5.0  # seconds: a cluster's slot map (and so its replicas) is fetched again
T = TypeVar("T")


class Recent:
    """The keys (L2 names, prefixed) invalidated in the last ``window`` seconds, oldest
    first, at most ``size`` of them; and whether everything is (a pattern, a clear, or
    more keys than ``size``: every read then goes to the primaries for ``window``)."""

    def __init__(self, window: float = RECENT_WINDOW, size: int = RECENT_SIZE,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.window, self.size = window, size
        self.timer = timer  # the cache's clock (TieredCache's timer: tests pass a fake one)
        self._keys: collections.OrderedDict[str | bytes, float] = collections.OrderedDict()
        self._all_until = -math.inf
        self.start_process_state()

    def start_process_state(self) -> None:
        """A new lock (a forked child's may have been held by a parent thread); the keys
        are plain data and are kept."""
        self._lock = threading.Lock()

    def note(self, names: Iterable[str | bytes]) -> None:
        """``names`` were invalidated now."""
        now = self.timer()
        with self._lock:
            keys = self._keys
            for name in names:
                keys[name] = now
                keys.move_to_end(name)
            while len(keys) > self.size:  # forgetting a key must not send it to a replica
                _, when = keys.popitem(last=False)
                self._all_until = max(self._all_until, when + self.window)

    def note_all(self) -> None:
        """Every key may have been invalidated now."""
        until = self.timer() + self.window
        with self._lock:
            self._all_until = max(self._all_until, until)

    def any(self, names: Iterable[str | bytes]) -> bool:
        """Whether any of ``names`` was invalidated in the last ``window`` seconds."""
        now = self.timer()
        if now < self._all_until:
            return True
        if not self._keys:  # the common case, without the lock
            return False
        with self._lock:
            keys, cutoff = self._keys, now - self.window
            while keys and next(iter(keys.values())) < cutoff:
                keys.popitem(last=False)
            return not keys.keys().isdisjoint(names)


class ReplicaReads:
    """Sends fill reads to replicas: the same ``keyed``/``batch``/``call`` as the router's,
    for reads only (see the module docs).

    Args:
        router: the router of the primaries (its sentinel and slot map list the replicas).
        recent: the keys invalidated lately (their reads go to the primary).
    """

    def __init__(self, router: Router, recent: Recent | None = None) -> None:
        self._router = router
        self.recent = recent or Recent()
        if router.config.clustered:  # before any connection exists: no pool to replace
            router.nodes.readonly = True
        self._turn = itertools.count()
        self.start_process_state()

    def start_process_state(self) -> None:
        """Fresh counters (a forked child counts its own reads) and locks."""
        self.recent.start_process_state()
        self._lock = threading.Lock()
        self.reads = 0  # keys a replica answered
        self.primary = 0  # keys read from a primary: invalidated lately, or no replica
        self.fallbacks = 0  # keys whose replica failed, read again from the primary

    def _count(self, reads: int = 0, primary: int = 0, fallbacks: int = 0) -> None:
        with self._lock:
            self.reads += reads
            self.primary += primary
            self.fallbacks += fallbacks

    def replicas(self, primary: str) -> list[str]:
        """The replicas of ``primary`` known now (the sentinels', or the slot map's)."""
        router = self._router
        if router.sentinel is not None:
            return [address for address in router.sentinel.replicas if address != primary]
        slot_map = router.topology.slot_map
        if slot_map is None or router.topology.clustered is not True:
            return []
        return slot_map.replicas.get(primary, [])

    def reader(self, primary: str) -> str:
        """Where a read of ``primary``'s keys goes now: one of its replicas whose breaker
        lets a call through (they take turns), else ``primary``."""
        nodes = self._router.nodes
        usable = [address for address in self.replicas(primary)
                  if nodes.node(address).breaker.ready()]
        if not usable:
            return primary
        return usable[next(self._turn) % len(usable)]

    # -- the router's surface, for reads -----------------------------------------------------

    def keyed(self, operation: str, name: str | bytes, commands: list[Any]) -> list[Any]:
        """One key's read commands: :meth:`Router.keyed`, from a replica if one may."""
        if not self._router.is_cluster():
            return self.call(operation, lambda c: c.roundtrip(commands), [name])
        return replies_of(self.batch(operation, [(name, commands)])[0])

    def call(self, operation: str, do: Callable[[Connections], T],
             names: Sequence[str | bytes]) -> T:
        """Run the read ``do`` on a replica of the one server (Sentinel), or on the
        primary if ``names`` were invalidated lately, no replica is usable, or the replica
        failed.

        Raises:
            CacheUnavailableError: the primary failed too (or is not known).
        """
        router = self._router
        primary = router.primaries()[0]
        reader = primary if self.recent.any(names) else self.reader(primary)
        if reader != primary:
            try:
                result = router.nodes.call(operation, router.nodes.node(reader), do)
            except CacheUnavailableError:
                self._count(fallbacks=len(names))
                return router.call(operation, do, primary)
            self._count(reads=len(names))
            return result
        self._count(primary=len(names))
        return router.call(operation, do, primary)

    def batch(self, operation: str, groups: list[Group]) -> list[Result]:
        """Each group's read commands: :meth:`Router.batch` on a cluster, each group
        on a replica of its slot if one may serve it; a group its replica failed goes to
        the primary. All groups go to the primaries if any of their keys was invalidated
        lately."""
        router = self._router
        if not router.is_cluster() or self.recent.any(name for name, _ in groups):
            self._count(primary=len(groups))
            return router.batch(operation, groups)
        nodes, topology = router.nodes, router.topology
        if not nodes.readonly:  # found to be a cluster now (mode auto)
            nodes.read_only()
        if time.monotonic() - topology.refreshed_at > MAP_INTERVAL:
            topology.refresh_soon()  # replicas come and go with no MOVED to tell us
        scatter = Scatter(router, operation, groups, reader=self.reader)
        results = scatter.run()
        failed = [index for index in scatter.replica_served
                  if isinstance(results[index], CacheUnavailableError)]
        self._count(reads=len(scatter.replica_served) - len(failed), fallbacks=len(failed),
                    primary=len(groups) - len(scatter.replica_served))
        if failed:
            again = router.batch(operation, [groups[index] for index in failed])
            for index, result in zip(failed, again, strict=True):
                results[index] = result
        return results

    def stats(self) -> ReplicaStats:
        """The counters, and the replicas known now (no question asked for them)."""
        router = self._router
        slot_map, sentinel = router.topology.slot_map, router.sentinel
        if sentinel is not None:
            primaries = [sentinel.primary] if sentinel.primary is not None else []
        else:
            primaries = slot_map.primaries if slot_map is not None else []
        replicas = sorted({replica for primary in primaries
                           for replica in self.replicas(primary)})
        with self._lock:
            return {"reads": self.reads, "primary": self.primary, "fallbacks": self.fallbacks,
                    "replicas": replicas}
