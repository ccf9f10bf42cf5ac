"""A cachelib backend: ``DragonflyCache``, a ``cachelib.BaseCache`` on the shared cache.

For cachelib users and for what is built on cachelib (Flask-Session's ``cachelib``
session type, Flask-Caching's backends)::

    from dragonfly_cache.contrib.cachelib import DragonflyCache

    cache = DragonflyCache(url="redis://127.0.0.1:6379/0", pickle_secret=secret)
    cache.set("user:1", {"name": "Ada"}, timeout=60)
    cache.get("user:1")                                  # {'name': 'Ada'}

It speaks cachelib's API with cachelib's semantics and puts them onto
:class:`~dragonfly_cache.TieredCache`: an L1 in front of the server, invalidation of
every other process's L1 on each write, the circuit breaker. Every instance configured
alike shares one ``TieredCache`` per process (one L1, pool, listener and set of counters:
:func:`~dragonfly_cache.contrib._common.shared_cache`).

Semantics, as cachelib documents them:

- ``timeout``: seconds or a ``timedelta`` (rounded up to whole seconds; a float warns, as
  cachelib 0.17 does); ``None`` is ``default_timeout``; ``0`` means "never expires",
  stored as our longest ttl, 100 years. A negative timeout or a bool is refused.
- Values are any picklable object, stored as pickles signed with HMAC (a key derived from
  ``pickle_secret`` or ``CACHE_PICKLE_SECRET``). A value whose signature fails reads as a
  miss, counted in ``stats()["loading"]["decode_failures"]``, and is never unpickled.
  Ints are stored as their ASCII digits, as cachelib's ``RedisCache`` stores them, so
  ``inc``/``dec`` (atomic ``INCRBY`` on the server) work on what ``set`` stored and
  ``get`` returns an ``int`` for a counter.
- Keys are ``key_prefix`` + key (a ``str`` or a callable returning one, as in cachelib).
  ``clear()`` removes the keys under ``key_prefix``; with no ``key_prefix`` it removes
  every key under the cache's own prefix, which is **the whole db** when that is empty
  too (cachelib's ``RedisCache`` runs ``FLUSHDB`` then).
- Errors: cachelib's return values for a server that cannot be reached: a read is a miss
  (``None``/``False``), ``set``/``add``/``delete``/``clear`` return ``False``,
  ``set_many``/``delete_many`` return the keys they did (none), ``inc``/``dec`` return
  ``None``; each such failure is logged (a warning). ``delete_many`` raises
  ``RuntimeError`` instead when ``ignore_delete_many_errors`` is false. Bad input is an
  error that changes nothing: a key that is not a non-empty ``str`` (``TypeError`` /
  ``ValueError``), a bad timeout or delta, ``inc`` of a value that is not an integer
  (``ValueError``), a value that does not pickle (pickle's own error).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from .._extras import require

# Before the import it guards: without the extra, fail with its install line.
require("cachelib", "flask", __name__)

from cachelib import BaseCache

from .. import codecs
from .._glob import escape_glob
from .._keys import MAX_TTL
from ..config import CacheConfig
from ..exceptions import CacheUnavailableError, ConfigError
from ..tiered import TieredCache
from ._common import build_config, pickle_codec, settings_from_url, shared_cache

__all__ = ["DragonflyCache"]

logger = logging.getLogger(__name__)

#: The ints stored as ASCII digits: those INCRBY can hold (a signed 64-bit integer).
_INT_RANGE = range(-(2**63), 2**63)
_INTEGER = re.compile(rb"-?[0-9]{1,19}")
_SIGNED = codecs.SignedPickle.VERSION  # the first byte of every signed pickle

# redis-py / cachelib keyword arguments that have one of our settings as their meaning.
_KEYWORDS = {"username": "DRAGONFLY_USERNAME", "ssl": "DRAGONFLY_TLS",
             "socket_timeout": "DRAGONFLY_SOCKET_TIMEOUT",
             "socket_connect_timeout": "DRAGONFLY_CONNECT_TIMEOUT"}

Prefix = str | Callable[[], str] | None


def _server_settings(host: object, port: object, password: object, db: object,
                     url: object, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``DRAGONFLY_*`` settings from cachelib-style arguments (absent ones omitted)."""
    unknown = sorted(set(keywords) - set(_KEYWORDS))
    if unknown:
        raise ConfigError(f"DragonflyCache: unknown argument(s) {', '.join(unknown)}: "
                          "pass our DRAGONFLY_*/CACHE_* settings in options={...}")
    if host is not None and not isinstance(host, str):
        raise ConfigError(f"DragonflyCache: host must be a host name (str), got "
                          f"{type(host).__name__}; dragonfly_cache makes its own "
                          "connections (give url= or host= and port=)")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 0 < port < 65536):
        raise ConfigError(f"DragonflyCache: port must be an int in 1..65535, got {port!r}")
    if db is not None and (isinstance(db, bool) or not isinstance(db, int) or db < 0):
        raise ConfigError(f"DragonflyCache: db must be an int >= 0, got {db!r}")
    settings: dict[str, Any] = {_KEYWORDS[name]: value for name, value in keywords.items()}
    if url is not None:
        if host is not None or port is not None:
            raise ConfigError("DragonflyCache: give url= or host=/port=, not both")
        settings.update(settings_from_url(url, "DragonflyCache(url=...)"))
    elif host is not None or port is not None:
        name = host or "127.0.0.1"
        address = f"[{name}]:{port or 6379}" if ":" in name else f"{name}:{port or 6379}"
        server = settings_from_url(address, "DragonflyCache(host=..., port=...)")
        server.pop("DRAGONFLY_TLS")  # a host and port say nothing about TLS
        settings.update(server)
    if password is not None:
        settings["DRAGONFLY_PASSWORD"] = password
    if db is not None:
        settings["DRAGONFLY_DB"] = db
    return settings


class DragonflyCache(BaseCache):
    """cachelib's cache API on a shared :class:`~dragonfly_cache.TieredCache`.

    The server: ``url`` (``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
    TLS), or ``host``/``port``/``password``/``db`` as cachelib's ``RedisCache`` takes them,
    or neither: then the ``DRAGONFLY_*`` environment (default ``127.0.0.1:6379``).

    Args:
        host: the server's host name (not a redis client: this cache makes its own
            connections).
        port: its port (6379 when only ``host`` is given).
        password: the AUTH password.
        db: the database number.
        default_timeout: seconds (or a ``timedelta``) for writes without a timeout; 0
            means "never expires".
        key_prefix: prepended to every key; a ``str`` or a callable returning one.
        ignore_delete_many_errors: when false, ``delete_many`` raises ``RuntimeError``
            if the server did not take the delete.
        url: the server as a URL (instead of ``host``/``port``).
        pickle_secret: the secret (at least 16 bytes) the pickles are signed with, by a
            key derived from it; default ``CACHE_PICKLE_SECRET``.
        options: our settings by their environment names (``CACHE_L1_TTL``,
            ``DRAGONFLY_POOL_SIZE``, ``CACHE_KEY_PREFIX`` for the cache's own prefix, ...;
            docs/configuration.md). Absent ones come from the environment.
        cache: an existing ``TieredCache`` to use, or the ``CacheConfig`` of the process's
            shared one (then give no server settings or options).
        check_connection: as in cachelib: probe the server now and raise
            ``RuntimeError`` if it does not answer (default: connect on first use).
        **kwargs: ``username``, ``ssl``, ``socket_timeout`` and ``socket_connect_timeout``,
            with redis-py's meaning; anything else is refused.

    Raises:
        ConfigError: a bad setting (naming it), or no pickle secret.
        TypeError: ``default_timeout`` of the wrong type.
        RuntimeError: ``check_connection`` and the server did not answer.
    """

    def __init__(self, host: str | None = None, port: int | None = None,
                 password: str | None = None, db: int | None = None,
                 default_timeout: int | dt.timedelta = 300, key_prefix: Prefix = None,
                 ignore_delete_many_errors: bool = True, *, url: str | None = None,
                 pickle_secret: str | bytes | None = None,
                 options: Mapping[str, Any] | None = None,
                 cache: TieredCache | CacheConfig | None = None,
                 check_connection: bool = False, **kwargs: Any) -> None:
        if isinstance(default_timeout, bool):
            raise TypeError("default_timeout must be seconds or a timedelta, got bool")
        BaseCache.__init__(self, default_timeout, ignore_delete_many_errors)
        if self.default_timeout < 0:
            raise ConfigError(f"DragonflyCache: default_timeout must be >= 0 (0: never "
                              f"expires), got {default_timeout!r}")
        if key_prefix is not None and not (isinstance(key_prefix, str) or callable(key_prefix)):
            raise ConfigError(f"DragonflyCache: key_prefix must be a str or a callable, "
                              f"got {type(key_prefix).__name__}")
        self.key_prefix: str | Callable[[], str] = key_prefix or ""
        if cache is None:
            settings = _server_settings(host, port, password, db, url, kwargs)
            config = build_config(settings, options, where="DragonflyCache(options=...)")
        elif (host, port, password, db, url, options) != (None,) * 6 or kwargs:
            raise ConfigError("DragonflyCache: give cache= or the server's settings, "
                              "not both")
        else:
            config = cache if isinstance(cache, CacheConfig) else cache.config
        secret = pickle_secret if pickle_secret is not None else config.pickle_secret
        self._codec = pickle_codec(secret, setting="pickle_secret (or CACHE_PICKLE_SECRET)")
        # Only once every argument checked out: a refused call leaves no cache behind.
        self._cache = cache if isinstance(cache, TieredCache) else shared_cache(config)
        if check_connection:
            report = self._cache.health()
            if report["status"] != "healthy":
                raise RuntimeError(f"could not connect to the cache server: "
                                   f"{report['dragonfly'].get('error', 'unhealthy')}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.key_prefix!r} on {self._cache!r}>"

    @property
    def tiered(self) -> TieredCache:
        """The :class:`~dragonfly_cache.TieredCache` behind this cache (shared by every
        adapter configured alike): its ``stats()``, ``health()``, ``get_or_load``."""
        return self._cache

    # -- translation ---------------------------------------------------------------------

    def _get_prefix(self) -> str:
        prefix = self.key_prefix if isinstance(self.key_prefix, str) else self.key_prefix()
        if not isinstance(prefix, str):
            raise TypeError(f"key_prefix() must return a str, got {type(prefix).__name__}")
        return prefix

    def _key(self, key: object) -> str:
        if type(key) is not str or not key:
            if not isinstance(key, str):
                raise TypeError(f"key must be a str, got {type(key).__name__}")
            if not key:
                raise ValueError("key must be a non-empty string")
        prefix = self.key_prefix  # a str, or a callable: the hit skips the call for a str
        return (prefix if type(prefix) is str else self._get_prefix()) + key

    def _seconds(self, timeout: int | dt.timedelta | None) -> float:
        """cachelib's timeout as our ttl: None -> default, 0 -> forever (100 years)."""
        if isinstance(timeout, bool):
            raise TypeError("timeout must be seconds or a timedelta, got bool")
        seconds = self._normalize_timeout(timeout)
        if seconds < 0:
            raise ValueError(f"timeout must be >= 0 seconds (0: never expires), "
                             f"got {timeout!r}")
        return float(seconds) if seconds else MAX_TTL

    def _encode(self, value: Any) -> bytes:
        if type(value) is int and value in _INT_RANGE:  # not bool: True is no counter
            return b"%d" % value
        return self._codec.encode(value)

    def _decode(self, data: bytes) -> Any:
        if data[:1] != _SIGNED and _INTEGER.fullmatch(data):
            return int(data)
        try:
            return self._cache.decode(data, self._codec)  # counts a failure
        except codecs.DecodeError:
            return None

    @staticmethod
    def _failed(operation: str, exc: CacheUnavailableError) -> None:
        # No key in the message: keys may be secrets (Flask-Session's are session ids).
        logger.warning("cachelib %s: the cache server did not take it (%s)", operation, exc)

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value of ``key``, or None (a miss, an unreadable value, no server)."""
        data = self._cache.get(self._key(key))
        if data is None:
            return None
        if data[:1] == _SIGNED:  # the hit of an object, in as few calls as it takes
            try:
                return self._cache.decode(data, self._codec)  # counts a failure
            except codecs.DecodeError:
                return None
        return self._decode(data)

    def get_many(self, *keys: str) -> list[Any]:
        """The values of ``keys`` in order, None for each miss; one round trip."""
        names = [self._key(key) for key in keys]
        found = self._cache.get_many(names)
        return [self._decode(found[name]) if name in found else None for name in names]

    def has(self, key: str) -> bool:
        """Whether ``key`` is cached (False when the server cannot be reached)."""
        return self._cache.exists(self._key(key))

    # -- writes --------------------------------------------------------------------------

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Store ``value``; True, or False when the server did not take it."""
        name, seconds, data = self._key(key), self._seconds(timeout), self._encode(value)
        try:
            self._cache.set(name, data, seconds)
        except CacheUnavailableError as exc:
            self._failed("set", exc)
            return False
        return True

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (atomic); True if it was stored."""
        name, seconds, data = self._key(key), self._seconds(timeout), self._encode(value)
        try:
            return self._cache.add(name, data, seconds)
        except CacheUnavailableError as exc:
            self._failed("add", exc)
            return False

    def set_many(self, mapping: Mapping[str, Any],
                 timeout: int | dt.timedelta | None = None) -> list[Any]:
        """Store every value of ``mapping`` in one round trip; the keys stored (all of
        them, or none when the server did not take them)."""
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be a Mapping, got {type(mapping).__name__}")
        seconds = self._seconds(timeout)
        values = {self._key(key): self._encode(value) for key, value in mapping.items()}
        try:
            self._cache.set_many(values, seconds)
        except CacheUnavailableError as exc:
            self._failed("set_many", exc)
            return []
        return list(mapping)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed (False also when the server failed)."""
        name = self._key(key)
        try:
            return self._cache.delete_many([name]) > 0
        except CacheUnavailableError as exc:
            self._failed("delete", exc)
            return False

    def delete_many(self, *keys: str) -> list[Any]:
        """Remove ``keys`` in one round trip per node; the keys now absent (all of them;
        a key that did not exist counts as deleted, as in cachelib).

        Raises:
            RuntimeError: the server did not take the delete and
                ``ignore_delete_many_errors`` is false.
        """
        names = [self._key(key) for key in keys]
        try:
            self._cache.delete_many(names)
        except CacheUnavailableError as exc:
            if not self.ignore_delete_many_errors:
                raise RuntimeError(f"Failed to delete keys: {list(keys)}") from exc
            self._failed("delete_many", exc)
            return []
        return list(keys)

    def clear(self) -> bool:
        """Remove every key under ``key_prefix`` (SCAN + UNLINK) and every process's L1
        copies of them; True, or False when the server could not be reached.

        **With no key_prefix** this is the cache's :meth:`TieredCache.clear`: every key
        under the cache's own prefix, **the whole db** if that is empty too.
        """
        prefix = self._get_prefix()
        try:
            if prefix:
                self._cache.invalidate(escape_glob(prefix) + "*")
            else:
                self._cache.clear()
        except CacheUnavailableError as exc:
            self._failed("clear", exc)
            return False
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` atomically on the server; the new value, None if the server
        could not be reached. A missing key starts from 0 and lives ``default_timeout``.

        Raises:
            ValueError: the stored value is not an integer (nothing changed).
        """
        name, seconds = self._key(key), self._seconds(None)
        try:
            return self._cache.incr(name, delta, seconds)
        except CacheUnavailableError as exc:
            self._failed("inc", exc)
            return None

    def dec(self, key: str, delta: int = 1) -> int | None:
        """Subtract ``delta``: :meth:`inc` with ``-delta``."""
        name, seconds = self._key(key), self._seconds(None)
        try:
            return self._cache.decr(name, delta, seconds)
        except CacheUnavailableError as exc:
            self._failed("dec", exc)
            return None
