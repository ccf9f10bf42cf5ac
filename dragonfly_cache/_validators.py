"""Validators for configuration values, and the option table they hang on.

Each validator takes ``(name, value)``: ``name`` is what the user wrote (field, environment
variable or YAML key) and appears in every error message; secrets are never echoed.
Validators accept the native type or its text form (environment variables and YAML
interpolation produce strings) and return the normalised value.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ._compression import NAMES as COMPRESSIONS
from ._compression import zstd_module
from ._extras import install_line
from .codecs import MIN_SECRET_BYTES, NAMES
from .exceptions import ConfigError

__all__ = ["Option", "Validator", "parse_duration"]

Validator = Callable[[str, object], Any]

# Go accepts both micro signs (U+00B5 and U+03BC).
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6,
    "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_BARE_SECONDS = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_OFF = frozenset({"", "off", "none"})
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
    seconds = _seconds(value, name)
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{name}={value!r}: duration must be positive and finite")
    return seconds


def _seconds(value: object, name: str) -> float:
    """A duration's seconds, whatever their sign (parse_duration's parsing)."""
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
    return seconds


def duration(name: str, value: object) -> float:
    return parse_duration(value, name)


def optional_duration(name: str, value: object) -> float | None:
    """A duration, or None for off: 0, and "", "off", "none" in text (a negative one is an
    error, not off)."""
    # False too: YAML reads a bare `off` as a boolean.
    if value is None or value is False or (isinstance(value, str)
                                           and value.strip().lower() in _OFF):
        return None
    text = isinstance(value, str) and value.strip().startswith("-")
    seconds = -1.0 if text else _seconds(value, name)
    if not 0 <= seconds < float("inf"):  # NaN fails the comparison too
        raise ConfigError(f"{name}={value!r}: expected a duration >= 0 (0 or off: off)")
    return seconds or None


def int_at_least(minimum: int) -> Validator:
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


def boolean(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{name}={value!r}: expected a boolean (true/false, 1/0, yes/no, on/off)")


INVALIDATION_MODES = ("auto", "tracking", "pubsub", "off")


def invalidation_mode(name: str, value: object) -> str:
    """One of ``INVALIDATION_MODES``; the booleans of earlier versions (``true``/``false``,
    1/0, yes/no, on/off) still mean ``auto``/``off``."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in INVALIDATION_MODES:
            return word
        if word in _TRUE | _FALSE:
            return "auto" if word in _TRUE else "off"
    raise ConfigError(f"{name}={value!r}: expected auto, tracking, pubsub or off "
                      "(true/false still mean auto/off)")


def text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}={value!r}: expected a string, got {type(value).__name__}")
    return value


def secret(name: str, value: object) -> str | None:
    # Never echo the value: it may be a real password that was merely mistyped.
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(
            f"{name}: expected a string (value not shown; quote it in YAML), "
            f"got {type(value).__name__}"
        )
    return value or None


def optional_text(name: str, value: object) -> str | None:
    return None if value is None else (text(name, value) or None)


def readable_file(name: str, value: object) -> str | None:
    """A path to a file that exists and can be read, or None (empty text: None)."""
    path = optional_text(name, value)
    if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ConfigError(f"{name}={value!r}: not a readable file")
    return path


_SIZE = re.compile(r"\s*([0-9]{1,15})\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)


def byte_size_at_least(minimum: int) -> Validator:
    """A number of bytes >= ``minimum``: an int, or text such as ``65536``, ``512KiB``,
    ``64MiB``, ``100MB``, ``1G`` (KiB/MiB/GiB are powers of 1024; K/KB, M/MB, G/GB powers
    of 1000)."""

    def byte_size(name: str, value: object) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and (found := _SIZE.fullmatch(value)):
            unit = (found[2] or "").lower()
            base = 1024 if "i" in unit else 1000
            power = "bkmgt".index(unit[0]) if unit else 0
            number = int(found[1]) * base ** power if unit not in ("", "b") else int(found[1])
        if number is None or number < minimum:
            raise ConfigError(f"{name}={value!r}: expected a size in bytes >= {minimum} (an "
                              "integer, or e.g. 512KiB, 64MiB, 100MB)")
        return number

    return byte_size


byte_size = byte_size_at_least(1)


def share(name: str, value: object) -> float:
    """A fraction in (0, 1]."""
    number = None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric or (isinstance(value, str) and _BARE_SECONDS.fullmatch(value.strip())):
        number = float(value)  # type: ignore[arg-type]
    if number is None or not 0.0 < number <= 1.0:  # NaN fails the comparison too
        raise ConfigError(f"{name}={value!r}: expected a share in (0, 1], e.g. 0.1")
    return number


def optional_fraction(name: str, value: object) -> float | None:
    """A number strictly between 0 and 1, or None ("", "off", "none" in text)."""
    # False too: YAML reads a bare `off` as a boolean.
    if value is None or value is False or (isinstance(value, str)
                                           and value.strip().lower() in _OFF):
        return None
    number: float | None = None
    if isinstance(value, float):  # no int lies strictly between 0 and 1
        number = value
    elif isinstance(value, str) and _BARE_SECONDS.fullmatch(value.strip()):
        number = float(value)
    if number is None or not 0.0 < number < 1.0:  # NaN fails the comparison too
        raise ConfigError(
            f"{name}={value!r}: expected a fraction strictly between 0 and 1 "
            "(e.g. 0.2), or off/none"
        )
    return number


def unit_fraction(name: str, value: object) -> float:
    """A number in [0, 1)."""
    numeric = isinstance(value, float | int) and not isinstance(value, bool)
    text = isinstance(value, str) and _BARE_SECONDS.fullmatch(value.strip()) is not None
    # value is a number or numeric text whenever float() is reached
    number = float(value) if numeric or text else None  # type: ignore[arg-type]
    if number is None or not 0.0 <= number < 1.0:
        raise ConfigError(f"{name}={value!r}: expected a fraction in [0, 1) (e.g. 0.25)")
    return number


def one_of(*choices: str) -> Validator:
    """One of ``choices``, case-insensitive, normalised to lower case."""

    def parse(name: str, value: object) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
        return value.strip().lower()

    return parse


def compression_name(name: str, value: object) -> str:
    """``off``, ``zlib`` or ``zstd`` (only when this Python has a zstd implementation)."""
    if value is False:  # YAML reads a bare `off` as a boolean
        value = "off"
    if not isinstance(value, str) or value.strip().lower() not in COMPRESSIONS:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(COMPRESSIONS)}")
    compression = value.strip().lower()
    if compression == "zstd" and zstd_module() is None:
        raise ConfigError(
            f"{name}={value!r}: zstd needs Python 3.14+ (compression.zstd) or the "
            f"zstandard package ({install_line('zstd')})")
    return compression


def codec_name(name: str, value: object) -> str:
    """One of the codec names; "msgpack" only when the msgpack package is importable."""
    if not isinstance(value, str) or value.strip().lower() not in NAMES:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(NAMES)}")
    codec = value.strip().lower()
    if codec == "msgpack":
        try:
            importlib.import_module("msgpack")
        except ImportError:
            raise ConfigError(
                f"{name}={value!r}: the msgpack codec needs the msgpack package "
                "(pip install 'dragonfly-cache[msgpack]')"
            ) from None
    return codec


def strong_secret(name: str, value: object) -> str | None:
    """A secret (never echoed) of at least 16 characters, or None when unset or empty: a
    pickle-signing secret, the admin token."""
    checked = secret(name, value)
    if checked is not None and len(checked) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{name}: must be at least {MIN_SECRET_BYTES} characters (value not shown)"
        )
    return checked


_ADDRESS = re.compile(
    r"\[(?P<v6>[^\]]+)\](?::(?P<p6>[^:]*))?"  # [::1]:6379
    r"|(?P<host>[^:\[\]]+)(?::(?P<port>[^:]*))?"  # host:6379 or host
)


def _address(name: str, item: object, default_port: int = 6379) -> str:
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f"{name}={item!r}: expected 'host:port'")
    text = item.strip()
    match = _ADDRESS.fullmatch(text)
    if match is None:
        raise ConfigError(f"{name}={item!r}: expected 'host:port' (IPv6 as '[::1]:6379')")
    host = match["v6"] or match["host"]
    port_text = match["p6"] if match["v6"] else match["port"]
    port = default_port
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
            raise ConfigError(f"{name}={item!r}: port must be an integer in 1..65535")
        port = int(port_text)
    return f"[{host}]:{port}" if match["v6"] else f"{host}:{port}"


def _address_list(name: str, value: object, default_port: int) -> list[str]:
    items: Iterable[object]
    if isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ConfigError(f"{name}={value!r}: expected a list of 'host:port' strings")
    return [_address(name, item, default_port) for item in items]


def addresses(name: str, value: object) -> list[str]:
    found = _address_list(name, value, 6379)
    if not found:
        raise ConfigError(f"{name}={value!r}: at least one address is required")
    return found


def sentinel_addresses(name: str, value: object) -> list[str]:
    """Sentinels' ``host:port`` list (the port defaults to Sentinel's 26379), or empty
    (``None`` or "" too): no Sentinel."""
    if value is None:
        return []
    found = _address_list(name, value, 26379)
    if len(set(found)) != len(found):
        raise ConfigError(f"{name}={value!r}: a sentinel is listed twice")
    return found


def service_name(name: str, value: object) -> str | None:
    """A Sentinel service name (``sentinel monitor <name> ...``): no spaces, or None."""
    checked = optional_text(name, value)
    if checked is not None and (checked.strip() != checked or len(checked.split()) != 1):
        raise ConfigError(f"{name}={value!r}: a Sentinel service name has no spaces")
    return checked


def section(cls: type) -> Validator:
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


def validate_fields(instance: Any) -> None:
    """Validate and normalise every declared field of a frozen config dataclass in place."""
    owner = type(instance).__name__
    for option in instance.OPTIONS:
        value = option.parse(f"{owner}.{option.field}", getattr(instance, option.field))
        object.__setattr__(instance, option.field, value)
