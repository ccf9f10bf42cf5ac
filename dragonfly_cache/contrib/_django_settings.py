"""How the Django backend reads its ``CACHES`` entry: ``LOCATION`` as our server settings,
the entry's own values checked (naming ``CACHES['<alias>'][...]``), the pickle secret."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from ..codecs import SignedPickle
from ..config import CacheConfig
from ..exceptions import ConfigError
from ._common import pickle_codec, settings_from_url

__all__ = ["alias", "check_params", "codec", "location_settings"]


def alias(location: object, params: Mapping[str, Any]) -> str:
    """``CACHES['<alias>']`` for messages: Django passes the backend its settings, not
    the alias, so find the entry they came from."""
    try:
        entries = dict(settings.CACHES) if settings.configured else {}
    except ImproperlyConfigured:
        entries = {}
    for alias, entry in entries.items():
        if (isinstance(entry, Mapping) and entry.get("LOCATION", "") == location
                and {k: v for k, v in entry.items() if k not in ("BACKEND", "LOCATION")}
                == dict(params)):
            return f"CACHES[{alias!r}]"
    return "CACHES[...]"


def location_settings(location: object, setting: str) -> dict[str, Any]:
    """Our ``DRAGONFLY_*`` settings from ``LOCATION`` (empty: the environment decides)."""
    if location is None or location == "":
        return {}
    if isinstance(location, str):
        entries: list[object] = [entry.strip() for entry in re.split("[;,]", location)]
    elif isinstance(location, list | tuple):
        entries = list(location)
    else:
        raise ConfigError(f"{setting}: expected a redis:// URL, host:port or a list of "
                          f"them, got {type(location).__name__}")
    if not entries:
        raise ConfigError(f"{setting}: an empty list names no server")
    parsed = [settings_from_url(entry, setting) for entry in entries]
    addresses = [each.pop("DRAGONFLY_ADDRESSES") for each in parsed]
    if any(each != parsed[0] for each in parsed[1:]):
        raise ConfigError(f"{setting}: the servers of a list are one cluster: give them "
                          "all the same scheme, db and credentials")
    return {**parsed[0], "DRAGONFLY_ADDRESSES": ",".join(addresses)}


def check_params(params: Mapping[str, Any], where: str) -> None:
    """Refuse what Django would silently replace by a default or fail on later."""
    name = "timeout" if "timeout" in params else "TIMEOUT"
    timeout = params.get(name, 300)
    if timeout is not None:
        try:
            if isinstance(timeout, bool) or int(timeout) < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{where}[{name!r}]: expected seconds (0 or more) or None, "
                              f"got {timeout!r}") from None
    version = params.get("VERSION", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"{where}['VERSION']: expected an int, got {version!r}")
    if not isinstance(params.get("KEY_PREFIX", ""), str):
        raise ConfigError(f"{where}['KEY_PREFIX']: expected a str, got "
                          f"{type(params['KEY_PREFIX']).__name__}")
    key_function = params.get("KEY_FUNCTION")
    if isinstance(key_function, str):
        try:
            key_function = import_string(key_function)
        except ImportError as exc:
            raise ConfigError(f"{where}['KEY_FUNCTION']: {exc}") from None
    if key_function is not None and not callable(key_function):
        raise ConfigError(f"{where}['KEY_FUNCTION']: expected a function or its dotted "
                          f"path, got {type(key_function).__name__}")
    if not isinstance(params.get("OPTIONS") or {}, Mapping):
        raise ConfigError(f"{where}['OPTIONS']: expected a dict of DRAGONFLY_* / CACHE_* "
                          f"settings, got {type(params['OPTIONS']).__name__}")


def codec(config: CacheConfig, where: str) -> SignedPickle:
    """The signed pickle of the values: ``CACHE_PICKLE_SECRET`` if set, else SECRET_KEY."""
    if config.pickle_secret is not None:
        return pickle_codec(config.pickle_secret, setting="CACHE_PICKLE_SECRET")
    try:
        secret: object = settings.SECRET_KEY
    except ImproperlyConfigured:  # settings not configured, or SECRET_KEY empty
        secret = None
    setting = f"SECRET_KEY (or {where}['OPTIONS']['CACHE_PICKLE_SECRET'])"
    if secret is not None and not isinstance(secret, str | bytes):
        raise ConfigError(f"{setting}: expected a str, got {type(secret).__name__}")
    return pickle_codec(secret, setting=setting)
