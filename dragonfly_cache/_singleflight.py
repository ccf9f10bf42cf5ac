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
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            elif flight.leader != threading.get_ident():
                self.coalesced += 1
        if not leader:
            if flight.leader == threading.get_ident():
                # Waiting for our own flight would never end.
                raise CacheError(f"re-entrant call for key {key!r}: the function for this "
                                 "key called back into the cache for the same key")
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]
        try:
            flight.value = function()
            return flight.value
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:
            # KeyboardInterrupt/SystemExit belong to the leader's thread alone.
            flight.error = CacheError(f"the call coalescing key {key!r} was interrupted")
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)
