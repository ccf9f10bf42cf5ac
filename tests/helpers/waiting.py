"""Waiting for progress: poll a condition against a deadline, never sleep as synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dragonfly_cache import TieredCache

__all__ = ["wait_subscribed", "wait_until"]


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``condition()`` every millisecond until it is true.

    Raises:
        AssertionError: it was still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def wait_subscribed(cache: TieredCache, timeout: float = 5.0) -> None:
    """Wait until ``cache``'s invalidation listener (started with the cache) is subscribed.

    Like a warmed-up process: L1 entries are trusted for their full life only once the
    listener is subscribed, and what L1 stored before that is dropped at that moment, so
    tests that count L1 hits wait for it first.

    Raises:
        AssertionError: the cache has coherence off, or the listener was not subscribed
            within ``timeout`` seconds.
    """
    assert cache.stats()["coherence"]["state"] != "disabled", "the cache has coherence off"
    wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed", timeout)
