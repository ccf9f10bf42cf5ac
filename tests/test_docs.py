"""Docs that stay true: the README example runs as written; the reference lists every option."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config

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
    with contextlib.redirect_stdout(output):
        exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - the README's own code
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
