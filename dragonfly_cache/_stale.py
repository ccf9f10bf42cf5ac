"""Serve stale on error: a key's last good value when its reload fails, for a bounded time.

With ``stale_if_error=w`` (``l2.stale_if_error``, or per call), a ``get_or_load`` whose
reload fails -- the loader raises anything but ``NotFound``, or L2 cannot be reached --
answers with the value L1 held for the key if it expired less than ``w`` ago, instead of
the error (L2 unreachable: instead of calling the loader, which every process would then
do on its own). Past ``w`` the caller gets what it would get without it.

Where the value comes from. L1 keeps an entry past its deadline for the longest window in
use (``L1.retain``); reads treat it as expired and only :meth:`L1.stale` returns it. So kept
values are bounded by ``l1.max_size`` and ``l1.max_bytes`` like any entry, and whatever
removes a key from L1 removes its kept value too: a write or delete here or in another
cache (coherence), ``invalidate``, ``clear``, the flush when the invalidation listener
loses its channel. Nothing is served stale while the listener is not subscribed (an entry
may then have missed a delete), nor a cached ``NotFound``; a load that ends in
``NotFound`` drops the kept value.

Backoff. A failed reload is tried again after 1 s, doubling up to 30 s. Until then callers
of the key get the stale value without calling the loader; then one caller tries again,
and the others keep getting the stale value while it does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable

from cachetools import LRUCache

from ._l1 import Entry
from ._refresh import BACKOFF_CAP, BACKOFF_FIRST
from ._tiers import NEGATIVE, Tiers

__all__ = ["StaleOnError", "Unreachable"]

logger = logging.getLogger(__name__)


class Unreachable(Exception):
    """L2 could not be reached during a reload that has a stale value to fall back on
    (never leaves the cache: the caller gets the stale value, or loads)."""


class _Backoff:
    __slots__ = ("delay", "error", "reported", "retry_at")

    def __init__(self, retry_at: float, delay: float, error: str) -> None:
        self.retry_at, self.delay, self.error = retry_at, delay, error
        self.reported = False  # logged when first served stale


class StaleOnError:
    """The stale values and reload backoffs of one cache in one process.

    Args:
        tiers: the cache's tiers (L1 keeps the values; whether they can be trusted).
        window: the configured ``l2.stale_if_error`` (0: off).
        max_keys: most keys whose backoff is remembered (L1's size).
    """

    def __init__(self, tiers: Tiers, window: float, max_keys: int) -> None:
        self._tiers = tiers
        self._l1 = tiers.l1
        self._lock = threading.Lock()
        self._backoffs: LRUCache[str, _Backoff] = LRUCache(max(1, max_keys))
        self.served_count = 0  # answers with a stale value
        self.use(window)

    def use(self, window: float) -> None:
        """A caller takes values up to ``window`` seconds past their expiry: L1 keeps
        expired entries that long from now on (the longest window any caller used)."""
        if window > self._l1.retain:
            self._l1.keep_expired(window)

    def _entry(self, key: str, window: float) -> Entry | None:
        if not window or not self._tiers.trusted:
            return None
        entry = self._l1.stale(key, window)
        return None if entry is None or entry[0] == NEGATIVE else entry

    def holds(self, key: str, window: float) -> bool:
        """Whether a failed reload of ``key`` would be answered with a stale value."""
        return self._entry(key, window) is not None

    def peek(self, keys: Iterable[str], window: float) -> dict[str, bytes]:
        """The stale values of ``keys`` for a caller taking ``window`` (keys with none are
        absent), not counted: :meth:`served` counts them once they are the answer."""
        entries = {key: self._entry(key, window) for key in keys}
        return {key: entry[0] for key, entry in entries.items() if entry is not None}

    def serve(self, key: str, window: float) -> bytes | None:
        """The stale value of ``key`` for a caller taking ``window``, counted (None:
        nothing to serve)."""
        value = self.peek([key], window).get(key)
        if value is not None:
            self.served([key])
        return value

    def served(self, keys: Collection[str]) -> None:
        """``keys`` were answered with stale values: count them; log each failed reload
        once."""
        if not keys:
            return
        now = self._l1.timer()
        reports = []
        with self._lock:
            self.served_count += len(keys)
            for key in keys:
                backoff = self._backoffs.get(key)
                if backoff is not None and not backoff.reported:
                    backoff.reported = True
                    reports.append((key, backoff.error, max(0.0, backoff.retry_at - now)))
        for report in reports:
            logger.warning("serving %r stale: its reload failed (%s); next try in %.1fs",
                           *report)

    def backs_off(self, key: str, window: float) -> bool:
        """For a caller that missed L1: whether to answer with the stale value because the
        reload of ``key`` failed lately. False: load it (no failed reload, or this caller
        is the one that tries again after the backoff: the others keep the stale value
        meanwhile)."""
        if not window or not self._backoffs:
            return False
        now = self._l1.timer()
        with self._lock:
            backoff = self._backoffs.get(key)
            if backoff is None:
                return False
            if now >= backoff.retry_at:
                backoff.retry_at = now + backoff.delay
                return False
        return True

    def failed(self, key: str, error: BaseException) -> None:
        """A reload of ``key`` failed: the next one after a doubling backoff."""
        if not self._l1.retain:
            return  # nobody takes stale values here: nothing to back off for
        now = self._l1.timer()
        with self._lock:
            backoff = self._backoffs.get(key)
            delay = BACKOFF_FIRST if backoff is None else min(backoff.delay * 2, BACKOFF_CAP)
            self._backoffs[key] = _Backoff(now + delay, delay,
                                           f"{type(error).__name__}: {error}")

    def loaded(self, key: str, value: bytes | None) -> None:
        """A load of ``key`` ended with ``value`` (None: a batch loader omitted it): its
        backoff ends; after ``NotFound`` the kept value goes too."""
        if value is NEGATIVE and self._l1.retain:
            self._l1.drop_expired(key)
        if self._backoffs:
            with self._lock:
                self._backoffs.pop(key, None)
