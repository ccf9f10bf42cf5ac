"""What the framework adapters share: URLs, options, signed pickles, one cache per process."""

from __future__ import annotations

import pickle

import pytest

from dragonfly_cache import CacheConfig, ConfigError, DragonflyConfig, L1Config, codecs
from dragonfly_cache.contrib._common import (
    build_config,
    pickle_codec,
    settings_from_url,
    shared_cache,
)

URL = "CACHES['default']['LOCATION']"


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", {"DRAGONFLY_ADDRESSES": "127.0.0.1:6379", "DRAGONFLY_DB": 0,
                                 "DRAGONFLY_TLS": False}),
    ("rediss://cache.internal/3", {"DRAGONFLY_ADDRESSES": "cache.internal:6379",
                                   "DRAGONFLY_DB": 3, "DRAGONFLY_TLS": True}),
    ("redis://:s%40cret@h:7000", {"DRAGONFLY_ADDRESSES": "h:7000", "DRAGONFLY_TLS": False,
                                  "DRAGONFLY_PASSWORD": "s@cret"}),
    ("redis://app:pw@h:7000?db=2", {"DRAGONFLY_ADDRESSES": "h:7000", "DRAGONFLY_TLS": False,
                                    "DRAGONFLY_DB": 2, "DRAGONFLY_PASSWORD": "pw",
                                    "DRAGONFLY_USERNAME": "app"}),
    ("10.0.0.5:6380", {"DRAGONFLY_ADDRESSES": "10.0.0.5:6380", "DRAGONFLY_TLS": False}),
    ("[::1]:6379", {"DRAGONFLY_ADDRESSES": "[::1]:6379", "DRAGONFLY_TLS": False}),
    ("dragonfly://localhost", {"DRAGONFLY_ADDRESSES": "localhost:6379", "DRAGONFLY_TLS": False}),
])
def test_urls_become_our_settings(url: str, expected: dict[str, object]) -> None:
    assert settings_from_url(url, URL) == expected


@pytest.mark.parametrize(("url", "problem"), [
    ("memcached://h:11211", "scheme 'memcached'"), ("redis://h:port", "invalid port"),
    ("redis:///0", "no host"), ("redis://h/zero", "db must be a number"), ("", "expected"),
    (6379, "expected"),
])
def test_bad_urls_name_the_setting_and_hide_the_password(url: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"^CACHES\['default'\]\['LOCATION'\]: .*{problem}"):
        settings_from_url(url, URL)
    with pytest.raises(ConfigError) as caught:
        settings_from_url("redis://:hunter2hunter2@h:port", URL)
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_build_config_layers_own_settings_over_options_over_the_environment() -> None:
    config = build_config(
        {"DRAGONFLY_ADDRESSES": "h:1", "CACHE_KEY_PREFIX": "app:", "DRAGONFLY_DB": None},
        {"CACHE_L1_TTL": "5s", "CACHE_KEY_PREFIX": "ignored:", "DRAGONFLY_POOL_SIZE": 3},
        where="CACHE_OPTIONS",
        environ={"DRAGONFLY_DB": "4", "CACHE_L1_TTL": "1m", "DRAGONFLY_ADDRESSES": "e:2"})
    assert config.dragonfly.addresses == ["h:1"] and config.key_prefix == "app:"
    assert config.l1.ttl == 5.0 and config.dragonfly.pool_size == 3
    assert config.dragonfly.db == 4  # absent from own and options: the environment's


def test_build_config_refuses_unknown_options_and_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^CACHE_OPTIONS: unknown option\(s\) 'CACHE_L1_TLL'"):
        build_config({}, {"CACHE_L1_TLL": "5s"}, where="CACHE_OPTIONS", environ={})
    with pytest.raises(ConfigError, match=r"^OPTIONS: .*CACHE_L1_TTL"):
        build_config({}, {"CACHE_L1_TTL": "soon"}, where="OPTIONS", environ={})


def test_pickles_are_signed_with_a_derived_key_and_never_unpickled_unsigned() -> None:
    secret = "a Django SECRET_KEY of some length"
    codec = pickle_codec(secret, setting="SECRET_KEY")
    value = {"user": 1, "tags": {"a", "b"}}
    data = codec.encode(value)
    assert codec.decode(data) == value
    # The secret itself is not the key: a value signed with it does not verify.
    raw = codecs.SignedPickle(secret.encode()).encode(value)
    with pytest.raises(codecs.DecodeError):
        codec.decode(raw)
    with pytest.raises(codecs.DecodeError):
        codec.decode(pickle.dumps(value))  # unsigned: refused before unpickling
    assert pickle_codec(secret.encode(), setting="SECRET_KEY").decode(data) == value


@pytest.mark.parametrize("secret", [None, "", b"", "too short"])
def test_a_missing_or_short_secret_names_the_setting(secret: str | bytes | None) -> None:
    with pytest.raises(ConfigError, match=r"^SECRET_KEY "):
        pickle_codec(secret, setting="SECRET_KEY")


def test_one_cache_per_process_and_configuration() -> None:
    config = CacheConfig(dragonfly=DragonflyConfig(mode="standalone"),
                         l1=L1Config(invalidation=False), key_prefix="shared-test:")
    same = CacheConfig(dragonfly=DragonflyConfig(mode="standalone"),
                       l1=L1Config(invalidation=False), key_prefix="shared-test:")
    first = shared_cache(config)
    assert shared_cache(same) is first
    assert shared_cache(CacheConfig(dragonfly=DragonflyConfig(mode="standalone"),
                                    l1=L1Config(invalidation=False))) is not first
    first.close()
    replacement = shared_cache(config)
    assert replacement is not first and not replacement.closed
    replacement.close()
