"""The fleet lock: on a miss, one process in the fleet runs the loader.

Processes race for ``SET <lock> <token> NX PX``; the others poll L2 (with backoff) for the
value, and load themselves once the lock is released or expires. The lock is released by a
script that declares its key (Dragonfly requires that) and deletes it only if the token is
still ours. When L2 is unreachable there is no fleet to coordinate with: the process loads.
"""

from __future__ import annotations

import contextlib
import time
import uuid

from ._tiers import Tiers
from .exceptions import CacheUnavailableError

__all__ = ["FleetLock"]

_POLL_FIRST, _POLL_CAP = 0.005, 0.1


def _lock_key(key: str) -> str:
    # A control character keeps the lock out of any key a user would write.
    return f"\x1flock:{key}"


class FleetLock:
    """Fleet-wide locks on keys being loaded.

    Args:
        tiers: the cache's tiers (the lock lives in L2; waiting reads fill L1).
        ttl: life of a lock: how long the others wait if its holder dies mid-load.
    """

    def __init__(self, tiers: Tiers, ttl: float) -> None:
        self._tiers = tiers
        self._ttl = ttl

    def acquire(self, key: str) -> str | None:
        """Our token if we took the lock on ``key``; None if another process holds it."""
        token = uuid.uuid4().hex
        try:
            taken = self._tiers.l2.set_if_absent(_lock_key(key), token.encode(), self._ttl)
        except CacheUnavailableError:
            return token
        return token if taken else None

    def release(self, key: str, token: str) -> None:
        """Release our lock (if L2 cannot be reached, it expires by itself)."""
        with contextlib.suppress(CacheUnavailableError):
            self._tiers.l2.delete_if_equal(_lock_key(key), token.encode())

    def wait(self, key: str) -> bytes | None:
        """Poll for the value another process is loading; None once its lock is gone."""
        tiers = self._tiers
        delay = _POLL_FIRST
        deadline = time.monotonic() + self._ttl
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, _POLL_CAP)
            found = tiers.read_through([key])
            if key in found:
                return found[key]
            try:
                if not tiers.l2.exists(_lock_key(key)):
                    # The holder finished without storing (or died): last look, then load.
                    return tiers.read_through([key]).get(key)
            except CacheUnavailableError:
                return None
        return None
