"""The early-refresh schedule: when each key is due, which keys are refreshing, backoffs.

With ``refresh_ahead=f``, an entry loaded (or read from L2) with life ``t`` becomes due for
refresh at a point within the last ``f * t`` of its life, moved earlier by a random
``l2.refresh_jitter`` share of that window so processes don't all refresh at once. The
first ``get_or_load`` hit after that starts one background refresh per key and process;
past ``l2.refresh_sync`` (a smaller fraction) a hit refreshes synchronously instead. A
failed refresh is retried with a doubling backoff. Who runs the refresh is
:mod:`dragonfly_cache._loading`'s business; this object only keeps the times, with its
own state and lock (like the circuit breaker).
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Callable

from cachetools import LRUCache

__all__ = ["BACKOFF_FIRST", "Refresh", "RefreshSchedule"]

BACKOFF_FIRST, BACKOFF_CAP = 1.0, 30.0
# Expiries this close are one entry's (read at different times, a round trip apart).
_SAME_EXPIRY = 0.05


class Refresh(enum.Enum):
    """What a hit on a scheduled key should do."""

    NONE = "none"  # not due, or a refresh is already running
    BACKGROUND = "background"  # start one background refresh (claimed: mark it finished)
    SYNC = "sync"  # too close to expiry: reload now, callers wait


class RefreshSchedule:
    """Refresh times of the keys loaded with early refresh, bounded like L1.

    Args:
        max_size: most keys remembered (least recently scheduled go first).
        jitter: spread of the refresh point, as a fraction of the refresh window.
        sync: below this last fraction of an entry's life a hit refreshes synchronously
            (None: never).
        timer: the monotonic clock (L1's).
    """

    def __init__(self, max_size: int, jitter: float, sync: float | None,
                 timer: Callable[[], float]) -> None:
        self._jitter = jitter
        self._sync = sync
        self._timer = timer
        self._lock = threading.Lock()
        # key -> (when a refresh is due, when the entry expires)
        self._times: LRUCache[str, tuple[float, float]] = LRUCache(max(1, max_size))
        self._running: set[str] = set()
        self._backoff: dict[str, float] = {}
        self.refreshes = 0
        self.failures = 0
        self.sync_refreshes = 0

    def schedule(self, key: str, now: float, life: float, ttl: float, fraction: float) -> None:
        """Note when ``key`` (``life`` seconds left of a full ``ttl``) becomes due. An entry
        read again with the same expiry (L1 lost it, L2 still has it) keeps its point."""
        window = min(life, ttl * fraction)
        spread = 1 - self._jitter * random.random()
        expires = now + life
        with self._lock:
            times = self._times.get(key)
            if times is None or abs(times[1] - expires) > _SAME_EXPIRY:
                self._times[key] = (expires - window * spread, expires)

    def due_in(self, key: str) -> float | None:
        """Seconds until ``key`` is due (None: not scheduled)."""
        with self._lock:
            times = self._times.get(key)
        return None if times is None else times[0] - self._timer()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._times

    def claim(self, key: str, ttl: float, fraction: float) -> Refresh:
        """Decide what a hit on ``key`` (loaded for ``ttl``, refreshed in its last
        ``fraction``) does now; a BACKGROUND answer marks the key as refreshing until
        :meth:`finished`."""
        now = self._timer()
        with self._lock:
            times = self._times.get(key)
            if times is None or now < times[0] or key in self._running:
                return Refresh.NONE
            sync = self._sync
            if sync is not None and sync < fraction and now >= times[1] - ttl * sync:
                self.sync_refreshes += 1
                return Refresh.SYNC
            self._running.add(key)
            return Refresh.BACKGROUND

    def finished(self, key: str) -> None:
        """A background refresh of ``key`` ended (whatever its outcome)."""
        with self._lock:
            self._running.discard(key)

    def succeeded(self, key: str) -> None:
        """A refresh stored a new value (the caller schedules it afresh)."""
        with self._lock:
            self._backoff.pop(key, None)
            self.refreshes += 1

    def failed(self, key: str) -> None:
        """A refresh failed: count it and retry after a doubling backoff."""
        with self._lock:
            self.failures += 1
        self.postpone(key)

    def postpone(self, key: str, delay: float | None = None) -> None:
        """Try again later: after ``delay``, or after a doubling backoff if None."""
        with self._lock:
            times = self._times.get(key)
            if times is None:
                return
            if delay is None:
                previous = self._backoff.get(key, 0.0)
                delay = min(max(BACKOFF_FIRST, previous * 2), BACKOFF_CAP)
                self._backoff[key] = delay
            self._times[key] = (self._timer() + delay, times[1])

    def forget(self, matches: Callable[[str], bool]) -> None:
        """Drop the schedule of invalidated keys: a later value gets its own."""
        with self._lock:
            for key in [key for key in self._times if matches(key)]:
                del self._times[key]
                self._backoff.pop(key, None)
