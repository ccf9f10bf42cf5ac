"""Compression of large values (``l2.compression``): the stored size of a 100 kB JSON
document, the CPU cost of compressing and decompressing it, and what a write and an
L1-cold read of it cost end to end, for each codec."""

from __future__ import annotations

import json
from typing import Any

import redis
from _measure import median, percentile, ratio_median, timed_calls_ns
from _systems import DRAGONFLY, RAW, TTL, Dragonfly

from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config, TieredCache
from dragonfly_cache._compression import Compression
from tests.helpers.waiting import wait_subscribed

from .common import Context, Result, fmt, fmt_x, progress, rotated

__all__ = ["compression_100k"]

CODECS = ("off", "zlib", "zstd")
REFERENCE = RAW + " GET (plain)"

# A 100 kB JSON document as an API would cache it: a list of records.
DOCUMENT = json.dumps([{"id": i, "name": f"item {i}", "price": round(i * 1.25, 2),
                        "tags": ["red", "large"] if i % 3 else ["blue"], "stock": i % 17}
                       for i in range(1300)]).encode()[:100_000]


def _cache(address: str, codec: str) -> TieredCache:
    """A cache that never keeps the document in L1 (it is over ``max_entry_share`` of
    ``max_bytes``), so every get reads L2 and decodes."""
    config = CacheConfig(dragonfly=DragonflyConfig(addresses=[address]),
                         l1=L1Config(ttl=TTL, max_bytes=1 << 20, max_entry_share=0.01),
                         l2=L2Config(ttl=TTL, compression=codec), key_prefix=f"payload:{codec}:")
    cache = TieredCache(config)
    wait_subscribed(cache)
    return cache


def compression_100k(ctx: Context) -> Result:
    """Per codec: bytes on the server (STRLEN), µs to encode and decode in process, and p50
    µs of ``set`` and of an L1-cold ``get``; a raw redis-py GET of the plain document is
    the reference of the reads."""
    s = ctx.settings
    dragonfly: Dragonfly = ctx.system(DRAGONFLY)
    assert dragonfly.server is not None
    raw = dragonfly.server.client()  # the same server as the caches
    caches = {codec: _cache(dragonfly.server.address, codec) for codec in CODECS}
    keys = [f"doc:{i}" for i in range(64)]
    raw.set("payload:raw", DOCUMENT, ex=TTL)
    names = [*CODECS, REFERENCE]
    measured: dict[str, dict[str, list[float]]] = {
        name: {"get": [], "set": [], "encode": [], "decode": []} for name in names}
    try:
        for cache in caches.values():
            cache.set_many(dict.fromkeys(keys, DOCUMENT))
        stored = {codec: raw.strlen(f"payload:{codec}:doc:0") for codec in CODECS}
        for r in range(s.rounds):
            progress(f"compression: round {r + 1}/{s.rounds}")
            for name in rotated(names, r):
                _measure_round(name, caches, raw, keys, ctx, measured[name])
        for codec, cache in caches.items():
            stats = cache.stats()
            if stats["l1_stats"]["hits"] or stats["l2_stats"]["corrupt"]:
                raise RuntimeError(f"compression {codec}: reads hit L1 or did not decode")
    finally:
        for cache in caches.values():
            cache.close()
        raw.close()
    rows, data = [], {}
    reference = measured[REFERENCE]["get"]
    for name in names:
        entry: dict[str, Any] = {f"{op}_p50_us": median(rounds)
                                 for op, rounds in measured[name].items()}
        entry["get_vs_redis_py_get"] = ratio_median(measured[name]["get"], reference)
        entry["rounds"] = measured[name]
        entry["stored_bytes"] = stored.get(name, len(DOCUMENT))
        data[name] = entry
        rows.append([name, f"{entry['stored_bytes']:,}",
                     fmt_x(len(DOCUMENT) / entry["stored_bytes"]),
                     fmt(entry["encode_p50_us"]), fmt(entry["decode_p50_us"]),
                     fmt(entry["set_p50_us"]), fmt(entry["get_p50_us"]),
                     fmt_x(entry["get_vs_redis_py_get"])])
    data["document_bytes"] = len(DOCUMENT)
    return {
        "title": f"Compression of a {len(DOCUMENT) // 1000} kB JSON document (l2.compression)",
        "note": "stored = STRLEN on the server; encode/decode = in-process CPU µs per call "
                "(Compression.encode/decode); set and get = p50 µs per call through a "
                "TieredCache whose L1 does not keep the document, so every get is an L2 "
                "read plus decoding.",
        "columns": ["codec", "stored bytes", "ratio", "encode µs", "decode µs", "set p50 µs",
                    "get p50 µs", "get vs redis-py GET"],
        "rows": rows, "data": data, "targets": [],
    }


def _measure_round(name: str, caches: dict[str, TieredCache], raw: redis.Redis,
                   keys: list[str], ctx: Context, into: dict[str, list[float]]) -> None:
    s = ctx.settings

    def p50_us(op: Any, items: list[Any]) -> float:
        return percentile(timed_calls_ns(op, items, s.duration, ctx.overhead_ns), 50) / 1000

    if name == REFERENCE:
        into["get"].append(p50_us(raw.get, ["payload:raw"]))
        for op in ("set", "encode", "decode"):
            into[op].append(float("nan"))
        return
    cache, codec = caches[name], Compression(name)
    frame = codec.encode(DOCUMENT)
    into["encode"].append(p50_us(codec.encode, [DOCUMENT]))
    into["decode"].append(p50_us(lambda stored: codec.decode("doc", stored), [frame]))
    into["set"].append(p50_us(lambda key: cache.set(key, DOCUMENT), keys))
    into["get"].append(p50_us(cache.get, keys))
