"""TieredCache: the policy layer over the local tier (L1) and the shared tier (L2).

Reads: L1 (microseconds) -> on a miss one L2 round trip (GET + PTTL) -> fill L1 unless an
invalidation raced the read. Writes: L2 first, then L1. When L2 is unreachable, reads answer
from L1 or as a miss and never raise; writes still apply to L1 and then raise
:class:`CacheUnavailableError`, because the shared tier did not get the change.

The cache validates every argument (a rejected call changes nothing) and composes the
parts that do the work (``Tiers``, ``Loading``, ``memoize``): see docs/architecture.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from . import _fork, _keys, codecs
from ._fleet import FleetMutex
from ._glob import compile_glob
from ._invalidation import l1_settings
from ._keys import check_delta, check_key, check_keys, check_mapping, check_ttl, check_value
from ._l2 import L2
from ._loading import Loader, Loading, ManyLoader, load_options
from ._memoize import memoize
from ._probe import health
from ._tiers import NEGATIVE, Tiers
from .config import CacheConfig
from .types import TTL, Health, LatencyObserver, Memoized, Mutex, Stats

__all__ = ["TTL", "TieredCache"]

P = ParamSpec("P")
R = TypeVar("R")

class TieredCache:
    """A two-tier cache: in-process L1 in front of a shared Dragonfly/Redis L2.

    Thread-safe; make one per process and share it. Usable as a context manager.

    Args:
        config: the configuration (default: ``CacheConfig()``).
        timer: the monotonic clock used for L1 deadlines; tests pass a fake one.

    Raises:
        ConfigError: the configuration cannot be used (then nothing starts).
    """

    def __init__(self, config: CacheConfig | None = None, *,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else CacheConfig()
        self._l2 = L2(self.config.dragonfly, self.config.key_prefix, self.config.l2)
        self._timer = timer
        self._closed = False
        self._start_process_state()
        _fork.register(self)

    def _start_process_state(self) -> None:
        """The per-process parts: the tiers (a new L1; its listener starts now) and loading."""
        self._tiers = Tiers(l1_settings(self.config), self._l2, self._timer)
        self._l1 = self._tiers.l1  # one attribute hop on the L1 hit path, not two
        self._loading = Loading(self._tiers, self.config.l2, self.config.l1.max_size)
        if self._closed:
            self._tiers.stop()  # a cache closed before a fork stays closed in the child
        else:
            self._tiers.listen()

    def _after_fork_in_child(self) -> None:
        """Start the child afresh: a lock held by a parent thread at fork time would never
        be released here, in-flight loads belong to threads that do not exist here, and
        the parent's connections must not be shared. L1 starts empty; counters from zero."""
        self._l2.after_fork_in_child()
        self._start_process_state()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TieredCache:
        """Build a cache from environment variables (see :meth:`CacheConfig.from_env`)."""
        return cls(CacheConfig.from_env(environ))

    def __repr__(self) -> str:
        return (f"<TieredCache {self._l2.address} prefix={self.config.key_prefix!r} "
                f"l1={len(self._l1)}/{self.config.l1.max_size}>")

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop the invalidation listener and close the connections. A later call still
        works, with coherence off (L1 entries then live at most ``l1.degraded_ttl``) and a
        connection opened and closed per call: a closed cache keeps no connection open."""
        self._closed = True
        self._tiers.stop()
        self._l2.close()

    def _ttl(self, ttl: TTL) -> float:
        return check_ttl(ttl, self.config.l2.ttl)

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """Return the value of ``key``, or None on a miss (or when L2 is unreachable)."""
        if type(key) is not str or not key:
            check_key(key)
        value = self._l1.get(key)  # only validated keys are ever stored: a hit is one
        if value is not None:
            return None if value is NEGATIVE else value
        check_key(key)
        value = self._tiers.read_through([key]).get(key)
        return None if value is NEGATIVE else value

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Return the values of the keys that are cached; misses are omitted.

        L1 answers what it can; the rest is fetched in one L2 round trip.
        """
        found = self._tiers.read_many(_keys.distinct_keys(keys))
        if NEGATIVE in found.values():
            return {key: value for key, value in found.items() if value is not NEGATIVE}
        return found

    def exists(self, key: str) -> bool:
        """Whether ``key`` is cached (L1, else L2; False when L2 is unreachable)."""
        check_key(key)
        value = self._l1.peek(key)
        if value is None:
            # One GET+PTTL rather than EXISTS: it also tells a cached "not found" from a
            # value, and fills L1 for the read that usually follows.
            value = self._tiers.read_through([key]).get(key)
        return value is not None and value is not NEGATIVE

    # -- writes --------------------------------------------------------------------------

    def set(self, key: str, value: bytes, ttl: TTL = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` (default ``l2.ttl``) in L2, then L1.

        Raises:
            TypeError / ValueError: bad key, value or ttl (nothing is changed).
            CacheUnavailableError: L2 did not take the write (L1 was updated).
        """
        check_key(key)
        check_value(key, value)
        self._tiers.write({key: value}, self._ttl(ttl))

    def set_many(self, mapping: Mapping[str, bytes], ttl: TTL = None) -> None:
        """Store several values in one L2 round trip, then in L1.

        Raises:
            TypeError / ValueError: any bad key, value or ttl (nothing is changed).
            CacheUnavailableError: L2 did not take the writes (L1 was updated).
        """
        values = check_mapping(mapping)
        seconds = self._ttl(ttl)
        if values:
            self._tiers.write(values, seconds)

    def delete(self, key: str) -> None:
        """Remove ``key`` from L2 and L1.

        Raises:
            CacheUnavailableError: L2 did not take the delete (L1 no longer has the key).
        """
        check_key(key)
        self._loading.forget(lambda candidate: candidate == key)
        self._tiers.delete([key])

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
        matches = compile_glob(pattern)
        self._loading.forget(matches)
        return self._tiers.invalidate(pattern, matches)

    # -- conditional writes, counters, expiry, bulk removal -------------------------------

    def add(self, key: str, value: bytes, ttl: TTL = None) -> bool:
        """Store ``value`` only if ``key`` is absent in L2 (atomic SET NX); True if stored.

        Raises:
            TypeError / ValueError: bad key, value or ttl (nothing is changed).
            CacheUnavailableError: L2 could not be reached (L1 took the value if it had none).
        """
        check_key(key)
        check_value(key, value)
        return self._tiers.add(key, value, self._ttl(ttl))

    def incr(self, key: str, delta: int = 1, ttl: TTL = None) -> int:
        """Add ``delta`` to the integer stored at ``key``, atomically in L2; the new value.

        A missing key starts from 0 and expires after ``ttl`` (default ``l2.ttl``); an
        existing key keeps its expiry. The stored value is the ASCII integer (``get``
        returns ``b"5"``).

        Raises:
            TypeError / ValueError: bad key, delta or ttl; ValueError also when the stored
                value is not an integer or the sum would overflow 64 bits (nothing changed).
            CacheUnavailableError: L2 could not be reached (an integer in L1 was updated).
        """
        check_key(key)
        return self._tiers.incr(key, check_delta(delta), self._ttl(ttl))

    def decr(self, key: str, delta: int = 1, ttl: TTL = None) -> int:
        """Subtract ``delta``: :meth:`incr` with ``-delta`` (same rules, same errors)."""
        check_key(key)
        return self._tiers.incr(key, check_delta(-check_delta(delta)), self._ttl(ttl))

    def touch(self, key: str, ttl: TTL = None) -> bool:
        """Give ``key`` a new ttl in L2 (default ``l2.ttl``); False if there is no such key.

        Raises:
            TypeError / ValueError: bad key or ttl (nothing is changed).
            CacheUnavailableError: L2 could not be reached.
        """
        check_key(key)
        return self._tiers.touch(key, self._ttl(ttl))

    def ttl(self, key: str) -> float | None:
        """Seconds ``key`` has left in L2: None if there is no such key (or L2 cannot be
        reached: this is a read, it never raises), ``math.inf`` if it never expires."""
        check_key(key)
        return self._tiers.ttl(key)

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys`` from L2 and L1, one round trip per node; how many L2 had.

        Raises:
            CacheUnavailableError: L2 did not take the delete (L1 no longer has the keys).
        """
        distinct = check_keys(keys)
        if not distinct:
            return 0
        self._loading.forget(set(distinct).__contains__)
        return self._tiers.delete(distinct)

    def clear(self) -> int:
        """Remove every key under ``key_prefix`` from L2 (SCAN + UNLINK, every primary) and
        empty every cache's L1; how many L2 keys went.

        **With an empty key_prefix this removes every key of the db**, other applications'
        too, as Django's and cachelib's Redis backends do: give each app its own prefix.

        Raises:
            CacheUnavailableError: L2 could not be scanned (this L1 is empty all the same).
        """
        self._loading.forget(lambda _key: True)
        return self._tiers.clear()

    # -- loading -------------------------------------------------------------------------

    def get_or_load(self, key: str, loader: Loader, ttl: TTL = None, *,
                    lock: bool | None = None, refresh_ahead: float | None = None,
                    stale_if_error: TTL = None) -> bytes:
        """Return the cached value, or call ``loader()`` once to produce and cache it.

        Concurrent misses on one key in this process share one ``loader()`` call; its
        exception reaches every waiter and nothing is cached. A :class:`NotFound` from it
        is cached for ``l2.negative_ttl`` (later calls raise it without loading). With L2
        unreachable the loader's value is returned, kept in L1 at most ``l1.degraded_ttl``:
        this never raises ``CacheUnavailableError``. With ``stale_if_error`` a failed reload
        returns the last good value for a while (docs/loading.md, "Serve stale on error").

        Args:
            key: the cache key.
            loader: produces the value (bytes) on a miss.
            ttl: seconds or timedelta (default ``l2.ttl``).
            lock: take the fleet-wide lock on a miss, so one process in the fleet loads
                (default ``l2.fleet_lock``).
            refresh_ahead: refresh in the background during the last fraction of the
                entry's life, in (0, 1) (default ``l2.refresh_ahead``; None: off).
            stale_if_error: seconds or timedelta, >= 0 (default ``l2.stale_if_error``).

        Raises:
            TypeError: bad key, a non-callable loader, or a loader returning non-bytes.
            ValueError: empty key, bad ttl, refresh_ahead or stale_if_error.
            NotFound: the loader said (now or within ``negative_ttl``) there is no record.
            Exception: whatever ``loader`` raised (unless a stale value answers).
        """
        check_key(key)
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {type(loader).__name__}")
        options = load_options(self.config.l2, ttl, lock, refresh_ahead, stale_if_error)
        return self._loading.get_or_load(key, loader, options)

    def get_or_load_many(self, keys: Iterable[str], loader_many: ManyLoader,
                         ttl: TTL = None, *, stale_if_error: TTL = None) -> dict[str, bytes]:
        """Values of ``keys``, loading every missing one with one ``loader_many`` call.

        L1 first, then one L2 round trip for the L1 misses, then ``loader_many(missing)``
        once for what is still missing. A key another caller (here, in this process) is
        already loading is waited for, not loaded twice. Keys the loader omits, and keys
        with a cached negative answer, are absent from the result. ``stale_if_error``: as in
        :meth:`get_or_load`; a failed loader call is answered stale if all its keys can be.

        Raises:
            TypeError / ValueError: bad keys, ttl or stale_if_error; non-bytes loaded.
            Exception: whatever ``loader_many`` raised (also in every caller waiting on
                one of its keys); nothing is cached then.
        """
        distinct = check_keys(keys)
        if not callable(loader_many):
            raise TypeError(f"loader_many must be callable, got {type(loader_many).__name__}")
        options = load_options(self.config.l2, ttl, stale_if_error=stale_if_error)
        return self._loading.get_or_load_many(distinct, loader_many, options)

    def memoize(self, ttl: TTL = None, *, key: Callable[..., str] | None = None,
                codec: codecs.Codec | str | None = "json", lock: bool | None = None
                ) -> Callable[[Callable[P, R]], Memoized[P, R]]:
        """Cache a function's results, keyed by its qualified name and its arguments.

        ``@cache.memoize(ttl=60)`` on ``def user(user_id)``: ``user(1)`` loads once, then
        comes from the cache; ``user.invalidate(1)`` drops one result and
        ``user.invalidate_all()`` all of them. Calls coalesce, and ``NotFound`` gets a
        negative entry. How arguments become keys (the same in every process): see
        docs/loading.md, "Memoize".

        Args:
            ttl: seconds or timedelta (default ``l2.ttl``).
            key: ``key(*args, **kwargs) -> str`` replaces the argument hash.
            codec: "json" (default), "bytes", "msgpack", a :mod:`dragonfly_cache.codecs`
                codec such as ``codecs.SignedPickle(secret)``, or None for the configured
                ``CACHE_CODEC`` (with ``CACHE_PICKLE_SECRET`` when that is "pickle").
            lock: use the fleet lock on misses (default ``l2.fleet_lock``).
        """
        chosen = (codecs.resolve(self.config.codec, pickle_secret=self.config.pickle_secret)
                  if codec is None else codecs.resolve(codec))
        return memoize(self, self._ttl(ttl), key=key, codec=chosen, lock=lock)

    def lock(self, name: str, ttl: TTL = None, *, poll: float = 0.1) -> Mutex:
        """The fleet-wide lock on ``name`` (the one ``get_or_load(name, lock=True)`` takes)
        as a mutex: ``acquire(wait=True)``, ``release()``, ``locked()``, or ``with``. It
        lives ``ttl`` (default ``l2.fleet_lock_ttl``) if never released; a waiter pauses at
        most ``poll`` seconds between tries. The rules: docs/loading.md, "Fleet lock"."""
        check_key(name, "name")
        lock_ttl = check_ttl(ttl, self.config.l2.fleet_lock_ttl)
        return FleetMutex(self._tiers, name, lock_ttl, check_ttl(poll, 0.1, "poll"))

    def decode(self, data: bytes, codec: codecs.Codec) -> Any:
        """``codec.decode(data)`` of a value read from this cache. One that does not decode
        (tampered, unsigned, another codec's) is counted in ``stats()["loading"]
        ["decode_failures"]`` and :class:`codecs.DecodeError` propagates: read it as a miss."""
        try:
            return codec.decode(data)
        except codecs.DecodeError:
            self._loading.count_decode_failure()
            raise

    # -- introspection -------------------------------------------------------------------

    def add_latency_observer(self, observer: LatencyObserver) -> None:
        """Call ``observer(operation, seconds)`` after every L2 round trip (``operation``:
        "GET", "MGET", "SET", ...); once, however often it is added. Its exceptions are
        logged, never passed to the caller. The metrics module uses this."""
        self._l2.add_latency_observer(observer)

    def remove_latency_observer(self, observer: LatencyObserver) -> None:
        """Stop calling ``observer`` (no error if it was not added)."""
        self._l2.remove_latency_observer(observer)

    def stats(self) -> Stats:
        """Counters: ``l1_stats``, ``l2_stats``, ``singleflight``, ``breaker``, ``coherence``,
        ``loading`` (refreshes, failures, undecodable values, stale answers), ``journal``."""
        return {
            "l1_stats": self._l1.stats(),
            "l2_stats": self._l2.stats(),
            "singleflight": self._loading.singleflight_stats(),
            "breaker": self._l2.breaker_stats(),
            "coherence": self._tiers.coherence_stats(),
            "loading": self._loading.stats(),
            "journal": self._tiers.journal_stats(),
        }

    def health(self) -> Health:
        """Probe the server (PING + INFO; in a cluster every primary, each in
        ``dragonfly["nodes"]``, see docs/scaling-out.md) and report status, server, version
        and counters. It goes through the circuit breaker like any call: while the breaker
        is open the report is "unhealthy" at once (docs/failure-behaviour.md)."""
        return health(self._tiers)
