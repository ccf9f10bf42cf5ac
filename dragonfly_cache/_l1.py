"""The local tier: a bounded LRU (cachetools) of ``(value, deadline)`` behind one RLock.

Every entry carries its own deadline (monotonic seconds), the minimum of the L1 ttl, the
key's ttl and, when filled from L2, the L2 key's remaining PTTL, so an L1 entry never
outlives its L2 key. Expired entries are dropped lazily on read and counted as expirations;
entries pushed out by the size bound are counted as evictions.

Racing fills. A reader that misses L1 goes to L2 without holding the lock; meanwhile a
writer (this process, or another one via coherence) may change the key. Installing the
value the reader fetched would then resurrect old data. So every operation that talks to
L2 first takes a *ticket* (:meth:`L1.begin`), and every invalidation bumps a generation
counter and stamps the keys that have tickets out. A fill installs only if its key was not
stamped after its ticket was issued (the "placeholder" scheme of the Redis client-side
caching reference). Stamps exist only for keys with tickets out, so the bookkeeping is
bounded by the number of in-flight operations, not by the key space.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cachetools import LRUCache

__all__ = ["L1"]

Entry = tuple[bytes, float]


class _CountingLRU(LRUCache[str, Entry]):
    """An LRUCache that counts the entries its size bound pushes out."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.evictions = 0

    def popitem(self) -> tuple[str, Entry]:
        item = super().popitem()
        self.evictions += 1
        return item


class L1:
    """A thread-safe, bounded in-process cache with per-entry deadlines.

    Args:
        max_size: most entries held at once.
        ttl: longest life of any entry, in seconds.
        timer: the clock (monotonic seconds); tests pass a fake one.
    """

    def __init__(self, max_size: int, ttl: float, timer: Callable[[], float] = time.monotonic
                 ) -> None:
        self.max_size = max_size
        self.ttl = ttl
        self.timer = timer
        self._lock = threading.RLock()
        self._entries = _CountingLRU(max_size)
        self.yield_interval = math.inf  # see get(); TieredCache sets it when coherence is on
        self._next_yield = -math.inf
        self.hits = 0
        self.misses = 0
        self.expirations = 0
        # Racing-fill bookkeeping, see the module docstring.
        self._generation = 0
        self._tickets: dict[str, int] = {}  # key -> number of tickets out
        self._stamps: dict[str, int] = {}  # key -> generation of its last invalidation
        self._flushed_at = 0  # generation of the last clear()

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """Return the live value of ``key``, counting a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            now = self.timer()
            if entry[1] <= now:
                del self._entries[key]
                self.expirations += 1
                self.misses += 1
                return None
            self.hits += 1
        if now >= self._next_yield:
            # A thread that only ever hits L1 never releases the GIL by itself, so a thread
            # woken by I/O (the invalidation listener, with a message that would make this
            # very entry stale) waits for CPython's forced switch: 5 ms. Offering the GIL
            # once per yield_interval of hits bounds that wait at about yield_interval.
            self._next_yield = now + self.yield_interval
            time.sleep(0)
        return entry[0]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Return the live values among distinct ``keys`` in one lock round, counting each."""
        found: dict[str, bytes] = {}
        with self._lock:
            now = self.timer()
            entries = self._entries
            for key in keys:
                entry = entries.get(key)
                if entry is not None:
                    if entry[1] > now:
                        found[key] = entry[0]
                        continue
                    del entries[key]
                    self.expirations += 1
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return found

    def peek(self, key: str) -> bytes | None:
        """The live value of ``key`` without counting a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            return entry[0] if entry is not None and entry[1] > self.timer() else None

    # -- tickets and fills ---------------------------------------------------------------

    def begin(self, keys: Iterable[str]) -> int:
        """Take a ticket for ``keys`` before reading or writing them in L2.

        Returns:
            The ticket: pass it to :meth:`fill`, :meth:`write` or :meth:`end`, exactly once.
        """
        with self._lock:
            tickets = self._tickets
            for key in keys:
                tickets[key] = tickets.get(key, 0) + 1
            return self._generation

    def stale(self, key: str, ticket: int) -> bool:
        """Whether ``key`` was invalidated after ``ticket`` was issued."""
        with self._lock:
            return self._stale(key, ticket)

    def _stale(self, key: str, ticket: int) -> bool:
        return self._flushed_at > ticket or self._stamps.get(key, -1) > ticket

    def _release(self, key: str) -> None:
        left = self._tickets[key] - 1
        if left:
            self._tickets[key] = left
        else:
            del self._tickets[key]
            self._stamps.pop(key, None)

    def fill(self, values: Mapping[str, tuple[bytes, float]], ticket: int,
             keys: Iterable[str] = ()) -> None:
        """Install values read from L2 unless an invalidation raced them; release the ticket.

        Args:
            values: key -> (value, deadline on :attr:`timer`'s clock); the deadline is
                clamped to now + the L1 ttl. Callers take the time *before* asking L2 for the
                key's PTTL, so the entry dies no later than the L2 key.
            ticket: from :meth:`begin`.
            keys: further keys the ticket covered that have no value to install.
        """
        with self._lock:
            latest = self.timer() + self.ttl
            for key, (value, deadline) in values.items():
                if not self._stale(key, ticket):
                    self._entries[key] = (value, min(deadline, latest))
                self._release(key)
            for key in keys:
                self._release(key)

    def end(self, keys: Iterable[str]) -> None:
        """Release a ticket without installing anything."""
        with self._lock:
            for key in keys:
                self._release(key)

    def write(self, values: Mapping[str, bytes], deadline: float, ticket: int) -> None:
        """Apply this process's own write of ``values`` to L1; release the ticket.

        ``deadline`` (on :attr:`timer`'s clock) is clamped to now + the L1 ttl.

        If another write or invalidation of a key landed while ours was in flight, we cannot
        tell which reached L2 last, so the key is dropped from L1 (the next read refetches)
        instead of installing a value that may be the older one.
        """
        with self._lock:
            self._generation += 1
            deadline = min(deadline, self.timer() + self.ttl)
            for key, value in values.items():
                if self._stale(key, ticket):
                    self._entries.pop(key, None)
                else:
                    self._entries[key] = (value, deadline)
                if key in self._tickets:
                    self._stamps[key] = self._generation
                self._release(key)

    # -- invalidation --------------------------------------------------------------------

    def invalidate(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` and make racing fills of them lose."""
        with self._lock:
            self._generation += 1
            for key in keys:
                self._entries.pop(key, None)
                if key in self._tickets:
                    self._stamps[key] = self._generation

    def invalidate_matching(self, matches: Callable[[str], bool]) -> int:
        """Drop every key for which ``matches(key)`` is true; return how many were dropped."""
        with self._lock:
            self._generation += 1
            doomed = [key for key in self._entries if matches(key)]
            for key in doomed:
                del self._entries[key]
            for key in self._tickets:
                if matches(key):
                    self._stamps[key] = self._generation
            return len(doomed)

    def clear(self) -> None:
        """Drop everything and make every racing fill lose."""
        with self._lock:
            self._generation += 1
            self._flushed_at = self._generation
            self._entries.clear()

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The contract's ``l1_stats`` (plus ``expirations``)."""
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "size": len(self._entries),
                "max_size": self.max_size,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "evictions": self._entries.evictions,
                "expirations": self.expirations,
            }

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
