"""Invalidations L2 did not take, kept until it does: the journal of failed writes.

A write whose L2 part fails raises :class:`~dragonfly_cache.CacheUnavailableError`, and L2
may keep the old value: the caller may have written its database and then failed to
delete the cached copy. Forgetting that would leave every process serving the old value
from L2 until its TTL. So the keys of every failed write (or the pattern of a failed
``invalidate``, or a failed ``clear``) are recorded here, and a replay thread deletes them
from L2 (announced, like any delete) as soon as L2 takes it: it retries by itself, with
backoff from ``RETRY_FIRST`` to ``RETRY_CAP`` seconds, and is woken at once when the
invalidation listener subscribes again. Until then those keys are misses for this process:
its L2 reads skip them.

Bounded: at most ``SIZE`` entries (a key or a pattern each; a pending ``clear`` makes
everything else moot). Past that the oldest entry is dropped, counted in ``dropped``
and logged: its key may then be served stale from L2 until its TTL, as without a journal.
A successful ``set`` or ``delete`` of a key settles its entry (L2 holds what it should),
though a replay already under way may still delete a value written meanwhile: a miss,
never a stale value; the next read loads it.
The journal is per process and in memory: a process that exits before L2 is back loses it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .exceptions import CacheUnavailableError
from .types import JournalStats

__all__ = ["RETRY_CAP", "RETRY_FIRST", "SIZE", "Journal", "Pending"]

logger = logging.getLogger(__name__)

SIZE = 10_000
RETRY_FIRST, RETRY_CAP = 0.05, 1.0


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


class Journal:
    """The pending invalidations of one cache in one process, and the thread replaying them.

    Args:
        replay: removes what a :class:`Pending` names from L2 (announced) and L1, and
            returns what it did (all, or part: what a server still away holds stays
            pending); raises :class:`CacheUnavailableError` if it could do nothing.
        size: the most entries kept.
    """

    def __init__(self, replay: Callable[[Pending], Pending], size: int = SIZE) -> None:
        self._replay = replay
        self._size = size
        self._lock = threading.Lock()
        self._pending = Pending()
        self._record = 0  # the number of the last record
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
        thread's delete that failed while this write was in flight) stays pending."""
        if self._pending.keys:
            with self._lock:
                pending = self._pending.keys
                for key in keys:
                    if pending.get(key, mark + 1) <= mark:
                        del pending[key]

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
                self._settle(done)
            if len(done) < len(snapshot):  # some of it (a server still away): later
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(delay * 2, RETRY_CAP)
            else:
                delay = RETRY_FIRST

    def _settle(self, done: Pending) -> None:
        """Remove what ``done`` replayed, unless a failure recorded it again meanwhile."""
        with self._lock:
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
