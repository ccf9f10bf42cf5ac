"""The exception hierarchy: every error this package raises on purpose derives from CacheError.

redis-py errors never escape the package: the L2 tier translates them at its boundary
(``raise CacheUnavailableError(...) from exc``) so callers catch one root.
"""

from __future__ import annotations

__all__ = ["CacheError", "CacheUnavailableError", "ConfigError", "MissingExtraError",
           "NotFound"]


class CacheError(Exception):
    """Root of every exception raised by dragonfly_cache."""


class CacheUnavailableError(CacheError):
    """The shared tier (Dragonfly/Redis) could not be reached or refused a write.

    Raised by writes (``set``, ``set_many``, ``delete``, ``invalidate``) after the change
    was applied to the local L1: the shared tier did not get it, and the caller must know.
    Reads never raise it; they answer from L1 or as a miss.
    """


class ConfigError(CacheError, ValueError):
    """A configuration value is invalid.

    The message names the environment variable, YAML key or field and the bad value
    (secrets such as passwords are never echoed).
    """


class NotFound(CacheError, LookupError):
    """Raised by a loader to say "no such record" (negative caching).

    A loader passed to ``get_or_load`` (or a function wrapped by ``memoize``) raises it when
    the record does not exist. The cache remembers the miss for ``L2Config.negative_ttl``
    (``CACHE_NEGATIVE_TTL``, 30 s by default): until then, later ``get_or_load`` and
    memoized calls for that key raise ``NotFound`` again without calling the loader, and
    ``get()`` of that key returns ``None``. Being a ``LookupError``, it fits code that
    already treats a missing record like a missing mapping key.
    """


class MissingExtraError(CacheError, ModuleNotFoundError):
    """A feature needs an optional dependency that is not installed.

    Raised when a module or call whose extra is missing is used: importing
    ``dragonfly_cache.flask`` or ``dragonfly_cache.metrics`` without the ``flask`` extra,
    ``dragonfly_cache.demo`` or ``dragonfly-cache serve`` without ``server``,
    ``CacheConfig.from_yaml`` without ``yaml``, the msgpack codec without ``msgpack``. The
    message names what needed it, the missing
    package and the line that installs it, e.g. ``pip install 'dragonfly-cache[flask]'``;
    ``name`` is the missing module. Being a ``ModuleNotFoundError`` (an ``ImportError``),
    it is what code that guards an optional import already catches.
    """
