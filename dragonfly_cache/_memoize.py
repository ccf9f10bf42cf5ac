"""``memoize``: cache a function's results through a cache's public operations.

A memoized function is keyed by its qualified name and its arguments, bound to the
signature (defaults applied) and hashed from a canonical JSON form, so the key is the same
in every process. It calls only the cache's public surface (:class:`MemoCache`):
``get_or_load`` to read or load, ``decode`` (which counts an undecodable value) and ``set``
to repair one, ``delete`` and ``invalidate`` for ``.invalidate()`` and ``.invalidate_all()``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from . import codecs
from ._glob import escape_glob
from .exceptions import CacheUnavailableError
from .types import TTL, Memoized

__all__ = ["MemoCache", "memoize"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class MemoCache(Protocol):
    """What memoize uses of a cache (``TieredCache`` has it all)."""

    def get_or_load(self, key: str, loader: Callable[[], bytes], ttl: TTL = None, *,
                    lock: bool | None = None, refresh_ahead: float | None = None) -> bytes: ...

    def set(self, key: str, value: bytes, ttl: TTL = None) -> None: ...

    def delete(self, key: str) -> None: ...

    def invalidate(self, pattern: str) -> int: ...

    def decode(self, data: bytes, codec: codecs.Codec) -> Any: ...


def memoize(cache: MemoCache, seconds: float, *, key: Callable[..., str] | None,
            codec: codecs.Codec, lock: bool | None
            ) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """The decorator behind :meth:`TieredCache.memoize` (arguments already checked).

    Args:
        cache: where results go.
        seconds: their ttl.
        key: ``key(*args, **kwargs) -> str`` replaces the argument hash.
        codec: how results become bytes.
        lock: use the fleet lock on misses (None: the configured default).
    """

    if key is not None and not callable(key):
        raise TypeError(f"key must be callable, got {type(key).__name__}")

    def decorate(function: Callable[P, R]) -> Memoized[P, R]:
        prefix = f"memoize:{function.__module__}.{function.__qualname__}:"
        signature = inspect.signature(function)

        def cache_key(*args: Any, **kwargs: Any) -> str:
            if key is not None:
                custom = key(*args, **kwargs)
                if not isinstance(custom, str) or not custom:
                    raise TypeError(f"key= must return a non-empty str, got {custom!r}")
                return prefix + custom
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            canonical = json.dumps([[argument, _canonical(value)] for argument, value
                                    in sorted(bound.arguments.items())], separators=(",", ":"))
            return prefix + hashlib.sha256(canonical.encode()).hexdigest()[:32]

        def call(*args: Any, **kwargs: Any) -> Any:
            name = cache_key(*args, **kwargs)
            data = cache.get_or_load(name, lambda: codec.encode(function(*args, **kwargs)),
                                     seconds, lock=lock)
            try:
                return cache.decode(data, codec)
            except codecs.DecodeError:
                # Unreadable (tampered, or written by another codec): a miss (counted).
                logger.warning("memoized value for %r did not decode; recomputing", name)
                result = function(*args, **kwargs)
                with contextlib.suppress(CacheUnavailableError):
                    cache.set(name, codec.encode(result), seconds)
                return result

        return _Memoized(function, call, cache_key, cache.delete,
                         lambda: cache.invalidate(escape_glob(prefix) + "*"))

    return decorate


class _Memoized(Generic[P, R]):
    """A memoized function: call it, or ``.invalidate(*args)``, ``.invalidate_all()``,
    ``.cache_key(*args)``. A descriptor, so on a method ``obj.method.invalidate(x)`` binds
    ``obj`` like the call does."""

    def __init__(self, function: Callable[P, R], call: Callable[..., Any],
                 cache_key: Callable[..., str], delete: Callable[[str], None],
                 invalidate_all: Callable[[], int]) -> None:
        functools.update_wrapper(self, function)
        self._call, self._key, self._delete, self._all = call, cache_key, delete, invalidate_all

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self._call(*args, **kwargs)
        return result

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of this call."""
        return self._key(*args, **kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the cached result of this call (everywhere, through coherence)."""
        self._delete(self._key(*args, **kwargs))

    def invalidate_all(self) -> int:
        """Drop every cached result of this function; returns how many L2 keys went."""
        return self._all()

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundMemoized(self, instance)


class _BoundMemoized:
    """A memoized method seen through an instance: ``instance`` is the first argument."""

    def __init__(self, memoized: _Memoized[Any, Any], instance: object) -> None:
        self._memoized, self._instance = memoized, instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._memoized(self._instance, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self._memoized.cache_key(self._instance, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        self._memoized.invalidate(self._instance, *args, **kwargs)

    def invalidate_all(self) -> int:
        return self._memoized.invalidate_all()


def _canonical(value: Any) -> Any:
    """A JSON form of an argument in which different values never look alike.

    JSON's own scalars stand for themselves; everything else is tagged with its type, so
    ``b"ab"`` and ``"6162"``, ``{1: 1}`` and ``{"1": 1}``, or ``Decimal(1)`` and the text
    ``"Decimal('1')"`` get different keys. Objects use ``__cache_key__`` if they define it
    (a value or a method), else their ``repr``.
    """
    if value is None or isinstance(value, bool | str | float | int):
        return value
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, list | tuple):
        return {"t": kind, "v": [_canonical(item) for item in value]}
    if isinstance(value, dict):
        items = [[_canonical(k), _canonical(v)] for k, v in value.items()]
        return {"t": kind, "v": sorted(items, key=lambda item: json.dumps(item))}
    if isinstance(value, set | frozenset):
        members = [_canonical(item) for item in value]
        return {"t": kind, "v": sorted(members, key=lambda item: json.dumps(item))}
    if isinstance(value, bytes | bytearray):
        return {"t": kind, "v": bytes(value).hex()}
    custom = getattr(value, "__cache_key__", None)
    if custom is not None:
        return {"t": kind, "k": _canonical(custom() if callable(custom) else custom)}
    return {"t": kind, "r": repr(value)}
