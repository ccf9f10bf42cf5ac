"""Flask integration: the ``DragonflyCache`` extension, its endpoints and /metrics.

```python
from flask import Flask
from dragonfly_cache.flask import DragonflyCache

app = Flask(__name__)
app.config["DRAGONFLY_ADDRESSES"] = "127.0.0.1:6379"
cache_ext = DragonflyCache(app)          # or DragonflyCache() + cache_ext.init_app(app)
cache = app.extensions["dragonfly_cache"]  # the TieredCache
```

Configuration is read from ``app.config`` first, then the environment, under the same
names (``DRAGONFLY_*``, ``CACHE_*``; see docs/configuration.md), plus the extension's own:
``CACHE_API_PREFIX`` (``/api/v1``), ``CACHE_HEALTH_INTERVAL`` (``1s``),
``CACHE_METRICS`` (``true``) and ``CACHE_METRICS_PATH`` (``/metrics``). Invalid values
raise ``ConfigError`` from ``init_app``, naming the key.

State lives in ``app.extensions`` (never on the extension object), so one extension
object may serve several apps. Each app gets the process's cache for its configuration
(apps, and framework adapters such as the Flask-Caching backend, configured alike share
one), unless a cache was passed in.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._extras import require

# Before the imports they guard: without the extra, fail with its install line.
require("flask", "flask", __name__)
require("prometheus_flask_exporter", "flask", __name__)

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from . import _validators as v
from . import metrics as cache_metrics
from .config import CacheConfig
from .contrib._common import shared_cache
from .exceptions import CacheUnavailableError
from .tiered import TieredCache
from .types import Health

logger = logging.getLogger(__name__)

__all__ = ["EXTENSION_KEY", "DragonflyCache", "config_from_app"]

EXTENSION_KEY = "dragonfly_cache"
_STATE_KEY = "dragonfly_cache.state"
_FLASK_CACHING_BACKEND = "dragonfly_cache.contrib.flask_caching.DragonflyCache"

# The extension's own settings: name -> (validator, default).
_SETTINGS: dict[str, tuple[v.Validator, object]] = {
    "CACHE_API_PREFIX": (v.text, "/api/v1"),
    "CACHE_HEALTH_INTERVAL": (v.duration, 1.0),
    "CACHE_METRICS": (v.boolean, True),
    "CACHE_METRICS_PATH": (v.text, "/metrics"),
}


def _setting(app: Flask, name: str) -> Any:
    validate, default = _SETTINGS[name]
    raw = app.config.get(name, os.environ.get(name, default))
    return validate(name, raw)


def config_from_app(app: Flask) -> CacheConfig:
    """The cache configuration from ``app.config``, falling back to the environment.

    When Flask-Caching uses our backend (``CACHE_TYPE`` is
    ``"dragonfly_cache.contrib.flask_caching.DragonflyCache"``), the settings are read as
    that backend reads them (``CACHE_REDIS_URL``, ``CACHE_OPTIONS``...; ``CACHE_KEY_PREFIX``
    is then Flask-Caching's key prefix), so the two share one cache.

    Raises:
        ConfigError: naming the key whose value is invalid.
    """
    if app.config.get("CACHE_TYPE") == _FLASK_CACHING_BACKEND:
        from .contrib.flask_caching import cache_config

        return cache_config(app.config)
    return CacheConfig.from_settings(app.config)


def _flask_caching_cache(app: Flask) -> TieredCache | None:
    """The cache of a Flask-Caching backend of ours already set up on ``app``, if any
    (it may have been configured with ``Cache(config=...)``, which ``app.config`` lacks)."""
    for backend in app.extensions.get("cache", {}).values():
        tiered = getattr(backend, "tiered", None)
        if isinstance(tiered, TieredCache):
            return tiered
    return None


def _process_started() -> float:
    """This process's start, as a time.time() value (Linux /proc; else module import)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat_file:
            ticks = int(stat_file.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime_file:
            uptime = float(uptime_file.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


@dataclass
class _AppState:
    """Per-app state, kept in ``app.extensions``."""

    cache: TieredCache
    admin_token: str | None
    health_interval: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    report: Health | None = None
    checked_at: float = 0.0
    probing: bool = False

    def health(self) -> Health:
        """``cache.health()``, probed at most once per ``health_interval``.

        A load balancer polling every 100 ms then costs the server one PING + INFO per
        interval and process; an outage still shows within the interval plus one
        connect timeout. The lock covers bookkeeping only, never the probe: while one
        request probes, the others answer with the last report instead of queueing
        behind a slow server.
        """
        with self.lock:
            last = self.report
            fresh = time.monotonic() - self.checked_at < self.health_interval
            if last is not None and (fresh or self.probing):
                return last
            self.probing = True
        try:
            report = self.cache.health()
        finally:
            with self.lock:
                self.probing = False
        with self.lock:
            self.report, self.checked_at = report, time.monotonic()
        return report


def _state() -> _AppState:
    state: _AppState = current_app.extensions[_STATE_KEY]
    return state


def _error(status: int, message: str, **headers: str) -> Response:
    response = jsonify(error=message, status=status)
    response.status_code = status
    response.headers.update(headers)
    return response


blueprint = Blueprint("dragonfly_cache", __name__)


def _unavailable(exc: CacheUnavailableError) -> Response:
    """A view's cache write the server did not take: 503, and one log line (the server's
    address and the reason are for the logs, not for the client)."""
    logger.warning("%s %s: %s", request.method, request.path, exc)
    return _error(503, "the cache server is unavailable; try again")


def _authorized(state: _AppState) -> bool:
    """Whether the request carries ``Authorization: Bearer <CACHE_ADMIN_TOKEN>``."""
    if not state.admin_token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = state.admin_token.encode("utf-8")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8"),
                                                              expected)


@blueprint.get("/health/cache")
def health() -> Response:
    """200 when healthy, 503 when not. Anonymous callers (load balancers) get ``status``,
    ``dragonfly.connected``/``version``, ``l1_stats`` and ``l2_stats``: no server address,
    no error text. With the admin token, the whole ``health()`` report."""
    state = _state()
    report = state.health()
    body: Mapping[str, Any] = report
    if not _authorized(state):
        body = {"status": report["status"],
                "dragonfly": {"connected": report["dragonfly"]["connected"],
                              "version": report["dragonfly"]["version"]},
                "l1_stats": report["l1_stats"], "l2_stats": report["l2_stats"]}
    response = jsonify(body)
    response.status_code = 200 if report["status"] == "healthy" else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/admin/cache/stats")
def stats() -> Response:
    """``stats()`` plus pid and uptime; ``Authorization: Bearer <CACHE_ADMIN_TOKEN>``."""
    state = _state()
    if not state.admin_token:
        return _error(403, "the admin endpoints are disabled: set CACHE_ADMIN_TOKEN")
    if not _authorized(state):
        return _error(401, "missing or wrong bearer token",
                      **{"WWW-Authenticate": 'Bearer realm="dragonfly_cache"'})
    body = {**state.cache.stats(), "pid": os.getpid(),
            "uptime_seconds": round(time.time() - _process_started(), 3)}
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


class DragonflyCache:
    """The Flask extension.

    Args:
        app: the app to initialise now (or call :meth:`init_app` later, once per app).
        cache: a ready ``TieredCache`` to use for every app. By default each app gets the
            process's cache for its config (:func:`config_from_app`), shared with every
            app and adapter configured alike (a Flask-Caching backend of ours included,
            whichever is initialised first) and closed when the process exits.
    """

    def __init__(self, app: Flask | None = None, cache: TieredCache | None = None) -> None:
        self._cache = cache
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build/attach the cache, register the endpoints and metrics on ``app``.

        Raises:
            ConfigError: an invalid configuration value, naming its key.
        """
        settings = {name: _setting(app, name) for name in _SETTINGS}
        cache = self._cache
        admin_token = app.config.get("CACHE_ADMIN_TOKEN")
        if cache is None:
            # One cache per process for every user configured alike (a Flask-Caching
            # backend of ours included), closed at exit by shared_cache's hook.
            cache = _flask_caching_cache(app)
            if cache is None:
                cache = shared_cache(config_from_app(app))
        token = v.strong_secret("CACHE_ADMIN_TOKEN", admin_token) if admin_token is not None \
            else cache.config.admin_token
        app.extensions[EXTENSION_KEY] = cache
        app.extensions[_STATE_KEY] = _AppState(cache, token, settings["CACHE_HEALTH_INTERVAL"])
        app.register_blueprint(blueprint, url_prefix=settings["CACHE_API_PREFIX"])
        handled = app.error_handler_spec[None][None]  # the app's own handler wins, also
        if not any(issubclass(CacheUnavailableError, kind) for kind in handled):  # a base's
            app.register_error_handler(CacheUnavailableError, _unavailable)
        if settings["CACHE_METRICS"]:
            _install_metrics(app, cache, settings["CACHE_METRICS_PATH"])

    @property
    def cache(self) -> TieredCache:
        """The current app's cache (inside an app context)."""
        cache: TieredCache = current_app.extensions[EXTENSION_KEY]
        return cache


def _install_metrics(app: Flask, cache: TieredCache, path: str) -> None:
    """HTTP metrics from prometheus-flask-exporter plus the cache's series, at ``path``."""
    from prometheus_client import CollectorRegistry
    from prometheus_flask_exporter import PrometheusMetrics

    # Requests are labelled by URL rule ("/items/<int:id>"), not by path: one series per
    # route, not one per id.
    exporter: PrometheusMetrics
    if cache_metrics.multiprocess_mode():
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        # Its registry reads every worker's files; the cache families write to them too.
        exporter = GunicornInternalPrometheusMetrics(app, path=path, group_by="url_rule")
    else:
        # A registry per app: several apps in one process must not collide in the
        # global default registry.
        registry = CollectorRegistry(auto_describe=True)
        exporter = PrometheusMetrics(app, path=path, registry=registry,
                                     group_by="url_rule")
        cache_metrics.register(registry)
    exported = cache_metrics.CacheMetrics(cache)
    app.extensions["dragonfly_cache.metrics"] = (exporter, exported)

    @app.before_request
    def _sync_before_scrape() -> None:
        if request.path == path:
            cache_metrics.sync_all()

    @app.after_request
    def _sync_after_request(response: Response) -> Response:
        exported.sync()
        return response
