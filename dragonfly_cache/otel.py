"""OpenTelemetry tracing: one span per cache operation (the ``otel`` extra).

The cache sends its commands on its own connections, below redis-py's client objects, so
the Redis instrumentation of opentelemetry-python sees none of its traffic. Turn this on
once, at start-up::

    from dragonfly_cache import otel

    otel.instrument()                      # the global tracer provider; or tracer_provider=...

Every ``TieredCache`` operation then makes one ``CLIENT`` span named after it (``get``,
``get_many``, ``set``, ``get_or_load``, ...), following the OpenTelemetry database-client
conventions: ``db.system.name`` (``redis``: the protocol Dragonfly, Redis and Valkey
speak), ``db.operation.name``, ``db.namespace`` (the db number), ``server.address`` and
``server.port`` (the first configured address), ``db.operation.batch.size`` for several
keys; plus ``dragonfly_cache.tier``, the tier that answered: ``l1``, ``l2``, ``miss`` (L2
had nothing) or ``loader`` (``get_or_load`` called the loader), and
``dragonfly_cache.key_count``. Key names are never recorded (they may be session ids). A
failed call records the exception, ``error.type`` and an error status.

An L1 hit makes no span unless ``l1_hits=True``: it costs microseconds, and a span would
cost more than the hit (instrumented, a hit costs about one extra microsecond: the
bookkeeping that decides). A read that goes to L2 gets its span from the start of its L2
round trip; writes from their start. ``uninstrument()`` removes it all.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Sized
from typing import Any

from ._extras import require

# Before the import it guards: without the extra, fail with its install line.
require("opentelemetry.trace", "otel", __name__)

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import __version__
from ._batch import BatchLoading
from ._loading import Loading
from ._reads import Reads
from .exceptions import NotFound
from .tiered import TieredCache

__all__ = ["instrument", "uninstrument"]

# Reads L1 may answer: their span is made when they reach L2 (or at once with l1_hits).
_READS = ("get", "get_many", "exists", "get_or_load", "get_or_load_many")
# Always a round trip: a span from the start.
_ROUND_TRIPS = ("ttl", "set", "set_many", "delete", "delete_many", "add", "incr", "decr",
                "touch", "invalidate", "clear")
_RANK = {"l1": 0, "miss": 1, "l2": 2, "loader": 3}  # a read reports the deepest it reached

_originals: dict[tuple[type, str], Callable[..., Any]] = {}
_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("dragonfly_cache_otel",
                                                                       default=None)


class _Call:
    """One cache call being traced; its span is made when (and if) it is needed. Kept
    cheap to make: an L1 hit makes one and never opens it."""

    __slots__ = ("args", "cache", "operation", "span", "tier", "tracer")

    def __init__(self, tracer: trace.Tracer, cache: TieredCache, operation: str,
                 args: tuple[Any, ...]) -> None:
        self.tracer, self.cache, self.operation, self.args = tracer, cache, operation, args
        self.span: trace.Span | None = None
        self.tier = "l1"

    def reached(self, tier: str) -> None:
        if _RANK[tier] > _RANK[self.tier]:
            self.tier = tier
        self.open()

    def open(self) -> trace.Span:
        if self.span is None:
            config = self.cache.config
            host, _, port = config.dragonfly.addresses[0].rpartition(":")
            attributes: dict[str, Any] = {
                "db.system.name": "redis",
                "db.operation.name": self.operation,
                "db.namespace": str(config.dragonfly.db),
                "server.address": host.strip("[]"),
            }
            if port.isdigit():
                attributes["server.port"] = int(port)
            keys = _key_count(self.operation, self.args)
            if keys is not None:
                attributes["dragonfly_cache.key_count"] = keys
                if keys > 1:
                    attributes["db.operation.batch.size"] = keys
            self.span = self.tracer.start_span(self.operation, kind=SpanKind.CLIENT,
                                               attributes=attributes)
        return self.span

    def failed(self, exc: BaseException) -> None:
        span = self.open()
        span.record_exception(exc)
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(exc)))

    def end(self) -> None:
        if self.span is not None:
            self.span.set_attribute("dragonfly_cache.tier", self.tier)
            self.span.end()


def _key_count(operation: str, args: tuple[Any, ...]) -> int | None:
    if operation in ("invalidate", "clear"):
        return None
    if operation in ("get_many", "set_many", "delete_many", "get_or_load_many"):
        return len(args[0]) if args and isinstance(args[0], Sized) else None
    return 1


def _traced(operation: str, original: Callable[..., Any], tracer: trace.Tracer,
            eager: bool) -> Callable[..., Any]:
    read = operation in _READS

    @functools.wraps(original)
    def traced(self: TieredCache, *args: Any, **kwargs: Any) -> Any:
        if _call.get() is not None:  # a cache call made by a traced one (decr: incr)
            return original(self, *args, **kwargs)
        call = _Call(tracer, self, operation, args)
        if not read:
            call.tier = "l2"  # a round trip whatever L1 holds
        if eager:
            call.open()
        token = _call.set(call)
        try:
            return original(self, *args, **kwargs)
        except NotFound:
            raise  # "no such record" is an answer (the tier says who gave it), not an error
        except BaseException as exc:
            call.failed(exc)
            raise
        finally:
            _call.reset(token)
            call.end()

    return traced


def _fetch_hook(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def fetch(self: Reads, keys: Any, **options: Any) -> Any:
        call = _call.get()
        if call is None:
            return original(self, keys, **options)
        call.open()  # a read's span starts with its L2 round trip
        found, fills = original(self, keys, **options)
        call.reached("l2" if found else "miss")
        return found, fills

    return fetch


def _loader_hook(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def call_loader(self: Loading | BatchLoading, *args: Any) -> Any:
        call = _call.get()
        if call is not None:
            call.reached("loader")
        return original(self, *args)

    return call_loader


def instrument(tracer_provider: trace.TracerProvider | None = None, *,
               l1_hits: bool = False) -> None:
    """Trace every ``TieredCache`` operation of this process (idempotent: a second call
    changes nothing; :func:`uninstrument` first to change the settings).

    Args:
        tracer_provider: where the spans go (default: the global tracer provider).
        l1_hits: also make a span for a read that L1 answers (off: an L1 hit costs
            microseconds, and a span would cost more).
    """
    if _originals:
        return
    tracer = trace.get_tracer("dragonfly_cache", __version__, tracer_provider=tracer_provider)
    for name in (*_READS, *_ROUND_TRIPS):
        original = getattr(TieredCache, name)
        _originals[(TieredCache, name)] = original
        setattr(TieredCache, name, _traced(name, original, tracer,
                                           eager=l1_hits or name in _ROUND_TRIPS))
    for owner, name, hook in ((Reads, "fetch_fills", _fetch_hook),
                              (Loading, "_call_loader", _loader_hook),
                              (BatchLoading, "_call_loader_many", _loader_hook)):
        original = getattr(owner, name)
        _originals[(owner, name)] = original
        setattr(owner, name, hook(original))


def uninstrument() -> None:
    """Stop tracing: every operation is as it was before :func:`instrument`."""
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()
