"""Sentinel settings: the four options from code, the environment and YAML, what they may
not be combined with, and the secrets never shown (the failover itself:
tests/test_sentinel.py)."""

from __future__ import annotations

import dataclasses

import pytest

from dragonfly_cache import CacheConfig, ConfigError, DragonflyConfig

PASSWORD = "s3nt1nel-Pa55word!"
USERNAME = "sentinel-user-7x"

SENTINEL_ENV = {
    "DRAGONFLY_SENTINELS": "10.0.0.1:26379, 10.0.0.2 ,[::1]:26380",
    "DRAGONFLY_SENTINEL_MASTER": "cache-primary",
    "DRAGONFLY_SENTINEL_PASSWORD": PASSWORD,
    "DRAGONFLY_SENTINEL_USERNAME": USERNAME,
}


def test_defaults_are_no_sentinel() -> None:
    config = DragonflyConfig()
    assert config.sentinels == []
    assert (config.sentinel_master, config.sentinel_password, config.sentinel_username) == (
        None, None, None)


def test_from_env_reads_every_sentinel_variable_with_port_26379_by_default() -> None:
    config = CacheConfig.from_env(SENTINEL_ENV).dragonfly
    assert config.sentinels == ["10.0.0.1:26379", "10.0.0.2:26379", "[::1]:26380"]
    assert config.sentinel_master == "cache-primary"
    assert config.sentinel_password == PASSWORD
    assert config.sentinel_username == USERNAME
    assert config.clustered is False  # a Sentinel-managed primary is never a cluster


def test_from_yaml_reads_the_sentinel_keys_as_a_list_or_a_string() -> None:
    document = """\
cache:
  dragonfly:
    sentinels: ["10.0.0.1", "10.0.0.2:26380"]
    sentinel_master: cache-primary
    sentinel_password: ${SENTINEL_PASSWORD}
    sentinel_username: ${SENTINEL_USERNAME}
"""
    config = CacheConfig.from_yaml(document, environ={"SENTINEL_PASSWORD": PASSWORD,
                                                      "SENTINEL_USERNAME": USERNAME}).dragonfly
    assert config.sentinels == ["10.0.0.1:26379", "10.0.0.2:26380"]
    assert (config.sentinel_master, config.sentinel_password, config.sentinel_username) == (
        "cache-primary", PASSWORD, USERNAME)
    text = document.replace('["10.0.0.1", "10.0.0.2:26380"]', '"10.0.0.1,10.0.0.2:26380"')
    assert CacheConfig.from_yaml(text, environ={}).dragonfly.sentinels == config.sentinels


def test_an_empty_sentinel_list_is_no_sentinel() -> None:
    assert CacheConfig.from_env({"DRAGONFLY_SENTINELS": ""}).dragonfly.sentinels == []


@pytest.mark.parametrize(("settings", "named"), [
    ({"DRAGONFLY_ADDRESSES": "a:6379,b:6379"},
     ["DRAGONFLY_SENTINELS", "DRAGONFLY_ADDRESSES"]),
    ({"DRAGONFLY_MODE": "cluster"}, ["DRAGONFLY_SENTINELS", "DRAGONFLY_MODE"]),
    ({"DRAGONFLY_SENTINEL_MASTER": ""}, ["DRAGONFLY_SENTINELS", "DRAGONFLY_SENTINEL_MASTER"]),
])
def test_sentinels_with_a_cluster_or_without_a_service_is_an_error_naming_both(
        settings: dict[str, str], named: list[str]) -> None:
    environ = {"DRAGONFLY_SENTINELS": "10.0.0.1", "DRAGONFLY_SENTINEL_MASTER": "primary",
               **settings}
    with pytest.raises(ConfigError) as caught:
        CacheConfig.from_env(environ)
    for name in named:
        assert name in str(caught.value)


def test_one_address_with_sentinels_is_allowed() -> None:
    config = DragonflyConfig(addresses=["10.0.0.9:6379"], sentinels=["10.0.0.1:26379"],
                             sentinel_master="primary", mode="standalone")
    assert config.clustered is False


@pytest.mark.parametrize("variable", ["DRAGONFLY_SENTINEL_MASTER",
                                      "DRAGONFLY_SENTINEL_PASSWORD",
                                      "DRAGONFLY_SENTINEL_USERNAME"])
def test_a_sentinel_setting_without_sentinels_is_an_error(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"{variable} set but DRAGONFLY_SENTINELS") as caught:
        CacheConfig.from_env({variable: "cache-primary-xyz"})
    assert "cache-primary-xyz" not in str(caught.value)


@pytest.mark.parametrize(("field", "value", "pattern"), [
    ("sentinels", "10.0.0.1:99999", r"^DragonflyConfig\.sentinels=.*port must be"),
    ("sentinels", ["a:26379", "a"], r"^DragonflyConfig\.sentinels=.*listed twice"),
    ("sentinels", 26379, r"^DragonflyConfig\.sentinels=26379: expected a list"),
    ("sentinel_master", "two words", r"^DragonflyConfig\.sentinel_master=.*no spaces"),
])
def test_bad_sentinel_values_name_the_field(field: str, value: object, pattern: str) -> None:
    settings: dict[str, object] = {"sentinels": ["10.0.0.1"], "sentinel_master": "primary",
                                   field: value}
    with pytest.raises(ConfigError, match=pattern):
        DragonflyConfig(**settings)  # type: ignore[arg-type]


def test_sentinel_password_and_username_are_never_shown() -> None:
    config = CacheConfig.from_env(SENTINEL_ENV)
    for text in (repr(config), str(config), repr(config.dragonfly)):
        assert PASSWORD not in text
        assert USERNAME not in text
    assert "cache-primary" in repr(config.dragonfly)
    for field in ("sentinel_password", "sentinel_username"):
        with pytest.raises(ConfigError) as caught:
            dataclasses.replace(config.dragonfly, **{field: 123456789})
        assert "123456789" not in str(caught.value)
        assert f"DragonflyConfig.{field}" in str(caught.value)
