"""The Flask-Caching backend: one line of configuration, Flask-Caching's settings, one cache
shared with the Flask extension, and bad settings refused naming them.

Flask-Caching's own suite runs in tests/test_upstream_flask_caching.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask, request
from flask_caching import Cache

from dragonfly_cache import ConfigError, TieredCache, codecs
from dragonfly_cache.contrib import _common
from dragonfly_cache.contrib._common import pickle_codec
from dragonfly_cache.contrib.flask_caching import BACKEND, DragonflyCache, cache_config
from dragonfly_cache.flask import DragonflyCache as Extension
from tests.helpers import ADMIN_TOKEN, metric, wait_subscribed
from tests.helpers.servers import RedisServer, free_port

SECRET_KEY = "flask-caching-test-secret-key"

MakeApp = Callable[..., tuple[Flask, Cache]]


@pytest.fixture
def make_app(redis_server: RedisServer, clean_env: None) -> Iterator[MakeApp]:
    """``make_app(**config)``: a Flask app with Flask-Caching on our backend (the server
    from ``CACHE_REDIS_URL``); every cache it used is closed afterwards."""
    caches: list[TieredCache] = []

    def make(extension: bool = False, **config: Any) -> tuple[Flask, Cache]:
        app = Flask(f"fc_app_{len(caches)}")
        app.config.update({"CACHE_TYPE": BACKEND, "SECRET_KEY": SECRET_KEY,
                           "CACHE_REDIS_URL": f"redis://{redis_server.address}/0",
                           "CACHE_ADMIN_TOKEN": ADMIN_TOKEN, **config})
        cache = Cache(app)
        with app.app_context():
            caches.append(cache.cache.tiered)  # type: ignore[attr-defined]
            wait_subscribed(cache.cache.tiered)  # type: ignore[attr-defined]
        return app, cache

    yield make
    for tiered in caches:
        tiered.close()


def backend(app: Flask, cache: Cache) -> DragonflyCache:
    with app.app_context():
        found = cache.cache
    assert isinstance(found, DragonflyCache)
    return found


def test_one_line_a_cached_view_with_its_query_string(make_app: MakeApp,
                                                      redis_server: RedisServer) -> None:
    app, cache = make_app()
    calls = itertools.count(1)

    @app.get("/search")
    @cache.cached(timeout=60, query_string=True)
    def search() -> dict[str, Any]:
        return {"q": request.args.get("q"), "call": next(calls)}

    client = app.test_client()
    assert client.get("/search?q=a&page=2").get_json() == {"q": "a", "call": 1}
    assert client.get("/search?page=2&q=a").get_json() == {"q": "a", "call": 1}  # cached
    assert client.get("/search?q=b").get_json() == {"q": "b", "call": 2}
    with redis.Redis.from_url(f"redis://{redis_server.address}") as raw:
        names = [name.decode() for name in raw.scan_iter("flask_cache_view//search*")]
        assert len(names) == 2  # Flask-Caching's key layout, its default prefix
        assert all(raw.get(name)[:1] == codecs.SignedPickle.VERSION  # type: ignore[index]
                   for name in names)
    tiered = backend(app, cache).tiered
    assert tiered.stats()["l1_stats"]["hits"] >= 1  # the repeat came from L1


def test_flask_caching_settings_are_read(make_app: MakeApp, redis_server: RedisServer) -> None:
    host, _, port = redis_server.address.rpartition(":")
    app, cache = make_app(CACHE_REDIS_URL=None, CACHE_REDIS_HOST=host, CACHE_REDIS_PORT=port,
                          CACHE_REDIS_DB=3, CACHE_KEY_PREFIX="myapp:",
                          CACHE_DEFAULT_TIMEOUT=42,
                          CACHE_OPTIONS={"CACHE_L1_TTL": "9s", "DRAGONFLY_POOL_SIZE": 4})
    found = backend(app, cache)
    config = found.tiered.config
    assert config.dragonfly.addresses == [redis_server.address] and config.dragonfly.db == 3
    assert config.l1.ttl == 9.0 and config.dragonfly.pool_size == 4
    assert config.key_prefix == ""  # CACHE_KEY_PREFIX is Flask-Caching's, on each key
    assert found.key_prefix == "myapp:" and found.default_timeout == 42
    assert found.ignore_delete_many_errors is False  # CACHE_IGNORE_ERRORS' default
    with app.app_context():
        assert cache.set("k", {"v": 1}) and cache.get("k") == {"v": 1}
    assert 40 < (found.tiered.ttl("myapp:k") or 0) <= 42


def test_url_db_wins_over_cache_redis_db_as_in_redis_py() -> None:
    config = cache_config({"CACHE_REDIS_URL": "redis://h:1/5", "CACHE_REDIS_DB": 2}, {})
    assert config.dragonfly.db == 5
    assert cache_config({"CACHE_REDIS_URL": "redis://h:1", "CACHE_REDIS_DB": 2},
                        {}).dragonfly.db == 2
    from_env = cache_config({}, {"DRAGONFLY_ADDRESSES": "e:7", "CACHE_KEY_PREFIX": "env:"})
    assert from_env.dragonfly.addresses == ["e:7"] and from_env.key_prefix == "env:"
    assert cache_config({"CACHE_KEY_PREFIX": "fc:", "CACHE_L1_TTL": "3s"}, {}).l1.ttl == 3.0
    assert cache_config({"CACHE_KEY_PREFIX": "fc:"}, {}).key_prefix == ""
    with pytest.raises(ConfigError, match=r"^CACHE_OPTIONS: expected a dict"):
        cache_config({"CACHE_OPTIONS": ["CACHE_L1_TTL"]}, {})  # as the extension reads it
    # A bad value is named by where it came from.
    with pytest.raises(ConfigError, match=r"^CACHE_L1_TTL='soon'"):
        cache_config({"CACHE_L1_TTL": "soon"}, {})
    with pytest.raises(ConfigError, match=r"^DRAGONFLY_POOL_SIZE='0'"):
        cache_config({}, {"DRAGONFLY_POOL_SIZE": "0"})
    with pytest.raises(ConfigError, match=r"^CACHE_OPTIONS: DRAGONFLY_POOL_SIZE=0"):
        cache_config({"CACHE_OPTIONS": {"DRAGONFLY_POOL_SIZE": 0}}, {})
    with pytest.raises(ConfigError, match=r"^CACHE_REDIS_URL/CACHE_REDIS_\*: DRAGONFLY_PASS"):
        cache_config({"CACHE_REDIS_HOST": "h", "CACHE_REDIS_PASSWORD": 12345}, {})


def test_the_pickle_secret_is_derived_from_secret_key_or_cache_pickle_secret(
        make_app: MakeApp, redis_server: RedisServer) -> None:
    app, cache = make_app()
    with app.app_context():
        cache.set("k", [1, 2])
    with redis.Redis.from_url(f"redis://{redis_server.address}") as raw:
        stored = raw.get("flask_cache_k")
    assert stored is not None
    assert pickle_codec(SECRET_KEY, setting="x").decode(stored) == [1, 2]
    with pytest.raises(codecs.DecodeError):  # never the SECRET_KEY itself
        codecs.SignedPickle(SECRET_KEY.encode()).decode(stored)
    own = "a-pickle-secret-of-its-own"
    app2, cache2 = make_app(CACHE_PICKLE_SECRET=own, CACHE_KEY_PREFIX="two:")
    with app2.app_context():
        cache2.set("k", "v")
    with redis.Redis.from_url(f"redis://{redis_server.address}") as raw:
        assert pickle_codec(own, setting="x").decode(raw.get("two:k")) == "v"  # type: ignore[arg-type]


@pytest.mark.parametrize(("config", "message"), [
    ({"SECRET_KEY": None}, r"SECRET_KEY \(or CACHE_PICKLE_SECRET\) is not set"),
    ({"SECRET_KEY": "dev"}, r"SECRET_KEY \(or CACHE_PICKLE_SECRET\) must be at least 16"),
    ({"CACHE_OPTIONS": {"CACHE_L1_TTLL": "5s"}}, r"^CACHE_OPTIONS: unknown option.*L1_TTLL"),
    ({"CACHE_OPTIONS": {"CACHE_L1_TTL": -1}}, "^CACHE_OPTIONS: .*CACHE_L1_TTL"),
    ({"CACHE_REDIS_URL": "redis://:hunter2hunter2@h:port"}, "^CACHE_REDIS_URL: .*invalid port"),
    ({"CACHE_REDIS_URL": "memcached://h"}, "^CACHE_REDIS_URL: .*scheme"),
    ({"CACHE_REDIS_URL": None, "CACHE_REDIS_PORT": "eighty"}, "^CACHE_REDIS_PORT: expected"),
    ({"CACHE_REDIS_URL": None, "CACHE_REDIS_DB": -1}, "^CACHE_REDIS_DB: expected"),
    ({"CACHE_REDIS_URL": None, "CACHE_REDIS_HOST": 5}, "^CACHE_REDIS_HOST: expected"),
    ({"CACHE_DEFAULT_TIMEOUT": -1}, "default_timeout must be >= 0"),
    ({"CACHE_ARGS": ["localhost"]}, "^CACHE_ARGS: not used"),
])
def test_bad_settings_raise_config_error_naming_them(make_app: MakeApp,
                                                     config: dict[str, Any],
                                                     message: str) -> None:
    shared = dict(_common._shared)
    with pytest.raises(ConfigError, match=message) as caught:
        make_app(**config)
    assert "hunter2" not in str(caught.value)
    assert _common._shared == shared  # refused before any cache was made


@pytest.mark.parametrize("extension_first", [True, False], ids=["extension_first",
                                                                "flask_caching_first"])
def test_the_extension_and_flask_caching_share_one_cache(redis_server: RedisServer,
                                                         clean_env: None,
                                                         extension_first: bool) -> None:
    app = Flask("both")
    app.config.update(CACHE_TYPE=BACKEND, SECRET_KEY=SECRET_KEY, CACHE_ADMIN_TOKEN=ADMIN_TOKEN,
                      CACHE_REDIS_URL=f"redis://{redis_server.address}/0",
                      CACHE_OPTIONS={"CACHE_L1_MAX_SIZE": 500})
    extension, cache = Extension(), Cache()
    for init in ((extension.init_app, cache.init_app) if extension_first
                 else (cache.init_app, extension.init_app)):
        init(app)
    tiered = app.extensions["dragonfly_cache"]
    try:
        assert backend(app, cache).tiered is tiered
        assert tiered.config.l1.max_size == 500  # CACHE_OPTIONS reached the extension too
        wait_subscribed(tiered)  # L1 entries are kept from now on: count its hits

        @app.get("/page")
        @cache.cached(timeout=60)
        def page() -> str:
            return "rendered"

        client = app.test_client()
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        before = client.get("/api/v1/admin/cache/stats", headers=auth).get_json()
        scraped = client.get("/metrics").get_data(as_text=True)
        for _ in range(5):
            assert client.get("/page").get_data(as_text=True) == "rendered"
        after = client.get("/api/v1/admin/cache/stats", headers=auth).get_json()
        assert after["l1_stats"]["hits"] - before["l1_stats"]["hits"] >= 4
        text = client.get("/metrics").get_data(as_text=True)
        hits = metric(text, "dragonfly_cache_requests_total", tier="l1", result="hit")
        assert hits - metric(scraped, "dragonfly_cache_requests_total", tier="l1",
                             result="hit") >= 4
        assert client.get("/api/v1/health/cache").status_code == 200
    finally:
        tiered.close()


def test_settings_given_to_cache_only_still_share_when_flask_caching_comes_first(
        redis_server: RedisServer, clean_env: None) -> None:
    app = Flask("given")
    app.config.update(SECRET_KEY=SECRET_KEY)
    cache = Cache(app, config={"CACHE_TYPE": BACKEND,
                               "CACHE_REDIS_URL": f"redis://{redis_server.address}/0"})
    Extension(app)
    try:
        assert app.extensions["dragonfly_cache"] is backend(app, cache).tiered
    finally:
        app.extensions["dragonfly_cache"].close()


def test_views_fail_open_when_the_server_is_down(clean_env: None) -> None:
    app = Flask("down")
    app.config.update(CACHE_TYPE=BACKEND, SECRET_KEY=SECRET_KEY,
                      CACHE_REDIS_URL=f"redis://127.0.0.1:{free_port()}",
                      CACHE_OPTIONS={"DRAGONFLY_MAX_RETRIES": 0})
    cache = Cache(app)
    calls = itertools.count(1)

    @app.get("/")
    @cache.cached(timeout=60)
    def index() -> str:
        return str(next(calls))

    @cache.memoize(60)
    def double(x: int) -> int:
        return 2 * x + next(calls) * 0

    try:
        client = app.test_client()
        assert [client.get("/").status_code for _ in range(3)] == [200, 200, 200]
        with app.test_request_context():
            assert double(2) == 4 and cache.get("x") is None and cache.set("x", 1) is False
    finally:
        backend(app, cache).tiered.close()


def test_a_tampered_value_is_recomputed_and_counted(make_app: MakeApp,
                                                    redis_server: RedisServer) -> None:
    app, cache = make_app()
    calls = itertools.count(1)

    @app.get("/n")
    @cache.cached(timeout=60)
    def numbered() -> str:
        return str(next(calls))

    tiered = backend(app, cache).tiered
    failures = tiered.stats()["loading"]["decode_failures"]
    with redis.Redis.from_url(f"redis://{redis_server.address}") as raw:
        raw.set("flask_cache_view//n", b"\x01" + b"\x00" * 32 + b"forged")
    assert app.test_client().get("/n").get_data(as_text=True) == "1"  # not the forgery
    assert tiered.stats()["loading"]["decode_failures"] == failures + 1
    assert app.test_client().get("/n").get_data(as_text=True) == "1"  # now cached, signed
