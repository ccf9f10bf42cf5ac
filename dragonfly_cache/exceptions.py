"""The exception hierarchy: every error this package raises on purpose derives from CacheError.

redis-py errors never escape the package: the L2 tier translates them at its boundary
(``raise CacheUnavailableError(...) from exc``) so callers catch one root.
"""

from __future__ import annotations

__all__ = ["CacheError", "CacheUnavailableError", "ConfigError"]


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
