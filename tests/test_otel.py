"""OpenTelemetry: one span per cache operation, checked with the SDK's in-memory exporter
against a real server; none on the L1 hit path unless asked for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dragonfly_cache import CacheUnavailableError, NotFound, TieredCache, otel
from tests.helpers import CacheFactory, wait_until


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(provider)
    try:
        yield exporter
    finally:
        otel.uninstrument()


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    found = list(exporter.get_finished_spans())
    exporter.clear()
    return found


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_each_operation_is_one_client_span_with_the_tier_that_answered(
        spans: InMemorySpanExporter, cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory(key_prefix="app:")
    other = cache_factory(key_prefix="app:")
    finished(spans)
    cache.set("user:1", b"ada")
    (span,) = finished(spans)
    host, port = redis_server.address.rsplit(":", 1)
    assert span.name == "set" and span.kind is SpanKind.CLIENT
    assert attributes(span) == {
        "db.system.name": "redis", "db.operation.name": "set", "db.namespace": "0",
        "server.address": host, "server.port": int(port),
        "dragonfly_cache.key_count": 1, "dragonfly_cache.tier": "l2"}
    assert "user:1" not in str(span.to_json())  # key names are never recorded
    # The set's invalidation reaches the other cache; then its reads are steady (tracking:
    # the server tells only caches that read the key, and the other did not).
    if other.stats()["coherence"]["mode"] == "pubsub":
        wait_until(lambda: other.stats()["coherence"]["received"] >= 1)

    assert other.get("user:1") == b"ada"  # an L1 miss: L2 answers
    (span,) = finished(spans)
    assert (span.name, attributes(span)["dragonfly_cache.tier"]) == ("get", "l2")
    assert other.get("user:1") == b"ada"  # an L1 hit: no span
    assert finished(spans) == []
    assert other.get("nothing") is None
    assert attributes(finished(spans)[0])["dragonfly_cache.tier"] == "miss"

    assert other.get_or_load("user:2", lambda: b"grace") == b"grace"
    (span,) = finished(spans)
    assert (span.name, attributes(span)["dragonfly_cache.tier"]) == ("get_or_load", "loader")

    assert other.get_many(["user:1", "user:2", "user:3"]) == {"user:1": b"ada",
                                                               "user:2": b"grace"}
    (span,) = finished(spans)  # user:3 from L2 (a miss); the others from L1
    assert attributes(span)["db.operation.batch.size"] == 3
    assert attributes(span)["dragonfly_cache.tier"] == "miss"

    assert cache.decr("n") == -1  # decr calls incr: one span
    assert [s.name for s in finished(spans)] == ["decr"]
    cache.invalidate("user:*")
    (span,) = finished(spans)
    assert span.name == "invalidate" and "dragonfly_cache.key_count" not in attributes(span)


def test_l1_hits_get_spans_when_asked(cache_factory: CacheFactory) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(provider, l1_hits=True)
    try:
        cache = cache_factory()
        cache.set("k", b"v")
        assert cache.get("k") == b"v"
        assert [(s.name, attributes(s)["dragonfly_cache.tier"])
                for s in exporter.get_finished_spans()] == [("set", "l2"), ("get", "l1")]
    finally:
        otel.uninstrument()


def test_a_failed_operation_records_its_error(spans: InMemorySpanExporter,
                                              cache_factory: CacheFactory,
                                              redis_server: Any) -> None:
    cache = cache_factory()
    cache.get("warm-up")
    redis_server.kill()
    finished(spans)
    with pytest.raises(CacheUnavailableError):
        cache.set("k", b"v")
    (span,) = finished(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert attributes(span)["error.type"] == "CacheUnavailableError"
    assert [event.name for event in span.events] == ["exception"]

    def missing() -> bytes:
        raise NotFound("no such user")

    with pytest.raises(NotFound):  # L2 is away: the loader is called, and says "none"
        cache.get_or_load("user:9", missing)
    (span,) = finished(spans)
    assert attributes(span)["dragonfly_cache.tier"] == "loader"


def test_uninstrument_restores_every_operation(cache_factory: CacheFactory) -> None:
    original = TieredCache.get
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(provider)
    otel.instrument(provider, l1_hits=True)  # idempotent: the first settings stay
    assert TieredCache.get is not original
    otel.uninstrument()
    assert TieredCache.get is original
    cache_factory().set("k", b"v")
    assert exporter.get_finished_spans() == ()
