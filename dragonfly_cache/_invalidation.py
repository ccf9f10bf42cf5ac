"""Which coherence a cache runs (``l1.invalidation``), and the one face it shows the tiers.

- ``tracking``: server-assisted invalidation (:mod:`dragonfly_cache._tracking`): the
  server reports every change of a key this process read, by any client; writes publish
  nothing.
- ``pubsub``: invalidation messages on channels (:mod:`dragonfly_cache._coherence`):
  writes by caches in pub/sub mode are heard, other clients' writes are not.
- ``auto`` (the default): tracking where the server answers ``HELLO 3`` and ``CLIENT
  TRACKING ON`` (Redis 6+, Valkey, Dragonfly 1.14+, when the ACL allows them), else
  pub/sub. The question is asked in a thread of its own when the cache is made (and in a
  forked child), on a connection of its own; until it is answered, writes are announced
  on the channel (so caches in pub/sub mode hear them) and L1 entries live
  ``l1.degraded_ttl`` at most.

The modes do not hear each other: a cache in pub/sub mode never hears the writes of a cache
in tracking mode. Every process sharing a server and key prefix should run the same mode
(see docs/configuration.md for a rolling upgrade from a version that had only pub/sub).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping

import redis

from ._coherence import Coherence
from ._flushwatch import FlushWatch
from ._l1 import L1, Ticket
from ._l2 import L2
from ._listener import CONNECTING, DOWN, STOPPED, SUBSCRIBED, InvalidationTarget, state_changed
from ._ownwrites import NO_FLIGHT, Flight, NoFlight
from ._replicas import Recent
from ._tracking import Tracking
from .config import CacheConfig, L1Config
from .exceptions import CacheUnavailableError
from .types import CoherenceStats

__all__ = ["Invalidation", "NotingTarget", "l1_settings", "listening_servers",
           "subscription", "supports_tracking"]


def l1_settings(config: CacheConfig) -> L1Config:
    """The L1 settings a cache runs: ``auto`` with ``l2.stale_if_error`` configured runs
    pub/sub. In tracking mode the server announces a key's expiry as it announces a
    delete (they cannot be told apart), which would end every kept value when its L2 key
    expires: the configured serve-stale-on-error would hardly ever serve."""
    l1 = config.l1
    if l1.invalidation == "auto" and config.l2.stale_if_error:
        return dataclasses.replace(l1, invalidation="pubsub")
    return l1

logger = logging.getLogger(__name__)

_BACKOFF_FIRST, _BACKOFF_CAP = 0.05, 2.0


def supports_tracking(l2: L2) -> bool:
    """Whether the server (a cluster's first primary) takes RESP3 and CLIENT TRACKING, asked
    on a connection of its own that is closed after.

    Raises:
        CacheUnavailableError: the server could not be reached.
    """
    nodes = l2.router.nodes
    node = nodes.node(l2.router.primaries()[0])
    replies = nodes.ask_unselected("HELLO", node, [("HELLO", 3), ("CLIENT", "TRACKING", "ON")])
    return not any(isinstance(reply, Exception) for reply in replies)


def listening_servers(l2: L2) -> dict[str, str]:
    """The servers invalidation listeners subscribe on, each with its channel: the
    server, or every primary of a cluster that has one (:mod:`dragonfly_cache._channels`)."""
    if not l2.router.is_cluster():
        return dict.fromkeys(l2.router.primaries(), l2.channel)
    return dict(l2.channels.of(l2.router.topology.current()))


def subscription(l2: L2, address: str) -> tuple[redis.Redis, bool, str]:
    """A new client on its own connection to ``address`` for an invalidation listener,
    whether to use sharded pub/sub (SSUBSCRIBE) on it, and the channel to listen to.

    In a cluster the slot map is refreshed first (listeners reconnect after failovers
    and slot moves). It never retries: redis-py's retry would reconnect and resubscribe
    silently, and the listener must see every drop, since messages may have been lost.

    Raises:
        CacheUnavailableError: ``address`` is no longer a primary with a channel.
    """
    channel = l2.channel
    if l2.router.is_cluster():
        l2.router.topology.refresh_soon()
        channel = l2.channels.channel(l2.router.topology.current(), address)
    return l2.router.nodes.client(address), l2.router.sharded, channel


def _primaries_now(l2: L2) -> list[str]:
    """The primaries now: in a cluster, under a slot map fetched again."""
    if l2.router.topology.clustered:
        l2.router.topology.refresh_soon()
    return l2.router.primaries()


def _refresh_topology(l2: L2) -> None:
    """In a cluster, fetch the slot map again before the next routing."""
    if l2.router.topology.clustered:
        l2.router.topology.refresh_soon()


class NotingTarget:
    """L1 as coherence sees it with replica reads: every invalidation it applies is noted
    first (``recent``, with the key prefix), so the next reads of those keys go to the
    primary, not to a replica that may not have applied the write yet (:mod:`._replicas`)."""

    def __init__(self, l1: L1, recent: Recent, prefix: str) -> None:
        self._l1, self._recent, self._prefix = l1, recent, prefix

    def invalidate(self, keys: Iterable[str], *, keep: Mapping[str, float] | None = None,
                   spare: Mapping[str, Ticket] | None = None) -> None:
        keys = list(keys)
        self._recent.note([self._prefix + key for key in keys])
        self._l1.invalidate(keys, keep=keep, spare=spare)

    def holds(self, key: str, deadline: float | None) -> bool:
        return self._l1.holds(key, deadline)

    def invalidate_matching(self, matches: Callable[[str], bool]) -> int:
        self._recent.note_all()
        return self._l1.invalidate_matching(matches)

    def clear(self) -> None:
        self._recent.note_all()
        self._l1.clear()

    def drop_untrusted(self) -> None:
        self._l1.drop_untrusted()


class Invalidation:
    """The coherence of one cache in one process, in the configured mode.

    Args:
        mode: ``auto``, ``tracking`` or ``pubsub``.
        target: the L1 to keep coherent (the modes hold it weakly).
        l2: the shared tier.
        on_ready: called when the invalidation path is (again) ready: the journal of
            failed invalidations replays at once.
    """

    def __init__(self, mode: str, target: InvalidationTarget, l2: L2,
                 on_ready: Callable[[], None]) -> None:
        self.mode = mode  # "auto" until the server answered, then "tracking" or "pubsub"
        self._target = weakref.ref(target)
        self._l2 = l2
        self._on_ready = on_ready
        self._pubsub = None if mode == "tracking" else Coherence(
            target, functools.partial(listening_servers, l2),
            functools.partial(subscription, l2), watch=FlushWatch(l2.router).flushed,
            on_subscribed=on_ready, refresh=functools.partial(_refresh_topology, l2))
        self._tracking: Tracking | None = None
        self._lock = threading.Lock()
        self._started = self._stopped = False
        self._deciding = CONNECTING  # auto's state until the server answered

    # -- announcements (pub/sub, and auto until it knows) ------------------------------------

    def keys_message(self, keys: list[str]) -> str | None:
        """The message that invalidates ``keys`` elsewhere (None: the server tells them)."""
        pubsub = self._pubsub
        return None if pubsub is None or self.mode == "tracking" else pubsub.keys_message(keys)

    def pattern_message(self, pattern: str) -> str | None:
        """The message that invalidates the keys matching ``pattern`` elsewhere."""
        pubsub = self._pubsub
        return (None if pubsub is None or self.mode == "tracking"
                else pubsub.pattern_message(pattern))

    def clear_message(self) -> str | None:
        """The message that empties every other cache's L1."""
        pubsub = self._pubsub
        return None if pubsub is None or self.mode == "tracking" else pubsub.clear_message()

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start coherence in this process (idempotent; never waits for the network)."""
        if self._started:
            return
        with self._lock:
            if self._started or self._stopped:
                return
            self._started = True
        if self.mode == "pubsub" and self._pubsub is not None:
            self._pubsub.ensure_started()
        elif self.mode == "tracking":
            self._start_tracking()
        else:
            threading.Thread(target=_decide, args=(weakref.ref(self),), daemon=True,
                             name="dragonfly_cache-coherence-mode").start()

    def _start_tracking(self) -> None:
        target = self._target()
        if target is None:
            return
        tracking = Tracking(target, self._l2.router.nodes, self._l2.prefix,
                            functools.partial(_primaries_now, self._l2))
        with self._lock:
            if self._stopped:
                return
            self._tracking = tracking
        self._l2.tracked_writes = True
        self._l2.untracked_write = tracking.wrote_untracked
        tracking.start()
        self._on_ready()

    def _decided(self, tracking: bool) -> None:
        """Auto's answer: run the mode the server supports."""
        with self._lock:
            if self._stopped:
                return
            self.mode = "tracking" if tracking else "pubsub"
        logger.info("l1.invalidation=auto: %s mode", self.mode)
        if tracking:
            self._start_tracking()
        elif self._pubsub is not None:
            self._pubsub.ensure_started()
            state_changed()  # the mode is known: the gauges say which

    def own_write(self, keys: Collection[str], ticket: Ticket) -> Flight | NoFlight:
        """What a write of ``keys`` under ``ticket`` runs in: in tracking mode, for one key
        on a standalone server, a :class:`Flight` (see :mod:`._ownwrites`)."""
        tracking = self._tracking
        if tracking is None or len(keys) != 1 or self._l2.router.topology.clustered is not False:
            return NO_FLIGHT
        return tracking.own_write(next(iter(keys)), ticket)

    def follow(self) -> None:
        """The primaries changed (a failover): pub/sub listeners follow them. Tracking
        needs nothing: a new primary's pool is tracked from its first connection, and the
        old one's lost connections flush L1."""
        if self.mode == "pubsub" and self._pubsub is not None:
            self._pubsub.follow()

    def stop(self) -> None:
        """Stop (idempotent) and flush L1, which nothing keeps coherent now."""
        with self._lock:
            self._stopped = True
            tracking = self._tracking
        if tracking is not None and tracking.stop():
            target = self._target()
            if target is not None:
                target.clear()
        if self._pubsub is not None:
            self._pubsub.stop()

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``subscribed`` when no invalidation can be missed; ``connecting``, ``down`` or
        ``stopped`` otherwise (see the modes)."""
        if self._stopped:
            return STOPPED
        if self._tracking is not None:
            return self._tracking.state
        if self.mode == "pubsub" and self._pubsub is not None:
            return self._pubsub.state
        return self._deciding

    @property
    def subscribed(self) -> bool:
        """Whether L1 can be trusted now."""
        return self.state == SUBSCRIBED

    def stats(self) -> CoherenceStats:
        """The state, the mode and the counters of the mode that runs."""
        tracking, pubsub = self._tracking, self._pubsub
        stats: CoherenceStats
        if tracking is not None:
            stats = tracking.stats()
        elif pubsub is not None:
            stats = pubsub.stats()
        else:
            stats = {"state": STOPPED}
        stats["state"] = self.state
        stats["mode"] = self.mode
        return stats


def _decide(reference: weakref.ref[Invalidation]) -> None:
    """Ask the server which mode ``auto`` runs, retrying with backoff until it answers
    (a dropped cache ends the thread; it holds the cache only while asking)."""
    backoff = _BACKOFF_FIRST
    while True:
        invalidation = reference()
        if invalidation is None or invalidation._stopped:
            return
        try:
            answer = supports_tracking(invalidation._l2)
        except CacheUnavailableError as exc:
            if invalidation._deciding != DOWN:
                logger.warning("l1.invalidation=auto: cannot ask the server which mode to "
                               "run yet (%s); L1 entries live l1.degraded_ttl meanwhile, "
                               "retrying", exc)
            invalidation._deciding = DOWN
        else:
            invalidation._decided(answer)
            return
        del invalidation
        time.sleep(backoff)
        backoff = min(backoff * 2, _BACKOFF_CAP)
