"""Django cache backend: one line of ``CACHES`` puts an L1 in front of Redis/Dragonfly.

```python
CACHES = {"default": {"BACKEND": "dragonfly_cache.contrib.django.DragonflyCache",
                      "LOCATION": "redis://127.0.0.1:6379/0"}}
```

It behaves as Django's own ``RedisCache`` does, call for call (Django's own
``BaseCacheTests`` prove it, see tests/test_upstream_django.py), with the cache's L1 hits,
cross-process invalidation, singleflight (``get_or_set``) and breaker:

- ``LOCATION``: a ``redis://`` / ``rediss://`` URL or ``host:port``; several (a list, or a
  string split at ``,`` / ``;``) are the seeds of a cluster. Absent: our environment.
- ``TIMEOUT`` (300 s) and every call's ``timeout``, as ``RedisCache.get_backend_timeout``:
  ``None`` for ever (our longest TTL, 100 years), whole seconds, ``0`` or less stores
  nothing (``set`` and ``touch`` delete the key).
- ``KEY_PREFIX``, ``VERSION``, ``KEY_FUNCTION``: Django's ``make_key``, and Django's
  ``CacheKeyWarning`` for keys memcached would refuse.
- ``OPTIONS``: our settings by their environment names (``CACHE_L1_TTL``, ...); an unknown
  name is an error.

Integers are stored as ASCII digits, so ``incr`` is one atomic ``INCRBY`` and ``get``
after it reads an ``int`` (as Django's ``RedisSerializer`` does); everything else is a
pickle signed with a key derived from ``CACHE_PICKLE_SECRET`` or else ``SECRET_KEY``. A
value whose signature fails is a counted miss and is never unpickled.

With the server down, reads answer from L1 or as a miss and writes raise
:class:`~dragonfly_cache.CacheUnavailableError` (``RedisCache`` raises for both).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .._extras import require

# Before the imports it guards: without the extra, fail with its install line.
require("django", "django", __name__)

from asgiref.sync import sync_to_async
from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    MEMCACHE_MAX_KEY_LENGTH,
    BaseCache,
    default_key_func,
)

from .._keys import MAX_TTL
from ..codecs import DecodeError, SignedPickle
from ..tiered import TieredCache
from ._common import build_config, shared_cache
from ._django_settings import alias, check_params, codec, location_settings

__all__ = ["DragonflyCache"]

# What an integer looks like when we store it (b"%d"); anything else is a signed pickle,
# whose first byte is its version (0x01), never a digit or "-".
_INTEGER = re.compile(rb"-?[0-9]+")
_SIGNED = SignedPickle.VERSION
_INT64 = range(-(2**63), 2**63)


def _delta(delta: object) -> int:
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise TypeError(f"delta must be an int, got {type(delta).__name__}")
    if delta not in _INT64:
        raise ValueError(f"delta must fit in a signed 64-bit integer, got {delta}")
    return delta


class DragonflyCache(BaseCache):
    """A Django cache backend on the process's shared :class:`TieredCache`.

    Django makes it from a ``CACHES`` entry as ``DragonflyCache(LOCATION, params)``; every
    alias configured alike (same server, ``OPTIONS`` and environment) shares one
    ``TieredCache``, hence one L1, one pool and one set of counters.

    Args:
        location: ``LOCATION``: a URL, ``host:port``, or a list of them (cluster seeds).
        params: the rest of the ``CACHES`` entry (``TIMEOUT``, ``KEY_PREFIX``, ``VERSION``,
            ``KEY_FUNCTION``, ``OPTIONS``).

    Raises:
        ConfigError: a bad setting, named as ``CACHES['<alias>'][...]``; no secret to sign
            pickles with (``SECRET_KEY``).
    """

    def __init__(self, location: Any, params: Mapping[str, Any]) -> None:
        where = alias(location, params)
        check_params(params, where)
        config = build_config(location_settings(location, f"{where}['LOCATION']"),
                              params.get("OPTIONS") or {}, where=f"{where}['OPTIONS']")
        self._codec = codec(config, where)
        super().__init__({**params, "OPTIONS": {}})  # OPTIONS are ours, not BaseCache's
        self._config = config
        self._tiered = shared_cache(config)

    @property
    def tiered(self) -> TieredCache:
        """The process's :class:`TieredCache` behind this backend (``stats()``,
        ``health()``, ``invalidate()``...); keys in it are Django's made keys."""
        cache = self._tiered
        if cache.closed:  # someone closed the shared cache: use its successor
            cache = self._tiered = shared_cache(self._config)
        return cache

    def validate_key(self, key: Any) -> None:
        """Django's ``CacheKeyWarning`` for keys memcached would refuse (longer than 250
        characters, or with spaces or control characters), as every built-in backend
        warns; the usual key is let through without building the warnings."""
        # No control character is printable: a printable key without a space is safe.
        if len(key) > MEMCACHE_MAX_KEY_LENGTH or not key.isprintable() or " " in key:
            super().validate_key(key)

    def make_and_validate_key(self, key: Any, version: Any = None) -> Any:
        """Django's, in one call when nothing customises it (a third of a hit's key work)."""
        if self.key_func is not default_key_func or type(self) is not DragonflyCache:
            return super().make_and_validate_key(key, version=version)
        version = self.version if version is None else version
        made = "%s:%s:%s" % (self.key_prefix, version, key)  # noqa: UP031 - Django's, exactly
        self.validate_key(made)
        return made

    # -- values and timeouts ---------------------------------------------------------------

    def _encode(self, value: Any) -> bytes:
        # type(), not isinstance(): a bool is pickled, as Django's RedisSerializer does.
        return b"%d" % value if type(value) is int else self._codec.encode(value)

    def _decode(self, cache: TieredCache, data: bytes) -> Any:
        """The stored object; raises DecodeError (counted) for a bad signature."""
        if data[:1] != _SIGNED and _INTEGER.fullmatch(data):
            return int(data)
        return cache.decode(data, self._codec)

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int | None:
        """``timeout`` as the server takes it, as ``RedisCache`` computes it: None (for
        ever), else whole seconds, at least 0 (0: do not store).

        Raises:
            TypeError: ``timeout`` is not a number or None.
            ValueError: it is NaN or infinite (for ever is None).
        """
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"timeout must be seconds (int/float) or None, "
                            f"got {type(timeout).__name__}")
        if not math.isfinite(timeout):
            raise ValueError(f"timeout must be finite (None stores for ever), got {timeout}")
        return max(0, int(timeout))

    def _seconds(self, timeout: Any) -> float:
        """The TTL to store with: 0 means do not store; None becomes our longest TTL."""
        backend = self.get_backend_timeout(timeout)
        return MAX_TTL if backend is None else min(float(backend), MAX_TTL)

    # -- reads -----------------------------------------------------------------------------

    def _value(self, cache: TieredCache, data: bytes | None, default: Any) -> Any:
        """The object ``data`` holds, or ``default`` for a miss or a bad signature."""
        if data is None:
            return default
        try:
            return self._decode(cache, data)
        except DecodeError:
            return default

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        cache = self.tiered
        data = cache.get(key)
        if data is not None and data[:1] == _SIGNED:  # the hit of an object, in few calls
            try:
                return cache.decode(data, self._codec)  # counts a failure
            except DecodeError:
                return default
        return self._value(cache, data, default)

    def get_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        cache = self.tiered
        found = {made[key]: self._value(cache, data, self._missing_key)
                 for key, data in cache.get_many(made).items()}
        return {key: value for key, value in found.items() if value is not self._missing_key}

    def has_key(self, key: Any, version: Any = None) -> bool:
        return self.tiered.exists(self.make_and_validate_key(key, version=version))

    def get_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: Any = None) -> Any:
        """Django's ``get_or_set``, through the cache's singleflight: concurrent misses on
        one key in this process call ``default()`` once; the value is stored only if the
        key is still absent (as Django's ``add``), and what the cache holds is returned."""
        made = self.make_and_validate_key(key, version=version)
        seconds = self._seconds(timeout)
        cache = self.tiered
        if not seconds:  # stores nothing: what is there, else the default
            value = self._value(cache, cache.get(made), self._missing_key)
            if value is not self._missing_key:
                return value
            return default() if callable(default) else default

        def load() -> bytes:
            return self._encode(default() if callable(default) else default)

        value = self._value(cache, cache.get_or_load(made, load, ttl=seconds),
                            self._missing_key)
        if value is self._missing_key:  # a bad value that add() could not replace
            return default() if callable(default) else default
        return value

    # -- writes ----------------------------------------------------------------------------

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: Any = None) -> None:
        key = self.make_and_validate_key(key, version=version)
        seconds = self._seconds(timeout)
        data = self._encode(value)
        if seconds:
            self.tiered.set(key, data, ttl=seconds)
        else:
            self.tiered.delete(key)

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        seconds = self._seconds(timeout)
        data = self._encode(value)
        cache = self.tiered
        if seconds:
            return cache.add(key, data, ttl=seconds)
        # As RedisCache: add, then take it back; True if it could be added.
        added = cache.add(key, data, ttl=1.0)
        if added:
            cache.delete(key)
        return added

    def set_many(self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: Any = None) -> list[Any]:
        if not data:
            return []
        values = {self.make_and_validate_key(key, version=version): value
                  for key, value in data.items()}
        seconds = self._seconds(timeout)
        encoded = {key: self._encode(value) for key, value in values.items()}
        if seconds:
            self.tiered.set_many(encoded, ttl=seconds)
        else:
            self.tiered.delete_many(encoded)
        return []

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        seconds = self._seconds(timeout)
        # 0: expire at once, as EXPIRE 0 does (True if the key existed)
        return (self.tiered.touch(key, ttl=seconds) if seconds
                else self.tiered.delete_many([key]) > 0)

    def delete(self, key: Any, version: Any = None) -> bool:
        return self.tiered.delete_many([self.make_and_validate_key(key, version=version)]) > 0

    def delete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        made = [self.make_and_validate_key(key, version=version) for key in keys]
        if made:
            self.tiered.delete_many(made)

    def incr(self, key: Any, delta: Any = 1, version: Any = None) -> int:
        """Add ``delta`` atomically on the server (``INCRBY``).

        Raises:
            ValueError: the server has no such key, or cannot be reached (Django's
                contract for a missing key).
            TypeError: its value is not an integer, or the sum would overflow 64 bits
                (what Django's ``BaseCacheTests`` expects); nothing is changed.
        """
        made = self.make_and_validate_key(key, version=version)
        step = _delta(delta)
        cache = self.tiered
        # The server decides, as RedisCache's EXISTS does (L1 may hold a copy of a key the
        # server no longer has). A server that cannot be reached has no such key either.
        if cache.ttl(made) is None:
            raise ValueError(f"Key '{key}' not found")
        # The key may expire between the check and the INCRBY (as with RedisCache): then
        # it is created with the default timeout.
        ttl = self._seconds(DEFAULT_TIMEOUT) or None
        try:
            return cache.incr(made, step, ttl=ttl)
        except ValueError as exc:
            raise TypeError(str(exc)) from exc

    def decr(self, key: Any, delta: Any = 1, version: Any = None) -> int:
        return self.incr(key, -_delta(delta), version=version)

    def clear(self) -> bool:
        """Remove every key under our ``CACHE_KEY_PREFIX`` (SCAN + UNLINK) and every
        process's L1 copies. **Without a ``CACHE_KEY_PREFIX`` that is the whole db**, as
        ``RedisCache.clear`` (FLUSHDB) is; Django's ``KEY_PREFIX`` does not narrow it."""
        self.tiered.clear()
        return True

    def close(self, **kwargs: Any) -> None:
        """Nothing: Django calls this after every request, and the cache is shared by the
        process (its connections are pooled and stay open)."""

    # -- async: the sync calls in Django's thread, so each keeps its one round trip ---------

    async def aget_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        return await sync_to_async(self.get_many, thread_sensitive=True)(list(keys), version)

    async def aget_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT,
                          version: Any = None) -> Any:
        return await sync_to_async(self.get_or_set, thread_sensitive=True)(
            key, default, timeout, version)

    async def ahas_key(self, key: Any, version: Any = None) -> bool:
        return await sync_to_async(self.has_key, thread_sensitive=True)(key, version)

    async def aincr(self, key: Any, delta: Any = 1, version: Any = None) -> int:
        return await sync_to_async(self.incr, thread_sensitive=True)(key, delta, version)

    async def aset_many(self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT,
                        version: Any = None) -> list[Any]:
        return await sync_to_async(self.set_many, thread_sensitive=True)(
            data, timeout, version)

    async def adelete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        await sync_to_async(self.delete_many, thread_sensitive=True)(list(keys), version)

