"""A module-level memoized function, importable by spawned processes."""

from __future__ import annotations

from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, TieredCache

# Never connects unless called; only its key function is used across processes.
cache = TieredCache(CacheConfig(dragonfly=DragonflyConfig(addresses=["127.0.0.1:1"]),
                                l1=L1Config(invalidation=False)))


@cache.memoize(ttl=60)
def lookup(user_id: int, region: str = "eu", *, verbose: bool = False) -> dict[str, object]:
    return {"user_id": user_id, "region": region}
