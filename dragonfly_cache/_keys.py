"""Validation of keys, key lists and values: one set of rules for every entry point.

A rejected call changes nothing, so these run before anything is touched.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_TTL", "check_key", "check_keys", "check_value"]

# Longest accepted ttl. Redis refuses an expiry past 2**63-1 ms from now ("invalid expire
# time"); refusing it here keeps a rejected call from touching L1 first.
MAX_TTL = 100 * 365 * 86400.0


def check_key(key: object, what: str = "key") -> None:
    """The full key check; hot paths first test ``type(key) is str and key`` inline."""
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError(f"{what} must be a non-empty string")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {key!r} cannot be encoded as UTF-8") from None


def check_value(key: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"value for key {key!r} must be bytes, got {type(value).__name__}")


def check_keys(keys: Iterable[str]) -> list[str]:
    """Validate every key up front (a rejected call changes nothing) and drop duplicates."""
    if isinstance(keys, str | bytes):
        raise TypeError(f"keys must be an iterable of str, not a single {type(keys).__name__}")
    items = list(keys)
    for key in items:
        check_key(key)
    return list(dict.fromkeys(items))
