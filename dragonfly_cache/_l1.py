"""The local tier: a bounded LRU (cachetools) of ``(value, deadline)`` behind one RLock.

Every entry carries its own deadline (monotonic seconds), computed by the caller with
:meth:`~dragonfly_cache._tiers.Tiers.deadline` (the minimum of the L1 ttl, the key's ttl or
remaining PTTL, and the coherence horizon), so an L1 entry never outlives its L2 key.
Expired entries are dropped lazily on read and counted as expirations; entries pushed out
by the size bound are counted as evictions.

Keeping expired entries. With ``retain`` > 0 (``stale_if_error`` in use, see
:mod:`dragonfly_cache._stale`) an entry stays for that long past its deadline: reads treat
it as expired, only :meth:`L1.stale` returns it. It is an entry like any other until then:
it counts against both bounds, and every invalidation removes it, so nothing keeps a value
that a delete removed.

Racing fills. A reader that misses L1 goes to L2 without holding the lock; meanwhile a
writer (this process, or another one via coherence) may change the key. Installing the
value the reader fetched would then resurrect old data. So every operation that talks to
L2 first takes a :class:`Ticket` for its keys (``with l1.ticket(keys) as ticket:``), and
every invalidation bumps a generation counter and stamps the keys that have tickets out.
A fill installs only if its key was not stamped after its ticket was issued (the
"placeholder" scheme of the Redis client-side caching reference). Stamps exist only for
keys with tickets out, so the bookkeeping is bounded by the number of in-flight operations,
not by the key space; leaving the ``with`` block releases whatever the ticket still holds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

from cachetools import LRUCache

from .types import L1Stats

__all__ = ["L1", "Entry", "Ticket"]

Entry = tuple[bytes, float]  # (value, deadline on the L1 timer's clock)


#: What an entry costs L1 besides its value's bytes: the key, the (value, deadline) tuple,
#: the dict slot and the LRU order (measured on CPython 3.11 with short keys).
ENTRY_OVERHEAD = 240


def entry_bytes(entry: Entry) -> int:
    """What an entry counts against ``l1.max_bytes``."""
    return len(entry[0]) + ENTRY_OVERHEAD


class _CountingLRU(LRUCache[str, Entry]):
    """An LRUCache bounded in bytes (cachetools' own bound, ``maxsize``) and in entries,
    counting what each bound pushes out."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        super().__init__(max_bytes, getsizeof=entry_bytes)
        self.max_entries = max_entries
        self.evicted = {"entries": 0, "bytes": 0}
        self._cause = "bytes"  # cachetools pops for bytes; __setitem__ pops for entries

    def __setitem__(self, key: str, entry: Entry) -> None:
        super().__setitem__(key, entry)
        self._cause = "entries"
        try:
            while len(self) > self.max_entries:
                self.popitem()
        finally:
            self._cause = "bytes"

    def popitem(self) -> tuple[str, Entry]:
        item = super().popitem()
        self.evicted[self._cause] += 1
        return item


class L1:
    """A thread-safe, bounded in-process cache with per-entry deadlines.

    Args:
        max_size: most entries held at once.
        timer: the clock (monotonic seconds); tests pass a fake one.
        max_bytes: most bytes held at once (values plus ``ENTRY_OVERHEAD`` each).
        max_entry_bytes: a larger entry is not kept at all (L2 still has it).
    """

    def __init__(self, max_size: int, timer: Callable[[], float] = time.monotonic, *,
                 max_bytes: int = 2**62, max_entry_bytes: int = 2**62) -> None:
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.timer = timer
        self._lock = threading.RLock()
        self._entries = _CountingLRU(max_size, max_bytes)
        self.too_large = 0  # values not kept: larger than max_entry_bytes
        self.retain = 0.0  # seconds an entry stays past its deadline, see the module docs
        self.yield_interval = math.inf  # see get(); Tiers sets it when coherence is on
        self._next_yield = -math.inf
        self.hits = 0
        self.misses = 0
        self.expirations = 0
        # Racing-fill bookkeeping, see the module docstring.
        self._generation = 0
        self._tickets: dict[str, int] = {}  # key -> number of tickets out
        self._stamps: dict[str, int] = {}  # key -> generation of its last invalidation
        self._flushed_at = 0  # generation of the last clear()
        self._fills_from = 0  # tickets older than this may not fill (drop_untrusted())

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
                if now >= entry[1] + self.retain:
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
                    if now >= entry[1] + self.retain:
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

    def stale(self, key: str, window: float) -> Entry | None:
        """The entry of ``key`` if its deadline is less than ``window`` ago (or still to
        come), without counting a hit or a miss; None otherwise."""
        with self._lock:
            entry = self._entries.get(key)
            return entry if entry is not None and self.timer() < entry[1] + window else None

    def keep_expired(self, seconds: float) -> None:
        """Keep expired entries at least ``seconds`` past their deadline from now on."""
        with self._lock:
            self.retain = max(self.retain, seconds)

    def drop_expired(self, key: str) -> None:
        """Drop the entry of ``key`` if it is past its deadline (a kept one)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[1] <= self.timer():
                del self._entries[key]
                self.expirations += 1

    # -- tickets -------------------------------------------------------------------------

    def ticket(self, keys: Iterable[str]) -> Ticket:
        """Take a ticket for ``keys`` before reading or writing them in L2.

        Use it as a context manager: ``with l1.ticket(keys) as ticket: ...``. Whatever the
        ticket still holds when the block ends is released without installing anything.
        """
        return Ticket(self, keys)

    def _put(self, key: str, entry: Entry) -> None:
        """Install ``entry`` (the lock held), unless it is too large to keep: then the key
        leaves L1 (an older value must not stay) and is counted."""
        if self.retain:
            # An expired entry kept for stale_if_error leaves now: count it as reads would.
            old = self._entries.get(key)
            if old is not None and old[1] <= self.timer():
                self.expirations += 1
        if entry_bytes(entry) > self.max_entry_bytes:
            self._entries.pop(key, None)
            self.too_large += 1
        else:
            self._entries[key] = entry

    def _stale(self, key: str, generation: int) -> bool:
        return self._flushed_at > generation or self._stamps.get(key, -1) > generation

    def _release(self, key: str) -> None:
        left = self._tickets[key] - 1
        if left:
            self._tickets[key] = left
        else:
            del self._tickets[key]
            self._stamps.pop(key, None)

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

    def drop_untrusted(self) -> None:
        """Drop everything and every fill in flight: they may have missed an invalidation
        (the listener's subscription is confirmed only now). Unlike :meth:`clear` it says
        nothing was invalidated: a load in flight still stores its value in L2."""
        with self._lock:
            self._generation += 1
            self._fills_from = self._generation
            self._entries.clear()

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> L1Stats:
        """The contract's ``l1_stats`` (plus ``expirations``)."""
        with self._lock:
            lookups = self.hits + self.misses
            evicted = self._entries.evicted
            return {
                "size": len(self._entries),
                "max_size": self.max_size,
                "bytes": int(self._entries.currsize),
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "evictions": evicted["entries"] + evicted["bytes"],
                "evictions_by_cause": dict(evicted),
                "too_large": self.too_large,
                "expirations": self.expirations,
            }

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Ticket:
    """The right to install values of some keys that were read from (or written to) L2.

    Issued by :meth:`L1.ticket`. Each key is released exactly once: by :meth:`fill` or
    :meth:`write` when they install (or refuse) it, by :meth:`release`, or when the ``with``
    block ends — so no caller counts releases by hand.
    """

    __slots__ = ("_held", "_l1", "generation")

    def __init__(self, l1: L1, keys: Iterable[str]) -> None:
        self._l1 = l1
        self._held = dict.fromkeys(keys)  # ordered, distinct
        with l1._lock:
            tickets = l1._tickets
            for key in self._held:
                tickets[key] = tickets.get(key, 0) + 1
            self.generation = l1._generation

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._held:
            self.release(list(self._held))

    def stale(self, key: str) -> bool:
        """Whether ``key`` was invalidated (here or, through coherence, elsewhere) after
        this ticket was issued."""
        with self._l1._lock:
            return self._l1._stale(key, self.generation)

    def fill(self, values: Mapping[str, Entry]) -> None:
        """Install values read from L2 unless an invalidation raced them; release them.

        Args:
            values: key -> (value, deadline on the L1 timer's clock), for keys this ticket
                holds. Callers take the time *before* asking L2 for the key's PTTL, so the
                entry dies no later than the L2 key.
        """
        l1 = self._l1
        with l1._lock:
            trusted = self.generation >= l1._fills_from
            for key, entry in values.items():
                if key in self._held:
                    del self._held[key]
                    if trusted and not l1._stale(key, self.generation):
                        l1._put(key, entry)
                    l1._release(key)

    def write(self, values: Mapping[str, bytes], deadline: float) -> None:
        """Apply this process's own write of ``values`` to L1; release them.

        If another write or invalidation of a key landed while ours was in flight, we cannot
        tell which reached L2 last, so the key is dropped from L1 (the next read refetches)
        instead of installing a value that may be the older one.
        """
        l1 = self._l1
        with l1._lock:
            l1._generation += 1
            for key, value in values.items():
                if l1._stale(key, self.generation):
                    l1._entries.pop(key, None)
                else:
                    l1._put(key, (value, deadline))
                if key in l1._tickets:
                    l1._stamps[key] = l1._generation
                if key in self._held:
                    del self._held[key]
                    l1._release(key)

    def release(self, keys: Iterable[str]) -> None:
        """Release ``keys`` without installing anything (already released keys are skipped)."""
        l1 = self._l1
        with l1._lock:
            for key in keys:
                if key in self._held:
                    del self._held[key]
                    l1._release(key)
