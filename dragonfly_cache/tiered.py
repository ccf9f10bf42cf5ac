"""TieredCache: the policy layer over the local tier (L1) and the shared tier (L2).

Reads: L1 (microseconds) -> on a miss one L2 round trip (GET + PTTL) -> fill L1 unless an
invalidation raced the read. Writes: L2 first, then L1. When L2 is unreachable, reads answer
from L1 or as a miss and never raise; writes still apply to L1 and then raise
:class:`CacheUnavailableError`, because the shared tier did not get the change.

No lock is ever held across network I/O or user code: L1 takes its lock only around dict
work, and the singleflight leader runs the loader outside any lock.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

from ._coherence import Coherence
from ._glob import compile_glob
from ._keys import MAX_TTL, check_key, check_keys, check_value
from ._l1 import L1
from ._l2 import L2
from ._loading import NEGATIVE, LoadingMixin
from ._singleflight import SingleFlight
from .config import CacheConfig
from .exceptions import CacheUnavailableError

__all__ = ["TieredCache"]

TTL = float | int | timedelta | None


# How often a thread that keeps hitting L1 offers the GIL to the invalidation listener.
YIELD_INTERVAL = 0.001

# Every live cache, so the child of a fork can rebuild what it must not inherit.
_caches: weakref.WeakSet[TieredCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._after_fork_in_child()


# Why at-fork hooks rather than pid checks on every call: a pid check costs the L1 hit path
# a syscall-free but non-zero comparison on every get, and it runs too late to save a lock
# that a parent thread held at the moment of fork (gunicorn --preload forks while the
# master's threads may be mid-call). The hook runs in the child before any user code.
os.register_at_fork(after_in_child=_after_fork_in_child)


class TieredCache(LoadingMixin):
    """A two-tier cache: in-process L1 in front of a shared Dragonfly/Redis L2.

    Thread-safe; make one per process and share it. Usable as a context manager.

    Args:
        config: the configuration (default: ``CacheConfig()``).
        timer: the monotonic clock used for L1 deadlines; tests pass a fake one.

    Raises:
        ConfigError: the configuration cannot be used (no network I/O happens here; the
            first connection is made by the first command).
    """

    def __init__(self, config: CacheConfig | None = None, *,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else CacheConfig()
        self._l2 = L2(self.config.dragonfly, self.config.key_prefix)
        self._timer = timer
        self._closed = False
        self._start_process_state()
        _caches.add(self)

    def _start_process_state(self) -> None:
        """Create the per-process state: L1 (and its lock), singleflight, counters, and the
        coherence listener (started lazily by the first operation that reaches L2)."""
        l1 = self.config.l1
        self._l1 = L1(l1.max_size, l1.ttl, self._timer)
        self._flights: SingleFlight[bytes] = SingleFlight()
        self._loads_lock = threading.Lock()
        self._loads = 0
        self._start_loading_state()
        self._coherence = (Coherence(self._l1, self._l2.subscription, self._l2.channel)
                           if l1.invalidation else None)
        if self._coherence is not None:
            self._l1.yield_interval = YIELD_INTERVAL
        if self._closed and self._coherence is not None:
            self._coherence.stop()  # a cache closed before a fork stays closed in the child

    def _listen(self) -> None:
        if self._coherence is not None:
            self._coherence.ensure_started()

    def _horizon(self, now: float) -> float:
        """The latest deadline an L1 entry stored now may have.

        Unbounded while the invalidation listener is subscribed (or coherence is off);
        ``l1.degraded_ttl`` from now while it is not, since invalidations may be missed.
        """
        coherence = self._coherence
        if coherence is None or coherence.subscribed:
            return math.inf
        return now + self.config.l1.degraded_ttl

    def _announce_keys(self, keys: list[str]) -> str | None:
        return None if self._coherence is None else self._coherence.keys_message(keys)

    def _after_fork_in_child(self) -> None:
        """Start the child afresh: a lock held by a parent thread at fork time would never
        be released here, in-flight loads belong to threads that do not exist here, and
        the parent's connections must not be shared. L1 starts empty; counters from zero.
        """
        self._l2.after_fork_in_child()
        self._start_process_state()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TieredCache:
        """Build a cache from environment variables (see :meth:`CacheConfig.from_env`)."""
        return cls(CacheConfig.from_env(environ))

    def __repr__(self) -> str:
        return (f"<TieredCache {self._l2.address} prefix={self.config.key_prefix!r} "
                f"l1={len(self._l1)}/{self._l1.max_size}>")

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the invalidation listener and release the connection pool.

        A later call reconnects lazily, with coherence off: L1 entries then live at most
        ``l1.degraded_ttl``.
        """
        self._closed = True
        if self._coherence is not None:
            self._coherence.stop()
        self._l2.close()

    # -- validation ----------------------------------------------------------------------

    def _ttl(self, ttl: TTL) -> float:
        if ttl is None:
            return self.config.l2.ttl
        if isinstance(ttl, timedelta):
            seconds = ttl.total_seconds()
        elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
            seconds = float(ttl)
        else:
            raise TypeError(f"ttl must be seconds (int/float), a timedelta or None, "
                            f"got {type(ttl).__name__}")
        if not 0 < seconds <= MAX_TTL:
            raise ValueError(f"ttl must be positive and at most {MAX_TTL:.0f}s (100 years), "
                             f"got {ttl!r}")
        return seconds

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """Return the value of ``key``, or None on a miss (or when L2 is unreachable)."""
        if type(key) is not str or not key:
            check_key(key)
        value = self._l1.get(key)  # only validated keys are ever stored, so a hit is one
        if value is not None:
            return None if value is NEGATIVE else value
        check_key(key)
        value = self._read_through([key]).get(key)
        return None if value is NEGATIVE else value

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Return the values of the keys that are cached; misses are omitted.

        L1 answers what it can; the rest is fetched in one L2 round trip.
        """
        distinct = check_keys(keys)
        found = self._l1.get_many(distinct)
        missing = [key for key in distinct if key not in found]
        if missing:
            found.update(self._read_through(missing))
        return {key: value for key, value in found.items() if value is not NEGATIVE}

    def exists(self, key: str) -> bool:
        """Whether ``key`` is cached (L1, else L2; False when L2 is unreachable)."""
        check_key(key)
        value = self._l1.peek(key)
        if value is None:
            # One GET+PTTL rather than EXISTS: it also tells a cached "not found" from a
            # value, and fills L1 for the read that usually follows.
            value = self._read_through([key]).get(key)
        return value is not None and value is not NEGATIVE

    def _read_through(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Fetch L1-missing keys from L2 in one round trip and fill L1 with them.

        The L1 ticket is taken before the request, so an invalidation that arrives while it
        is in flight wins over the fill; the clock is read before the request too, so an
        entry's deadline (now + PTTL) never lies past the L2 key's expiry.
        """
        self._listen()
        l1 = self._l1
        ticket = l1.begin(keys)
        found: dict[str, bytes] = {}
        fills: dict[str, tuple[bytes, float]] = {}
        try:
            found, fills = self._fetch(keys)
        finally:
            l1.fill(fills, ticket, [key for key in keys if key not in fills])
        return found

    def _fetch(self, keys: Sequence[str]
               ) -> tuple[dict[str, bytes], dict[str, tuple[bytes, float]]]:
        """Read ``keys`` from L2 (GET+PTTL, or MGET+PTTLs): the values found, and the L1
        fills they allow (value, deadline). L2 failures read as misses."""
        start = self._l1.timer()
        horizon = self._horizon(start)
        found: dict[str, bytes] = {}
        fills: dict[str, tuple[bytes, float]] = {}
        try:
            replies = [self._l2.get(keys[0])] if len(keys) == 1 else self._l2.get_many(keys)
        except CacheUnavailableError:
            return found, fills  # reads degrade to a miss; the L2 tier counted and logged it
        for key, (value, pttl) in zip(keys, replies, strict=True):
            if value is None:
                continue
            if value == NEGATIVE:
                value = NEGATIVE  # one object, so hot paths can test identity
            found[key] = value
            if pttl >= 0:
                fills[key] = (value, min(start + pttl / 1000, horizon))
            elif pttl == -1:  # no expiry on the server: L1's own ttl bounds it
                fills[key] = (value, horizon)
            # -2: the key vanished between GET and PTTL; answer, but don't keep it
        return found, fills

    # -- writes --------------------------------------------------------------------------

    def set(self, key: str, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` (default ``l2.ttl``) in L2, then L1.

        Raises:
            TypeError / ValueError: bad key, value or ttl (nothing is changed).
            CacheUnavailableError: L2 did not take the write (L1 was updated).
        """
        check_key(key)
        check_value(key, value)
        self._write({key: value}, self._ttl(ttl))

    def set_many(self, mapping: Mapping[str, bytes], ttl: TTL = None) -> None:
        """Store several values in one L2 round trip, then in L1.

        Raises:
            TypeError / ValueError: any bad key, value or ttl (nothing is changed).
            CacheUnavailableError: L2 did not take the writes (L1 was updated).
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be a Mapping of str to bytes, "
                            f"got {type(mapping).__name__}")
        values = dict(mapping)
        for key in check_keys(values):
            check_value(key, values[key])
        seconds = self._ttl(ttl)
        if values:
            self._write(values, seconds)

    def _write(self, values: dict[str, bytes], seconds: float) -> None:
        self._listen()
        l1 = self._l1
        ticket = l1.begin(values)
        # The server starts the key's expiry when the SET arrives; reading the clock before
        # sending keeps the L1 deadline no later than that, however slow the reply.
        start = l1.timer()
        deadline = min(start + seconds, self._horizon(start))
        try:
            self._l2.set_many(values, seconds, self._announce_keys(list(values)))
        except BaseException:
            # Applied locally all the same (the CacheUnavailableError then propagates), but
            # only briefly: L2 and the other processes still have the old value.
            l1.write(values, min(deadline, start + self.config.l1.degraded_ttl), ticket)
            raise
        l1.write(values, deadline, ticket)

    def delete(self, key: str) -> None:
        """Remove ``key`` from L2 and L1.

        Raises:
            CacheUnavailableError: L2 did not take the delete (L1 no longer has the key).
        """
        check_key(key)
        self._listen()
        # Before L2 too: a load about to store this key must see the delete coming.
        self._l1.invalidate([key])
        self._forget_refresh(lambda candidate: candidate == key)
        try:
            self._l2.delete([key], self._announce_keys([key]))
        finally:
            # After L2, so a fill that read the old value before the delete is stamped stale.
            self._l1.invalidate([key])

    def invalidate(self, pattern: str) -> int:
        """Remove every key matching the Redis glob ``pattern`` from L2 and L1.

        Args:
            pattern: a Redis glob over keys without the prefix (``*``, ``?``, ``[a-z]``,
                ``[^x]``, ``\\`` escapes).

        Returns:
            How many L2 keys were removed.

        Raises:
            CacheUnavailableError: L2 could not be scanned (L1 matches were removed).
        """
        check_key(pattern, "pattern")
        self._listen()
        announce = None if self._coherence is None else self._coherence.pattern_message(pattern)
        matches = compile_glob(pattern)
        self._l1.invalidate_matching(matches)  # before L2 too, as in delete()
        self._forget_refresh(matches)
        try:
            return self._l2.invalidate(pattern, announce)
        finally:
            self._l1.invalidate_matching(matches)

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: ``l1_stats``, ``l2_stats``, ``singleflight``, ``breaker``, ``coherence``,
        ``loading`` (background/synchronous refreshes, their failures, undecodable values)."""
        with self._loads_lock:
            loads = self._loads
        return {
            "l1_stats": self._l1.stats(),
            "l2_stats": self._l2.stats(),
            "singleflight": {"loads": loads, "coalesced": self._flights.coalesced},
            "breaker": self._l2.breaker_stats(),
            "coherence": self._coherence_stats(),
            "loading": self._loading_stats(),
        }

    def _coherence_stats(self) -> dict[str, Any]:
        if self._coherence is None:
            return {"state": "disabled"}
        return self._coherence.stats()

    def health(self) -> dict[str, Any]:
        """Probe the server (PING + INFO) and report status, server, version and counters.

        In a cluster every primary is probed: ``dragonfly["nodes"]`` maps each to "ok" or
        its failure, and the status is "healthy" only when all of them answered.

        The probe goes through the circuit breaker like any call: while the breaker is open
        the report is "unhealthy" at once, without touching the network; once the cooldown
        has passed, a health check is as good a recovery probe as any request.
        """
        dragonfly: dict[str, Any]
        self._listen()
        try:
            dragonfly = {"connected": True, **self._l2.probe()}
        except CacheUnavailableError as exc:
            dragonfly = {"connected": False, "version": None, "error": str(exc)}
        return {
            # A cluster with some primary unreachable is connected but not healthy.
            "status": "healthy" if dragonfly["connected"] and "error" not in dragonfly
            else "unhealthy",
            "dragonfly": dragonfly,
            "breaker": self._l2.breaker_stats()["state"],
            "coherence": self._coherence_stats()["state"],
            "l1_stats": self._l1.stats(),
            "l2_stats": self._l2.stats(),
        }
