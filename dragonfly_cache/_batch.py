"""Batch loads: ``get_or_load_many``, one loader call for every key both tiers miss.

:class:`BatchLoading` shares the cache's :class:`~dragonfly_cache._singleflight.SingleFlight`
with :class:`~dragonfly_cache._loading.Loading`, so a key that a ``get_or_load`` (or another
batch) of this process is loading is waited for, not loaded twice; and its
:class:`~dragonfly_cache._stale.StaleOnError`, so ``stale_if_error`` works the same way.
One L1 ticket covers the loader call and the store (the racing-writes rule of
:mod:`dragonfly_cache._loading`); the store is SET NX for each key, in one round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._l1 import Entry, Ticket
from ._singleflight import SingleFlight
from ._stale import StaleOnError
from ._tiers import NEGATIVE, Tiers
from .exceptions import CacheUnavailableError, NotFound

__all__ = ["BatchLoading", "ManyLoader"]

ManyLoader = Callable[[list[str]], Mapping[str, bytes]]


class BatchLoading:
    """get_or_load_many of one cache in one process.

    Args:
        tiers: the cache's tiers.
        flights: the cache's singleflight (shared with ``get_or_load``).
        stale: the cache's stale values and reload backoffs.
        count_load: called once per loader call (the ``singleflight`` stats).
    """

    def __init__(self, tiers: Tiers, flights: SingleFlight[bytes], stale: StaleOnError,
                 count_load: Callable[[], None]) -> None:
        self._tiers = tiers
        self.flights = flights
        self._stale = stale
        self._count_load = count_load

    def get_or_load_many(self, keys: list[str], loader_many: ManyLoader, seconds: float,
                         window: float) -> dict[str, bytes]:
        """Values of the distinct ``keys``: L1, then one L2 round trip, then one
        ``loader_many`` call for what is still missing (keys another caller in this process
        is loading are waited for), stored for ``seconds``. Omitted and negative keys are
        absent. With a stale ``window``, keys whose reload backs off get their stale values;
        if L2 cannot be reached, keys with a stale value get it and the rest are loaded; if
        the loader fails, all its keys get their stale values, or (one has none) its
        exception propagates."""
        tiers, stale = self._tiers, self._stale
        if window:
            stale.use(window)
        found = tiers.l1.get_many(keys)
        missing = [key for key in keys if key not in found]
        olds: dict[str, bytes] = {}  # stale answers, counted once the call succeeds
        if missing and window:
            olds = stale.peek([key for key in missing if stale.backs_off(key, window)], window)
            missing = [key for key in missing if key not in olds]
        if missing:
            strict = any(stale.holds(key, window) for key in missing)
            try:
                found.update(tiers.read_through(missing, strict=strict))
            except CacheUnavailableError as exc:
                held = stale.peek(missing, window)
                for key in held:
                    stale.failed(key, exc)
                olds.update(held)
            missing = [key for key in missing if key not in found and key not in olds]
        if missing:
            try:
                found.update(self._load_many(missing, loader_many, seconds))
            except NotFound:
                raise  # never turned into stale values
            except Exception:
                held = stale.peek(missing, window)
                if len(held) < len(missing):
                    raise
                olds.update(held)
        stale.served(olds)
        found.update(olds)
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
                self._stale.failed(key, exc)
                flights.finish(key, flight, error=exc)
            raise
        for key, flight in led.items():
            self._stale.loaded(key, loaded.get(key))
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
