"""Configuration: frozen, typed dataclasses built once and shared across threads.

Three ways in, one set of rules: every field has exactly one validator, used by the
dataclass itself (``DragonflyConfig(pool_size=0)``), by :meth:`CacheConfig.from_env` and by
:meth:`CacheConfig.from_yaml`. Each way names the value by what the user wrote: the field
(``DragonflyConfig.pool_size``), the environment variable (``DRAGONFLY_POOL_SIZE``) or the
YAML key (``cache.dragonfly.pool_size``). Secrets (passwords, tokens) are never echoed and
never appear in ``repr``/``str``.

Durations are Go-style strings ("250ms", "30s", "5m", "1h30m"), bare seconds ("30", "0.5"),
numbers (float seconds) or :class:`datetime.timedelta`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .exceptions import ConfigError

__all__ = [
    "CacheConfig",
    "DragonflyConfig",
    "L1Config",
    "L2Config",
    "Option",
    "parse_duration",
]

Validator = Callable[[str, object], Any]

# Go accepts both micro signs (U+00B5 and U+03BC).
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6,
    "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_BARE_SECONDS = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_duration(value: object, name: str = "duration") -> float:
    """Convert a duration to float seconds (must be > 0).

    Args:
        value: Go-style string ("250ms", "1h30m"), bare seconds as a string or number,
            or a ``timedelta``.
        name: what to call the value in an error message (field, env var or YAML key).

    Returns:
        The duration in seconds.

    Raises:
        ConfigError: the value is not a duration or is not positive.
    """
    seconds: float
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            raise ConfigError(f"{name}: duration is too large") from None
    elif isinstance(value, str):
        text = value.strip()
        if _BARE_SECONDS.fullmatch(text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ConfigError(
                    f"{name}={value!r}: not a duration (use Go syntax such as '250ms', '30s', "
                    "'5m', '1h30m', or bare seconds)"
                )
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ConfigError(f"{name}={value!r}: expected a duration, got {type(value).__name__}")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{name}={value!r}: duration must be positive and finite")
    return seconds


def _duration(name: str, value: object) -> float:
    return parse_duration(value, name)


def _int_at_least(minimum: int) -> Validator:
    def parse(name: str, value: object) -> int:
        # ASCII digits only (int() accepts other scripts' digits; \d would too), and few
        # enough of them that int() can't hit its digit limit.
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]{1,18}\s*", value):
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise ConfigError(f"{name}={value!r}: expected an integer >= {minimum}")
        if number < minimum:
            raise ConfigError(f"{name}={value!r}: expected an integer >= {minimum}")
        return number

    return parse


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{name}={value!r}: expected a boolean (true/false, 1/0, yes/no, on/off)")


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}={value!r}: expected a string, got {type(value).__name__}")
    return value


def _secret(name: str, value: object) -> str | None:
    # Never echo the value: it may be a real password that was merely mistyped.
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(
            f"{name}: expected a string (value not shown; quote it in YAML), "
            f"got {type(value).__name__}"
        )
    return value or None


def _optional_text(name: str, value: object) -> str | None:
    return None if value is None else (_text(name, value) or None)


_ADDRESS = re.compile(
    r"\[(?P<v6>[^\]]+)\](?::(?P<p6>[^:]*))?"  # [::1]:6379
    r"|(?P<host>[^:\[\]]+)(?::(?P<port>[^:]*))?"  # host:6379 or host
)


def _address(name: str, item: object) -> str:
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f"{name}={item!r}: expected 'host:port'")
    text = item.strip()
    match = _ADDRESS.fullmatch(text)
    if match is None:
        raise ConfigError(f"{name}={item!r}: expected 'host:port' (IPv6 as '[::1]:6379')")
    host = match["v6"] or match["host"]
    port_text = match["p6"] if match["v6"] else match["port"]
    port = 6379
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
            raise ConfigError(f"{name}={item!r}: port must be an integer in 1..65535")
        port = int(port_text)
    return f"[{host}]:{port}" if match["v6"] else f"{host}:{port}"


def _addresses(name: str, value: object) -> list[str]:
    items: Iterable[object]
    if isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ConfigError(f"{name}={value!r}: expected a list of 'host:port' strings")
    addresses = [_address(name, item) for item in items]
    if not addresses:
        raise ConfigError(f"{name}={value!r}: at least one address is required")
    return addresses


def _section(cls: type) -> Validator:
    def parse(name: str, value: object) -> object:
        if not isinstance(value, cls):
            raise ConfigError(f"{name}: expected a {cls.__name__}, got {type(value).__name__}")
        return value

    return parse


@dataclass(frozen=True)
class Option:
    """One configuration field: its environment variable and its validator.

    The tables built from these drive validation, ``from_env``, ``from_yaml`` and the
    configuration reference test, so a new option is declared exactly once.
    """

    field: str
    env: str | None
    parse: Validator
    doc: str


def _validate_fields(instance: Any) -> None:
    """Validate and normalise every declared field of a frozen config dataclass in place."""
    owner = type(instance).__name__
    for option in instance.OPTIONS:
        value = option.parse(f"{owner}.{option.field}", getattr(instance, option.field))
        object.__setattr__(instance, option.field, value)


@dataclass(frozen=True)
class DragonflyConfig:
    """How to reach the shared tier (Dragonfly, Redis 6+ or Valkey)."""

    addresses: list[str] = field(default_factory=lambda: ["127.0.0.1:6379"])
    password: str | None = field(default=None, repr=False)
    db: int = 0
    pool_size: int = 10
    max_retries: int = 3
    tls: bool = False
    username: str | None = None
    connect_timeout: float = 0.25
    socket_timeout: float = 0.25
    pool_timeout: float = 0.25

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("addresses", "DRAGONFLY_ADDRESSES", _addresses,
               "comma-separated host:port list (IPv6 as [::1]:6379)"),
        Option("password", "DRAGONFLY_PASSWORD", _secret, "AUTH password; never logged"),
        Option("db", "DRAGONFLY_DB", _int_at_least(0), "logical database number"),
        Option("pool_size", "DRAGONFLY_POOL_SIZE", _int_at_least(1),
               "maximum connections per process (a blocking pool: callers wait, bounded)"),
        Option("max_retries", "DRAGONFLY_MAX_RETRIES", _int_at_least(0),
               "retries of a failed command on connection errors/timeouts, with "
               "exponential backoff and jitter"),
        Option("tls", "DRAGONFLY_TLS", _bool, "connect with TLS"),
        Option("username", "DRAGONFLY_USERNAME", _optional_text, "ACL user name (with password)"),
        Option("connect_timeout", "DRAGONFLY_CONNECT_TIMEOUT", _duration,
               "TCP connect timeout"),
        Option("socket_timeout", "DRAGONFLY_SOCKET_TIMEOUT", _duration,
               "per-command read/write timeout"),
        Option("pool_timeout", "DRAGONFLY_POOL_TIMEOUT", _duration,
               "longest wait for a free pooled connection"),
    )

    def __post_init__(self) -> None:
        _validate_fields(self)

    def __hash__(self) -> int:
        # addresses is a list (as the contract spells it); hash it as a tuple so configs
        # can be dict keys and lru_cache arguments like any frozen value.
        return hash(tuple((f, tuple(v) if isinstance(v, list) else v)
                          for f, v in vars(self).items()))


@dataclass(frozen=True)
class L1Config:
    """The in-process tier."""

    max_size: int = 10000
    ttl: float = 300.0

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("max_size", "CACHE_L1_MAX_SIZE", _int_at_least(1), "maximum entries in L1 (LRU)"),
        Option("ttl", "CACHE_L1_TTL", _duration, "longest life of an L1 entry"),
    )

    def __post_init__(self) -> None:
        _validate_fields(self)


@dataclass(frozen=True)
class L2Config:
    """The shared tier's policy."""

    ttl: float = 3600.0

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("ttl", "CACHE_L2_TTL", _duration, "default TTL of keys written to L2"),
    )

    def __post_init__(self) -> None:
        _validate_fields(self)


@dataclass(frozen=True)
class CacheConfig:
    """The whole configuration of a :class:`~dragonfly_cache.TieredCache`."""

    dragonfly: DragonflyConfig = field(default_factory=DragonflyConfig)
    l1: L1Config = field(default_factory=L1Config)
    l2: L2Config = field(default_factory=L2Config)
    key_prefix: str = ""
    admin_token: str | None = field(default=None, repr=False)

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("dragonfly", None, _section(DragonflyConfig), "connection settings"),
        Option("l1", None, _section(L1Config), "L1 settings"),
        Option("l2", None, _section(L2Config), "L2 settings"),
        Option("key_prefix", "CACHE_KEY_PREFIX", _text,
               "prepended to every L2 key; glob characters in it are literal"),
        Option("admin_token", "CACHE_ADMIN_TOKEN", _secret,
               "bearer token for the admin stats endpoint; never logged"),
    )

    def __post_init__(self) -> None:
        _validate_fields(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CacheConfig:
        """Build a config from environment variables; unset variables keep their defaults.

        Args:
            environ: the mapping to read (default ``os.environ``).

        Raises:
            ConfigError: a variable holds an invalid value (the message names it).
        """
        env = os.environ if environ is None else environ

        def values(section: type) -> dict[str, Any]:
            return {
                option.field: option.parse(option.env, env[option.env])
                for option in section.OPTIONS  # type: ignore[attr-defined]
                if option.env is not None and option.env in env
            }

        return cls(
            dragonfly=DragonflyConfig(**values(DragonflyConfig)),
            l1=L1Config(**values(L1Config)),
            l2=L2Config(**values(L2Config)),
            **values(cls),
        )

    @classmethod
    def from_yaml(
        cls, path_or_text: str | os.PathLike[str], environ: Mapping[str, str] | None = None
    ) -> CacheConfig:
        """Build a config from a YAML document whose root key is ``cache:``.

        String values may reference environment variables as ``${VAR}`` (an error if unset)
        or ``${VAR:-default}``; ``$$`` is a literal ``$``. Unknown keys are errors, so a typo
        never silently falls back to a default.

        Args:
            path_or_text: a path to a YAML file, or the YAML text itself.
            environ: the mapping used for ``${VAR}`` (default ``os.environ``).

        Raises:
            ConfigError: unreadable/invalid YAML, an unknown key or an invalid value
                (the message names the key, e.g. ``cache.l1.ttl``).
        """
        env = os.environ if environ is None else environ
        text, source = _read_yaml_source(path_or_text)
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            # Only the problem and its position: PyYAML's own message quotes the source
            # line, which may hold a password.
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
        if not isinstance(document, dict) or "cache" not in document:
            hint = ""
            if isinstance(path_or_text, str) and "\n" not in path_or_text:
                hint = f" (if {path_or_text!r} is meant as a file path, it is not a readable file)"
            raise ConfigError(f"{source}: expected a mapping with a top-level 'cache' key{hint}")
        root = _mapping(document["cache"], "cache")
        sections = {"dragonfly": DragonflyConfig, "l1": L1Config, "l2": L2Config}
        _reject_unknown(root, "cache", [o.field for o in cls.OPTIONS])
        kwargs: dict[str, Any] = {}
        for key, section in sections.items():
            data = _mapping(root.get(key, {}), f"cache.{key}")
            kwargs[key] = section(**_yaml_values(section, data, f"cache.{key}", env))
        kwargs.update(_yaml_values(cls, {k: v for k, v in root.items() if k not in sections},
                                   "cache", env))
        return cls(**kwargs)


def _read_yaml_source(path_or_text: str | os.PathLike[str]) -> tuple[str, str]:
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and _is_file(path_or_text)
    ):
        path = Path(path_or_text)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    if not isinstance(path_or_text, str):
        raise ConfigError(
            f"from_yaml: expected a path or YAML text, got {type(path_or_text).__name__}"
        )
    return path_or_text, "<yaml>"


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a long one-line YAML text: "File name too long"
        return False


def _mapping(value: object, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _reject_unknown(data: Mapping[str, Any], key: str, known: list[str]) -> None:
    for name in data:
        if name not in known:
            raise ConfigError(f"{key}.{name}: unknown key (expected one of: {', '.join(known)})")


def _yaml_values(section: Any, data: Mapping[str, Any], key: str, env: Mapping[str, str]
                 ) -> dict[str, Any]:
    scalars = [o for o in section.OPTIONS if o.env is not None]
    _reject_unknown(data, key, [o.field for o in scalars])
    return {
        option.field: option.parse(f"{key}.{option.field}",
                                   _interpolate(data[option.field], f"{key}.{option.field}", env))
        for option in scalars
        if option.field in data
    }


_REFERENCE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})")


def _interpolate(value: object, key: str, env: Mapping[str, str]) -> object:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in string values (and in list items)."""
    if isinstance(value, list):
        return [_interpolate(item, key, env) for item in value]
    if not isinstance(value, str):
        return value

    def expand(match: re.Match[str]) -> str:
        name = match["name"]
        if name is None:
            return "$"
        if match["default"] is not None:
            # Shell semantics of ':-': an empty variable also takes the default.
            return env.get(name) or match["default"]
        if name not in env:
            raise ConfigError(
                f"{key}: environment variable {name} is not set "
                f"(write ${{{name}:-default}} to give a default)"
            )
        return env[name]

    return _REFERENCE.sub(expand, value)
