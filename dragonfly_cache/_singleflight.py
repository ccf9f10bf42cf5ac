"""In-process call coalescing: concurrent calls for one key run the function once.

Shaped like cachetools' ``condition=`` path: a map of in-flight calls under a lock; the
leader runs the function outside the lock and removes its entry in ``finally``, so no entry
is ever left behind; followers wait on the leader's ``threading.Event`` and receive its
result or its exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .exceptions import CacheError

__all__ = ["SingleFlight"]

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("done", "error", "leader", "value")

    def __init__(self) -> None:
        self.leader = threading.get_ident()
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    """Coalesce concurrent calls per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[T]] = {}
        self.coalesced = 0  # calls that waited for another caller's result

    def do(self, key: str, function: Callable[[], T]) -> T:
        """Run ``function`` for ``key`` unless a call for ``key`` is in flight; then share it.

        Raises:
            Whatever ``function`` raised, in the leader and in every follower.
        """
        flight, leader = self.claim(key)
        if not leader:
            return self.wait(flight)  # type: ignore[return-value]
        try:
            value = function()
        except BaseException as exc:
            self.finish(key, flight, error=exc)
            raise
        self.finish(key, flight, value=value)
        return value

    def claim(self, key: str) -> tuple[_Flight[T], bool]:
        """Join the flight of ``key``, or start it; returns (flight, whether we lead it).

        A leader must call :meth:`finish` exactly once; a follower calls :meth:`wait`.
        """
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
                return flight, True
            if flight.leader != threading.get_ident():
                self.coalesced += 1
            return flight, False

    def finish(self, key: str, flight: _Flight[T], value: T | None = None,
               error: BaseException | None = None) -> None:
        """Publish the leader's result (or error) to the followers and end the flight."""
        if error is not None and not isinstance(error, Exception):
            # KeyboardInterrupt/SystemExit belong to the leader's thread alone.
            error = CacheError(f"the call coalescing key {key!r} was interrupted")
        flight.value, flight.error = value, error
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    def wait(self, flight: _Flight[T]) -> T | None:
        """A follower's wait for the leader's result."""
        if flight.leader == threading.get_ident():
            # Waiting for our own flight would never end.
            raise CacheError("re-entrant call: the function loading a key called back into "
                             "the cache for the same key")
        flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.value

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)
