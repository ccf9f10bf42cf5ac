"""The framework adapters' L1 hit: what a Flask-Caching, cachelib, Django or dogpile.cache
``get`` of a small object costs against ``TieredCache.get`` of bytes, in one run.

An adapter's hit is the cache's L1 hit plus the framework's own key handling, checking the
value's signature and unpickling it (values are always signed pickles): that is what the
issue-14 target, at most 3x ``TieredCache.get``, measures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _measure import median, ops_per_second, percentile, ratio_median, timed_calls_ns
from _systems import DRAGONFLY

from .common import Context, Result, fmt, fmt_x, progress, rotated, target

__all__ = ["adapter_hits"]

SECRET = "benchmark secret key, 32 bytes.."  # noqa: S105 - a throw-away benchmark key
VALUE = {"id": 1, "name": "Ada Lovelace", "tags": ["math", "engines"], "active": True}
CORE = "TieredCache.get (bytes)"
# The frameworks' own front objects: what an app calls, the framework's code included.
FACADE_FLASK = "Flask-Caching Cache.get (via Flask-Caching)"
FACADE_DOGPILE = "dogpile CacheRegion.get (via dogpile)"
KEYS = 1000


def _adapters(address: str) -> dict[str, tuple[Callable[[str], Any], Callable[[str], None]]]:
    """name -> (get, set) of each adapter on the server at ``address``."""
    import django
    from django.conf import settings
    from dogpile.cache import make_region
    from flask import Flask
    from flask_caching import Cache

    from dragonfly_cache.contrib.cachelib import DragonflyCache as CachelibCache

    url = f"redis://{address}/0"
    cachelib = CachelibCache(url=url, pickle_secret=SECRET, key_prefix="cl:")
    app = Flask("benchmark")
    app.config.update(CACHE_TYPE="dragonfly_cache.contrib.flask_caching.DragonflyCache",
                      CACHE_REDIS_URL=url, CACHE_KEY_PREFIX="fc:", SECRET_KEY=SECRET)
    flask_cache = Cache(app)
    if not settings.configured:
        settings.configure(SECRET_KEY=SECRET, CACHES={"default": {
            "BACKEND": "dragonfly_cache.contrib.django.DragonflyCache", "LOCATION": url,
            "KEY_PREFIX": "dj"}})
        django.setup()
    from django.core.cache import caches

    region = make_region().configure("dragonfly_cache",
                                     arguments={"url": url, "pickle_secret": SECRET})

    # As in a request: the app context is there already (pushed once, for the run).
    app.app_context().push()

    django_cache = caches["default"]
    backend = flask_cache.cache  # our adapter, behind Flask-Caching's Cache object
    return {
        "cachelib DragonflyCache.get": (cachelib.get, lambda key: cachelib.set(key, VALUE)),
        "Flask-Caching backend .get": (backend.get, lambda key: backend.set(key, VALUE)),
        "Django caches['default'].get": (django_cache.get,
                                         lambda key: django_cache.set(key, VALUE)),
        "dogpile backend .get": (_backend_get(region), lambda key: region.set(key, VALUE)),
        FACADE_FLASK: (flask_cache.get, lambda key: flask_cache.set(key, VALUE)),
        FACADE_DOGPILE: (region.get, lambda key: region.set(key, VALUE)),
    }


def _backend_get(region: Any) -> Callable[[str], Any]:
    """The region's backend ``get`` of what the region calls a key (as the region does)."""
    get, mangle = region.backend.get, region.key_mangler
    return get if mangle is None else lambda key: get(mangle(key))


def adapter_hits(ctx: Context) -> Result:
    s = ctx.settings
    dragonfly = ctx.system(DRAGONFLY)
    assert dragonfly.server is not None
    keys = [f"adapter:{n}" for n in range(min(KEYS, len(ctx.keys)))]
    sequence = [keys[index % len(keys)] for index in range(len(ctx.zipf))]
    core = dragonfly.fresh()
    try:
        core.set_many(dict.fromkeys(keys, ctx.value))
        gets: dict[str, Callable[[str], Any]] = {CORE: core.get}
        for name, (get, put) in _adapters(dragonfly.server.address).items():
            for key in keys:
                put(key)
            got = get(keys[0])  # a signed pickle round trip (dogpile's backend: CachedValue)
            assert got == VALUE or getattr(got, "payload", None) == VALUE, name
            gets[name] = get
        for get in gets.values():  # warm-up: every key in L1
            ops_per_second(get, sequence, s.duration / 4)
        p50: dict[str, list[float]] = {name: [] for name in gets}
        for r in range(s.rounds):
            progress(f"adapter hits: round {r + 1}/{s.rounds}")
            for name in rotated(list(gets), r):
                samples = timed_calls_ns(gets[name], sequence, s.duration, ctx.overhead_ns)
                p50[name].append(percentile(samples, 50) / 1000)
    finally:
        core.close()
    rows, data, targets = [], {}, []
    for name in gets:
        ratio = ratio_median(p50[name], p50[CORE])
        data[name] = {"p50_us": median(p50[name]), "vs_core": ratio, "rounds": p50[name]}
        rows.append([name, fmt(median(p50[name]), 2), fmt_x(ratio)])
        if name not in (CORE, FACADE_FLASK, FACADE_DOGPILE):
            targets.append(target(f"{name} hit ≤ 3x TieredCache.get", ratio, 3.0, "<=",
                                  s.judge))
    return {
        "title": "Framework adapters: an L1 hit of a small dict vs TieredCache.get",
        "note": "p50 per call in µs of a get that L1 answers; the adapters return the dict "
                "(signature checked, unpickled; dogpile's backend a CachedValue holding it), "
                "TieredCache.get returns the stored bytes. The last two rows add the "
                "framework's own front object (no target: its code, not ours).",
        "columns": ["get", "p50 µs", "vs TieredCache.get"],
        "rows": rows,
        "data": data,
        "targets": targets,
    }
