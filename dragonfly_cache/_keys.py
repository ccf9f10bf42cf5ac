"""Validation of call arguments (keys, key lists, values, ttls, fractions): one set of
rules for every entry point.

A rejected call changes nothing, so these run before anything is touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta

from .types import TTL

__all__ = ["MAX_TTL", "check_delta", "check_fraction", "check_key", "check_keys",
           "check_mapping", "check_stale", "check_ttl", "check_value", "distinct_keys"]

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


def check_mapping(mapping: object) -> dict[str, bytes]:
    """A ``set_many`` mapping, every key and value checked, as a dict."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a Mapping of str to bytes, "
                        f"got {type(mapping).__name__}")
    values = dict(mapping)
    for key in check_keys(values):
        check_value(key, values[key])
    return values


def check_keys(keys: Iterable[str]) -> list[str]:
    """Validate every key up front (a rejected call changes nothing) and drop duplicates."""
    return list(distinct_keys(keys))


def distinct_keys(keys: Iterable[str]) -> dict[str, None]:
    """:func:`check_keys` as a dict (ordered, distinct): batch reads hand it on as it is."""
    if isinstance(keys, str | bytes):
        raise TypeError(f"keys must be an iterable of str, not a single {type(keys).__name__}")
    items = keys if isinstance(keys, list | tuple) else list(keys)
    try:  # the common case at C speed: ASCII (so UTF-8-encodable) and non-empty strs
        distinct = dict.fromkeys(items)
        plain = all(map(str.isascii, distinct)) and "" not in distinct
    except TypeError:  # unhashable, or not a str
        plain = False
    if not plain:
        for key in items:
            check_key(key)
        distinct = dict.fromkeys(items)
    return distinct


def check_ttl(ttl: TTL, default: float, what: str = "ttl") -> float:
    """``ttl`` in seconds (``default`` for None): positive, at most :data:`MAX_TTL`."""
    if ttl is None:
        return default
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"{what} must be seconds (int/float), a timedelta or None, "
                        f"got {type(ttl).__name__}")
    if not 0 < seconds <= MAX_TTL:
        raise ValueError(f"{what} must be positive and at most {MAX_TTL:.0f}s (100 years), "
                         f"got {ttl!r}")
    return seconds


def check_fraction(value: float | None, default: float | None, what: str = "refresh_ahead"
                   ) -> float | None:
    """A fraction in (0, 1), or None (off); ``default`` when ``value`` is None."""
    fraction = default if value is None else value
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
            or not 0 < fraction < 1:
        raise ValueError(f"{what} must be a fraction in (0, 1), got {fraction!r}")
    return float(fraction)


def check_stale(value: TTL, default: float | None, what: str = "stale_if_error") -> float:
    """How long past its expiry a value may be served on a failed reload, in seconds (0:
    never); ``default`` (the configured one, None: off) when ``value`` is None."""
    if value is None:
        return default or 0.0
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what} must be seconds (int/float), a timedelta or None, "
                        f"got {type(value).__name__}")
    if not 0 <= seconds <= MAX_TTL:  # NaN fails the comparison too
        raise ValueError(f"{what} must be >= 0 (0: off) and at most {MAX_TTL:.0f}s, "
                         f"got {value!r}")
    return seconds


def check_delta(delta: object) -> int:
    """An ``incr``/``decr`` step: an int (not a bool) that fits in a signed 64-bit integer,
    as the server's INCRBY takes it."""
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise TypeError(f"delta must be an int, got {type(delta).__name__}")
    if not -(2**63) <= delta < 2**63:
        raise ValueError(f"delta must fit in a signed 64-bit integer, got {delta}")
    return delta
