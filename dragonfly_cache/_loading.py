"""Loading through the cache: get_or_load, negative caching, early refresh and batch loads.

:class:`Loading` is built on :class:`~dragonfly_cache._tiers.Tiers` (the reads and writes
of both tiers), a :class:`~dragonfly_cache._singleflight.SingleFlight` (one load per key
and process), a :class:`~dragonfly_cache._refresh.RefreshSchedule` and a
:class:`~dragonfly_cache._fleet.FleetLock` (one load per key and fleet). The cache validates
the arguments; what arrives here is already checked.

Negative caching. A loader raises :class:`NotFound`; the cache stores a marker value
(``NEGATIVE``) for ``l2.negative_ttl``. ``get`` and friends read the marker as a miss;
``get_or_load`` raises ``NotFound`` without calling the loader.

Racing writes. One L1 ticket covers a load from before its L2 read until its store. A write
or delete of the key meanwhile (here, or elsewhere through coherence) stamps it; the loaded
value, perhaps read from the database before that write, is then returned but stored
nowhere. The store itself is SET NX, so a write that reached L2 first always wins over a
load that started before it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._fleet import FleetLock
from ._l1 import Entry, Ticket
from ._refresh import BACKOFF_FIRST, Refresh, RefreshSchedule
from ._singleflight import SingleFlight
from ._tiers import NEGATIVE, Tiers
from .config import L2Config
from .exceptions import CacheUnavailableError, NotFound
from .types import LoadingStats, SingleflightStats

__all__ = ["Loader", "Loading", "ManyLoader"]

logger = logging.getLogger(__name__)

Loader = Callable[[], bytes]
ManyLoader = Callable[[list[str]], Mapping[str, bytes]]

_NO_LOCK = "no fleet lock"  # the refresh token when the fleet lock is off


class Loading:
    """get_or_load and get_or_load_many of one cache in one process.

    Args:
        tiers: the cache's tiers.
        config: the L2 policy (negative ttl, refresh jitter and sync, fleet lock ttl).
        max_scheduled: most keys whose refresh times are remembered (L1's size).
    """

    def __init__(self, tiers: Tiers, config: L2Config, max_scheduled: int) -> None:
        self._tiers = tiers
        self._negative_ttl = config.negative_ttl
        self.flights: SingleFlight[bytes] = SingleFlight()
        self.refresh = RefreshSchedule(max_scheduled, config.refresh_jitter,
                                       config.refresh_sync, tiers.l1.timer)
        self._fleet = FleetLock(tiers, config.fleet_lock_ttl)
        self._lock = threading.Lock()
        self._loads = 0
        self._decode_failures = 0

    # -- get_or_load ------------------------------------------------------------------------

    def get_or_load(self, key: str, loader: Loader, seconds: float, fleet: bool,
                    fraction: float | None) -> bytes:
        """The cached value of ``key``, or ``loader()``'s, loaded once per process (and per
        fleet with ``fleet``), refreshed early with ``fraction``.

        Raises:
            NotFound: the loader said (now or within ``negative_ttl``) there is no record.
            Exception: whatever ``loader`` raised.
        """
        value = self._tiers.l1.get(key)
        while value is None:
            # A flight we joined may end with None: a batch load (get_or_load_many) whose
            # loader omitted this key. That flight is over, so go round and load it here.
            value = self.flights.do(key, lambda: self._load(key, loader, seconds, fleet,
                                                            fraction))
        if fraction is not None:
            # Also after an L1 miss: L1 may have lost an entry (a flush) that stays due.
            value = self._maybe_refresh(key, value, loader, seconds, fleet, fraction)
        if value is NEGATIVE:
            raise NotFound(f"no record for key {key!r} (cached negative answer)")
        return value

    def _load(self, key: str, loader: Loader, seconds: float, fleet: bool,
              fraction: float | None) -> bytes:
        """The singleflight leader's work: L2, else the loader (under the fleet lock if
        asked), then store; one ticket covers it all (see the module docs)."""
        tiers = self._tiers
        tiers.listen()
        # A load that starts while a delete could be missed stores a short-lived value.
        untrusted = not tiers.trusted
        with tiers.l1.ticket([key]) as ticket:
            start = tiers.l1.timer()
            found, fills = tiers.fetch([key])
            if key in found:
                ticket.fill(fills)
                if fraction is not None and key in fills:
                    self.refresh.schedule(key, start, fills[key][1] - start, seconds, fraction)
                return found[key]
            token = self._fleet.acquire(key) if fleet else None
            if fleet and token is None:
                value = self._fleet.wait(key)
                if value is not None:
                    return value
            try:
                value = self._call_loader(key, loader)
                self._store(key, value, seconds, ticket, fraction, untrusted)
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

    def _maybe_refresh(self, key: str, value: bytes, loader: Loader, seconds: float,
                       fleet: bool, fraction: float) -> bytes:
        """On a hit: start a background refresh when due; refresh synchronously (and
        return the new value) when the entry is closer to expiry than ``refresh_sync``."""
        decision = self.refresh.claim(key, seconds, fraction)
        if decision is Refresh.SYNC:
            # Coalesced: one caller reloads, the others wait for its value.
            return self.flights.do(key, lambda: self._reload(key, loader, seconds, fleet,
                                                             fraction) or value)
        if decision is Refresh.BACKGROUND:
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
            self.refresh.finished(key)

    def _reload(self, key: str, loader: Loader, seconds: float, fleet: bool,
                fraction: float) -> bytes | None:
        """Load ``key`` again and store it over the current value.

        Returns:
            The new value, or None if the refresh did not happen (another process holds
            the fleet lock, the loader failed, L2 refused, or the key was invalidated
            meanwhile); the current value then stays in place until its hard expiry.
        """
        token = self._fleet.acquire(key) if fleet else _NO_LOCK
        if token is None:
            self.refresh.postpone(key, BACKOFF_FIRST)  # another process refreshes
            return None
        try:
            untrusted = not self._tiers.trusted
            with self._tiers.l1.ticket([key]) as ticket:
                return self._reload_under(ticket, key, loader, seconds, fraction, untrusted)
        finally:
            if token is not _NO_LOCK:
                self._fleet.release(key, token)

    def _reload_under(self, ticket: Ticket, key: str, loader: Loader, seconds: float,
                      fraction: float, untrusted: bool) -> bytes | None:
        tiers = self._tiers
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
        if value is not NEGATIVE:
            self.refresh.schedule(key, start, life, seconds, fraction)
        return value

    # -- batch loads ------------------------------------------------------------------------

    def get_or_load_many(self, keys: list[str], loader_many: ManyLoader, seconds: float
                         ) -> dict[str, bytes]:
        """Values of the distinct ``keys``: L1, then one L2 round trip, then one
        ``loader_many`` call for what is still missing (keys another caller in this process
        is loading are waited for). Omitted and negative keys are absent."""
        tiers = self._tiers
        found = tiers.l1.get_many(keys)
        missing = [key for key in keys if key not in found]
        if missing:
            found.update(tiers.read_through(missing))
            missing = [key for key in missing if key not in found]
        if missing:
            found.update(self._load_many(missing, loader_many, seconds))
        return {key: value for key, value in found.items() if value is not NEGATIVE}

    def _load_many(self, keys: list[str], loader_many: ManyLoader, seconds: float
                   ) -> dict[str, bytes]:
        led: dict[str, Any] = {}
        waits: list[tuple[str, Any]] = []
        for key in keys:
            flight, leader = self.flights.claim(key)
            if leader:
                led[key] = flight
            else:
                waits.append((key, flight))
        results = self._lead(led, loader_many, seconds) if led else {}
        for key, flight in waits:
            value = self.flights.wait(flight)
            if value is not None:
                results[key] = value
        return results

    def _lead(self, led: dict[str, Any], loader_many: ManyLoader, seconds: float
              ) -> dict[str, bytes]:
        """Load the keys whose flights we lead, and finish every one of those flights."""
        flights = self.flights
        # Another load may have stored some of these between our L2 read and our claim.
        results = self._tiers.read_through(list(led))
        for key, value in results.items():
            flights.finish(key, led.pop(key), value=value)
        if not led:
            return results
        mine = list(led)
        untrusted = not self._tiers.trusted
        try:
            with self._tiers.l1.ticket(mine) as ticket:
                loaded = self._call_loader_many(mine, loader_many)
                self._store_many(loaded, self._tiers.store_life(seconds, untrusted), ticket)
        except BaseException as exc:
            for key, flight in led.items():
                flights.finish(key, flight, error=exc)
            raise
        for key, flight in led.items():
            flights.finish(key, flight, value=loaded.get(key))
        results.update(loaded)
        return results

    def _call_loader_many(self, keys: list[str], loader_many: ManyLoader) -> dict[str, bytes]:
        self._count_load()
        answer = loader_many(list(keys))
        loaded: dict[str, bytes] = {}
        for key in keys:
            value = answer.get(key)
            if value is not None and not isinstance(value, bytes):
                raise TypeError(f"loader_many returned {type(value).__name__} for key "
                                f"{key!r}, expected bytes")
            if value is not None:
                loaded[key] = value
        return loaded

    def _store_many(self, values: dict[str, bytes], seconds: float, ticket: Ticket) -> None:
        """Store a batch (SET NX each, one round trip) and fill L1 with what was stored."""
        tiers = self._tiers
        fresh = {key: value for key, value in values.items() if not ticket.stale(key)}
        if not fresh:
            return
        start = tiers.l1.timer()
        deadline = tiers.deadline(start, seconds)
        fills: dict[str, Entry]
        try:
            stored = tiers.l2.set_many_if_absent(fresh, seconds, tiers.announce(list(fresh)))
            fills = {key: (fresh[key], deadline) for key in stored}
        except CacheUnavailableError:
            local = tiers.deadline(start, seconds, degraded=True)
            fills = {key: (value, local) for key, value in fresh.items()}
        ticket.fill(fills)

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
                "sync_refreshes": refresh.sync_refreshes, "decode_failures": decode_failures}
