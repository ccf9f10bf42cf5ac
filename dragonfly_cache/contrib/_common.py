"""What the framework adapters share: configuration, signed pickles, one cache per process.

Configuration. Each framework names the server its own way (a URL, host and port, a
``LOCATION``); :func:`settings_from_url` turns that into our ``DRAGONFLY_*`` settings. The
framework's options dict (Flask-Caching's ``CACHE_OPTIONS``, Django's ``OPTIONS``,
dogpile's ``arguments``) may set any of our settings by the names the environment uses
(``CACHE_L1_TTL``, ``DRAGONFLY_POOL_SIZE``, ...). :func:`build_config` puts them together:
the framework's own setting first, then its options dict, then the environment, then our
defaults. Every bad value is a :class:`ConfigError` naming the framework's key.

Pickles. Framework caches hold objects, so adapters store pickles, always signed:
:func:`pickle_codec` derives an HMAC key from the framework's secret (Django's and Flask's
``SECRET_KEY``, or a ``pickle_secret``) and never uses the secret itself as the key, so the
signing key cannot be used for anything else the secret signs. A value whose signature
fails is a miss, counted in ``stats()["loading"]["decode_failures"]``
(:meth:`TieredCache.decode`), and is never unpickled.

One cache per process. :func:`shared_cache` gives every adapter (and the Flask extension)
configured alike the same :class:`TieredCache`, so one L1, one pool, one listener and one
set of counters serve them all.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .. import codecs
from .._nodes import Transport, current_transport
from ..codecs import MIN_SECRET_BYTES
from ..config import CacheConfig, variable_names
from ..exceptions import ConfigError
from ..tiered import TieredCache

__all__ = ["build_config", "pickle_codec", "settings_from_url", "shared_cache"]

_SCHEMES = {"redis": False, "rediss": True, "dragonfly": False, "valkey": False}
_DERIVATION = b"dragonfly_cache/contrib signed pickle v1"


def _redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for error messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def settings_from_url(url: object, setting: str) -> dict[str, Any]:
    """Our ``DRAGONFLY_*`` settings from a server URL or ``host:port``.

    Accepted: ``redis://[[username]:password@]host[:port][/db]``, ``rediss://`` for TLS
    (``dragonfly://`` and ``valkey://`` as aliases of ``redis://``), ``?db=N`` instead of
    the path, and a bare ``host:port`` (or ``host``; IPv6 as ``[::1]:6379``). The port
    defaults to 6379; the db to 0. Only the parts present are returned, so the rest comes
    from the framework's options or the environment.

    Args:
        url: the value the user configured.
        setting: the framework's name for it, for error messages (e.g.
            ``CACHES['default']['LOCATION']``).

    Raises:
        ConfigError: naming ``setting``; a password in the URL is never echoed.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{setting}: expected a redis:// URL or host:port, got {url!r}")
    text = url.strip()
    if "://" not in text:
        text = f"redis://{text}"
    parts = urllib.parse.urlsplit(text)
    shown = _redacted(url.strip())
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"{setting}: {shown!r} has scheme {parts.scheme!r}; expected one "
                          f"of {', '.join(s + '://' for s in _SCHEMES)} or host:port")
    try:
        host, port = parts.hostname, parts.port or 6379
    except ValueError:
        raise ConfigError(f"{setting}: {shown!r} has an invalid port") from None
    if not host:
        raise ConfigError(f"{setting}: {shown!r} names no host")
    settings: dict[str, Any] = {
        "DRAGONFLY_ADDRESSES": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "DRAGONFLY_TLS": _SCHEMES[parts.scheme],
    }
    db = parts.path.strip("/") or urllib.parse.parse_qs(parts.query).get("db", [""])[0]
    if db:
        if not db.isdigit():
            raise ConfigError(f"{setting}: {shown!r}: the db must be a number, got {db!r}")
        settings["DRAGONFLY_DB"] = int(db)
    if parts.password is not None:
        settings["DRAGONFLY_PASSWORD"] = urllib.parse.unquote(parts.password)
    if parts.username:
        settings["DRAGONFLY_USERNAME"] = urllib.parse.unquote(parts.username)
    return settings


def build_config(own: Mapping[str, Any], options: Mapping[str, Any] | None, *, where: str,
                 environ: Mapping[str, str] | None = None) -> CacheConfig:
    """The cache configuration of an adapter.

    Args:
        own: what the framework's own settings say, under our names (``DRAGONFLY_*``,
            ``CACHE_*``); ``None`` values are left out.
        options: the framework's options dict, keyed by our names; an unknown key is an
            error (a typo must not fall back to a default silently).
        where: how the user names the options dict, e.g. ``CACHE_OPTIONS`` or
            ``CACHES['default']['OPTIONS']``.
        environ: the environment (default ``os.environ``).

    Raises:
        ConfigError: an unknown option, or an invalid value (naming ``where`` and the key).
    """
    options = dict(options or {})
    unknown = sorted(str(name) for name in set(options) - set(variable_names()))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}: "
                          "expected the DRAGONFLY_* / CACHE_* names of docs/configuration.md")
    settings = {**options, **{name: value for name, value in own.items() if value is not None}}
    try:
        return CacheConfig.from_settings(settings, environ)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def pickle_codec(secret: str | bytes | None, *, setting: str) -> codecs.SignedPickle:
    """The codec of an adapter's values: pickles signed with a key derived from ``secret``.

    Args:
        secret: the framework's secret (e.g. ``SECRET_KEY``) or a ``pickle_secret``.
        setting: what the user sets to provide it, for the error message.

    Raises:
        ConfigError: no secret, or one shorter than 16 bytes (naming ``setting``).
    """
    raw = secret.encode() if isinstance(secret, str) else secret
    if not raw:
        raise ConfigError(f"{setting} is not set: the adapter stores values as pickles "
                          "signed with a key derived from it, and never unpickles an "
                          "unsigned value")
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(f"{setting} must be at least {MIN_SECRET_BYTES} bytes "
                          f"(got {len(raw)})")
    return codecs.SignedPickle(hmac.new(raw, _DERIVATION, hashlib.sha256).digest())


_shared: dict[tuple[CacheConfig, Transport | None], TieredCache] = {}
_shared_lock = threading.Lock()


def shared_cache(config: CacheConfig) -> TieredCache:
    """The process's cache for ``config``: made on first use, the same one afterwards.

    Adapters and the Flask extension configured alike share it, so one L1, one pool, one
    invalidation listener and one set of counters (``stats()``, ``/metrics``) serve them
    all. It lives as long as the process (forks included: the at-fork hook rebuilds its
    per-process parts) and is closed at exit, once, by the ``atexit`` hook registered
    when it was made: its users never close it themselves, since the others still use
    it. A cache closed by someone anyway is replaced by a new one on the next call.
    """
    key = (config, current_transport())  # a fake cache (dragonfly_cache.testing) is another
    with _shared_lock:
        cache = _shared.get(key)
        if cache is None or cache.closed:
            if cache is not None:
                atexit.unregister(cache.close)  # closed already; let it be collected
            cache = _shared[key] = TieredCache(config)
            atexit.register(cache.close)
        return cache
