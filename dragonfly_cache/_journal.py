"""Invalidations L2 did not take, kept until it does: the journal of failed writes.

A write whose L2 part fails raises :class:`~dragonfly_cache.CacheUnavailableError`, and L2
may keep the old value: the caller may have written its database and then failed to
delete the cached copy. Forgetting that would leave every process serving the old value
from L2 until its TTL. So the keys of every failed write (or the pattern of a failed
``invalidate``, or a failed ``clear``) are recorded here, and a replay thread deletes them
from L2 (announced, like any delete) as soon as L2 takes it: it retries by itself, with
backoff from ``RETRY_FIRST`` to ``RETRY_CAP`` seconds, and is woken at once when the
invalidation listener subscribes again. Until then those keys are misses for this process:
its L2 reads skip them (and a read that a failover's switch overtook counts as a miss).

Bounded: at most ``SIZE`` entries (a key or a pattern each; a pending ``clear`` makes
everything else moot). Past that the oldest entry is dropped, counted in ``dropped``
and logged: its key may then be served stale from L2 until its TTL, as without a journal.
A successful ``set`` or ``delete`` of a key settles its entry (L2 holds what it should),
though a replay already under way may still delete a value written meanwhile: a miss,
never a stale value; the next read loads it.
The journal is per process and in memory: a process that exits before L2 is back loses it.

Failovers (Sentinel). Replication is asynchronous: writes the old primary acknowledged just
before it died (or, in a manual failover, after its replica was promoted) may be missing
on the new one, which then serves the values they replaced. So a journal made with a
``window`` also remembers the writes L2 took (``settled``, ``took_pattern``,
``took_clear``) for ``window`` seconds, counted back from the newest of them (a primary
that died took nothing after it died). :meth:`Journal.switching`, around the switch, turns
them into pending entries: read as misses at once, deleted on the new primary by the
replay thread. A write acknowledged during the switch, or sent before it and acknowledged
after, may have reached the old primary only: it becomes pending too. At most ``SIZE``
remembered writes (the oldest go).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from .exceptions import CacheUnavailableError
from .types import JournalStats

__all__ = ["REAPPLY_WINDOW", "RETRY_CAP", "RETRY_FIRST", "SIZE", "Journal", "Pending"]

logger = logging.getLogger(__name__)

SIZE = 10_000
RETRY_FIRST, RETRY_CAP = 0.05, 1.0
REAPPLY_WINDOW = 5.0  # seconds of taken writes a failover re-applies (Sentinel)


@dataclass
class Pending:
    """What must go from L2: the keys, the patterns, or (``clear``) everything.

    Each entry carries the number of the record that made it, so a replay settles only the
    entries no failure recorded again while it ran."""

    keys: dict[str, int] = field(default_factory=dict)
    patterns: dict[str, tuple[int, Callable[[str], bool]]] = field(default_factory=dict)
    clear: int | None = None

    def __len__(self) -> int:
        return len(self.keys) + len(self.patterns) + (self.clear is not None)


@dataclass
class _Taken:
    """Writes L2 took lately, each with the time it was acknowledged (oldest first)."""

    keys: dict[str, float] = field(default_factory=dict)
    patterns: dict[str, tuple[float, Callable[[str], bool]]] = field(default_factory=dict)
    clear: float | None = None
    newest: float = 0.0

    def prune(self, window: float, size: int) -> None:
        cutoff = self.newest - window
        while self.keys and (len(self.keys) > size or next(iter(self.keys.values())) < cutoff):
            del self.keys[next(iter(self.keys))]
        while self.patterns and (len(self.patterns) > size
                                 or next(iter(self.patterns.values()))[0] < cutoff):
            del self.patterns[next(iter(self.patterns))]
        if self.clear is not None and self.clear < cutoff:
            self.clear = None



class Journal:
    """The pending invalidations of one cache in one process, and the thread replaying them.

    Args:
        replay: removes what a :class:`Pending` names from L2 (announced) and L1, and
            returns what it did (all, or part: what a server still away holds stays
            pending); raises :class:`CacheUnavailableError` if it could do nothing.
        size: the most entries kept.
        window: seconds of taken writes to remember for :meth:`switching` (None: none).
        timer: the clock of ``window``.
    """

    def __init__(self, replay: Callable[[Pending], Pending], size: int = SIZE,
                 window: float | None = None, timer: Callable[[], float] = time.monotonic
                 ) -> None:
        self._replay = replay
        self._size = size
        self._window = window
        self._timer = timer
        self._lock = threading.Lock()
        self._pending = Pending()
        self._taken = _Taken()
        self._record = 0  # the number of the last record
        self._switched = 0  # writes sent before this record may have reached an old primary
        self._switching = False  # a move to a new primary is under way
        self.switches = 0  # moves begun: a read that spans one may have missed its entries
        self._moves = 0  # counts the starts and ends of moves (a replay spanning one is void)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.replayed = 0
        self.dropped = 0

    @property
    def idle(self) -> bool:
        """Nothing pending and no replay running (one may still land after a write)."""
        with self._lock:
            return self._thread is None and not self._pending

    def __bool__(self) -> bool:
        """Whether anything is pending (read without the lock: a hint for hot paths)."""
        return bool(self._pending.keys or self._pending.patterns
                    or self._pending.clear is not None)

    # -- recording ---------------------------------------------------------------------

    def keys(self, keys: Iterable[str]) -> None:
        """Remember that ``keys`` must go from L2."""
        with self._lock:
            self._record += 1
            pending = self._pending.keys
            for key in keys:
                pending.pop(key, None)  # re-inserted: now the newest
                pending[key] = self._record
            self._bound()
        self._start()

    def pattern(self, pattern: str, matches: Callable[[str], bool]) -> None:
        """Remember that the keys matching the glob ``pattern`` must go from L2."""
        with self._lock:
            self._record += 1
            self._pending.patterns.pop(pattern, None)
            self._pending.patterns[pattern] = (self._record, matches)
            self._bound()
        self._start()

    def clear(self) -> None:
        """Remember that every key under the prefix must go from L2."""
        with self._lock:
            self._record += 1
            self._pending = Pending(clear=self._record)  # the rest is part of it
        self._start()

    def mark(self) -> int:
        """The number of the last record: take it *before* sending a write, and pass it to
        :meth:`settled` once L2 took the write."""
        return self._record

    def settled(self, keys: Iterable[str], mark: int) -> None:
        """``keys`` were written or deleted in L2 by a write sent after record ``mark``:
        their entries recorded up to then are done with. A failure recorded later (another
        thread's delete that failed while this write was in flight) stays pending.

        With a ``window``, the write is remembered for :meth:`switching`; one that may
        have reached an old primary only (see :meth:`switching`) is pending now."""
        if self._window is not None:
            self._took(list(keys), mark)
        elif self._pending.keys:
            with self._lock:
                pending = self._pending.keys
                for key in keys:
                    if pending.get(key, mark + 1) <= mark:
                        del pending[key]

    def _took(self, keys: list[str], mark: int) -> None:
        with self._lock:
            pending = self._pending.keys
            for key in keys:
                if pending.get(key, mark + 1) <= mark:
                    del pending[key]
            untrusted = self._switching or mark < self._switched
            if untrusted:  # it may have reached the old primary only
                self._record += 1
                for key in keys:
                    pending.pop(key, None)
                    pending[key] = self._record
                self._bound()
            else:
                taken = self._taken
                taken.newest = now = self._timer()
                for key in keys:
                    taken.keys.pop(key, None)
                    taken.keys[key] = now
                taken.prune(self._window or 0.0, self._size)
        if untrusted:
            self._start()

    def took_pattern(self, pattern: str, matches: Callable[[str], bool]) -> None:
        """L2 took an ``invalidate(pattern)``: remembered for :meth:`switching` (with a
        ``window``); pending now if it may have reached an old primary only."""
        if self._window is None:
            return
        with self._lock:
            if not self._switching:
                taken = self._taken
                taken.newest = now = self._timer()
                taken.patterns.pop(pattern, None)
                taken.patterns[pattern] = (now, matches)
                taken.prune(self._window, self._size)
                return
        self.pattern(pattern, matches)

    def took_clear(self) -> None:
        """L2 took a ``clear()``: remembered for :meth:`switching` (with a ``window``);
        pending now if it may have reached an old primary only."""
        if self._window is None:
            return
        with self._lock:
            if not self._switching:
                self._taken.newest = self._taken.clear = self._timer()
                self._taken.prune(self._window, self._size)
                return
        self.clear()

    @contextlib.contextmanager
    def switching(self) -> Iterator[int]:
        """Around the move to a new primary; yields how many entries became pending.

        On entry the writes L2 took in the window (see the module docs) become pending:
        read as misses from now on, deleted by the replay thread. Until the block ends,
        every write L2 acknowledges becomes pending too (it may have gone to the old
        primary), and so does, later, every write sent before the block ended."""
        with self._lock:
            self._record += 1
            self._switched = record = self._record
            self._switching = True
            self._moves += 1
            self.switches += 1
            taken, self._taken = self._taken, _Taken()
            taken.prune(self._window or 0.0, self._size)
            if taken.clear is not None:
                self._pending = Pending(clear=record)  # the rest is part of it
                count = 1
            else:
                pending = self._pending
                for key in taken.keys:
                    pending.keys.pop(key, None)
                    pending.keys[key] = record
                for pattern, (_, matches) in taken.patterns.items():
                    pending.patterns.pop(pattern, None)
                    pending.patterns[pattern] = (record, matches)
                count = len(taken.keys) + len(taken.patterns)
                self._bound()
        try:
            yield count
        finally:
            with self._lock:
                self._record += 1
                self._switched = self._record
                self._switching = False
                self._moves += 1
            self._start()  # replays go to the new primary from now on
            self._wake.set()

    def _bound(self) -> None:
        pending = self._pending
        dropped = 0
        while len(pending.keys) + len(pending.patterns) > self._size:
            oldest = pending.keys if pending.keys else pending.patterns
            del oldest[next(iter(oldest))]
            dropped += 1
        if dropped:
            self.dropped += dropped
            logger.warning("invalidation journal full (%d entries): the %d oldest failed "
                           "invalidation(s) dropped; those keys may be served stale from "
                           "L2 until their TTL", self._size, dropped)

    # -- reading ---------------------------------------------------------------------------

    def blocked(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` L2 may still hold a stale value of (to be read as misses)."""
        with self._lock:
            pending = self._pending
            if pending.clear is not None:
                return set(keys)
            matchers = [matches for _, matches in pending.patterns.values()]
            return {key for key in keys
                    if key in pending.keys or any(matches(key) for matches in matchers)}

    def unblocked(self, keys: Sequence[str]) -> list[str]:
        """``keys`` without those :meth:`blocked` names, in order."""
        blocked = self.blocked(keys)
        return [key for key in keys if key not in blocked]

    # -- replaying -------------------------------------------------------------------------

    def wake(self) -> None:
        """Try the replay now (L2 may be back: the listener just subscribed)."""
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="dragonfly_cache-journal")
            self._thread.start()

    def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            with self._lock:
                snapshot = Pending(dict(self._pending.keys), dict(self._pending.patterns),
                                   self._pending.clear)
                if not snapshot or self._stopped:
                    self._thread = None
                    return
                moves, switching = self._moves, self._switching
            if switching:  # replayed on the old primary, it would be lost with it: wait
                self._wake.wait(RETRY_FIRST)
                self._wake.clear()
                continue
            try:
                done = self._replay(snapshot)
            except CacheUnavailableError:
                done = Pending()
            except Exception:  # a bug: keep the entries, retry later, never die silently
                logger.exception("replaying the invalidation journal failed")
                self._wake.wait(RETRY_CAP)
                self._wake.clear()
                continue
            if done:
                self._settle(done, moves)
            if len(done) < len(snapshot):  # some of it (a server still away): later
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(delay * 2, RETRY_CAP)
            else:
                delay = RETRY_FIRST

    def _settle(self, done: Pending, moves: int) -> None:
        """Remove what ``done`` replayed, unless a failure recorded it again meanwhile, or
        a move to a new primary began since the replay did (it may have gone to the old
        one: the next round replays it again)."""
        with self._lock:
            if self._moves != moves:
                return
            pending = self._pending
            settled = 0
            if done.clear is not None and pending.clear == done.clear:
                pending.clear = None
                settled += 1
            for key, record in done.keys.items():
                if pending.keys.get(key) == record:
                    del pending.keys[key]
                    settled += 1
            for pattern, (record, _) in done.patterns.items():
                if pattern in pending.patterns and pending.patterns[pattern][0] == record:
                    del pending.patterns[pattern]
                    settled += 1
            self.replayed += settled
        logger.info("invalidation journal: %d failed invalidation(s) replayed", settled)

    def stop(self) -> None:
        """Stop replaying (the cache is closing); what is pending stays pending."""
        with self._lock:
            self._stopped = True
        self._wake.set()

    def stats(self) -> JournalStats:
        """``pending`` entries (keys, patterns, a clear), ``replayed``, ``dropped``."""
        with self._lock:
            return {"pending": len(self._pending), "replayed": self.replayed,
                    "dropped": self.dropped}
