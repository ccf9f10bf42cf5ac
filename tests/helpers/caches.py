"""What tests that build a TieredCache share: a manual clock and the factory's type."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dragonfly_cache import TieredCache
    from tests.helpers.servers import RedisServer

__all__ = ["CacheFactory", "FakeClock"]


class FakeClock:
    """A manual monotonic clock for TTL tests: call it for the time, ``advance()`` to move it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CacheFactory(Protocol):
    """The type of the ``cache_factory`` fixture (see tests/conftest.py)."""

    def __call__(
        self,
        server: RedisServer | None = None,
        *,
        key_prefix: str = "",
        timer: Callable[[], float] = time.monotonic,
        l1_ttl: float = 300.0,
        l1_max_size: int = 10_000,
        l2_ttl: float = 3600.0,
        l2: dict[str, Any] | None = None,
        invalidation: bool = True,
        subscribed: bool = True,
        **dragonfly: Any,
    ) -> TieredCache: ...
