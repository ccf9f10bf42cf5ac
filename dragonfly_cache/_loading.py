"""Loading through the cache: get_or_load, negative caching, early refresh, the fleet lock,
batch loads and memoize.

A mixin of :class:`~dragonfly_cache.tiered.TieredCache` (it uses the cache's tiers,
tickets and singleflight); kept apart because it is a concept of its own.

Negative caching. A loader raises :class:`NotFound`; the cache stores a marker value
(``NEGATIVE``) for ``l2.negative_ttl``. ``get`` and friends read the marker as a miss;
``get_or_load`` raises ``NotFound`` without calling the loader.

Early refresh. With ``refresh_ahead=f``, an entry loaded (or read from L2) with life ``t``
becomes due for refresh at a point within the last ``f * t`` of its life, moved earlier by a
random ``l2.refresh_jitter`` share of that window so processes don't all refresh at once.
The first ``get_or_load`` hit after that starts one background refresh per key and process
(and, with the fleet lock, per fleet) and returns the current value; others keep getting
it too. Past ``l2.refresh_sync`` (a smaller fraction) a hit refreshes synchronously: the
callers, coalesced, wait for the new value. A failed refresh leaves the old value in place
until its hard expiry and is retried with backoff.

Fleet lock. On a miss, processes race for ``SET <lock> <token> NX PX`` so one process in
the fleet runs the loader; the others poll L2 (with backoff) for the value, and load
themselves once the lock is released or expires. The lock is released by a script that
declares its key (Dragonfly requires that) and deletes it only if the token is still ours.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from cachetools import LRUCache

from . import codecs
from ._glob import escape_glob
from ._keys import check_key, check_keys
from ._singleflight import SingleFlight
from .exceptions import CacheUnavailableError, NotFound

if TYPE_CHECKING:
    from ._l1 import L1
    from ._l2 import L2
    from .config import CacheConfig

__all__ = ["NEGATIVE", "LoadingMixin"]

logger = logging.getLogger("dragonfly_cache")

# The stored form of "no such record". get() answers None for it. Chosen so that no value
# produced by this package's codecs can equal it (JSON and msgpack never start with NUL).
NEGATIVE = b"\x00dragonfly_cache:not-found\x00"

_LOCK_POLL_FIRST, _LOCK_POLL_CAP = 0.005, 0.1
_REFRESH_BACKOFF_FIRST, _REFRESH_BACKOFF_CAP = 1.0, 30.0

Loader = Callable[[], bytes]
ManyLoader = Callable[[list[str]], Mapping[str, bytes]]
F = TypeVar("F", bound=Callable[..., Any])


_NO_LOCK = "no fleet lock"  # the refresh token when the fleet lock is off


def _lock_key(key: str) -> str:
    # A control character keeps the lock out of any key a user would write.
    return f"\x1flock:{key}"


class LoadingMixin:
    """get_or_load, get_or_load_many and memoize, on the tiers of a TieredCache."""

    # What the mixin uses of TieredCache (declared for the type checker).
    config: CacheConfig
    _l1: L1
    _l2: L2
    _flights: SingleFlight[bytes]
    _loads_lock: threading.Lock
    _loads: int

    if TYPE_CHECKING:
        def _listen(self) -> None: ...
        def _horizon(self, now: float) -> float: ...
        def _announce_keys(self, keys: list[str]) -> str | None: ...
        def _ttl(self, ttl: Any) -> float: ...
        def _fetch(self, keys: list[str]) -> tuple[dict[str, bytes],
                                                    dict[str, tuple[bytes, float]]]: ...
        def _read_through(self, keys: list[str]) -> dict[str, bytes]: ...
        def delete(self, key: str) -> None: ...
        def invalidate(self, pattern: str) -> int: ...
        def set_many(self, mapping: Mapping[str, bytes], ttl: Any = None) -> None: ...

    def _loading_stats(self) -> dict[str, int]:
        with self._refresh_lock:
            return dict(self.loading_stats)

    def _start_loading_state(self) -> None:
        """Per-process state of early refresh (called at start and in a forked child)."""
        self._refresh_lock = threading.Lock()
        # key -> (when a refresh is due, when the entry expires), for keys loaded with
        # refresh_ahead; bounded like L1.
        self._refresh_at: LRUCache[str, tuple[float, float]] = LRUCache(
            max(1, self.config.l1.max_size))
        self._refreshing: set[str] = set()
        self._refresh_backoff: dict[str, float] = {}
        self.loading_stats = {"refreshes": 0, "refresh_failures": 0, "sync_refreshes": 0,
                              "decode_failures": 0}

    # -- get_or_load ------------------------------------------------------------------------

    def get_or_load(self, key: str, loader: Loader, ttl: Any = None, *, lock: bool | None = None,
                    refresh_ahead: float | None = None) -> bytes:
        """Return the cached value, or call ``loader()`` once to produce and cache it.

        Concurrent misses on one key in this process share a single ``loader()`` call. If
        the loader raises, every waiting caller gets the exception, nothing is cached and
        the next call tries again. If it raises :class:`NotFound`, that answer is cached
        for ``l2.negative_ttl`` and later calls raise ``NotFound`` without calling it. When
        L2 is unreachable the loader is called and its value returned (kept in L1 at most
        ``l1.degraded_ttl``); this method never raises ``CacheUnavailableError``.

        Args:
            key: the cache key.
            loader: produces the value (bytes) on a miss.
            ttl: seconds or timedelta (default ``l2.ttl``).
            lock: take the fleet-wide lock on a miss, so one process in the fleet loads
                (default ``l2.fleet_lock``).
            refresh_ahead: refresh in the background during the last fraction of the
                entry's life, in (0, 1) (default ``l2.refresh_ahead``; None: off).

        Raises:
            TypeError: bad key, a non-callable loader, or a loader returning non-bytes.
            ValueError: empty key, bad ttl or refresh_ahead.
            NotFound: the loader said (now or within ``negative_ttl``) there is no record.
            Exception: whatever ``loader`` raised.
        """
        check_key(key)
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {type(loader).__name__}")
        seconds = self._ttl(ttl)
        fraction = self._refresh_fraction(refresh_ahead)
        fleet = self.config.l2.fleet_lock if lock is None else bool(lock)
        value = self._l1.get(key)
        if value is not None and fraction is not None:
            value = self._maybe_refresh(key, value, loader, seconds, fleet, fraction)
        while value is None:
            # A flight we joined may end with None: a batch load (get_or_load_many) whose
            # loader omitted this key. That flight is over, so go round and load it here.
            value = self._flights.do(key, lambda: self._load(key, loader, seconds, fleet,
                                                             fraction))
        if value is NEGATIVE:
            raise NotFound(f"no record for key {key!r} (cached negative answer)")
        return value

    def _refresh_fraction(self, refresh_ahead: float | None) -> float | None:
        fraction = self.config.l2.refresh_ahead if refresh_ahead is None else refresh_ahead
        if fraction is None:
            return None
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                or not 0 < fraction < 1:
            raise ValueError(f"refresh_ahead must be a fraction in (0, 1), got {fraction!r}")
        return float(fraction)

    def _load(self, key: str, loader: Loader, seconds: float, fleet: bool,
              fraction: float | None) -> bytes:
        """The singleflight leader's work: L2, else the loader (under the fleet lock if
        asked), then store.

        One L1 ticket covers everything from before the L2 read until the store. A write
        or delete of the key meanwhile (here, or elsewhere through coherence) stamps it;
        the loaded value, perhaps read from the database before that write, is then
        returned but stored nowhere. The store itself is SET NX, so a write that reached
        L2 first always wins over a load that started before it.
        """
        self._listen()
        l1 = self._l1
        ticket = l1.begin([key])
        released = False
        try:
            start = l1.timer()
            found, fills = self._fetch([key])
            if key in found:
                released = True
                l1.fill(fills, ticket, [] if key in fills else [key])
                if fraction is not None and key in fills:
                    self._schedule_refresh(key, start, fills[key][1] - start, seconds, fraction)
                return found[key]
            token = self._acquire_fleet_lock(key) if fleet else None
            if fleet and token is None:
                value = self._wait_for_fleet(key)
                if value is not None:
                    return value
            try:
                value = self._call_loader(key, loader)
                released = True
                self._store_loaded(key, value, seconds, ticket, fraction)
            finally:
                if token is not None:
                    self._release_fleet_lock(key, token)
            return value
        finally:
            if not released:
                l1.end([key])

    def _call_loader(self, key: str, loader: Loader) -> bytes:
        with self._loads_lock:
            self._loads += 1
        try:
            value = loader()
        except NotFound:
            return NEGATIVE
        if not isinstance(value, bytes):
            raise TypeError(f"loader for key {key!r} returned {type(value).__name__}, "
                            "expected bytes")
        return value

    def _store_loaded(self, key: str, value: bytes, seconds: float, ticket: int,
                      fraction: float | None = None) -> None:
        """Store a loaded value in L2 (if still absent) and L1; release the ticket."""
        l1 = self._l1
        if l1.stale(key, ticket):
            l1.end([key])  # invalidated while loading: the value may predate that write
            return
        if value is NEGATIVE:
            seconds = self.config.l2.negative_ttl
        start = l1.timer()
        deadline = min(start + seconds, self._horizon(start))
        try:
            stored = self._l2.set_if_absent(key, value, seconds, self._announce_keys([key]))
        except CacheUnavailableError:
            # A read never raises. The fresh value is kept locally, briefly: L2 and the
            # other processes did not get it.
            l1.fill({key: (value, min(deadline, start + self.config.l1.degraded_ttl))}, ticket)
            return
        if stored and l1.stale(key, ticket):
            # A delete reached L2 between our check and our SET NX: take the store back
            # (only if it is still ours), or the deleted generation would live on in L2.
            l1.end([key])
            with contextlib.suppress(CacheUnavailableError):
                self._l2.delete_if_equal(key, value, self._announce_keys([key]))
            return
        if stored:
            l1.fill({key: (value, deadline)}, ticket)
            if value is NEGATIVE:
                self._forget_refresh(lambda candidate: candidate == key)
            elif fraction is not None:
                self._schedule_refresh(key, start, seconds, seconds, fraction)
        else:
            l1.end([key])  # someone wrote the key while we loaded: theirs wins

    # -- fleet lock -------------------------------------------------------------------------

    def _acquire_fleet_lock(self, key: str) -> str | None:
        """Our token if we took the fleet lock; None if another process holds it.

        When L2 is unreachable there is no fleet to coordinate with: load locally.
        """
        token = uuid.uuid4().hex
        try:
            taken = self._l2.set_if_absent(_lock_key(key), token.encode(),
                                           self.config.l2.fleet_lock_ttl)
        except CacheUnavailableError:
            return token
        return token if taken else None

    def _release_fleet_lock(self, key: str, token: str) -> None:
        # If L2 cannot be reached, the lock expires by itself after l2.fleet_lock_ttl.
        with contextlib.suppress(CacheUnavailableError):
            self._l2.delete_if_equal(_lock_key(key), token.encode())

    def _wait_for_fleet(self, key: str) -> bytes | None:
        """Poll for the value another process is loading; None once its lock is gone."""
        delay = _LOCK_POLL_FIRST
        deadline = time.monotonic() + self.config.l2.fleet_lock_ttl
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, _LOCK_POLL_CAP)
            found = self._read_through([key])
            if key in found:
                return found[key]
            try:
                if not self._l2.exists(_lock_key(key)):
                    # The holder finished without storing (or died): last look, then load.
                    return self._read_through([key]).get(key)
            except CacheUnavailableError:
                return None
        return None

    # -- early refresh ----------------------------------------------------------------------

    def _schedule_refresh(self, key: str, now: float, life: float, ttl: float,
                          fraction: float) -> None:
        """Note when ``key`` (``life`` seconds left, full ``ttl``) becomes due."""
        window = min(life, ttl * fraction)
        spread = 1 - self.config.l2.refresh_jitter * random.random()
        with self._refresh_lock:
            self._refresh_at[key] = (now + life - window * spread, now + life)

    def _maybe_refresh(self, key: str, value: bytes, loader: Loader, seconds: float,
                       fleet: bool, fraction: float) -> bytes:
        """On an L1 hit: start a background refresh when due; refresh synchronously (and
        return the new value) when the entry is closer to expiry than ``refresh_sync``."""
        now = self._l1.timer()
        with self._refresh_lock:
            times = self._refresh_at.get(key)
            if times is None or now < times[0] or key in self._refreshing:
                return value  # not due, or a refresh is already running
            sync = self.config.l2.refresh_sync
            urgent = sync is not None and sync < fraction and now >= times[1] - seconds * sync
            if urgent:
                self.loading_stats["sync_refreshes"] += 1
            else:
                self._refreshing.add(key)
        if urgent:
            # Coalesced: one caller reloads, the others wait for its value.
            return self._flights.do(key, lambda: self._reload(key, loader, seconds, fleet,
                                                              fraction) or value)
        thread = threading.Thread(target=self._refresh_in_background,
                                  args=(key, loader, seconds, fleet, fraction),
                                  daemon=True, name=f"dragonfly_cache-refresh-{key[:32]}")
        thread.start()
        return value

    def _refresh_in_background(self, key: str, loader: Loader, seconds: float, fleet: bool,
                               fraction: float) -> None:
        try:
            self._reload(key, loader, seconds, fleet, fraction)
        finally:
            with self._refresh_lock:
                self._refreshing.discard(key)

    def _reload(self, key: str, loader: Loader, seconds: float, fleet: bool,
                fraction: float) -> bytes | None:
        """Load ``key`` again and store it over the current value.

        Returns:
            The new value, or None if the refresh did not happen (another process holds
            the fleet lock, the loader failed, L2 refused, or the key was invalidated
            meanwhile); the current value then stays in place until its hard expiry.
        """
        l1 = self._l1
        token = self._acquire_fleet_lock(key) if fleet else _NO_LOCK
        if token is None:
            self._postpone_refresh(key, _REFRESH_BACKOFF_FIRST)  # another process refreshes
            return None
        try:
            ticket = l1.begin([key])
            try:
                value = self._call_loader(key, loader)
            except Exception:
                l1.end([key])
                logger.warning("refresh of %r failed; serving the old value", key,
                               exc_info=True)
                self._refresh_failed(key)
                return None
            except BaseException:
                l1.end([key])
                raise
            if l1.stale(key, ticket):
                # Invalidated meanwhile: store nothing (the next read loads afresh), but
                # callers waiting on this refresh get what was loaded, never the value
                # the invalidation removed.
                l1.end([key])
                return value
            life = self.config.l2.negative_ttl if value is NEGATIVE else seconds
            start = l1.timer()
            try:
                self._l2.set_many({key: value}, life, self._announce_keys([key]))
            except CacheUnavailableError:
                l1.end([key])
                self._refresh_failed(key)
                return None
            l1.write({key: value}, min(start + life, self._horizon(start)), ticket)
            with self._refresh_lock:
                self._refresh_backoff.pop(key, None)
                self.loading_stats["refreshes"] += 1
            if value is not NEGATIVE:
                self._schedule_refresh(key, start, life, seconds, fraction)
            return value
        finally:
            if token is not _NO_LOCK:
                self._release_fleet_lock(key, token)

    def _refresh_failed(self, key: str) -> None:
        with self._refresh_lock:
            self.loading_stats["refresh_failures"] += 1
        self._postpone_refresh(key, None)

    def _forget_refresh(self, matches: Callable[[str], bool]) -> None:
        """Drop the refresh schedule of invalidated keys: a later value gets its own."""
        with self._refresh_lock:
            for key in [key for key in self._refresh_at if matches(key)]:
                del self._refresh_at[key]
                self._refresh_backoff.pop(key, None)

    def _postpone_refresh(self, key: str, delay: float | None) -> None:
        """Try again later: after ``delay``, or after a doubling backoff if None."""
        with self._refresh_lock:
            times = self._refresh_at.get(key)
            if times is None:
                return
            if delay is None:
                previous = self._refresh_backoff.get(key, 0.0)
                delay = min(max(_REFRESH_BACKOFF_FIRST, previous * 2), _REFRESH_BACKOFF_CAP)
                self._refresh_backoff[key] = delay
            self._refresh_at[key] = (self._l1.timer() + delay, times[1])

    # -- batch loads ------------------------------------------------------------------------

    def get_or_load_many(self, keys: Iterable[str], loader_many: ManyLoader,
                         ttl: Any = None) -> dict[str, bytes]:
        """Values of ``keys``, loading every missing one with one ``loader_many`` call.

        L1 first, then one L2 round trip for the L1 misses, then ``loader_many(missing)``
        once for what is still missing. A key another caller (here, in this process) is
        already loading is waited for, not loaded twice. Keys the loader omits, and keys
        with a cached negative answer, are absent from the result.

        Raises:
            TypeError / ValueError: bad keys or ttl, or the loader returned non-bytes.
            Exception: whatever ``loader_many`` raised (also in every caller waiting on
                one of its keys); nothing is cached then.
        """
        distinct = check_keys(keys)
        if not callable(loader_many):
            raise TypeError(f"loader_many must be callable, got {type(loader_many).__name__}")
        seconds = self._ttl(ttl)
        found = self._l1.get_many(distinct)
        missing = [key for key in distinct if key not in found]
        if missing:
            found.update(self._read_through(missing))
            missing = [key for key in missing if key not in found]
        if missing:
            found.update(self._load_many(missing, loader_many, seconds))
        return {key: value for key, value in found.items() if value is not NEGATIVE}

    def _load_many(self, keys: list[str], loader_many: ManyLoader, seconds: float
                   ) -> dict[str, bytes]:
        flights = self._flights
        led: list[tuple[str, Any]] = []
        waits: list[tuple[str, Any]] = []
        for key in keys:
            flight, leader = flights.claim(key)
            (led if leader else waits).append((key, flight))
        results: dict[str, bytes] = {}
        if led:
            # Another load may have stored some of these between our L2 read and our claim.
            stored_meanwhile = self._read_through([key for key, _ in led])
            for key, flight in [(k, f) for k, f in led if k in stored_meanwhile]:
                flights.finish(key, flight, value=stored_meanwhile[key])
                results[key] = stored_meanwhile[key]
            led = [(key, flight) for key, flight in led if key not in stored_meanwhile]
        if led:
            mine = [key for key, _ in led]
            l1 = self._l1
            ticket = l1.begin(mine)
            loaded: dict[str, bytes] = {}
            try:
                with self._loads_lock:
                    self._loads += 1
                answer = loader_many(list(mine))
                for key in mine:
                    value = answer.get(key)
                    if value is not None and not isinstance(value, bytes):
                        raise TypeError(f"loader_many returned {type(value).__name__} for key "
                                        f"{key!r}, expected bytes")
                    if value is not None:
                        loaded[key] = value
            except BaseException as exc:
                l1.end(mine)
                for key, flight in led:
                    flights.finish(key, flight, error=exc)
                raise
            self._store_many_loaded(loaded, mine, seconds, ticket)
            for key, flight in led:
                flights.finish(key, flight, value=loaded.get(key))
            results.update(loaded)
        for key, flight in waits:
            value = flights.wait(flight)
            if value is not None:
                results[key] = value
        return results

    def _store_many_loaded(self, values: dict[str, bytes], keys: list[str], seconds: float,
                           ticket: int) -> None:
        """Store a batch (SET NX each, one round trip) and fill L1; release the ticket."""
        l1 = self._l1
        fresh = {key: value for key, value in values.items() if not l1.stale(key, ticket)}
        start = l1.timer()
        deadline = min(start + seconds, self._horizon(start))
        fills: dict[str, tuple[bytes, float]] = {}
        if fresh:
            try:
                stored = self._l2.set_many_if_absent(fresh, seconds,
                                                     self._announce_keys(list(fresh)))
                fills = {key: (fresh[key], deadline) for key in stored}
            except CacheUnavailableError:
                local = min(deadline, start + self.config.l1.degraded_ttl)
                fills = {key: (value, local) for key, value in fresh.items()}
        l1.fill(fills, ticket, [key for key in keys if key not in fills])

    # -- memoize ----------------------------------------------------------------------------

    def memoize(self, ttl: Any = None, *, key: Callable[..., str] | None = None,
                codec: codecs.Codec | str | None = "json", lock: bool | None = None
                ) -> Callable[[F], F]:
        """Cache a function's results, keyed by its qualified name and its arguments.

        ```python
        @cache.memoize(ttl=60)
        def user(user_id: int) -> dict: ...

        user(1)                 # loads once per fleet-wide key, then from the cache
        user.invalidate(1)      # drop one result
        user.invalidate_all()   # drop them all
        ```

        Arguments are bound to the signature (defaults applied), so ``f(1, b=2)`` and
        ``f(b=2, a=1)`` share a key; they are hashed from a canonical JSON form, so the key
        is the same in every process. Objects that JSON cannot express are keyed by their
        ``__cache_key__`` attribute if they have one, else their ``repr`` (for methods,
        give the class a ``__cache_key__`` or pass ``key=``). Concurrent calls coalesce;
        a function that raises :class:`NotFound` gets a negative entry. One cache lookup
        per call, no extra round trip.

        Args:
            ttl: seconds or timedelta (default ``l2.ttl``).
            key: ``key(*args, **kwargs) -> str`` replaces the argument hash.
            codec: how results become bytes: "json" (default), "bytes", "msgpack", a
                :mod:`dragonfly_cache.codecs` codec such as ``codecs.SignedPickle(secret)``,
                or None for the configured ``CACHE_CODEC`` (with ``CACHE_PICKLE_SECRET``
                when that is "pickle").
            lock: use the fleet lock on misses (default ``l2.fleet_lock``).
        """
        seconds = self._ttl(ttl)
        if codec is None:
            chosen = codecs.resolve(self.config.codec, pickle_secret=self.config.pickle_secret)
        else:
            chosen = codecs.resolve(codec)
        if key is not None and not callable(key):
            raise TypeError(f"key must be callable, got {type(key).__name__}")

        def decorate(function: F) -> F:
            name = f"{function.__module__}.{function.__qualname__}"
            prefix = f"memoize:{name}:"
            signature = inspect.signature(function)

            def cache_key(*args: Any, **kwargs: Any) -> str:
                if key is not None:
                    custom = key(*args, **kwargs)
                    if not isinstance(custom, str) or not custom:
                        raise TypeError(f"key= must return a non-empty str, got {custom!r}")
                    return prefix + custom
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                canonical = json.dumps([[argument, _canonical(value)] for argument, value
                                        in sorted(bound.arguments.items())],
                                       separators=(",", ":"))
                return prefix + hashlib.sha256(canonical.encode()).hexdigest()[:32]

            def call(*args: Any, **kwargs: Any) -> Any:
                cache_key_ = cache_key(*args, **kwargs)
                data = self.get_or_load(cache_key_,
                                        lambda: chosen.encode(function(*args, **kwargs)),
                                        seconds, lock=lock)
                try:
                    return chosen.decode(data)
                except codecs.DecodeError:
                    # Unreadable (tampered, or written by another codec): a miss, counted.
                    with self._refresh_lock:
                        self.loading_stats["decode_failures"] += 1
                    logger.warning("memoized value for %r did not decode; recomputing",
                                   cache_key_)
                    result = function(*args, **kwargs)
                    with contextlib.suppress(CacheUnavailableError):
                        self.set_many({cache_key_: chosen.encode(result)}, seconds)
                    return result

            memoized = _Memoized(function, call, cache_key,
                                 lambda pattern_key: self.delete(pattern_key),
                                 lambda: self.invalidate(escape_glob(prefix) + "*"))
            return memoized  # type: ignore[return-value]  # behaves as F, plus helpers

        return decorate


class _Memoized:
    """A memoized function: call it, or ``.invalidate(*args)``, ``.invalidate_all()``,
    ``.cache_key(*args)``. A descriptor, so on a method ``obj.method.invalidate(x)`` binds
    ``obj`` like the call does."""

    def __init__(self, function: Callable[..., Any], call: Callable[..., Any],
                 cache_key: Callable[..., str], delete: Callable[[str], None],
                 invalidate_all: Callable[[], int]) -> None:
        functools.update_wrapper(self, function)
        self._call, self._key, self._delete, self._all = call, cache_key, delete, invalidate_all

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of this call."""
        return self._key(*args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """Drop the cached result of this call (everywhere, through coherence)."""
        self._delete(self._key(*args, **kwargs))

    def invalidate_all(self) -> int:
        """Drop every cached result of this function; returns how many L2 keys went."""
        return self._all()

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundMemoized(self, instance)


class _BoundMemoized:
    """A memoized method seen through an instance: ``instance`` is the first argument."""

    def __init__(self, memoized: _Memoized, instance: object) -> None:
        self._memoized, self._instance = memoized, instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._memoized(self._instance, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self._memoized.cache_key(self._instance, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        self._memoized.invalidate(self._instance, *args, **kwargs)

    def invalidate_all(self) -> int:
        return self._memoized.invalidate_all()


def _canonical(value: Any) -> Any:
    """A JSON form of an argument in which different values never look alike.

    JSON's own scalars stand for themselves; everything else is tagged with its type, so
    ``b"ab"`` and ``"6162"``, ``{1: 1}`` and ``{"1": 1}``, or ``Decimal(1)`` and the text
    ``"Decimal('1')"`` get different keys. Objects use ``__cache_key__`` if they define it
    (a value or a method), else their ``repr``.
    """
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, list | tuple):
        return {"t": kind, "v": [_canonical(item) for item in value]}
    if isinstance(value, dict):
        items = [[_canonical(k), _canonical(v)] for k, v in value.items()]
        return {"t": kind, "v": sorted(items, key=lambda item: json.dumps(item))}
    if isinstance(value, set | frozenset):
        members = [_canonical(item) for item in value]
        return {"t": kind, "v": sorted(members, key=lambda item: json.dumps(item))}
    if isinstance(value, bytes | bytearray):
        return {"t": kind, "v": bytes(value).hex()}
    custom = getattr(value, "__cache_key__", None)
    if custom is not None:
        return {"t": kind, "k": _canonical(custom() if callable(custom) else custom)}
    return {"t": kind, "r": repr(value)}
