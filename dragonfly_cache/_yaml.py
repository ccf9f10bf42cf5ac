"""Reading the ``cache:`` YAML document: parsing, unknown keys and ``${VAR}`` expansion."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._extras import require
from .exceptions import ConfigError

__all__ = ["load_root", "mapping", "reject_unknown", "yaml_values"]


def load_root(path_or_text: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a path or YAML text and return the mapping under its ``cache:`` root.

    Raises:
        MissingExtraError: PyYAML (the ``yaml`` extra) is not installed.
        ConfigError: unreadable or invalid YAML, or no ``cache:`` mapping.
    """
    # PyYAML is the yaml extra, imported here so that `import dragonfly_cache` needs none.
    require("yaml", "yaml", "CacheConfig.from_yaml")
    import yaml

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
    return mapping(document["cache"], "cache")


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


def mapping(value: object, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def reject_unknown(data: Mapping[str, Any], key: str, known: list[str]) -> None:
    for name in data:
        if name not in known:
            raise ConfigError(f"{key}.{name}: unknown key (expected one of: {', '.join(known)})")


def yaml_values(section: Any, data: Mapping[str, Any], key: str, env: Mapping[str, str]
                 ) -> dict[str, Any]:
    scalars = [o for o in section.OPTIONS if o.env is not None]
    reject_unknown(data, key, [o.field for o in scalars])
    return {
        option.field: option.parse(f"{key}.{option.field}",
                                   _interpolate(data[option.field], f"{key}.{option.field}", env))
        for option in scalars
        if option.field in data
    }


_REFERENCE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                        r"(?:(?P<op>:-|:\?)(?P<word>[^}]*))?\})")


def _interpolate(value: object, key: str, env: Mapping[str, str]) -> object:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` in string values (and
    in list items), as a shell and docker-compose do: an unset ``${VAR}`` is empty."""
    if isinstance(value, list):
        return [_interpolate(item, key, env) for item in value]
    if not isinstance(value, str):
        return value

    def expand(match: re.Match[str]) -> str:
        name = match["name"]
        if name is None:
            return "$"
        found = env.get(name, "")
        if match["op"] == ":-":
            return found or match["word"]  # ':-': an empty variable takes the default too
        if match["op"] == ":?" and not found:
            reason = match["word"] or "required"
            raise ConfigError(f"{key}: environment variable {name} is not set or empty: "
                              f"{reason}")
        return found

    return _REFERENCE.sub(expand, value)
