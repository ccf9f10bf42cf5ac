"""A circuit breaker for the shared tier: fail fast while the server is down, probe to recover.

closed     every call goes through; ``threshold`` consecutive failures open the circuit.
open       calls are refused without touching a socket until the cooldown has passed.
half-open  one call (the probe) goes through; the others are still refused. Success closes
           the circuit and resets the cooldown; failure reopens it with the cooldown
           doubled, up to ``max_cooldown``.

Failures that say the server cannot be used count: connection errors, timeouts, and
authentication errors (redis-py reports those as connection errors; retrying a wrong
password every call is as pointless as retrying a dead server). A server that answers a
command with an error (out of memory, WRONGTYPE) is reachable: that counts as a success
here, so a full Dragonfly never stops reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from enum import Enum

from .types import BreakerStats

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(str, Enum):
    """The breaker's states; the value is what ``stats()`` reports."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def severity(self) -> int:
        """0 closed, 1 half-open, 2 open: the order of "worst" (and the metrics gauge)."""
        return _SEVERITY[self]

    @classmethod
    def worst(cls, states: Iterable[BreakerState]) -> BreakerState:
        """The most severe of ``states`` (closed when there are none)."""
        return max(states, key=_SEVERITY.__getitem__, default=cls.CLOSED)

    def __str__(self) -> str:
        return self.value


_SEVERITY = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class CircuitBreaker:
    """Thread-safe; consulted only on the L2 path, never on an L1 hit.

    Args:
        threshold: consecutive failures that open the circuit.
        cooldown: first wait before a probe, in seconds.
        max_cooldown: cap of the doubling cooldown.
        timer: monotonic clock (tests pass a fake one).
    """

    def __init__(self, threshold: int, cooldown: float, max_cooldown: float,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max(cooldown, max_cooldown)
        self._timer = timer
        self._lock = threading.Lock()
        self.state: BreakerState = CLOSED
        self._failures = 0
        self._cooldown = cooldown
        self._retry_at = 0.0
        self._probe_deadline = 0.0  # a probe that never reported frees its slot after this
        self.opened = 0  # closed/half-open -> open transitions
        self.closed = 0  # half-open -> closed transitions
        self.rejected = 0  # calls refused without a socket attempt

    def allow(self) -> bool:
        """Whether a call may go to the server now (and, if half-open, it is the probe)."""
        with self._lock:
            if self.state == CLOSED:
                return True
            now = self._timer()
            if self.state == OPEN and now >= self._retry_at:
                self.state = HALF_OPEN
                self._probe_deadline = now + self._cooldown
                return True
            if self.state == HALF_OPEN and now >= self._probe_deadline:
                # The previous probe never reported (its thread died): let another one try.
                self._probe_deadline = now + self._cooldown
                return True
            self.rejected += 1
            return False

    def ready(self) -> bool:
        """Whether :meth:`allow` would let a call through now (nothing changes)."""
        now = self._timer()
        state = self.state
        return (state == CLOSED or (state == OPEN and now >= self._retry_at)
                or (state == HALF_OPEN and now >= self._probe_deadline))

    def abandon(self) -> None:
        """A call that :meth:`allow` let through never reached the server (no verdict).

        If it was the half-open probe, the next call may probe at once instead of every
        call being refused until the probe deadline.
        """
        with self._lock:
            if self.state == HALF_OPEN:
                self.state = OPEN
                self._retry_at = self._timer()

    def success(self) -> None:
        """The server answered."""
        if self.state == CLOSED and not self._failures:
            return  # the common case, without the lock: nothing to reset
        with self._lock:
            self._failures = 0
            if self.state != CLOSED:
                self.state = CLOSED
                self._cooldown = self.base_cooldown
                self.closed += 1

    def failure(self) -> None:
        """The server could not be reached."""
        with self._lock:
            self._failures += 1
            if self.state == HALF_OPEN:
                self._cooldown = min(self._cooldown * 2, self.max_cooldown)
                self._open()
            elif self.state == CLOSED and self._failures >= self.threshold:
                self._open()

    def _open(self) -> None:
        self.state = OPEN
        self._retry_at = self._timer() + self._cooldown
        self.opened += 1

    def stats(self) -> BreakerStats:
        """State and transition counters."""
        with self._lock:
            return {
                "state": self.state.value,
                "consecutive_failures": self._failures,
                "cooldown": self._cooldown,
                "opened": self.opened,
                "closed": self.closed,
                "rejected": self.rejected,
            }
