"""Docs that stay true: the README example runs as written; the reference lists every option
with its environment variable, type and default, and nothing else (tests/test_docs_site.py
checks the rest of the site)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config
from dragonfly_cache.config import parse_duration

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
REFERENCE = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
FLASK_DOC = (ROOT / "docs" / "flask.md").read_text(encoding="utf-8")


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def options() -> list[tuple[str, str]]:
    """(YAML key, env var) of every scalar option the code declares."""
    sections = [(DragonflyConfig, "cache.dragonfly."), (L1Config, "cache.l1."),
                (L2Config, "cache.l2."), (CacheConfig, "cache.")]
    return [(prefix + option.field, option.env) for cls, prefix in sections
            for option in cls.OPTIONS if option.env is not None]


def test_readme_first_example_runs_as_written(redis_server: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", redis_server.address)
    example, expected = blocks(README, "python")[0], blocks(README, "text")[0]
    assert len(example.strip().splitlines()) <= 12
    output = io.StringIO()
    namespace: dict[str, Any] = {}
    try:
        with contextlib.redirect_stdout(output):
            exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    finally:
        cache = namespace.get("cache")
        if cache is not None:
            cache.close()  # its invalidation listener must not outlive the test
    assert output.getvalue() == expected


def test_readme_names_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:20])
    assert "./scripts/demo.sh" in first_screen
    assert "./scripts/test.sh" in first_screen
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize(("key", "env"), options())
def test_every_option_is_in_the_reference(key: str, env: str) -> None:
    row = next((line for line in REFERENCE.splitlines() if f"`{key}`" in line), None)
    assert row is not None, f"{key} missing from docs/configuration.md"
    assert f"`{env}`" in row


# The reference's "type" column, from each field's annotation.
TYPE_WORDS = {"list[str]": "list of strings", "str": "string", "str | None": "string",
              "int": "integer", "float": "duration", "bool": "boolean",
              "float | None": "fraction"}


@pytest.mark.parametrize(("key", "env"), options())
def test_the_reference_gives_each_option_its_type_and_default(key: str, env: str) -> None:
    sections = {"cache.dragonfly": DragonflyConfig, "cache.l1": L1Config, "cache.l2": L2Config,
                "cache": CacheConfig}
    section, field_name = key.rsplit(".", 1)
    field = next(f for f in dataclasses.fields(sections[section]) if f.name == field_name)
    option = next(o for o in sections[section].OPTIONS if o.field == field_name)
    row = next(line for line in REFERENCE.splitlines() if line.startswith(f"| `{key}` |"))
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    fraction = option.parse.__name__ in ("unit_fraction", "optional_fraction", "share")
    duration = option.parse.__name__ == "optional_duration"  # float | None, None: off
    expected = "fraction" if fraction else "duration" if duration else TYPE_WORDS[str(field.type)]
    assert cells[2] == expected, row
    default = sections[section]()
    value = getattr(default, field_name)
    documented = cells[3]
    if value is None:
        assert documented == "none", row
    elif isinstance(value, bool):
        assert documented == f"`{str(value).lower()}`", row
    elif isinstance(value, float) and fraction:
        assert documented == f"`{value}`", row
    elif isinstance(value, float):
        # a Go-style duration: parse it back
        assert parse_duration(documented.strip("`")) == value, row
    elif isinstance(value, int):
        assert documented == f"`{value}`", row
    elif isinstance(value, str):
        assert documented == f"`{json.dumps(value)}`", row
    else:
        assert json.loads(documented.strip("`")) == value, row


def test_the_reference_names_no_option_the_code_lacks() -> None:
    from dragonfly_cache.flask import _SETTINGS

    known_env = {env for _, env in options()} | set(_SETTINGS)
    known_keys = {key for key, _ in options()}
    assert set(re.findall(r"`((?:DRAGONFLY|CACHE)_[A-Z0-9_]+)`", REFERENCE)) <= known_env
    assert set(re.findall(r"`(cache\.[a-z0-9_.]+)`", REFERENCE)) <= known_keys


@pytest.mark.parametrize("document", blocks(README, "yaml") + blocks(REFERENCE, "yaml"))
def test_yaml_examples_load(document: str) -> None:
    config = CacheConfig.from_yaml(document, environ={})
    assert config.key_prefix == "myapp:"
    assert config.l1.ttl == 300.0


def test_every_flask_setting_is_documented() -> None:
    from dragonfly_cache.flask import _SETTINGS

    for name in _SETTINGS:
        assert f"`{name}`" in FLASK_DOC, name
    assert "[Flask" in REFERENCE or "flask.md" in REFERENCE


def test_every_metric_family_is_documented() -> None:
    from dragonfly_cache.metrics import METRICS

    for family in METRICS.all():
        name = family._name + ("_total" if family._type == "counter" else "")
        assert f"`{name}`" in FLASK_DOC, name
