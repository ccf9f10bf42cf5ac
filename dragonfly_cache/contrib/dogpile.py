"""The dogpile.cache backend: switch a region with one line, ``"dragonfly_cache"``.

```python
from dogpile.cache import make_region

region = make_region().configure(
    "dragonfly_cache",                      # was: "dogpile.cache.redis"
    expiration_time=3600,
    arguments={"url": "redis://127.0.0.1:6379/0", "pickle_secret": SECRET},
)
```

Installing the package registers the ``dogpile.cache`` entry point ``dragonfly_cache``, so
dogpile finds the backend by name (no ``register_backend`` call; the ``dogpile`` extra
brings dogpile.cache itself). ``arguments`` are the ones ``dogpile.cache.redis`` takes
(``url``, ``host``, ``port``, ``db``, ``username``, ``password``, ``ssl``,
``socket_timeout``, ``socket_connect_timeout``, ``redis_expiration_time``,
``distributed_lock``, ``lock_timeout``, ``lock_sleep``, ``thread_local_lock``), plus
``pickle_secret`` (or ``CACHE_PICKLE_SECRET``) and ``options``: our ``DRAGONFLY_*`` /
``CACHE_*`` settings (docs/configuration.md). A setting given nowhere comes from the
environment. A bad value raises :class:`~dragonfly_cache.ConfigError` naming the key
(``arguments['port']``); keys this backend does not know are logged and ignored, since
dogpile lets a region's ``arguments`` carry keys for other layers.

Semantics are the redis backend's: a miss is ``NO_VALUE``; what the region stores
(``CachedValue``, or bytes when the region has its own serializer) comes back as it was
stored; keys expire after ``redis_expiration_time`` seconds, or never (100 years) if it
is unset or 0. Values are pickles signed with a key derived from ``pickle_secret`` (a
``CachedValue`` as the plain tuple ``(payload, metadata)``, which an L1 hit unpickles in a
third of the time; bytes as ``(value,)``; anything else signed alike reads as a miss): one
whose signature fails (tampered, or written by another client) is a miss, counted in
``stats()["loading"]["decode_failures"]``, and is never unpickled. With
``distributed_lock``, ``get_mutex`` returns the cache's fleet lock on the key
(:meth:`TieredCache.lock <dragonfly_cache.TieredCache.lock>`), so one process in the
fleet creates a value; without it dogpile uses a lock per process, as with redis.

Errors: reads (``get``, ``get_multi``) never raise when the server is down, they answer
from L1 or ``NO_VALUE``; writes (``set``, ``set_multi``, ``delete``, ``delete_multi``)
raise :class:`~dragonfly_cache.CacheUnavailableError` after updating L1, where
``dogpile.cache.redis`` raises redis-py's errors. The backend is thin: the
:class:`~dragonfly_cache.TieredCache` it uses (``backend.cache``) is the process's one for
this configuration, shared with every other adapter configured alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from .._extras import require

# Before the imports it guards: without the extra, fail with its install line.
require("dogpile.cache", "dogpile", __name__)

from dogpile.cache.api import (
    NO_VALUE,
    BackendFormatted,
    BackendSetType,
    CacheBackend,
    CachedValue,
    CacheMutex,
    KeyType,
)

from .. import _validators as v
from .. import codecs
from .._keys import MAX_TTL
from ..exceptions import ConfigError
from ..tiered import TieredCache
from ._common import build_config, pickle_codec, settings_from_url, shared_cache

__all__ = ["DragonflyBackend"]

logger = logging.getLogger(__name__)

#: Builds a CachedValue from a (payload, metadata) tuple in C: CachedValue's own __new__ is
#: Python code, and unpickling one also looks its class up (3x the hit of a plain tuple).
_cached_value = tuple.__new__

#: The arguments this backend reads (the redis backend's, and ours).
_SERVER = ("url", "host", "port", "db", "username", "password", "ssl", "socket_timeout",
           "socket_connect_timeout", "socket_keepalive")
_OWN = ("redis_expiration_time", "distributed_lock", "lock_timeout", "lock_sleep",
        "thread_local_lock", "pickle_secret", "options")

#: Redis-backend arguments with no equivalent here: accepted at their default only, and
#: why (a value that would be silently ignored is refused instead).
_UNSUPPORTED: dict[str, tuple[tuple[object, ...], str]] = {
    "connection_pool": ((None,), "the cache makes its own connections: give url or "
                        "host/port, and pool settings in arguments['options'] "
                        "(DRAGONFLY_POOL_SIZE, DRAGONFLY_POOL_TIMEOUT)"),
    "connection_kwargs": ((None, {}), "connection settings go in arguments['options'] "
                          "(DRAGONFLY_TLS_CA_FILE, DRAGONFLY_SOCKET_TIMEOUT, ...)"),
    "socket_keepalive_options": ((None, {}), "TCP keepalive is always on, with the "
                                 "system's settings"),
    "lock_prefix": ((None,), "lock keys have a namespace of their own and cannot collide "
                    "with cache keys"),
    "lock_blocking": ((True,), "the lock waits whenever dogpile asks it to wait"),
    "lock_blocking_timeout": ((None,), "a waiter waits until the lock is released or "
                              "expires (lock_timeout)"),
}


def _name(key: str) -> str:
    return f"arguments[{key!r}]"


def _server_settings(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``DRAGONFLY_*`` settings from the redis backend's connection arguments; as
    there, ``url`` overrides host, port, db, username and password."""
    settings: dict[str, Any] = {}
    if arguments.get("url") is not None:
        settings.update(settings_from_url(arguments["url"], _name("url")))
    else:
        settings.update(_host_settings(arguments))
    if arguments.get("ssl") is not None:
        settings["DRAGONFLY_TLS"] = v.boolean(_name("ssl"), arguments["ssl"])
    for key, variable in (("socket_timeout", "DRAGONFLY_SOCKET_TIMEOUT"),
                          ("socket_connect_timeout", "DRAGONFLY_CONNECT_TIMEOUT")):
        if arguments.get(key) is not None:
            settings[variable] = _seconds(key, arguments[key])
    if arguments.get("socket_keepalive") is not None:
        v.boolean(_name("socket_keepalive"), arguments["socket_keepalive"])  # always on
    return settings


def _host_settings(arguments: Mapping[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    host, port = arguments.get("host"), arguments.get("port")
    if host is not None or port is not None:
        host = "localhost" if host is None else v.text(_name("host"), host).strip()
        if not host:
            raise ConfigError(f"{_name('host')}: expected a host name or address, got ''")
        port = 6379 if port is None else v.int_at_least(1)(_name("port"), port)
        if port > 65535:
            raise ConfigError(f"{_name('port')}={port!r}: expected a port in 1..65535")
        settings["DRAGONFLY_ADDRESSES"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if arguments.get("db") is not None:
        settings["DRAGONFLY_DB"] = v.int_at_least(0)(_name("db"), arguments["db"])
    for key, variable in (("username", "DRAGONFLY_USERNAME"),
                          ("password", "DRAGONFLY_PASSWORD")):
        if arguments.get(key) is not None:
            settings[variable] = v.secret(_name(key), arguments[key])
    return settings


def _screen(arguments: Mapping[str, Any]) -> None:
    """Refuse the redis-only arguments set to what we cannot honour; log unknown ones."""
    for key, (defaults, why) in _UNSUPPORTED.items():
        if key in arguments and not any(arguments[key] == ok for ok in defaults):
            raise ConfigError(f"{_name(key)} is not supported by the dragonfly_cache backend: "
                              f"{why}")
    unknown = sorted(set(arguments) - {*_SERVER, *_OWN, *_UNSUPPORTED}, key=str)
    if unknown:
        logger.warning("dogpile.cache backend dragonfly_cache: ignoring arguments it does not "
                       "know: %s", ", ".join(map(repr, unknown)))


def _seconds(key: str, value: object) -> float:
    """A positive duration (seconds, "30s", a timedelta) of at most 100 years."""
    seconds = v.duration(_name(key), value)
    if seconds > MAX_TTL:
        raise ConfigError(f"{_name(key)}={value!r}: at most {MAX_TTL:.0f} seconds (100 years)")
    return seconds


def _expiry(value: object) -> float:
    """The L2 ttl of every write: ``redis_expiration_time``, or 100 years when unset/0."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                         and value == 0):
        return MAX_TTL
    return _seconds("redis_expiration_time", value)


def _secret(value: object) -> str | bytes | None:
    if value is None or isinstance(value, str | bytes):
        return value
    raise ConfigError(f"{_name('pickle_secret')}: expected str or bytes (value not shown), "
                      f"got {type(value).__name__}")


class DragonflyBackend(CacheBackend):
    """A dogpile.cache backend on the process's :class:`~dragonfly_cache.TieredCache`.

    Args:
        arguments: the region's ``arguments`` (see the module documentation); the dict is
            read, never changed.

    Raises:
        ConfigError: a bad argument or setting (the message names it), an unsupported
            redis-backend argument, or no pickle secret (``arguments['pickle_secret']``
            or ``CACHE_PICKLE_SECRET``).
    """

    # The region hands its CachedValue objects to get/set: they are pickled (signed) here.
    serializer = None
    deserializer = None

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        if not isinstance(arguments, Mapping):
            raise ConfigError(f"dogpile.cache arguments: expected a dict, got "
                              f"{type(arguments).__name__}")
        _screen(arguments)
        options = arguments.get("options")
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"{_name('options')}: expected a dict of DRAGONFLY_* / CACHE_* "
                              f"settings, got {type(options).__name__}")
        self._ttl = _expiry(arguments.get("redis_expiration_time"))
        self._distributed = v.boolean(_name("distributed_lock"),
                                      arguments.get("distributed_lock", False))
        v.boolean(_name("thread_local_lock"), arguments.get("thread_local_lock", True))
        timeout = arguments.get("lock_timeout")
        self._lock_ttl = None if timeout is None else _seconds("lock_timeout", timeout)
        self._lock_sleep = _seconds("lock_sleep", arguments.get("lock_sleep", 0.1))
        secret = _secret(arguments.get("pickle_secret"))
        config = build_config(_server_settings(arguments), options,
                              where=_name("options"))
        self._codec = pickle_codec(secret or config.pickle_secret,
                                   setting=f"{_name('pickle_secret')} (or CACHE_PICKLE_SECRET)")
        self._cache = shared_cache(config)

    def __repr__(self) -> str:
        return f"<DragonflyBackend {self._cache!r}>"

    @property
    def cache(self) -> TieredCache:
        """The :class:`~dragonfly_cache.TieredCache` underneath (``stats()``, ``health()``)."""
        return self._cache

    # What is pickled: a CachedValue as the plain tuple (payload, metadata), anything else
    # (the bytes of a region with its own serializer) as the 1-tuple (value,).

    def _encode(self, value: BackendSetType) -> bytes:
        if type(value) is CachedValue:
            return self._codec.encode(tuple(value))
        return self._codec.encode((value,))

    def _decode(self, data: bytes) -> Any:
        try:
            stored = self._cache.decode(data, self._codec)
        except codecs.DecodeError:
            return NO_VALUE  # tampered or foreign: a miss (counted), never unpickled
        if type(stored) is tuple:
            if len(stored) == 2:
                return _cached_value(CachedValue, stored)
            if len(stored) == 1:
                return stored[0]
        return NO_VALUE  # signed, but not written by this backend (another adapter's)

    def get(self, key: KeyType) -> BackendFormatted:
        """The value stored under ``key``, or ``NO_VALUE``."""
        data = self._cache.get(key)
        return NO_VALUE if data is None else self._decode(data)

    def get_multi(self, keys: Iterable[KeyType]) -> Sequence[BackendFormatted]:
        """The values of ``keys`` in order, ``NO_VALUE`` for each miss (one round trip)."""
        wanted = list(keys)
        found = self._cache.get_many(wanted) if wanted else {}
        return [self._decode(found[key]) if key in found else NO_VALUE for key in wanted]

    def set(self, key: KeyType, value: BackendSetType) -> None:
        """Store ``value`` (pickled, signed) for ``redis_expiration_time``."""
        self._cache.set(key, self._encode(value), self._ttl)

    def set_multi(self, mapping: Mapping[KeyType, BackendSetType]) -> None:
        """Store several values in one round trip."""
        self._cache.set_many({key: self._encode(value) for key, value in mapping.items()},
                             self._ttl)

    def delete(self, key: KeyType) -> None:
        """Remove ``key`` (everywhere, every process's L1 too); no error if absent."""
        self._cache.delete(key)

    def delete_multi(self, keys: Iterable[KeyType]) -> None:
        """Remove several keys, one round trip per node."""
        self._cache.delete_many(keys)

    def get_mutex(self, key: KeyType) -> CacheMutex | None:
        """With ``distributed_lock``, the fleet lock on ``key``; else None (dogpile then
        locks per process)."""
        if not self._distributed:
            return None
        mutex = self._cache.lock(key, self._lock_ttl, poll=self._lock_sleep)
        # CacheMutex accepts any object with acquire() and release() (__subclasshook__).
        return cast(CacheMutex, mutex)

    def has_lock_timeout(self) -> bool:
        """True with ``distributed_lock``: the fleet lock expires after ``lock_timeout``."""
        return self._distributed
