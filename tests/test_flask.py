"""The Flask extension, its endpoints and /metrics, through Flask's test client."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dragonfly_cache import CacheError, CacheUnavailableError, ConfigError, TieredCache
from dragonfly_cache.flask import DragonflyCache
from tests.helpers import ADMIN_TOKEN, command_calls, metric, wait_subscribed, wait_until


@pytest.fixture
def make_app(redis_server: Any) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        app = Flask(f"test_app_{len(apps)}")
        app.config.update({"DRAGONFLY_ADDRESSES": redis_server.address,
                           "CACHE_ADMIN_TOKEN": ADMIN_TOKEN, **config})
        DragonflyCache(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["dragonfly_cache"].close()


def test_extension_builds_the_cache_from_app_config(make_app: Callable[..., Flask]) -> None:
    app = make_app(CACHE_KEY_PREFIX="flask:", CACHE_L1_MAX_SIZE=123)
    cache = app.extensions["dragonfly_cache"]
    assert isinstance(cache, TieredCache)
    assert cache.config.key_prefix == "flask:"
    assert cache.config.l1.max_size == 123


def test_state_lives_in_app_extensions_and_several_apps_coexist(redis_server: Any) -> None:
    extension = DragonflyCache()
    first, second = Flask("first"), Flask("second")
    first.config.update(DRAGONFLY_ADDRESSES=redis_server.address, CACHE_KEY_PREFIX="one:")
    second.config.update(DRAGONFLY_ADDRESSES=redis_server.address, CACHE_KEY_PREFIX="two:")
    extension.init_app(first)
    extension.init_app(second)
    try:
        assert not hasattr(extension, "app")
        one, two = first.extensions["dragonfly_cache"], second.extensions["dragonfly_cache"]
        assert one is not two
        with first.app_context():
            assert extension.cache is one
        with second.app_context():
            assert extension.cache is two
        for app in (first, second):
            response = app.test_client().get("/metrics")
            assert response.status_code == 200
            assert b"dragonfly_cache_requests_total" in response.data
    finally:
        first.extensions["dragonfly_cache"].close()
        second.extensions["dragonfly_cache"].close()


def test_a_given_cache_is_used_as_is(cache_factory: Any) -> None:
    cache = cache_factory()
    app = Flask("given")
    DragonflyCache(app, cache=cache)
    assert app.extensions["dragonfly_cache"] is cache


@pytest.mark.parametrize(
    ("key", "value"),
    [("DRAGONFLY_POOL_SIZE", 0), ("CACHE_L1_TTL", "soon"), ("DRAGONFLY_ADDRESSES", "host:0"),
     ("CACHE_HEALTH_INTERVAL", "-1s"), ("CACHE_METRICS", "maybe")],
)
def test_init_app_validates_config_naming_the_key(key: str, value: object) -> None:
    app = Flask("bad")
    app.config[key] = value
    with pytest.raises(ConfigError, match=f"^{key}="):
        DragonflyCache(app)
    assert "dragonfly_cache" not in app.extensions


def test_health_200_then_503_then_200_around_an_outage(make_app: Callable[..., Flask],
                                                       redis_server: Any) -> None:
    app = make_app(CACHE_HEALTH_INTERVAL="200ms", DRAGONFLY_BREAKER_COOLDOWN="200ms")
    client = app.test_client()
    response = client.get("/api/v1/health/cache")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    body = response.get_json()
    assert body["status"] == "healthy"
    assert {"status", "dragonfly", "l1_stats", "l2_stats"} <= set(body)
    assert body["dragonfly"]["connected"] is True
    redis_server.kill()
    killed = time.monotonic()
    wait_until(lambda: client.get("/api/v1/health/cache").status_code == 503, timeout=2.0)
    print(f"\nunhealthy {time.monotonic() - killed:.2f} s after the kill")
    response = client.get("/api/v1/health/cache")
    unhealthy = response.get_json()
    assert unhealthy["status"] == "unhealthy"
    assert set(unhealthy) == set(body)  # the same shape
    # Anonymous callers see no address and no error text; the admin token shows them.
    assert set(unhealthy) == {"status", "dragonfly", "l1_stats", "l2_stats"}
    assert set(unhealthy["dragonfly"]) == {"connected", "version"}
    port = redis_server.address.rsplit(":", 1)[1]
    assert port not in response.get_data(as_text=True)
    detailed = client.get("/api/v1/health/cache",
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).get_json()
    assert redis_server.address in detailed["dragonfly"]["error"]
    assert {"breaker", "coherence"} <= set(detailed)
    redis_server.restart()
    wait_until(lambda: client.get("/api/v1/health/cache").status_code == 200, timeout=3.0)


def test_health_probe_is_cached_for_the_interval(make_app: Callable[..., Flask],
                                                 redis_server: Any) -> None:
    # Coherence off: its listener reads INFO commandstats once a second (the flush watch).
    app = make_app(CACHE_HEALTH_INTERVAL="5s", CACHE_L1_INVALIDATION="false")
    client = app.test_client()
    app.extensions["dragonfly_cache"].get("warm")  # first use: asks whether it is a cluster
    raw = redis_server.client()
    raw.config_resetstat()
    for _ in range(50):  # a load balancer polling fast
        assert client.get("/api/v1/health/cache").status_code == 200
    assert command_calls(raw, "info") == 2  # one probe: INFO server + INFO cluster


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer wrong", 401), (f"Basic {ADMIN_TOKEN}", 401), ("Bearer", 401),
     (f"Bearer {ADMIN_TOKEN}", 200), (f"bearer {ADMIN_TOKEN}", 200)],
)
def test_admin_stats_token_rules(make_app: Callable[..., Flask], header: str | None,
                                 status: int) -> None:
    client = make_app().test_client()
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/admin/cache/stats", headers=headers)
    assert response.status_code == status
    assert response.content_type == "application/json"
    body = response.get_json()
    if status == 200:
        assert {"l1_stats", "l2_stats", "singleflight", "pid", "uptime_seconds"} <= set(body)
        assert body["uptime_seconds"] > 0
    else:
        assert body["status"] == 401
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert ADMIN_TOKEN not in response.get_data(as_text=True)


def test_admin_stats_is_closed_without_a_token(redis_server: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_ADMIN_TOKEN", raising=False)
    app = Flask("closed")
    app.config["DRAGONFLY_ADDRESSES"] = redis_server.address
    DragonflyCache(app)
    try:
        response = app.test_client().get("/api/v1/admin/cache/stats",
                                         headers={"Authorization": "Bearer anything"})
        assert response.status_code == 403
        assert response.get_json()["error"].startswith("the admin endpoints are disabled")
    finally:
        app.extensions["dragonfly_cache"].close()


def test_url_prefix_is_configurable(make_app: Callable[..., Flask]) -> None:
    client = make_app(CACHE_API_PREFIX="/internal").test_client()
    assert client.get("/internal/health/cache").status_code == 200
    assert client.get("/api/v1/health/cache").status_code == 404


def test_no_password_anywhere(auth_redis_server: Any) -> None:
    app = Flask("auth")
    app.config.update(DRAGONFLY_ADDRESSES=auth_redis_server.address,
                      DRAGONFLY_PASSWORD=auth_redis_server.password, CACHE_ADMIN_TOKEN=ADMIN_TOKEN)
    DragonflyCache(app)
    try:
        client = app.test_client()
        bodies = [client.get("/api/v1/health/cache").get_data(as_text=True),
                  client.get("/api/v1/admin/cache/stats",
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                             ).get_data(as_text=True),
                  client.get("/metrics").get_data(as_text=True)]
        assert json.loads(bodies[0])["status"] == "healthy"
        for body in bodies:
            assert auth_redis_server.password not in body
    finally:
        app.extensions["dragonfly_cache"].close()


def test_metrics_export_the_cache_series(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    cache = app.extensions["dragonfly_cache"]
    wait_subscribed(cache)  # L1 entries kept from now on

    @app.get("/work")
    def work() -> str:
        cache.set("k", b"v")
        for _ in range(10):
            cache.get("k")
        cache.get("missing")
        return "ok"

    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.content_type.startswith("text/plain")
    text = before.get_data(as_text=True)
    l1_hits = metric(text, "dragonfly_cache_requests_total", tier="l1", result="hit")
    assert client.get("/work").status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "dragonfly_cache_requests_total", tier="l1",
                  result="hit") == l1_hits + 10
    assert metric(text, "dragonfly_cache_requests_total", tier="l2", result="miss") >= 1
    assert metric(text, "dragonfly_cache_l2_latency_seconds_count", operation="SET") >= 1
    assert metric(text, "dragonfly_cache_l1_entries") >= 1
    assert metric(text, "dragonfly_cache_breaker_state") == 0
    assert metric(text, "dragonfly_cache_coherence_mode", mode="tracking") >= 1
    assert metric(text, "flask_http_request_total") >= 1
    for name in ("dragonfly_cache_l2_errors_total", "dragonfly_cache_loads_total",
                 "dragonfly_cache_coalesced_total", "dragonfly_cache_invalidations_total",
                 "dragonfly_cache_l1_evictions_total", "dragonfly_cache_coherence_subscribed",
                 "dragonfly_cache_coherence_mode"):
        assert f"# TYPE {name.removesuffix('_total')}" in text


def test_metrics_can_be_turned_off(make_app: Callable[..., Flask]) -> None:
    client = make_app(CACHE_METRICS=False).test_client()
    assert client.get("/metrics").status_code == 404


def test_demo_reads_through_the_cache_and_writes_invalidate(
        redis_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", redis_server.address)
    monkeypatch.setenv("DEMO_DB_PATH", str(tmp_path / "demo.sqlite3"))
    from dragonfly_cache.demo import create_app

    app = create_app()
    wait_subscribed(app.extensions["dragonfly_cache"])  # L1 is kept from now on
    client: FlaskClient = app.test_client()
    try:
        first = client.get("/demo/items/7").get_json()
        assert first["name"] == "item 7"
        assert first["ms"] >= 45  # the simulated query
        second = client.get("/demo/items/7").get_json()
        assert second["ms"] < 10  # from L1
        updated = client.put("/demo/items/7", json={"name": "renamed"})
        assert updated.status_code == 200
        assert updated.get_json()["version"] == 1
        assert client.get("/demo/items/7").get_json()["name"] == "renamed"
        assert client.put("/demo/items/7", data="not json").status_code == 400
        assert client.get("/").status_code == 200
    finally:
        app.extensions["dragonfly_cache"].close()


def test_a_view_whose_cache_write_fails_answers_503_with_one_log_line(
        redis_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    app = Flask("writes")
    app.config.update(DRAGONFLY_ADDRESSES=redis_server.address, CACHE_METRICS=False)
    DragonflyCache(app)
    cache = app.extensions["dragonfly_cache"]

    @app.put("/items/<int:item>")
    def put(item: int) -> str:
        cache.set(f"item:{item}", b"new")
        return "ok"

    try:
        cache.get("warm-up")  # the app has been serving; then the server goes away
        redis_server.kill()
        caplog.set_level(logging.WARNING, logger="dragonfly_cache.flask")
        client = app.test_client()
        for item in range(5):
            response = client.put(f"/items/{item}")
            assert response.status_code == 503
            assert response.get_json() == {"error": "the cache server is unavailable; "
                                                    "try again", "status": 503}
            assert redis_server.address.rsplit(":", 1)[1] not in response.get_data(as_text=True)
        ours = [r for r in caplog.records if r.name == "dragonfly_cache.flask"]
        assert len(ours) == 5 and all(r.exc_info is None for r in ours)
        assert ours[0].getMessage().startswith("PUT /items/0: SET on ")
        assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere
    finally:
        cache.close()


@pytest.mark.parametrize("handled", [CacheUnavailableError, CacheError, Exception])
def test_the_apps_own_handler_for_cache_failures_is_kept(redis_server: Any,
                                                         handled: type[Exception]) -> None:
    """Its handler for the error or for a base class of it (Flask would pick ours, the
    more specific one, if we registered it)."""
    app = Flask("own_handler")
    app.register_error_handler(handled, lambda exc: ("degraded", 200))
    app.config.update(DRAGONFLY_ADDRESSES=redis_server.address, CACHE_METRICS=False)
    DragonflyCache(app)

    @app.get("/fail")
    def fail() -> str:
        raise CacheUnavailableError("SET on somewhere failed")

    try:
        assert app.test_client().get("/fail").get_data(as_text=True) == "degraded"
    finally:
        app.extensions["dragonfly_cache"].close()


@pytest.mark.parametrize("value", ["", "/nonexistent/prometheus-dir"])
def test_a_prometheus_multiproc_dir_that_names_no_directory_is_refused(
        redis_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, value: str) -> None:
    """Set, even empty, puts prometheus_client in multiprocess mode (it would write its
    .db files into the working directory): refused at init, naming the variable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", value)
    app = Flask("empty_dir")
    app.config.update(DRAGONFLY_ADDRESSES=redis_server.address)
    with pytest.raises(ConfigError, match=r"^PROMETHEUS_MULTIPROC_DIR=.*names no directory"):
        DragonflyCache(app)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["pubsub", "tracking"])
def test_an_idle_workers_subscribed_gauge_follows_its_listener_without_requests(
        redis_server: Any, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The first request syncs the gauges while coherence still connects (0); with no
    request after it, the listener's subscription (pub/sub) or the start of tracking (auto,
    once the server answered) itself brings this worker's value to 1 (it stayed 0 for as
    long as the worker was idle)."""
    import threading

    from dragonfly_cache import _invalidation

    gate = threading.Event()
    held_name = "subscription" if mode == "pubsub" else "supports_tracking"
    real = getattr(_invalidation, held_name)

    def held(*args: Any) -> Any:
        assert gate.wait(10)
        return real(*args)

    monkeypatch.setattr(_invalidation, held_name, held)
    app = Flask("idle_worker")
    # Its own prefix: a new cache of the process (not one an earlier test left subscribed).
    app.config.update(DRAGONFLY_ADDRESSES=redis_server.address, CACHE_KEY_PREFIX="idle:",
                      CACHE_L1_INVALIDATION="pubsub" if mode == "pubsub" else "auto")
    DragonflyCache(app)
    exported = app.extensions["dragonfly_cache.metrics"][1]
    try:
        assert app.test_client().get("/api/v1/health/cache").status_code == 200
        assert exported.subscribed == 0  # synced after that request, while connecting
        gate.set()
        wait_until(lambda: exported.subscribed == 1, timeout=2.0)  # no request since
        assert app.extensions["dragonfly_cache"].stats()["coherence"]["mode"] == mode
    finally:
        gate.set()
        app.extensions["dragonfly_cache"].close()


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("GET", f"/demo/items/{2**63}", None, 400, "item id must be at most"),
    ("PUT", f"/demo/items/{2**64}", {"name": "x"}, 400, "item id must be at most"),
    ("PUT", "/demo/items/1", "not json", 400, "expected a JSON body"),
    ("PUT", "/demo/items/1", ["a", "list"], 400, "expected a JSON body"),
    ("PUT", "/demo/items/1", {"name": 5}, 400, "expected a JSON body"),
    ("PUT", "/demo/items/1", {"name": ""}, 400, "name must be 1 to 1000 characters"),
    ("PUT", "/demo/items/1", {"name": "x" * 1001}, 400, "name must be 1 to 1000"),
    ("PUT", "/demo/items/1", {"name": "x" * 20_000}, 413, "larger than 16384 bytes"),
])
def test_the_demo_answers_bad_input_with_a_4xx_and_changes_nothing(
        redis_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, method: str,
        path: str, body: Any, status: int, message: str) -> None:
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", redis_server.address)
    monkeypatch.setenv("DEMO_DB_PATH", str(tmp_path / "demo.sqlite3"))
    from dragonfly_cache.demo import create_app

    app = create_app()
    client = app.test_client()
    try:
        if isinstance(body, str):
            response = client.open(path, method=method, data=body,
                                   content_type="application/json")
        else:
            response = client.open(path, method=method, json=body)
        assert response.status_code == status, response.get_data(as_text=True)
        assert message in response.get_json()["error"]
        assert client.get("/demo/items/1").get_json()["version"] == 0  # nothing written
    finally:
        app.extensions["dragonfly_cache"].close()


def test_a_listener_never_waits_for_the_metrics(make_app: Callable[..., Flask]) -> None:
    """Its state change syncs the gauges in another thread: the export lock held (by a
    scrape, or a fork in progress) cannot stop it applying invalidations."""
    import time as clock

    from dragonfly_cache import _listener, metrics

    make_app()
    with metrics._EXPORTING:
        started = clock.monotonic()
        _listener.state_changed()  # what a listener calls on subscribing
        assert clock.monotonic() - started < 0.5
