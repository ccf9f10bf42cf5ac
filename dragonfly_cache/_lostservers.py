"""The servers whose tracked connections were lost, asked after until routing follows.

In tracking mode no listener's reconnect loop notices a cluster failover (pub/sub
listeners do, :mod:`dragonfly_cache._coherence`). So when a tracked connection to a
server is lost, the poller asks for the primaries again (which fetches a fresh slot
map) with backoff, until that server answers again (a connection to it is tracked) or
is no longer a primary (the promoted replica serves its slots, and routing follows).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .exceptions import CacheUnavailableError

__all__ = ["LostServers"]

_BACKOFF_FIRST, _BACKOFF_CAP = 0.05, 2.0  # seconds between two questions about a server


class LostServers:
    """Lost servers (``host:port``), each with when to ask next and its backoff.

    Args:
        primaries: the primaries now, under a fresh slot map (None: nothing to follow,
            a standalone server or Sentinel, which follows failovers itself).
    """

    def __init__(self, primaries: Callable[[], list[str]] | None) -> None:
        self._primaries = primaries
        self._lock = threading.Lock()
        self._away: dict[str, tuple[float, float]] = {}  # address -> next question, backoff

    def __bool__(self) -> bool:
        return bool(self._away)

    def lost(self, address: str) -> None:
        """A tracked connection to ``address`` was lost: ask after it soon."""
        if self._primaries is not None:
            with self._lock:
                self._away[address] = (time.monotonic(), _BACKOFF_FIRST)

    def back(self, address: str) -> None:
        """A connection to ``address`` is tracked again."""
        with self._lock:
            self._away.pop(address, None)

    def follow(self, now: float) -> None:
        """Ask for the primaries if a lost server is due; forget those that are no longer
        primaries (their slots are served elsewhere now), back the others off."""
        with self._lock:
            due = [address for address, (when, _) in self._away.items() if when <= now]
        if not due or self._primaries is None:
            return
        try:
            primaries = set(self._primaries())
        except CacheUnavailableError:
            primaries = set(due)  # no answer: ask again later
        with self._lock:
            for address in due:
                entry = self._away.get(address)
                if entry is None:
                    continue
                if address not in primaries:
                    del self._away[address]
                else:
                    self._away[address] = (now + entry[1], min(entry[1] * 2, _BACKOFF_CAP))
