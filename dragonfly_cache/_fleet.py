"""The fleet lock: on a miss, one process in the fleet runs the loader.

Processes race for ``SET <lock> <token> NX PX``; the others poll L2 (with backoff) for the
value, and load themselves once the lock is released or expires. The lock is released by a
script that declares its key (Dragonfly requires that) and deletes it only if the token is
still ours. When L2 is unreachable there is no fleet to coordinate with: the process loads.

:class:`FleetMutex` is the same lock as a mutex object (``TieredCache.lock``, the dogpile
backend's ``get_mutex``): ``acquire(wait=True)``, ``release()``, ``locked()``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from types import TracebackType

from . import _fork
from ._tiers import Tiers
from .exceptions import CacheUnavailableError

__all__ = ["FleetLock", "FleetMutex"]

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
        """Our token if we took the lock on ``key`` (or L2 cannot be reached); None if
        another process holds it."""
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

    def held(self, key: str) -> bool:
        """Whether anyone holds the lock on ``key``.

        Raises:
            CacheUnavailableError: L2 cannot be reached.
        """
        return self._tiers.l2.exists(_lock_key(key))

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


class FleetMutex:
    """The fleet lock on one name, as a mutex: what ``TieredCache.lock`` returns.

    ``acquire`` takes ``SET <lock> <token> NX PX <ttl>`` (polling with backoff while
    another holds it); ``release`` deletes the lock only if it still holds our token. The
    lock expires after ``ttl`` even if never released, so a holder that dies blocks the
    others for at most that long (and one that holds it longer may lose it to another).
    A local lock first makes the users of this one object take turns without polling the
    server, and lets another thread release what one thread acquired (dogpile.cache's
    background creators do). With L2 unreachable there is no fleet to coordinate with:
    the local lock alone is taken, as ``get_or_load(..., lock=True)`` then loads.

    Args:
        tiers: the cache's tiers (the lock lives in L2).
        name: the lock's name: the cache key it guards (``get_or_load(name, lock=True)``
            takes the same lock).
        ttl: seconds the lock lives if it is never released.
        poll: longest pause between two tries while waiting, in seconds.
    """

    def __init__(self, tiers: Tiers, name: str, ttl: float, poll: float) -> None:
        self._fleet = FleetLock(tiers, ttl)
        self._name = name
        self._poll = poll
        self._after_fork_in_child()
        # A lock held by a parent thread at fork time would stay held in the child forever;
        # the fork hook gives the child a free one (the parent keeps its fleet lock).
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self._local = threading.Lock()
        self._token: str | None = None  # set and cleared only by the local lock's holder

    def __repr__(self) -> str:
        return f"<FleetMutex {self._name!r} {'held' if self._token else 'free'} here>"

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock: wait until it is free (``wait=True``), else try once.

        Returns:
            True once taken; False when ``wait`` is False and someone holds it.
        """
        if not self._local.acquire(wait):
            return False
        try:
            token = self._take(wait)
        except BaseException:  # interrupted while waiting: leave nothing held
            self._local.release()
            raise
        if token is None:
            self._local.release()
            return False
        self._token = token
        return True

    def _take(self, wait: bool) -> str | None:
        delay = _POLL_FIRST
        while True:
            token = self._fleet.acquire(self._name)
            if token is not None or not wait:
                return token
            time.sleep(delay)
            delay = min(delay * 2, self._poll)

    def release(self) -> None:
        """Release the lock (from any thread). If it expired meanwhile, nothing is deleted:
        the lock may belong to someone else by now.

        Raises:
            RuntimeError: this object does not hold the lock.
        """
        token = self._token
        if token is None:
            raise RuntimeError(f"release of the fleet lock {self._name!r}, which this "
                               "object does not hold")
        self._token = None
        try:
            self._fleet.release(self._name, token)
        finally:
            self._local.release()

    def locked(self) -> bool:
        """Whether anyone in the fleet holds the lock (with L2 unreachable: whether this
        object does)."""
        try:
            return self._fleet.held(self._name)
        except CacheUnavailableError:
            return self._local.locked()

    def __enter__(self) -> FleetMutex:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
