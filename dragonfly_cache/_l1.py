"""The local tier: a bounded LRU (:mod:`dragonfly_cache._lru`) of ``(value, deadline)``
behind one RLock.

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
every invalidation marks its keys stale in each ticket out that holds them. A fill installs
only the keys its ticket does not have marked (the "placeholder" scheme of the Redis
client-side caching reference); ``clear()`` and ``drop_untrusted()`` bump a generation
counter instead, which makes every older ticket lose. The bookkeeping lives in the tickets
out, so it is bounded by the number of in-flight operations, not by the key space, and
taking or releasing a ticket costs no work per key beyond copying its keys; leaving the
``with`` block releases whatever the ticket still holds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import TracebackType

from ._lru import ENTRY_OVERHEAD, LRU, Entry
from .types import L1Stats

__all__ = ["ENTRY_OVERHEAD", "L1", "Entry", "Ticket"]


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
        self.timer = timer
        self._lock = threading.RLock()
        self._entries = LRU(max_size, max_bytes, max_entry_bytes)
        self.retain = 0.0  # seconds an entry stays past its deadline, see the module docs
        self.yield_interval = math.inf  # see get(); Tiers sets it when coherence is on
        self._next_yield = -math.inf
        self.hits = 0
        self.misses = 0
        self.expirations = 0
        # Racing-fill bookkeeping, see the module docstring.
        self._live: set[Ticket] = set()  # tickets out that still hold keys
        self._generation = 0
        self._flushed_at = 0  # generation of the last clear()
        self._fills_from = 0  # tickets older than this may not fill (drop_untrusted())

    @property
    def max_entry_bytes(self) -> int:
        """The largest entry L1 keeps (see :func:`~dragonfly_cache._lru.entry_bytes`)."""
        return self._entries.max_entry_bytes

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
                    self._entries.pop(key)
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

    def get_many(self, keys: Collection[str]) -> dict[str, bytes]:
        """Return the live values among distinct ``keys`` in one lock round, counting each."""
        with self._lock:
            found, _, expired = self._entries.get_many(keys, self.timer(), self.retain)
            self._count(len(found), len(keys) - len(found), expired)
        return found

    def lookup(self, keys: Collection[str]) -> tuple[dict[str, bytes], Ticket]:
        """:meth:`get_many`, and in the same lock round a ticket for the keys it did not
        find (to read them from L2), in their order."""
        with self._lock:
            entries = self._entries
            if entries.absent(keys):  # an L1-cold batch: the ticket remembers it
                self._count(0, len(keys), 0)
                ticket = self._issue(keys)  # a dict of keys is copied, not rebuilt
                ticket.absent_at = entries.stores
                return {}, ticket
            found, missing, expired = entries.get_many(keys, self.timer(), self.retain)
            self._count(len(found), len(missing), expired)
            return found, self._issue(missing)

    def _count(self, hits: int, misses: int, expired: int) -> None:
        self.hits += hits
        self.misses += misses
        self.expirations += expired

    def peek(self, key: str) -> bytes | None:
        """The live value of ``key`` without counting a hit or a miss."""
        with self._lock:
            entry = self._entries.peek(key)
            return entry[0] if entry is not None and entry[1] > self.timer() else None

    def stale(self, key: str, window: float) -> Entry | None:
        """The entry of ``key`` if its deadline is less than ``window`` ago (or still to
        come), without counting a hit or a miss; None otherwise."""
        with self._lock:
            entry = self._entries.peek(key)
            return entry if entry is not None and self.timer() < entry[1] + window else None

    def keep_expired(self, seconds: float) -> None:
        """Keep expired entries at least ``seconds`` past their deadline from now on."""
        with self._lock:
            self.retain = max(self.retain, seconds)

    def drop_expired(self, key: str) -> None:
        """Drop the entry of ``key`` if it is past its deadline (a kept one)."""
        with self._lock:
            entry = self._entries.peek(key)
            if entry is not None and entry[1] <= self.timer():
                self._entries.pop(key)
                self.expirations += 1

    # -- tickets -------------------------------------------------------------------------

    def ticket(self, keys: Iterable[str]) -> Ticket:
        """Take a ticket for ``keys`` before reading or writing them in L2.

        Use it as a context manager: ``with l1.ticket(keys) as ticket: ...``. Whatever the
        ticket still holds when the block ends is released without installing anything.
        """
        with self._lock:
            return self._issue(keys)

    def _put(self, key: str, entry: Entry) -> None:
        """Store ``entry`` (the lock held); an expired entry kept for stale_if_error that
        it replaces is counted as reads would count it."""
        old = self._entries.put(key, entry)
        if self.retain and old is not None and old[1] <= self.timer():
            self.expirations += 1

    def _put_many(self, keys: Sequence[str], values: Sequence[bytes],
                  deadlines: Iterable[float], absent: bool) -> None:
        """:meth:`_put` of a batch (see :meth:`LRU.put_many`)."""
        replaced = self._entries.put_many(keys, values, deadlines, absent)
        if self.retain and replaced:
            now = self.timer()
            self.expirations += sum(old[1] <= now for old in replaced)

    def _issue(self, keys: Iterable[str]) -> Ticket:
        ticket = Ticket(self, keys, self._generation)
        if ticket._held:
            self._live.add(ticket)
        return ticket

    def _mark_stale(self, keys: Collection[str],
                    spare: Mapping[str, Ticket] | None = None) -> None:
        """Make the fills of ``keys`` lose in every ticket out but ``spare``'s (lock held)."""
        for ticket in self._live:
            hit = ticket._held.keys() & keys
            if spare and hit:
                hit = {key for key in hit if spare.get(key) is not ticket}
            ticket._stale.update(hit)

    # -- invalidation --------------------------------------------------------------------

    def invalidate(self, keys: Iterable[str], *, keep: Mapping[str, float] | None = None,
                   spare: Mapping[str, Ticket] | None = None) -> None:
        """Drop ``keys`` and make racing fills lose; but an entry :meth:`holds` recognises
        by ``keep``'s deadline stays, and ``spare``'s ticket for a key is not stamped."""
        keys = keys if isinstance(keys, list | tuple | set | frozenset) else list(keys)
        with self._lock:
            pop = self._entries.pop
            for key in keys:
                if not keep or not self._holds(key, keep.get(key)):
                    pop(key)
            self._mark_stale(keys, spare)

    def holds(self, key: str, deadline: float | None) -> bool:
        """Whether ``key``'s entry now is the one :meth:`Ticket.write` installed with this
        very ``deadline`` object (made for that write, never put back by anyone, and held
        by the caller: no other entry can have it), recognised without keeping the entry,
        or its value, alive."""
        with self._lock:
            return self._holds(key, deadline)

    def _holds(self, key: str, deadline: float | None) -> bool:
        entry = self._entries.peek(key)
        return deadline is not None and entry is not None and entry[1] is deadline

    def invalidate_matching(self, matches: Callable[[str], bool]) -> int:
        """Drop every key for which ``matches(key)`` is true; return how many were dropped."""
        with self._lock:
            doomed = [key for key in self._entries if matches(key)]
            for key in doomed:
                self._entries.pop(key)
            for ticket in self._live:
                ticket._stale.update(key for key in ticket._held if matches(key))
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
            entries = self._entries
            evicted = entries.evicted
            return {
                "size": len(entries),
                "max_size": entries.max_entries,
                "bytes": entries.bytes,
                "max_bytes": entries.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "evictions": evicted["entries"] + evicted["bytes"],
                "evictions_by_cause": dict(evicted),
                "too_large": entries.too_large,
                "expirations": self.expirations,
            }

    def held(self) -> dict[str, int]:
        """Each key that tickets out hold, with how many hold it (its bookkeeping: empty
        once every ticket is released)."""
        with self._lock:
            counts: dict[str, int] = {}
            for ticket in self._live:
                for key in ticket._held:
                    counts[key] = counts.get(key, 0) + 1
            return counts

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Ticket:
    """The right to install values of some keys that were read from (or written to) L2.

    Issued by :meth:`L1.ticket` (or :meth:`L1.lookup`). Each key is released exactly once:
    by :meth:`fill`, :meth:`install` or :meth:`write` when they install (or refuse) it, by
    :meth:`release`, or when the ``with`` block ends — so no caller counts releases by hand.
    """

    __slots__ = ("_held", "_l1", "_stale", "absent_at", "generation")

    def __init__(self, l1: L1, keys: Iterable[str], generation: int) -> None:
        self._l1 = l1
        # Ordered, distinct. Only the keys count: a dict is copied (in C, without hashing).
        self._held = keys.copy() if type(keys) is dict else dict.fromkeys(keys)
        self._stale: set[str] = set()  # held keys invalidated since the ticket was issued
        self.generation = generation
        self.absent_at = -1  # LRU.stores when none of its keys had an entry (L1.lookup)

    @property
    def keys(self) -> list[str]:
        """The keys this ticket still holds, in the order it was given them."""
        return list(self._held)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._held:
            self.release(None)

    def _lost(self) -> bool:
        """Whether every fill of this ticket loses (the lock held): L1 was cleared, or
        its fills became untrusted, after it was issued."""
        l1 = self._l1
        return l1._flushed_at > self.generation or l1._fills_from > self.generation

    def stale(self, key: str) -> bool:
        """Whether ``key`` was invalidated (here or, through coherence, elsewhere) after
        this ticket was issued."""
        with self._l1._lock:
            return key in self._stale or self._l1._flushed_at > self.generation

    def fill(self, values: Mapping[str, Entry]) -> None:
        """Install values read from L2 unless an invalidation raced them; release them.

        Args:
            values: key -> (value, deadline on the L1 timer's clock), for keys this ticket
                holds. Callers take the time *before* asking L2 for the key's PTTL, so the
                entry dies no later than the L2 key.
        """
        self.install(list(values), [entry[0] for entry in values.values()],
                     [entry[1] for entry in values.values()])

    def install(self, keys: Sequence[str], values: Sequence[bytes],
                deadlines: Iterable[float]) -> None:
        """:meth:`fill` of ``keys[i]`` with ``(values[i], deadlines[i])``: the batch form,
        which costs little per key when no invalidation raced (the common case).
        ``deadlines`` may be longer than ``keys`` (an endless ``repeat()``)."""
        l1 = self._l1
        held = self._held
        with l1._lock:
            if self._lost():
                self._release_locked(keys)
            elif not self._stale and (keys == list(held) or all(map(held.__contains__, keys))):
                l1._put_many(keys, values, deadlines, self.absent_at == l1._entries.stores)
                # Every key it held (a key it no longer holds is never filled: releasing
                # one more, were ``keys`` to repeat one, is harmless).
                self._release_locked(keys if len(keys) < len(held) else None)
            else:
                stale = self._stale
                for key, value, deadline in zip(keys, values, deadlines, strict=False):
                    if key in held:
                        if key not in stale:
                            l1._put(key, (value, deadline))
                        self._release_locked((key,))

    def write(self, values: Mapping[str, bytes], deadline: float) -> dict[str, Entry]:
        """Apply this process's own write of ``values`` to L1; release them. Returns the
        entries it installed, by key.

        If another write or invalidation of a key landed while ours was in flight, we cannot
        tell which reached L2 last, so the key is dropped from L1 (the next read refetches)
        instead of installing a value that may be the older one.
        """
        l1 = self._l1
        installed: dict[str, Entry] = {}
        deadline += 0.0  # an object of this write's own, which names its entries (holds())
        with l1._lock:
            lost = l1._flushed_at > self.generation
            for key, value in values.items():
                if lost or key in self._stale:
                    l1._entries.pop(key)
                else:
                    entry = installed[key] = (value, deadline)
                    l1._put(key, entry)
            # Any other fill or write of these keys in flight now races ours: it loses.
            self._release_locked(values)
            l1._mark_stale(values)
        return installed

    def release(self, keys: Iterable[str] | None) -> None:
        """Release ``keys`` (None: every key it holds) without installing anything (keys
        already released are skipped)."""
        with self._l1._lock:
            self._release_locked(keys)

    def _release_locked(self, keys: Iterable[str] | None) -> None:
        """Release ``keys`` (None: all it holds), the lock held."""
        held = self._held
        if keys is None:
            held.clear()
        else:
            for key in keys:
                held.pop(key, None)
        if not held:
            self._l1._live.discard(self)
            self._stale.clear()
