"""A Flask-Caching backend: change ``CACHE_TYPE``, keep everything else.

::

    app.config.update(
        CACHE_TYPE="dragonfly_cache.contrib.flask_caching.DragonflyCache",
        CACHE_REDIS_URL="redis://127.0.0.1:6379/0",
    )
    cache = Cache(app)          # flask_caching.Cache: @cache.cached, @cache.memoize, ...

Flask-Caching finds the backend by its dotted path and calls :meth:`DragonflyCache.factory`
with its configuration. The backend is the cachelib adapter
(:class:`dragonfly_cache.contrib.cachelib.DragonflyCache`, as Flask-Caching's own backends
are cachelib's), so values, timeouts and return values follow cachelib (see there).

Settings, as Flask-Caching users write them:

- the server: ``CACHE_REDIS_URL`` (``redis://``, ``rediss://`` for TLS), or
  ``CACHE_REDIS_HOST`` / ``CACHE_REDIS_PORT`` / ``CACHE_REDIS_PASSWORD`` /
  ``CACHE_REDIS_DB``; neither: ``DRAGONFLY_ADDRESSES`` etc. from ``app.config`` or the
  environment.
- ``CACHE_KEY_PREFIX`` (Flask-Caching's default ``flask_cache_``) in front of every key,
  ``CACHE_DEFAULT_TIMEOUT`` (0: never expires), ``CACHE_IGNORE_ERRORS``.
- ``CACHE_OPTIONS``: our settings by their environment names (``CACHE_L1_TTL``,
  ``DRAGONFLY_POOL_SIZE``, ``CACHE_KEY_PREFIX`` for the cache's own prefix, ...); an
  unknown name is a :class:`~dragonfly_cache.ConfigError` naming ``CACHE_OPTIONS``. Our
  names in ``app.config`` apply too (as the Flask extension reads them), then the
  environment.
- The pickle secret: ``CACHE_PICKLE_SECRET``, else the app's ``SECRET_KEY``; the key that
  signs the pickles is derived from it, never the secret itself. Neither set:
  ``ConfigError``.

One cache per process: the backend and the Flask extension
(:class:`dragonfly_cache.flask.DragonflyCache`) read the same settings and share one
:class:`~dragonfly_cache.TieredCache`, so its health, stats and ``/metrics`` count the
Flask-Caching traffic too, whichever is initialised first.

Errors follow Flask-Caching: ``@cached`` and ``@memoize`` already call the view when the
cache fails (fail open); the backend answers a server it cannot reach with cachelib's
failure values (a miss, ``False``), never an exception.

Singleflight: ``@cached`` and ``@memoize`` call ``get``, then the function, then ``set``
from Flask-Caching's ``Cache``; the backend never sees the function, and a miss is no
promise that a ``set`` follows (``unless``, ``response_filter``, ``is_stale``, an
exception, a view raising ``abort``). Holding other callers of that key until a ``set``
that may never come would stall them, so concurrent misses each run the view, as with
every Flask-Caching backend. For one call per key, use the shared cache's ``get_or_load``
or ``memoize`` (``cache.cache.tiered``).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from typing import Any

from .._extras import require

# Before the imports they guard: without the extra, fail with its install line.
require("flask_caching", "flask", __name__)

from flask import Flask
from flask_caching.backends.base import BaseCache

from ..config import CacheConfig, variable_names
from ..exceptions import ConfigError
from . import cachelib
from ._common import build_config, pickle_codec, settings_from_url

__all__ = ["BACKEND", "DragonflyCache", "cache_config"]

#: The ``CACHE_TYPE`` that selects this backend.
BACKEND = "dragonfly_cache.contrib.flask_caching.DragonflyCache"

_SECRET_SETTING = "SECRET_KEY (or CACHE_PICKLE_SECRET)"  # noqa: S105 - its name, no secret


def _int_setting(settings: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = settings.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}: expected an integer in {low}..{high}, got {value!r}")
    return value


def _server(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``DRAGONFLY_*`` settings from Flask-Caching's ``CACHE_REDIS_*`` (absent: {})."""
    db = _int_setting(settings, "CACHE_REDIS_DB", 0, 2**31 - 1)
    url = settings.get("CACHE_REDIS_URL")
    if url:
        server = settings_from_url(url, "CACHE_REDIS_URL")
        if db is not None:  # as redis-py's from_url(url, db=...): the URL's db wins
            server.setdefault("DRAGONFLY_DB", db)
        return server
    host, password = settings.get("CACHE_REDIS_HOST"), settings.get("CACHE_REDIS_PASSWORD")
    port = _int_setting(settings, "CACHE_REDIS_PORT", 1, 65535)
    if host is None and port is None and password is None and db is None:
        return {}
    if host is not None and (not isinstance(host, str) or not host.strip()):
        raise ConfigError(f"CACHE_REDIS_HOST: expected a host name, got {host!r}")
    name = (host or "127.0.0.1").strip()
    server = settings_from_url(f"[{name}]:{port or 6379}" if ":" in name
                               else f"{name}:{port or 6379}", "CACHE_REDIS_HOST")
    del server["DRAGONFLY_TLS"]  # a host and port say nothing about TLS
    if password:
        server["DRAGONFLY_PASSWORD"] = password
    if db is not None:
        server["DRAGONFLY_DB"] = db
    return server


def cache_config(settings: Mapping[str, Any],
                 environ: Mapping[str, str] | None = None) -> CacheConfig:
    """The shared cache's configuration from Flask-Caching's settings.

    First the server settings (``CACHE_REDIS_URL``, ``CACHE_REDIS_HOST``...), then
    ``CACHE_OPTIONS``, then our ``DRAGONFLY_*``/``CACHE_*`` names in ``settings`` (except
    ``CACHE_KEY_PREFIX``: here that is Flask-Caching's key prefix), then the environment.
    The Flask extension calls this too when ``CACHE_TYPE`` is :data:`BACKEND`, so both
    build the same configuration and share one cache.

    Args:
        settings: ``app.config``, or the configuration Flask-Caching passes its backend.
        environ: the environment (default ``os.environ``).

    Raises:
        ConfigError: naming the setting (``CACHE_REDIS_URL``, ``CACHE_OPTIONS``, ...).
    """
    options = settings.get("CACHE_OPTIONS")
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"CACHE_OPTIONS: expected a dict of DRAGONFLY_*/CACHE_* "
                          f"settings, got {type(options).__name__}")
    env = os.environ if environ is None else environ
    names = variable_names()
    layered: dict[str, Any] = {name: env[name] for name in names if name in env}
    layered.update({name: settings[name] for name in names
                    if name in settings and name != "CACHE_KEY_PREFIX"})
    server = _server(settings)
    try:
        return build_config(server, options, where="CACHE_OPTIONS", environ=layered)
    except ConfigError as exc:
        raise ConfigError(_named_by_its_source(str(exc), options or {}, server)) from None


def _named_by_its_source(message: str, options: Mapping[str, Any],
                         server: Mapping[str, Any]) -> str:
    """``build_config``'s message, prefixed ``CACHE_OPTIONS:`` only when the bad value
    came from there (it may come from app.config or the environment, whose names the
    message already gives, or from the server settings)."""
    text = message.removeprefix("CACHE_OPTIONS: ")
    name = re.match(r"[A-Z][A-Z0-9_]*", text)
    if text.startswith("unknown option") or (name and name[0] in options):
        return message
    if name and name[0] in server:
        return f"CACHE_REDIS_URL/CACHE_REDIS_*: {text}"
    return text


class DragonflyCache(BaseCache, cachelib.DragonflyCache):
    """The Flask-Caching backend: :class:`dragonfly_cache.contrib.cachelib.DragonflyCache`
    built from Flask-Caching's configuration by :meth:`factory`.

    Constructed directly it takes the cachelib adapter's arguments, except that
    ``ignore_delete_many_errors`` defaults to False, as in Flask-Caching's backends.
    """

    def __init__(self, host: str | None = None, port: int | None = None,
                 password: str | None = None, db: int | None = None,
                 default_timeout: int | dt.timedelta = 300, key_prefix: cachelib.Prefix = None,
                 ignore_delete_many_errors: bool = False, **kwargs: Any) -> None:
        cachelib.DragonflyCache.__init__(self, host, port, password, db, default_timeout,
                                         key_prefix, ignore_delete_many_errors, **kwargs)

    @classmethod
    def factory(cls, app: Flask, config: dict[str, Any], args: list[Any],
                kwargs: dict[str, Any]) -> DragonflyCache:
        """Build the backend from Flask-Caching's configuration (Flask-Caching calls this).

        Args:
            app: the Flask app.
            config: ``app.config`` with ``Cache(config=...)`` and Flask-Caching's defaults.
            args: ``CACHE_ARGS`` (must be empty: the server comes from the settings).
            kwargs: ``default_timeout``, ``ignore_delete_many_errors`` and, merged in by
                Flask-Caching, the ``CACHE_OPTIONS`` entries (read from ``config``
                instead: they are our settings, not arguments).

        Raises:
            ConfigError: a bad setting, naming it; no pickle secret.
        """
        if args:
            raise ConfigError("CACHE_ARGS: not used by this backend; configure the server "
                              "with CACHE_REDIS_URL (or CACHE_REDIS_HOST/PORT) and our "
                              "settings with CACHE_OPTIONS")
        settings = cache_config(config)
        secret = settings.pickle_secret or config.get("SECRET_KEY")
        pickle_codec(secret, setting=_SECRET_SETTING)  # fail naming both, before any cache
        for name in config.get("CACHE_OPTIONS") or ():
            kwargs.pop(name, None)
        return cls(key_prefix=config.get("CACHE_KEY_PREFIX"), pickle_secret=secret,
                   cache=settings, **kwargs)
