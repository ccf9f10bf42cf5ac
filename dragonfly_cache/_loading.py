"""Loading through the cache: get_or_load, negative caching, early refresh; batch loads.

:class:`Loading` is built on :class:`~dragonfly_cache._tiers.Tiers` (the reads and writes
of both tiers), a :class:`~dragonfly_cache._singleflight.SingleFlight` (one load per key
and process), a :class:`~dragonfly_cache._refresh.RefreshSchedule`, a
:class:`~dragonfly_cache._fleet.FleetLock` (one load per key and fleet), a
:class:`~dragonfly_cache._stale.StaleOnError` (failed reloads) and a
:class:`~dragonfly_cache._batch.BatchLoading` (``get_or_load_many``). The cache validates
the arguments (with :func:`load_options`); what arrives here is already checked.

Negative caching. A loader raises :class:`NotFound`; the cache stores a marker value
(``NEGATIVE``) for ``l2.negative_ttl``. ``get`` and friends read the marker as a miss;
``get_or_load`` raises ``NotFound`` without calling the loader.

Racing writes. One L1 ticket covers a load from before its L2 read until its store. A write
or delete of the key meanwhile (here, or elsewhere through coherence) stamps it; the loaded
value, perhaps read from the database before that write, is then returned but stored
nowhere. The store itself is SET NX, so a write that reached L2 first always wins over a
load that started before it.

Failed reloads. With ``stale_if_error`` a failed load answers with the key's last good
value for a bounded time, and is retried with backoff: see :mod:`dragonfly_cache._stale`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import NamedTuple

from ._batch import BatchLoading, ManyLoader
from ._fleet import FleetLock
from ._keys import check_fraction, check_stale, check_ttl
from ._l1 import Ticket
from ._refresh import BACKOFF_FIRST, Refresh, RefreshSchedule
from ._singleflight import SingleFlight
from ._stale import StaleOnError, Unreachable
from ._tiers import NEGATIVE, Tiers
from .config import L2Config
from .exceptions import CacheUnavailableError, NotFound
from .types import TTL, LoadingStats, SingleflightStats

__all__ = ["Loader", "Loading", "ManyLoader", "Options", "Plan", "load_options"]

logger = logging.getLogger(__name__)

Loader = Callable[[], bytes]

_NO_LOCK = "no fleet lock"  # the refresh token when the fleet lock is off


class Plan(NamedTuple):
    """How one call loads: its :data:`Options` by name (made when it misses L1)."""

    seconds: float  # the ttl of a loaded value
    fleet: bool  # take the fleet lock on a miss
    fraction: float | None  # refresh early during this last fraction of the life
    stale: float  # on a failed reload, serve a value expired less than this ago


#: A Plan's fields as a plain tuple: what every call passes, L1 hits included (a plain
#: tuple is made in a fraction of the time a NamedTuple takes).
Options = tuple[float, bool, float | None, float]


def load_options(config: L2Config, ttl: TTL, lock: bool | None = None,
                 refresh_ahead: float | None = None, stale_if_error: TTL = None) -> Options:
    """A call's loading arguments, checked, with ``config``'s values for the None ones.

    Raises:
        TypeError / ValueError: a bad ttl, refresh_ahead or stale_if_error.
    """
    seconds = check_ttl(ttl, config.ttl)
    fraction = check_fraction(refresh_ahead, config.refresh_ahead)
    stale = ((config.stale_if_error or 0.0) if stale_if_error is None
             else check_stale(stale_if_error, None))
    return seconds, config.fleet_lock if lock is None else bool(lock), fraction, stale


class Loading:
    """get_or_load and get_or_load_many of one cache in one process.

    Args:
        tiers: the cache's tiers.
        config: the L2 policy (negative ttl, refresh jitter and sync, fleet lock ttl,
            stale_if_error).
        max_scheduled: most keys whose refresh times or backoffs are remembered (L1's size).
    """

    def __init__(self, tiers: Tiers, config: L2Config, max_scheduled: int) -> None:
        self._tiers = tiers
        self._negative_ttl = config.negative_ttl
        self.flights: SingleFlight[bytes] = SingleFlight()
        self.refresh = RefreshSchedule(max_scheduled, config.refresh_jitter,
                                       config.refresh_sync, tiers.l1.timer)
        self._fleet = FleetLock(tiers, config.fleet_lock_ttl)
        self.stale = StaleOnError(tiers, config.stale_if_error or 0.0, max_scheduled)
        self.batch = BatchLoading(tiers, self.flights, self.stale, self._count_load)
        self._lock = threading.Lock()
        self._loads = 0
        self._decode_failures = 0

    # -- get_or_load ------------------------------------------------------------------------

    def get_or_load(self, key: str, loader: Loader, options: Options) -> bytes:
        """The cached value of ``key``, or ``loader()``'s, loaded once per process (and per
        fleet with ``Plan.fleet``), refreshed early with ``Plan.fraction``, stale on a
        failed reload with ``Plan.stale``.

        Raises:
            NotFound: the loader said (now or within ``negative_ttl``) there is no record.
            Exception: whatever ``loader`` raised (unless a stale value answers).
        """
        stale, window = self.stale, options[3]
        if window:
            stale.use(window)
        value = self._tiers.l1.get(key)
        if value is None:
            if stale.backs_off(key, window):
                value = stale.serve(key, window)
                if value is not None:
                    return value  # a reload failed lately: not yet again
            plan = Plan(*options)
            while value is None:
                # A flight we joined may end with None: a batch load (get_or_load_many)
                # whose loader omitted this key. That flight is over: go round, load here.
                try:
                    value = self.flights.do(key, lambda: self._load(key, loader, plan))
                except NotFound:
                    raise  # not from a load (which stores NEGATIVE): never made stale
                except Exception as exc:
                    value = stale.serve(key, window)
                    if value is not None:
                        return value
                    if not isinstance(exc, Unreachable):
                        raise
                    # L2 unreachable and nothing stale for this caller: load all the same
        if options[2] is not None:
            # Also after an L1 miss: L1 may have lost an entry (a flush) that stays due.
            value = self._maybe_refresh(key, value, loader, options, options[2])
        if value is NEGATIVE:
            raise NotFound(f"no record for key {key!r} (cached negative answer)")
        return value

    def _load(self, key: str, loader: Loader, plan: Plan) -> bytes:
        """The singleflight leader's work, its outcome noted for stale_if_error."""
        try:
            value = self._load_under_ticket(key, loader, plan)
        except Exception as exc:
            self.stale.failed(key, exc)
            raise
        self.stale.loaded(key, value)
        return value

    def _load_under_ticket(self, key: str, loader: Loader, plan: Plan) -> bytes:
        """L2, else the loader (under the fleet lock if asked), then store; one ticket
        covers it all (see the module docs).

        Raises:
            Unreachable: L2 could not be reached and a stale value can answer instead.
        """
        tiers = self._tiers
        tiers.listen()
        # A load that starts while a delete could be missed stores a short-lived value.
        untrusted = not tiers.trusted
        with tiers.l1.ticket([key]) as ticket:
            start = tiers.l1.timer()
            try:
                found, fills = tiers.fetch([key], strict=self.stale.holds(key, plan.stale))
            except CacheUnavailableError as exc:
                raise Unreachable(f"L2 unreachable while loading {key!r}") from exc
            if key in found:
                ticket.fill(fills)
                if plan.fraction is not None and key in fills:
                    self.refresh.schedule(key, start, fills[key][1] - start, plan.seconds,
                                          plan.fraction)
                return found[key]
            token = self._fleet.acquire(key) if plan.fleet else None
            if plan.fleet and token is None:
                value = self._fleet.wait(key)
                if value is not None:
                    return value
            try:
                value = self._call_loader(key, loader)
                self._store(key, value, plan.seconds, ticket, plan.fraction, untrusted)
            finally:
                if token is not None:
                    self._fleet.release(key, token)
            return value

    def _call_loader(self, key: str, loader: Loader) -> bytes:
        self._count_load()
        try:
            value = loader()
        except NotFound:
            return NEGATIVE
        if not isinstance(value, bytes):
            raise TypeError(f"loader for key {key!r} returned {type(value).__name__}, "
                            "expected bytes")
        return value

    def _count_load(self) -> None:
        with self._lock:
            self._loads += 1

    def _store(self, key: str, value: bytes, seconds: float, ticket: Ticket,
               fraction: float | None, untrusted: bool) -> None:
        """Store a loaded value in L2 (if still absent) and L1, unless the key was
        invalidated while it loaded (the value may predate that write); only briefly if
        the load started while an invalidation could be missed."""
        tiers = self._tiers
        if ticket.stale(key):
            return
        seconds = tiers.store_life(self._negative_ttl if value is NEGATIVE else seconds,
                                   untrusted)
        start = tiers.l1.timer()
        deadline = tiers.deadline(start, seconds)
        try:
            stored = tiers.l2.set_if_absent(key, value, seconds, tiers.announce([key]))
        except CacheUnavailableError:
            # A read never raises. The fresh value is kept locally, briefly: L2 and the
            # other processes did not get it.
            ticket.fill({key: (value, tiers.deadline(start, seconds, degraded=True))})
            return
        if not stored:
            return  # someone wrote the key while we loaded: theirs wins
        if ticket.stale(key):
            # A delete reached L2 between our check and our SET NX: take the store back
            # (only if it is still ours), or the deleted generation would live on in L2.
            with contextlib.suppress(CacheUnavailableError):
                tiers.l2.delete_if_equal(key, value, tiers.announce([key]))
            return
        ticket.fill({key: (value, deadline)})
        if value is NEGATIVE:
            self.refresh.forget(lambda candidate: candidate == key)
        elif fraction is not None:
            self.refresh.schedule(key, start, seconds, seconds, fraction)

    # -- early refresh ----------------------------------------------------------------------

    def _maybe_refresh(self, key: str, value: bytes, loader: Loader, options: Options,
                       fraction: float) -> bytes:
        """On a hit: start a background refresh when due (``fraction``: the options');
        refresh synchronously (and return the new value) when the entry is closer to
        expiry than ``refresh_sync``."""
        decision = self.refresh.claim(key, options[0], fraction)
        if decision is Refresh.SYNC:
            # Coalesced: one caller reloads, the others wait for its value.
            plan = Plan(*options)
            return self.flights.do(key, lambda: self._reload(key, loader, plan) or value)
        if decision is Refresh.BACKGROUND:
            thread = threading.Thread(target=self._refresh_in_background,
                                      args=(key, loader, Plan(*options)), daemon=True,
                                      name=f"dragonfly_cache-refresh-{key[:32]}")
            thread.start()
        return value

    def _refresh_in_background(self, key: str, loader: Loader, plan: Plan) -> None:
        try:
            self._reload(key, loader, plan)
        finally:
            self.refresh.finished(key)

    def _reload(self, key: str, loader: Loader, plan: Plan) -> bytes | None:
        """Load ``key`` again and store it over the current value.

        Returns:
            The new value, or None if the refresh did not happen (another process holds
            the fleet lock, the loader failed, L2 refused, or the key was invalidated
            meanwhile); the current value then stays in place until its hard expiry.
        """
        token = self._fleet.acquire(key) if plan.fleet else _NO_LOCK
        if token is None:
            self.refresh.postpone(key, BACKOFF_FIRST)  # another process refreshes
            return None
        try:
            untrusted = not self._tiers.trusted
            with self._tiers.l1.ticket([key]) as ticket:
                return self._reload_under(ticket, key, loader, plan, untrusted)
        finally:
            if token is not _NO_LOCK:
                self._fleet.release(key, token)

    def _reload_under(self, ticket: Ticket, key: str, loader: Loader, plan: Plan,
                      untrusted: bool) -> bytes | None:
        tiers, seconds = self._tiers, plan.seconds
        try:
            value = self._call_loader(key, loader)
        except Exception:
            logger.warning("refresh of %r failed; serving the old value", key, exc_info=True)
            self.refresh.failed(key)
            return None
        if ticket.stale(key):
            # Invalidated meanwhile: store nothing (the next read loads afresh), but
            # callers waiting on this refresh get what was loaded, never the value the
            # invalidation removed.
            return value
        life = tiers.store_life(self._negative_ttl if value is NEGATIVE else seconds, untrusted)
        start = tiers.l1.timer()
        deadline = tiers.deadline(start, life)
        try:
            tiers.l2.set_many({key: value}, life, tiers.announce([key]))
        except CacheUnavailableError:
            self.refresh.failed(key)
            return None
        ticket.write({key: value}, deadline)
        self.refresh.succeeded(key)
        self.stale.loaded(key, value)
        if value is not NEGATIVE and plan.fraction is not None:
            self.refresh.schedule(key, start, life, seconds, plan.fraction)
        return value

    def get_or_load_many(self, keys: list[str], loader_many: ManyLoader, options: Options
                         ) -> dict[str, bytes]:
        """Values of the distinct ``keys``, one loader call for the missing ones (see
        :meth:`BatchLoading.get_or_load_many`)."""
        return self.batch.get_or_load_many(keys, loader_many, options[0], options[3])

    # -- introspection ----------------------------------------------------------------------

    def forget(self, matches: Callable[[str], bool]) -> None:
        """Invalidated keys: drop their refresh schedule (a later value gets its own)."""
        self.refresh.forget(matches)

    def count_decode_failure(self) -> None:
        """A memoized value did not decode (counted in ``stats()["loading"]``)."""
        with self._lock:
            self._decode_failures += 1

    def singleflight_stats(self) -> SingleflightStats:
        """Loader calls, and callers that shared another's."""
        with self._lock:
            loads = self._loads
        return {"loads": loads, "coalesced": self.flights.coalesced}

    def stats(self) -> LoadingStats:
        """Background/synchronous refreshes, their failures, undecodable values."""
        refresh = self.refresh
        with self._lock:
            decode_failures = self._decode_failures
        return {"refreshes": refresh.refreshes, "refresh_failures": refresh.failures,
                "sync_refreshes": refresh.sync_refreshes, "decode_failures": decode_failures,
                "stale_served": self.stale.served_count}
