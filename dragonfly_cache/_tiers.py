"""L1 and L2 joined by coherence: the reads and writes every policy is built from.

:class:`Tiers` is the one place that knows how the tiers move together: a read from L2
fills L1 under a ticket (so an invalidation that races it wins), a write goes to L2 with
its announcement and then to L1, and every L1 entry gets its deadline from one rule,
:meth:`Tiers.deadline`. :class:`~dragonfly_cache.tiered.TieredCache` (validation and
failure policy) and :mod:`dragonfly_cache._loading` (loads, refreshes) are built on it.
Its reads (``fetch``, ``read_through``, ``read_many``) are those of the
:class:`~dragonfly_cache._reads.Reads` it holds.

One per process: after a fork the cache makes a new one (a new, empty L1 and a new
listener); the L2 it wraps survives the fork and drops its own per-process state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection

from ._coherence import weakly
from ._fills import NEGATIVE
from ._invalidation import Invalidation, NotingTarget
from ._journal import REAPPLY_WINDOW, Journal, Pending
from ._l1 import L1, Ticket
from ._l2 import L2
from ._listener import InvalidationTarget
from ._ownwrites import NO_FLIGHT, Flight, NoFlight
from ._reads import Reads
from ._switchover import Switchover
from .config import L1Config
from .exceptions import CacheUnavailableError
from .types import CoherenceStats, JournalStats

__all__ = ["NEGATIVE", "YIELD_INTERVAL", "Tiers"]

_INTEGER = re.compile(rb"-?[0-9]+")  # what INCRBY accepts as a stored integer

# How often a thread that keeps hitting L1 offers the GIL to the invalidation listener.
YIELD_INTERVAL = 0.001


class Tiers:
    """The tiers of one cache in one process.

    Args:
        config: the L1 settings (size, ttl, coherence, degraded ttl).
        l2: the shared tier.
        timer: the monotonic clock of L1 deadlines.
    """

    def __init__(self, config: L1Config, l2: L2, timer: Callable[[], float]) -> None:
        self.l1 = L1(config.max_size, timer, max_bytes=config.max_bytes,
                     max_entry_bytes=int(config.max_bytes * config.max_entry_share))
        self.l2 = l2
        self._ttl = config.ttl
        self._degraded_ttl = config.degraded_ttl
        # The writes of the last seconds, re-applied after a failover (Sentinel's, or a
        # cluster replica's promotion): off only for a server known to be standalone.
        failover = l2.router.sentinel is not None or l2.router.topology.clustered is not False
        self.journal = Journal(self._replay, window=REAPPLY_WINDOW if failover else None)
        # With replica reads, what coherence invalidates is noted first (held here: the
        # coherence holds its target weakly).
        self.target: InvalidationTarget = self.l1
        if l2.replica_reads is not None:
            l2.replica_reads.recent.timer = timer
            self.target = NotingTarget(self.l1, l2.replica_reads.recent, l2.prefix)
        self.coherence = (None if config.invalidation == "off" else Invalidation(
            config.invalidation, self.target, l2, on_ready=weakly(self.journal.wake)))
        if self.coherence is not None:
            self.l1.yield_interval = YIELD_INTERVAL
        l2.router.on_switch = Switchover(self.journal, self.l1, self.coherence)
        reads = Reads(self.l1, l2, self.journal, self.deadline, self.listen)
        self.fetch, self.read_through, self.read_many = (reads.fetch, reads.read_through,
                                                         reads.read_many)

    def listen(self) -> None:
        """Start the invalidation listener in this process, if coherence is on and it is
        not running (every operation that reaches L2 calls this first)."""
        if self.coherence is not None:
            self.coherence.ensure_started()

    def stop(self) -> None:
        """Stop the invalidation listener (L1 entries then live ``l1.degraded_ttl``) and
        the journal's replays."""
        self.journal.stop()
        if self.coherence is not None:
            self.coherence.stop()

    # -- the one deadline rule -------------------------------------------------------------

    @property
    def trusted(self) -> bool:
        """Whether L1 entries may live their full life: coherence is off, or the
        invalidation listener is subscribed (no invalidation can be missed)."""
        return self.coherence is None or self.coherence.subscribed

    def deadline(self, start: float, life: float = math.inf, *, degraded: bool = False
                 ) -> float:
        """When an L1 entry stored at ``start`` must leave L1.

        The earliest of: ``start + life`` (the key's life in L2: its ttl when we write it,
        its PTTL when we read it; callers read the clock *before* asking L2, so the entry
        never outlives the L2 key), ``start + l1.ttl``, and ``start + l1.degraded_ttl``
        when the entry may be stale or miss its invalidation: ``degraded`` (L2 did not take
        the value) or the listener not subscribed now (callers ask before the request, so
        an invalidation sent before the subscription cannot be missed unbounded).
        """
        bound = self._ttl
        if degraded or not self.trusted:
            bound = min(bound, self._degraded_ttl)
        return start + min(life, bound)

    def store_life(self, seconds: float, untrusted: bool) -> float:
        """How long a loaded value may live in L2: ``seconds``, or at most
        ``l1.degraded_ttl`` when the load started while an invalidation could be missed
        (the listener not subscribed): the value may predate a delete nobody heard of."""
        return min(seconds, self._degraded_ttl) if untrusted else seconds

    # -- announcements ---------------------------------------------------------------------

    def announce(self, keys: list[str]) -> str | None:
        """The message that invalidates ``keys`` in the other caches (None: coherence off)."""
        return None if self.coherence is None else self.coherence.keys_message(keys)

    def announce_pattern(self, pattern: str) -> str | None:
        """The message that invalidates the keys matching ``pattern`` elsewhere."""
        return None if self.coherence is None else self.coherence.pattern_message(pattern)

    def announce_clear(self) -> str | None:
        """The message that empties the other caches' L1."""
        return None if self.coherence is None else self.coherence.clear_message()

    # -- reads: Reads (_reads.py) ---------------------------------------------------------

    # -- writes ----------------------------------------------------------------------------

    def write(self, values: dict[str, bytes], seconds: float) -> None:
        """SET ``values`` for ``seconds`` in L2 (announced), then in L1.

        Raises:
            CacheUnavailableError: L2 did not take the write. It is applied to L1 all the
                same, but only for ``l1.degraded_ttl``: L2 and the other processes still
                have the old value.
        """
        self.listen()
        with self.l1.ticket(values) as ticket, self._flight(values, ticket) as flight:
            # The server starts the key's expiry when the SET arrives; reading the clock
            # before sending keeps the L1 deadline no later than that, however slow the reply.
            start = self.l1.timer()
            deadline = self.deadline(start, seconds)
            mark = self.journal.mark()
            try:
                self.l2.set_many(values, seconds, self.announce(list(values)))
            except BaseException as exc:
                if isinstance(exc, CacheUnavailableError):
                    self.journal.keys(values)
                flight.abort()
                ticket.write(values, self.deadline(start, seconds, degraded=True))
                raise
            flight.landed(ticket.write(values, deadline))
            self.journal.settled(values, mark)

    def add(self, key: str, value: bytes, seconds: float) -> bool:
        """SET NX in L2 (announced); L1 gets the value only if L2 took it.

        Raises:
            CacheUnavailableError: L2 could not be reached. The value is applied to L1 all
                the same if L1 had none, for ``l1.degraded_ttl`` at most.
        """
        self._settle(key)
        with self.l1.ticket([key]) as ticket, self._flight([key], ticket) as flight:
            start = self.l1.timer()
            deadline = self.deadline(start, seconds)
            try:
                stored = self.l2.set_if_absent(key, value, seconds, self.announce([key]))
            except CacheUnavailableError:
                flight.abort()
                if self.l1.peek(key) is None:
                    ticket.write({key: value}, self.deadline(start, seconds, degraded=True))
                self.journal.keys([key])
                raise
            if stored:
                flight.landed(ticket.write({key: value}, deadline))
            return stored

    def incr(self, key: str, delta: int, seconds: float) -> int:
        """INCRBY in L2 (announced; a new key lives ``seconds``); L1 gets the new value.

        Raises:
            ValueError: the stored value is not an integer (nothing changed).
            CacheUnavailableError: L2 could not be reached. An integer L1 holds is
                incremented all the same, for ``l1.degraded_ttl`` at most.
        """
        self._settle(key)
        with self.l1.ticket([key]) as ticket, self._flight([key], ticket) as flight:
            start = self.l1.timer()
            untrusted = not self.trusted  # before the request, as fetch() does
            try:
                value, pttl = self.l2.incr(key, delta, seconds, self.announce([key]))
            except CacheUnavailableError:
                flight.abort()
                current = self.l1.peek(key)
                if current is not None and _INTEGER.fullmatch(current):
                    ticket.write({key: b"%d" % (int(current) + delta)},
                                 self.deadline(start, seconds, degraded=True))
                self.journal.keys([key])
                raise
            life = pttl / 1000 if pttl >= 0 else math.inf
            flight.landed(ticket.write({key: b"%d" % value},
                                       self.deadline(start, life, degraded=untrusted)))
            return value

    def touch(self, key: str, seconds: float) -> bool:
        """PEXPIRE in L2 (announced, so no other L1 outlives the new expiry); L1 keeps its
        value with the new deadline, or drops the key if L2 has none.

        Raises:
            CacheUnavailableError: L2 could not be reached (L1's value, if any, gets the
                new deadline, at most ``l1.degraded_ttl``).
        """
        self._settle(key)
        with self.l1.ticket([key]) as ticket, self._flight([key], ticket) as flight:
            start = self.l1.timer()
            deadline = self.deadline(start, seconds)
            current = self.l1.peek(key)
            try:
                touched = self.l2.touch(key, seconds, self.announce([key]))
            except CacheUnavailableError:
                flight.abort()
                if current is not None:
                    ticket.write({key: current}, self.deadline(start, seconds, degraded=True))
                self.journal.keys([key])
                raise
            if not touched:
                self.l1.invalidate([key])  # L2 has no such key: neither may L1
            elif current is not None:
                flight.landed(ticket.write({key: current}, deadline))
            return touched

    def _flight(self, keys: Collection[str], ticket: Ticket) -> Flight | NoFlight:
        """Where an own write of ``keys`` keeps its value in L1 despite the pushes it
        causes on our other connections (tracking mode: :mod:`._ownwrites`)."""
        return NO_FLIGHT if self.coherence is None else self.coherence.own_write(keys, ticket)

    def _settle(self, key: str) -> None:
        """Before an operation that builds on L2's value of ``key`` (SET NX, INCRBY,
        PEXPIRE): a removal of it a failed write left in the journal is done now in L2
        (announced), or the operation would build on the value that write removed. With
        L2 still away it stays pending: the operation fails too, its own way."""
        self.listen()
        if self.journal and self.journal.blocked([key]):
            mark = self.journal.mark()
            try:
                self.l2.delete([key], self.announce([key]))
            except CacheUnavailableError:
                return
            self.journal.settled([key], mark)

    def ttl(self, key: str) -> float | None:
        """Seconds ``key`` has left in L2: None if there is none (or L2 is unreachable: a
        read never raises), ``math.inf`` if it never expires."""
        if self.journal and self.journal.blocked([key]):
            return None
        try:
            value, pttl = self.l2.get(key, count=False)
        except CacheUnavailableError:
            return None
        if value is None or value == NEGATIVE or pttl == -2:
            return None
        return math.inf if pttl == -1 else pttl / 1000

    def delete(self, keys: list[str]) -> int:
        """UNLINK ``keys`` in L2 (announced) and drop them from L1; how many L2 had.

        Raises:
            CacheUnavailableError: L2 did not take the delete (L1 no longer has the keys).
        """
        mark = self.journal.mark()
        removed = self._remove(lambda: self.l1.invalidate(keys),
                               lambda: self.l2.delete(keys, self.announce(keys)),
                               lambda: self.journal.keys(keys))
        self.journal.settled(keys, mark)
        return removed

    def invalidate(self, pattern: str, matches: Callable[[str], bool]) -> int:
        """Remove the keys matching the glob ``pattern`` (``matches`` is its compiled form)
        from L2 (announced) and L1; how many L2 had.

        Raises:
            CacheUnavailableError: L2 could not be scanned (L1 matches were removed).
        """
        removed = self._remove(lambda: self.l1.invalidate_matching(matches),
                               lambda: self.l2.invalidate(pattern, self.announce_pattern(pattern)),
                               lambda: self.journal.pattern(pattern, matches))
        self.journal.took_pattern(pattern, matches)
        return removed

    def clear(self) -> int:
        """Remove every key under the prefix from L2 (announced: every other L1 empties)
        and empty L1; how many keys L2 had.

        Raises:
            CacheUnavailableError: L2 could not be scanned (L1 is empty all the same).
        """
        removed = self._remove(self.l1.clear,
                               lambda: self.l2.invalidate("*", self.announce_clear()),
                               self.journal.clear)
        self.journal.took_clear()
        return removed

    def _remove(self, drop_from_l1: Callable[[], object], remove_from_l2: Callable[[], int],
                remember: Callable[[], None]) -> int:
        """Drop from L1, remove from L2; what L2 did not take, ``remember`` (replayed)."""
        self.listen()
        # Before L2 too: a load about to store one of these keys must see the removal coming.
        drop_from_l1()
        try:
            return remove_from_l2()
        except CacheUnavailableError:
            remember()
            raise
        finally:
            # After L2, so a fill that read the old value before the removal is stamped stale.
            drop_from_l1()

    def _replay(self, pending: Pending) -> Pending:
        """Remove from L2 (announced) and L1 what failed writes left there: the journal's
        replay, run by its thread once L2 answers. Keys go server by server, so one
        cluster primary still down holds back only its own keys (the others' are settled,
        not deleted again at every retry, under values written since).

        Returns:
            What was done (all of ``pending``, or part of it).

        Raises:
            CacheUnavailableError: nothing could be done.
        """
        done, failure = Pending(), None
        if pending.clear is not None:
            try:
                self.l2.invalidate("*", self.announce_clear())
                self.l1.clear()
                done.clear = pending.clear
            except CacheUnavailableError as exc:
                failure = exc
        for pattern, entry in pending.patterns.items():
            try:
                self.l2.invalidate(pattern, self.announce_pattern(pattern))
                self.l1.invalidate_matching(entry[1])
                done.patterns[pattern] = entry
            except CacheUnavailableError as exc:
                failure = failure or exc
        for keys in self.l2.by_server(list(pending.keys)):
            try:
                self.l2.delete(keys, self.announce(keys))
                self.l1.invalidate(keys)
                done.keys.update((key, pending.keys[key]) for key in keys)
            except CacheUnavailableError as exc:
                failure = failure or exc
        if failure is not None and not done:
            raise failure
        return done

    # -- introspection ---------------------------------------------------------------------

    def journal_stats(self) -> JournalStats:
        """The failed invalidations: pending, replayed, dropped."""
        return self.journal.stats()

    def coherence_stats(self) -> CoherenceStats:
        """The listener's state and counters (``{"state": "disabled"}`` when off)."""
        if self.coherence is None:
            return {"state": "disabled", "mode": "off"}
        return self.coherence.stats()
