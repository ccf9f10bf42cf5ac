"""Unit tests for dragonfly_cache.config: defaults, validation, from_env and from_yaml.

Pure and fast: no servers, no network; files only under ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import timedelta
from pathlib import Path

import pytest

from dragonfly_cache.config import (
    CacheConfig,
    DragonflyConfig,
    L1Config,
    L2Config,
    parse_duration,
)
from dragonfly_cache.exceptions import CacheError, ConfigError

SECRET = "s3cr3t-Pa55word!"
TOKEN = "adm1n-T0ken-xyz-0123"
PICKLE_SECRET = "p1ckle-S1gning-k3y-0123"

ALL_ENV_VARS = sorted(
    option.env
    for section in (DragonflyConfig, L1Config, L2Config, CacheConfig)
    for option in section.OPTIONS
    if option.env is not None
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove every configuration variable from os.environ for the test's duration."""
    for name in ALL_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- defaults


def test_dragonfly_defaults() -> None:
    cfg = DragonflyConfig()
    assert cfg.addresses == ["127.0.0.1:6379"]
    assert cfg.password is None
    assert cfg.db == 0
    assert cfg.pool_size == 10
    assert cfg.max_retries == 3
    assert cfg.tls is False
    assert cfg.username is None
    assert cfg.connect_timeout == 0.25
    assert cfg.socket_timeout == 0.25
    assert cfg.pool_timeout == 0.25


def test_l1_defaults() -> None:
    cfg = L1Config()
    assert cfg.max_size == 10000
    assert cfg.ttl == 300.0
    assert isinstance(cfg.ttl, float)


def test_l2_defaults() -> None:
    cfg = L2Config()
    assert cfg.ttl == 3600.0
    assert isinstance(cfg.ttl, float)
    assert cfg.negative_ttl == 30.0
    assert cfg.refresh_ahead is None
    assert cfg.fleet_lock is False
    assert cfg.stale_if_error is None  # off


def test_cache_defaults() -> None:
    cfg = CacheConfig()
    assert cfg.dragonfly == DragonflyConfig()
    assert cfg.l1 == L1Config()
    assert cfg.l2 == L2Config()
    assert cfg.key_prefix == ""
    assert cfg.admin_token is None
    assert cfg.codec == "json"  # never pickle by default
    assert cfg.pickle_secret is None


def test_default_addresses_are_not_shared_between_instances() -> None:
    a, b = DragonflyConfig(), DragonflyConfig()
    assert a.addresses == b.addresses
    assert a.addresses is not b.addresses


def test_option_env_names_are_unique() -> None:
    assert len(ALL_ENV_VARS) == len(set(ALL_ENV_VARS))


# --------------------------------------------------------------------------- frozen


@pytest.mark.parametrize(
    ("instance", "attribute", "value"),
    [
        (DragonflyConfig(), "pool_size", 5),
        (DragonflyConfig(), "password", "x"),
        (DragonflyConfig(), "addresses", ["a:1"]),
        (L1Config(), "ttl", 1.0),
        (L1Config(), "max_size", 1),
        (L2Config(), "ttl", 1.0),
        (L2Config(), "negative_ttl", 1.0),
        (L2Config(), "refresh_ahead", 0.5),
        (L2Config(), "fleet_lock", True),
        (CacheConfig(), "key_prefix", "p:"),
        (CacheConfig(), "codec", "bytes"),
        (CacheConfig(), "pickle_secret", PICKLE_SECRET),
        (CacheConfig(), "l1", L1Config()),
        (CacheConfig(), "admin_token", "t" * 16),
    ],
)
def test_configs_are_frozen(instance: object, attribute: str, value: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(instance, attribute, value)


def test_replace_revalidates() -> None:
    cfg = dataclasses.replace(L1Config(), ttl="2m")
    assert cfg.ttl == 120.0
    with pytest.raises(ConfigError, match=r"L1Config\.max_size"):
        dataclasses.replace(L1Config(), max_size=0)


# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("1.5h", 5400.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),  # micro sign U+00B5, accepted like Go
        ("500μs", 0.0005),  # Greek mu U+03BC, accepted like Go
        ("100ns", 1e-7),
        (".5s", 0.5),
        ("2.s", 2.0),
        ("1m1h", 3660.0),
        ("  30s  ", 30.0),
        ("30", 30.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("30.", 30.0),
        (" 7 ", 7.0),
        (30, 30.0),
        (1, 1.0),
        (0.5, 0.5),
        (1e-3, 0.001),
        (timedelta(seconds=2), 2.0),
        (timedelta(minutes=1, milliseconds=500), 60.5),
    ],
)
def test_parse_duration_valid(value: object, expected: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "abc",
        "5x",
        "-5s",
        "+5s",
        "5 s",
        "1h 30m",
        "5 minutes",
        "s",
        "1.5.5s",
        "1e3",
        "0x10",
        "inf",
        "nan",
        "-1",
        "0",
        "0s",
        "0.0",
        "0h0m",
        0,
        0.0,
        -1,
        -0.5,
        float("inf"),
        float("-inf"),
        float("nan"),
        timedelta(0),
        timedelta(seconds=-1),
        True,
        False,
        None,
        [30],
        b"30s",
    ],
)
def test_parse_duration_invalid(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("5x", r"^ttl='5x': not a duration"),
        ("abc", r"^ttl='abc': not a duration"),
        ("-5s", r"^ttl='-5s': not a duration"),
        ("0", r"^ttl='0': duration must be positive and finite"),
        (0, r"^ttl=0: duration must be positive and finite"),
        (-1, r"^ttl=-1: duration must be positive and finite"),
        (float("inf"), r"^ttl=inf: duration must be positive and finite"),
        (True, r"^ttl=True: expected a duration, got bool"),
        (None, r"^ttl=None: expected a duration, got NoneType"),
    ],
)
def test_parse_duration_error_names_value(value: object, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_duration(value, "ttl")


def test_parse_duration_default_name() -> None:
    with pytest.raises(ConfigError, match=r"^duration='5x'"):
        parse_duration("5x")


def test_config_error_hierarchy() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_duration("abc")
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, CacheError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, CacheError)


# --------------------------------------------------------------------------- direct construction


def test_direct_pool_size_zero_names_field() -> None:
    pattern = r"^DragonflyConfig\.pool_size=0: expected an integer >= 1"
    with pytest.raises(ConfigError, match=pattern):
        DragonflyConfig(pool_size=0)


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"pool_size": True}, "DragonflyConfig.pool_size"),
        ({"pool_size": False}, "DragonflyConfig.pool_size"),
        ({"pool_size": 1.0}, "DragonflyConfig.pool_size"),
        ({"pool_size": "1.5"}, "DragonflyConfig.pool_size"),
        ({"pool_size": None}, "DragonflyConfig.pool_size"),
        ({"db": -1}, "DragonflyConfig.db"),
        ({"db": True}, "DragonflyConfig.db"),
        ({"max_retries": -1}, "DragonflyConfig.max_retries"),
        ({"max_retries": "x"}, "DragonflyConfig.max_retries"),
        ({"tls": "maybe"}, "DragonflyConfig.tls"),
        ({"tls": 1}, "DragonflyConfig.tls"),
        ({"tls": None}, "DragonflyConfig.tls"),
        ({"addresses": []}, "DragonflyConfig.addresses"),
        ({"addresses": "host:0"}, "DragonflyConfig.addresses"),
        ({"addresses": [6379]}, "DragonflyConfig.addresses"),
        ({"addresses": None}, "DragonflyConfig.addresses"),
        ({"addresses": {"a:1"}}, "DragonflyConfig.addresses"),
        ({"username": 42}, "DragonflyConfig.username"),
        ({"connect_timeout": 0}, "DragonflyConfig.connect_timeout"),
        ({"socket_timeout": "fast"}, "DragonflyConfig.socket_timeout"),
        ({"pool_timeout": -0.1}, "DragonflyConfig.pool_timeout"),
    ],
)
def test_dragonfly_direct_validation(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(field_name)}\b"):
        DragonflyConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"max_size": 0}, "L1Config.max_size"),
        ({"max_size": True}, "L1Config.max_size"),
        ({"max_size": 10.0}, "L1Config.max_size"),
        ({"ttl": 0}, "L1Config.ttl"),
        ({"ttl": "5 minutes"}, "L1Config.ttl"),
        ({"ttl": None}, "L1Config.ttl"),
    ],
)
def test_l1_direct_validation(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(field_name)}="):
        L1Config(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [0, "0s", -1, "forever", True])
def test_l2_direct_validation(ttl: object) -> None:
    with pytest.raises(ConfigError, match=r"^L2Config\.ttl="):
        L2Config(ttl=ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"l1": "x"}, r"^CacheConfig\.l1: expected a L1Config, got str"),
        ({"l2": L1Config()}, r"^CacheConfig\.l2: expected a L2Config, got L1Config"),
        ({"dragonfly": {}}, r"^CacheConfig\.dragonfly: expected a DragonflyConfig, got dict"),
        ({"dragonfly": None}, r"^CacheConfig\.dragonfly: expected a DragonflyConfig"),
        ({"key_prefix": None}, r"^CacheConfig\.key_prefix=None: expected a string"),
        ({"key_prefix": 5}, r"^CacheConfig\.key_prefix=5: expected a string, got int"),
    ],
)
def test_cache_direct_validation(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        CacheConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        ("5m", 300.0),
        (timedelta(seconds=2), 2.0),
        (timedelta(hours=1), 3600.0),
        (10, 10.0),
        ("1.5", 1.5),
        ("1h30m", 5400.0),
    ],
)
def test_l1_ttl_normalised_to_float(ttl: object, expected: float) -> None:
    cfg = L1Config(ttl=ttl)  # type: ignore[arg-type]
    assert cfg.ttl == expected
    assert isinstance(cfg.ttl, float)


def test_l2_ttl_normalised() -> None:
    assert L2Config(ttl="2h").ttl == 7200.0  # type: ignore[arg-type]


def test_dragonfly_direct_normalisation() -> None:
    cfg = DragonflyConfig(
        addresses="a, b:1 ,[::1]",  # type: ignore[arg-type]
        password="",
        db=" 0 ",  # type: ignore[arg-type]
        pool_size="+7",  # type: ignore[arg-type]
        max_retries="0",  # type: ignore[arg-type]
        tls="YES",  # type: ignore[arg-type]
        username="",
        connect_timeout="100ms",  # type: ignore[arg-type]
        socket_timeout=timedelta(seconds=1),  # type: ignore[arg-type]
        pool_timeout=2,
    )
    assert cfg.addresses == ["a:6379", "b:1", "[::1]:6379"]
    assert cfg.password is None
    assert cfg.db == 0
    assert DragonflyConfig(db=" 3 ").db == 3  # type: ignore[arg-type]
    assert cfg.mode == "auto" and cfg.clustered is True  # several addresses: a cluster
    assert cfg.pool_size == 7
    assert cfg.max_retries == 0
    assert cfg.tls is True
    assert cfg.username is None
    assert cfg.connect_timeout == pytest.approx(0.1)
    assert cfg.socket_timeout == 1.0
    assert cfg.pool_timeout == 2.0


def test_addresses_tuple_becomes_list() -> None:
    cfg = DragonflyConfig(addresses=("h1:1", "h2"))  # type: ignore[arg-type]
    assert cfg.addresses == ["h1:1", "h2:6379"]


# --------------------------------------------------------------------------- secrets


def test_bad_password_type_not_echoed_direct() -> None:
    with pytest.raises(ConfigError, match=r"^DragonflyConfig\.password: .*value not shown") as exc:
        DragonflyConfig(password=12345)  # type: ignore[arg-type]
    assert "12345" not in str(exc.value)
    assert "int" in str(exc.value)


def test_bad_admin_token_type_not_echoed_direct() -> None:
    with pytest.raises(ConfigError, match=r"^CacheConfig\.admin_token: .*value not shown") as exc:
        CacheConfig(admin_token=987654321)  # type: ignore[arg-type]
    assert "987654321" not in str(exc.value)


def test_bad_password_type_not_echoed_yaml() -> None:
    doc = "cache:\n  dragonfly:\n    password: 12345\n"
    with pytest.raises(ConfigError, match=r"^cache\.dragonfly\.password: .*value not shown") as exc:
        CacheConfig.from_yaml(doc, environ={})
    assert "12345" not in str(exc.value)


def test_bad_admin_token_type_not_echoed_yaml() -> None:
    doc = "cache:\n  admin_token: [987654321]\n"
    with pytest.raises(ConfigError, match=r"^cache\.admin_token: .*value not shown") as exc:
        CacheConfig.from_yaml(doc, environ={})
    assert "987654321" not in str(exc.value)


def test_secrets_not_in_repr_or_str() -> None:
    dragonfly = DragonflyConfig(password=SECRET, username="alice")
    cfg = CacheConfig(dragonfly=dragonfly, admin_token=TOKEN)
    for text in (repr(dragonfly), str(dragonfly), repr(cfg), str(cfg)):
        assert SECRET not in text
        assert TOKEN not in text
    assert "alice" in repr(dragonfly)
    # The values are still there, just not shown.
    assert cfg.dragonfly.password == SECRET
    assert cfg.admin_token == TOKEN


def test_secrets_not_in_repr_from_env() -> None:
    cfg = CacheConfig.from_env({"DRAGONFLY_PASSWORD": SECRET, "CACHE_ADMIN_TOKEN": TOKEN})
    assert SECRET not in repr(cfg)
    assert TOKEN not in repr(cfg)
    assert SECRET not in str(cfg.dragonfly)


@pytest.mark.parametrize(
    ("kwargs", "attribute"),
    [({"password": ""}, "password"), ({"password": None}, "password")],
)
def test_empty_password_is_none(kwargs: dict[str, object], attribute: str) -> None:
    assert getattr(DragonflyConfig(**kwargs), attribute) is None  # type: ignore[arg-type]


def test_empty_admin_token_is_none() -> None:
    assert CacheConfig(admin_token="").admin_token is None


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:6379", ["127.0.0.1:6379"]),
        ("localhost", ["localhost:6379"]),
        ("a:1,b:2", ["a:1", "b:2"]),
        (" a:1 , b:2 ", ["a:1", "b:2"]),
        ("a:1,,b:2,", ["a:1", "b:2"]),
        ("[::1]:6380", ["[::1]:6380"]),
        ("[::1]", ["[::1]:6379"]),
        ("[fe80::1%eth0]:7000", ["[fe80::1%eth0]:7000"]),
        ("h1:6379,[::1]:6380,h3", ["h1:6379", "[::1]:6380", "h3:6379"]),
        ("host:1", ["host:1"]),
        ("host:65535", ["host:65535"]),
        ("host:06380", ["host:6380"]),
    ],
)
def test_env_addresses(value: str, expected: list[str]) -> None:
    cfg = CacheConfig.from_env({"DRAGONFLY_ADDRESSES": value})
    assert cfg.dragonfly.addresses == expected


PORT_RANGE = "port must be an integer in 1..65535"
HOST_PORT = "expected 'host:port'"
NEED_ONE = "at least one address is required"


@pytest.mark.parametrize(
    ("value", "shown", "reason"),
    [
        ("", "''", NEED_ONE),
        ("   ", "'   '", NEED_ONE),
        (",", "','", NEED_ONE),
        (" , , ", "' , , '", NEED_ONE),
        ("host:0", "'host:0'", PORT_RANGE),
        ("host:70000", "'host:70000'", PORT_RANGE),
        ("host:65536", "'host:65536'", PORT_RANGE),
        ("host:abc", "'host:abc'", PORT_RANGE),
        ("host:", "'host:'", PORT_RANGE),
        ("host:-1", "'host:-1'", PORT_RANGE),
        ("[::1]:0", "'[::1]:0'", PORT_RANGE),
        ("[::1]:x", "'[::1]:x'", PORT_RANGE),
        ("::1", "'::1'", HOST_PORT),
        ("::1:6379", "'::1:6379'", HOST_PORT),
        ("a:b:c", "'a:b:c'", HOST_PORT),
        ("[]:6379", "'[]:6379'", HOST_PORT),
        ("[::1", "'[::1'", HOST_PORT),
        ("good:1,host:0", "'host:0'", PORT_RANGE),
    ],
)
def test_env_addresses_invalid(value: str, shown: str, reason: str) -> None:
    pattern = rf"^DRAGONFLY_ADDRESSES={re.escape(shown)}: {re.escape(reason)}"
    with pytest.raises(ConfigError, match=pattern):
        CacheConfig.from_env({"DRAGONFLY_ADDRESSES": value})


# --------------------------------------------------------------------------- from_env


def test_from_env_empty_mapping_gives_defaults() -> None:
    assert CacheConfig.from_env({}) == CacheConfig()


def test_from_env_ignores_unrelated_variables() -> None:
    assert CacheConfig.from_env({"HOME": "/root", "DRAGONFLY": "x", "CACHE_L3_TTL": "1"}) == (
        CacheConfig()
    )


FULL_ENV = {
    "DRAGONFLY_ADDRESSES": "10.0.0.1:6379, [::1]:6380,cache-host",
    "DRAGONFLY_PASSWORD": SECRET,
    "DRAGONFLY_DB": "0",
    "DRAGONFLY_MODE": " Cluster ",
    "DRAGONFLY_POOL_SIZE": "25",
    "DRAGONFLY_MAX_RETRIES": "0",
    "DRAGONFLY_TLS": "true",
    "DRAGONFLY_READ_FROM_REPLICAS": "on",
    "DRAGONFLY_USERNAME": "alice",
    "DRAGONFLY_CONNECT_TIMEOUT": "500ms",
    "DRAGONFLY_SOCKET_TIMEOUT": "2",
    "DRAGONFLY_POOL_TIMEOUT": "1.5s",
    "DRAGONFLY_BREAKER_THRESHOLD": "7",
    "DRAGONFLY_BREAKER_COOLDOWN": "500ms",
    "DRAGONFLY_BREAKER_MAX_COOLDOWN": "1m",
    "CACHE_L1_MAX_SIZE": "123",
    "CACHE_L1_INVALIDATION": "off",
    "CACHE_L1_DEGRADED_TTL": "250ms",
    "CACHE_L1_TTL": "1m30s",
    "CACHE_L2_TTL": "2h",
    "CACHE_NEGATIVE_TTL": "45s",
    "CACHE_REFRESH_AHEAD": "0.25",
    "CACHE_FLEET_LOCK": "true",
    "DRAGONFLY_TLS_CA_FILE": __file__,  # any readable file passes validation
    "DRAGONFLY_TLS_CERT_FILE": __file__,
    "DRAGONFLY_TLS_KEY_FILE": __file__,
    "DRAGONFLY_TLS_CHECK_HOSTNAME": "off",
    "CACHE_REFRESH_JITTER": "0.5",
    "CACHE_REFRESH_SYNC": "0.1",
    "CACHE_FLEET_LOCK_TTL": "3s",
    "CACHE_STALE_IF_ERROR": "5m",
    "CACHE_L1_MAX_BYTES": "16MiB",
    "CACHE_L1_MAX_ENTRY_SHARE": "0.25",
    "CACHE_COMPRESSION": "zlib",
    "CACHE_COMPRESS_MIN_SIZE": "2KiB",
    "CACHE_KEY_PREFIX": "app:v1:",
    "CACHE_ADMIN_TOKEN": TOKEN,
    "CACHE_CODEC": "pickle",
    "CACHE_PICKLE_SECRET": PICKLE_SECRET,
}


def _assert_full_env(cfg: CacheConfig) -> None:
    d = cfg.dragonfly
    assert d.addresses == ["10.0.0.1:6379", "[::1]:6380", "cache-host:6379"]
    assert d.password == SECRET
    assert d.db == 0
    assert d.pool_size == 25
    assert (cfg.l1.invalidation, cfg.l1.degraded_ttl) == ("off", 0.25)
    assert d.max_retries == 0
    assert (d.breaker_threshold, d.breaker_cooldown, d.breaker_max_cooldown) == (7, 0.5, 60.0)
    assert (d.tls_ca_file, d.tls_cert_file, d.tls_key_file) == (__file__, __file__, __file__)
    assert d.tls_check_hostname is False
    assert d.tls is True
    assert d.username == "alice"
    assert d.mode == "cluster"
    assert d.read_from_replicas is True
    assert d.connect_timeout == 0.5
    assert d.socket_timeout == 2.0
    assert d.pool_timeout == 1.5
    assert cfg.l1 == L1Config(max_size=123, ttl=90.0, invalidation="off", degraded_ttl=0.25,
                              max_bytes=16 * 2**20, max_entry_share=0.25)
    assert cfg.l2 == L2Config(ttl=7200.0, negative_ttl=45.0, refresh_ahead=0.25, fleet_lock=True,
                              refresh_jitter=0.5, refresh_sync=0.1, fleet_lock_ttl=3.0,
                              compression="zlib", compress_min_size=2048,
                              stale_if_error=300.0)
    assert cfg.key_prefix == "app:v1:"
    assert cfg.admin_token == TOKEN
    assert cfg.codec == "pickle"
    assert cfg.pickle_secret == PICKLE_SECRET


# Sentinels cannot go with FULL_ENV's cluster: tests/test_sentinel_config.py reads them.
SENTINEL_VARS = {"DRAGONFLY_SENTINELS", "DRAGONFLY_SENTINEL_MASTER",
                 "DRAGONFLY_SENTINEL_PASSWORD", "DRAGONFLY_SENTINEL_USERNAME"}


def test_from_env_every_variable() -> None:
    assert set(FULL_ENV) == set(ALL_ENV_VARS) - SENTINEL_VARS
    _assert_full_env(CacheConfig.from_env(FULL_ENV))


def test_from_env_none_reads_os_environ(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in FULL_ENV.items():
        clean_env.setenv(name, value)
    _assert_full_env(CacheConfig.from_env(None))
    _assert_full_env(CacheConfig.from_env())


def test_from_env_default_with_clean_os_environ(clean_env: pytest.MonkeyPatch) -> None:
    assert CacheConfig.from_env() == CacheConfig()


def test_from_env_os_environ_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DRAGONFLY_POOL_SIZE", "0")
    with pytest.raises(ConfigError, match=r"^DRAGONFLY_POOL_SIZE='0'"):
        CacheConfig.from_env()


def test_from_env_partial_keeps_other_defaults() -> None:
    cfg = CacheConfig.from_env({"CACHE_L1_MAX_SIZE": "5"})
    assert cfg.l1.max_size == 5
    assert cfg.l1.ttl == 300.0
    assert cfg.l2 == L2Config()
    assert cfg.dragonfly == DragonflyConfig()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True), ("TRUE", True), ("True", True), ("1", True), ("yes", True),
        ("YES", True), ("on", True), ("On", True), (" true ", True),
        ("false", False), ("FALSE", False), ("False", False), ("0", False), ("no", False),
        ("No", False), ("off", False), ("OFF", False), (" off ", False),
    ],
)
def test_from_env_tls(value: str, expected: bool) -> None:
    assert CacheConfig.from_env({"DRAGONFLY_TLS": value}).dragonfly.tls is expected


@pytest.mark.parametrize(("value", "expected"), [("", None), ("hunter2", "hunter2")])
def test_from_env_password(value: str, expected: str | None) -> None:
    assert CacheConfig.from_env({"DRAGONFLY_PASSWORD": value}).dragonfly.password == expected


@pytest.mark.parametrize(("value", "expected"), [("", None), ("t" * 16, "t" * 16)])
def test_from_env_admin_token(value: str, expected: str | None) -> None:
    assert CacheConfig.from_env({"CACHE_ADMIN_TOKEN": value}).admin_token == expected


@pytest.mark.parametrize("value", ["short-tok3n", "fifteen-chars-x"])
def test_a_short_admin_token_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^CACHE_ADMIN_TOKEN: must be at least 16 "
                                          r"characters \(value not shown\)") as exc:
        CacheConfig.from_env({"CACHE_ADMIN_TOKEN": value})
    assert value not in str(exc.value)


@pytest.mark.parametrize(("value", "expected"), [("", None), ("bob", "bob")])
def test_from_env_username(value: str, expected: str | None) -> None:
    assert CacheConfig.from_env({"DRAGONFLY_USERNAME": value}).dragonfly.username == expected


@pytest.mark.parametrize("value", ["", "cache:", "a*b?[c]:"])
def test_from_env_key_prefix(value: str) -> None:
    assert CacheConfig.from_env({"CACHE_KEY_PREFIX": value}).key_prefix == value


@pytest.mark.parametrize(
    ("var", "value", "attribute", "expected"),
    [
        ("DRAGONFLY_DB", "0", "db", 0),
        ("DRAGONFLY_DB", "15", "db", 15),
        ("DRAGONFLY_DB", " 2 ", "db", 2),
        ("DRAGONFLY_POOL_SIZE", "1", "pool_size", 1),
        ("DRAGONFLY_POOL_SIZE", "+3", "pool_size", 3),
        ("DRAGONFLY_MAX_RETRIES", "0", "max_retries", 0),
        ("DRAGONFLY_MAX_RETRIES", "10", "max_retries", 10),
        ("DRAGONFLY_CONNECT_TIMEOUT", "250ms", "connect_timeout", 0.25),
        ("DRAGONFLY_CONNECT_TIMEOUT", "3", "connect_timeout", 3.0),
        ("DRAGONFLY_SOCKET_TIMEOUT", "1m", "socket_timeout", 60.0),
        ("DRAGONFLY_POOL_TIMEOUT", "0.1", "pool_timeout", 0.1),
    ],
)
def test_from_env_dragonfly_values(var: str, value: str, attribute: str, expected: object) -> None:
    cfg = CacheConfig.from_env({var: value})
    assert getattr(cfg.dragonfly, attribute) == expected


@pytest.mark.parametrize(
    ("env", "expected_l1", "expected_l2"),
    [
        ({"CACHE_L1_MAX_SIZE": "1"}, L1Config(max_size=1), L2Config()),
        ({"CACHE_L1_TTL": "30"}, L1Config(ttl=30.0), L2Config()),
        ({"CACHE_L1_TTL": "250ms"}, L1Config(ttl=0.25), L2Config()),
        ({"CACHE_L2_TTL": "1h30m"}, L1Config(), L2Config(ttl=5400.0)),
        ({"CACHE_L2_TTL": "0.5"}, L1Config(), L2Config(ttl=0.5)),
    ],
)
def test_from_env_tiers(env: dict[str, str], expected_l1: L1Config, expected_l2: L2Config) -> None:
    cfg = CacheConfig.from_env(env)
    assert cfg.l1 == expected_l1
    assert cfg.l2 == expected_l2


@pytest.mark.parametrize(
    ("var", "value", "reason"),
    [
        ("DRAGONFLY_POOL_SIZE", "0", "expected an integer >= 1"),
        ("DRAGONFLY_POOL_SIZE", "x", "expected an integer >= 1"),
        ("DRAGONFLY_POOL_SIZE", "1.5", "expected an integer >= 1"),
        ("DRAGONFLY_POOL_SIZE", "", "expected an integer >= 1"),
        ("DRAGONFLY_POOL_SIZE", "-3", "expected an integer >= 1"),
        ("DRAGONFLY_POOL_SIZE", "1e3", "expected an integer >= 1"),
        ("DRAGONFLY_DB", "-1", "expected an integer >= 0"),
        ("DRAGONFLY_DB", "one", "expected an integer >= 0"),
        ("DRAGONFLY_DB", "2.0", "expected an integer >= 0"),
        ("DRAGONFLY_MAX_RETRIES", "-1", "expected an integer >= 0"),
        ("DRAGONFLY_MAX_RETRIES", "three", "expected an integer >= 0"),
        ("DRAGONFLY_TLS", "maybe", "expected a boolean"),
        ("DRAGONFLY_TLS", "", "expected a boolean"),
        ("DRAGONFLY_TLS", "2", "expected a boolean"),
        ("DRAGONFLY_TLS", "y", "expected a boolean"),
        ("DRAGONFLY_CONNECT_TIMEOUT", "0", "duration must be positive and finite"),
        ("DRAGONFLY_CONNECT_TIMEOUT", "fast", "not a duration"),
        ("DRAGONFLY_SOCKET_TIMEOUT", "-1s", "not a duration"),
        ("DRAGONFLY_SOCKET_TIMEOUT", "", "not a duration"),
        ("DRAGONFLY_POOL_TIMEOUT", "0ms", "duration must be positive and finite"),
        ("DRAGONFLY_POOL_TIMEOUT", "10 s", "not a duration"),
        ("CACHE_L1_MAX_SIZE", "0", "expected an integer >= 1"),
        ("CACHE_L1_MAX_SIZE", "10k", "expected an integer >= 1"),
        ("CACHE_L1_TTL", "5 minutes", "not a duration"),
        ("CACHE_L1_TTL", "inf", "not a duration"),
        ("CACHE_L1_TTL", "0", "duration must be positive and finite"),
        ("CACHE_L2_TTL", "0s", "duration must be positive and finite"),
        ("CACHE_L2_TTL", "nan", "not a duration"),
        ("CACHE_L2_TTL", "1d", "not a duration"),
        ("CACHE_NEGATIVE_TTL", "0", "duration must be positive and finite"),
        ("CACHE_NEGATIVE_TTL", "soon", "not a duration"),
        ("CACHE_REFRESH_AHEAD", "0", "expected a fraction strictly between 0 and 1"),
        ("CACHE_REFRESH_AHEAD", "1", "expected a fraction strictly between 0 and 1"),
        ("CACHE_REFRESH_AHEAD", "1.0", "expected a fraction strictly between 0 and 1"),
        ("CACHE_REFRESH_AHEAD", "-0.5", "expected a fraction strictly between 0 and 1"),
        ("CACHE_REFRESH_AHEAD", "20%", "expected a fraction strictly between 0 and 1"),
        ("CACHE_REFRESH_AHEAD", "nan", "expected a fraction strictly between 0 and 1"),
        ("CACHE_REFRESH_AHEAD", "true", "expected a fraction strictly between 0 and 1"),
        ("CACHE_FLEET_LOCK", "maybe", "expected a boolean"),
        ("CACHE_FLEET_LOCK", "", "expected a boolean"),
        ("CACHE_CODEC", "xml", "expected one of bytes, json, msgpack, pickle"),
        ("CACHE_CODEC", "", "expected one of bytes, json, msgpack, pickle"),
    ],
)
def test_from_env_errors_name_var_and_value(var: str, value: str, reason: str) -> None:
    pattern = rf"^{re.escape(var)}={re.escape(repr(value))}: {re.escape(reason)}"
    with pytest.raises(ConfigError, match=pattern) as exc:
        CacheConfig.from_env({var: value})
    assert isinstance(exc.value, ValueError)
    assert isinstance(exc.value, CacheError)


def test_from_env_error_ignores_other_valid_vars() -> None:
    env = dict(FULL_ENV, CACHE_L1_TTL="5 minutes")
    with pytest.raises(ConfigError, match=r"^CACHE_L1_TTL='5 minutes'") as exc:
        CacheConfig.from_env(env)
    assert SECRET not in str(exc.value)
    assert TOKEN not in str(exc.value)
    assert PICKLE_SECRET not in str(exc.value)


# --------------------------------------------------------------------------- from_yaml

FULL_YAML = """\
cache:
  dragonfly:
    addresses: ["10.0.0.1:6379", "10.0.0.2:6380"]
    password: ${DRAGONFLY_PASSWORD}
    db: 0
    pool_size: 20
    max_retries: 5
    tls: true
  l1:
    max_size: 500
    ttl: 1m
  l2:
    ttl: 2h
  key_prefix: "app:"
"""


def _assert_full_yaml(cfg: CacheConfig, password: str = SECRET) -> None:
    d = cfg.dragonfly
    assert d.addresses == ["10.0.0.1:6379", "10.0.0.2:6380"]
    assert d.password == password
    assert d.db == 0
    assert d.pool_size == 20
    assert d.max_retries == 5
    assert d.tls is True
    assert d.username is None
    assert d.connect_timeout == 0.25
    assert cfg.l1 == L1Config(max_size=500, ttl=60.0)
    assert cfg.l2 == L2Config(ttl=7200.0)
    assert cfg.key_prefix == "app:"
    assert cfg.admin_token is None


def test_from_yaml_full_text() -> None:
    _assert_full_yaml(CacheConfig.from_yaml(FULL_YAML, environ={"DRAGONFLY_PASSWORD": SECRET}))


def test_from_yaml_full_text_os_environ(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DRAGONFLY_PASSWORD", SECRET)
    _assert_full_yaml(CacheConfig.from_yaml(FULL_YAML))


def test_from_yaml_os_environ_unset(clean_env: pytest.MonkeyPatch) -> None:
    assert CacheConfig.from_yaml(FULL_YAML).dragonfly.password is None  # empty: no AUTH
    with pytest.raises(ConfigError, match=r"^cache\.dragonfly\.password: .*DRAGONFLY_PASSWORD"):
        CacheConfig.from_yaml(FULL_YAML.replace("${DRAGONFLY_PASSWORD}",
                                                "${DRAGONFLY_PASSWORD:?}"))


@pytest.mark.parametrize("as_path", [str, Path])
def test_from_yaml_file(tmp_path: Path, as_path: type) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(FULL_YAML, encoding="utf-8")
    cfg = CacheConfig.from_yaml(as_path(path), environ={"DRAGONFLY_PASSWORD": SECRET})
    _assert_full_yaml(cfg)


def test_from_yaml_file_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text('cache:\n  key_prefix: "café:"\n', encoding="utf-8")
    assert CacheConfig.from_yaml(path, environ={}).key_prefix == "café:"


def test_from_yaml_relative_str_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.yaml").write_text("cache:\n  l2:\n    ttl: 5s\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert CacheConfig.from_yaml("c.yaml", environ={}).l2.ttl == 5.0


def test_from_yaml_file_error_names_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cache:\n  l1:\n    ttl: 5 minutes\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^cache\.l1\.ttl='5 minutes'"):
        CacheConfig.from_yaml(path, environ={})
    path.write_text("cache: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: invalid YAML"):
        CacheConfig.from_yaml(path, environ={})
    path.write_text("other: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: expected a mapping"):
        CacheConfig.from_yaml(str(path), environ={})


def test_from_yaml_nonexistent_str_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"top-level .cache. key.*not a readable file") as exc:
        CacheConfig.from_yaml(missing, environ={})
    assert missing in str(exc.value)


def test_from_yaml_nonexistent_pathlib_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"cannot read config file"):
        CacheConfig.from_yaml(missing, environ={})


def test_from_yaml_directory_pathlib_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}: cannot read config file"):
        CacheConfig.from_yaml(tmp_path, environ={})


@pytest.mark.parametrize("value", [None, 42, b"cache: {}", ["cache:"]])
def test_from_yaml_wrong_argument_type(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^from_yaml: expected a path or YAML text"):
        CacheConfig.from_yaml(value, environ={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "doc",
    [
        "cache:\n",
        "cache: {}\n",
        "cache: null\n",
        "cache:\n  dragonfly:\n  l1:\n  l2:\n",
        "cache:\n  dragonfly: {}\n  l1: {}\n  l2: {}\n",
        "cache: {}\nunrelated: 1\n",
    ],
)
def test_from_yaml_empty_sections_give_defaults(doc: str) -> None:
    assert CacheConfig.from_yaml(doc, environ={}) == CacheConfig()


def test_from_yaml_single_line_text() -> None:
    cfg = CacheConfig.from_yaml("cache: {l1: {max_size: 7}}", environ={})
    assert cfg.l1.max_size == 7


def test_from_yaml_all_fields() -> None:
    doc = """\
cache:
  dragonfly:
    addresses: "h1:1, [::1]:6380, h3"
    password: pw
    db: "0"
    pool_size: "4"
    max_retries: 0
    tls: "off"
    username: bob
    connect_timeout: 100ms
    socket_timeout: 2
    pool_timeout: 0.5
  l1:
    max_size: 9
    ttl: 45
  l2:
    ttl: 1.5h
  key_prefix: ""
  admin_token: tok-0123456789abcdef
"""
    cfg = CacheConfig.from_yaml(doc, environ={})
    d = cfg.dragonfly
    assert d.addresses == ["h1:1", "[::1]:6380", "h3:6379"]
    assert d.password == "pw"
    assert (d.db, d.pool_size, d.max_retries, d.tls, d.username) == (0, 4, 0, False, "bob")
    assert d.connect_timeout == pytest.approx(0.1)
    assert (d.socket_timeout, d.pool_timeout) == (2.0, 0.5)
    assert cfg.l1 == L1Config(max_size=9, ttl=45.0)
    assert cfg.l2 == L2Config(ttl=5400.0)
    assert cfg.key_prefix == ""
    assert cfg.admin_token == "tok-0123456789abcdef"


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('addresses: "10.0.0.1:6379,10.0.0.2:6380"', ["10.0.0.1:6379", "10.0.0.2:6380"]),
        ("addresses: 10.0.0.1:6379, 10.0.0.2", ["10.0.0.1:6379", "10.0.0.2:6379"]),
        ("addresses: redis.internal", ["redis.internal:6379"]),
        ('addresses: ["[::1]:6380", "host"]', ["[::1]:6380", "host:6379"]),
        ("addresses:\n      - a:1\n      - b:2", ["a:1", "b:2"]),
    ],
)
def test_from_yaml_addresses_forms(snippet: str, expected: list[str]) -> None:
    doc = f"cache:\n  dragonfly:\n    {snippet}\n"
    assert CacheConfig.from_yaml(doc, environ={}).dragonfly.addresses == expected


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        ("true", True), ("false", False), ("yes", True), ("off", False),
        ('"1"', True), ('"NO"', False),
    ],
)
def test_from_yaml_tls_forms(yaml_value: str, expected: bool) -> None:
    doc = f"cache:\n  dragonfly:\n    tls: {yaml_value}\n"
    assert CacheConfig.from_yaml(doc, environ={}).dragonfly.tls is expected


# --- interpolation


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${P}", {"P": "abc"}, "abc"),
        ("pre-${P}-post", {"P": "x"}, "pre-x-post"),
        ("${A}${B}", {"A": "a", "B": "b"}, "ab"),
        ("${P:-fallback}", {}, "fallback"),
        ("${P:-fallback}", {"P": "set"}, "set"),
        ("${P:-fallback}", {"P": ""}, "fallback"),
        ("${P:-}", {}, ""),
        ("$${P}", {}, "${P}"),
        ("a$$b", {}, "a$b"),
        ("$$$$", {}, "$$"),
        ("$${P}-${P}", {"P": "v"}, "${P}-v"),
        ("cost: $5", {}, "cost: $5"),
        ("$P", {"P": "v"}, "$P"),
        ("${P}", {"P": ""}, ""),
        ("${P}", {}, ""),
        ("a${P}b", {}, "ab"),
        ("${P:?must be set}", {"P": "v"}, "v"),
        ("${_P1}", {"_P1": "u"}, "u"),
        ("${P:-a:b/c d}", {}, "a:b/c d"),
    ],
)
def test_from_yaml_interpolation(value: str, env: dict[str, str], expected: str) -> None:
    doc = f"cache:\n  key_prefix: '{value}'\n"
    assert CacheConfig.from_yaml(doc, environ=env).key_prefix == expected


def test_from_yaml_interpolation_typed_values() -> None:
    doc = """\
cache:
  dragonfly:
    addresses: ["${HOST1}:${PORT1}", "${HOST2:-backup}"]
    db: ${DB}
    pool_size: ${POOL:-8}
    tls: ${TLS:-false}
    password: ${PW:-}
  l1:
    ttl: ${L1_TTL:-90s}
"""
    env = {"HOST1": "primary", "PORT1": "7000", "DB": "0", "TLS": "on"}
    cfg = CacheConfig.from_yaml(doc, environ=env)
    assert cfg.dragonfly.addresses == ["primary:7000", "backup:6379"]
    assert cfg.dragonfly.db == 0
    assert cfg.dragonfly.pool_size == 8
    assert cfg.dragonfly.tls is True
    assert cfg.dragonfly.password is None
    assert cfg.l1.ttl == 90.0


def test_from_yaml_interpolation_default_os_environ(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DFC_TEST_PREFIX", "from-env:")
    clean_env.delenv("DFC_TEST_UNSET", raising=False)
    doc = ("cache:\n  key_prefix: ${DFC_TEST_PREFIX}\n"
           "  admin_token: ${DFC_TEST_UNSET:-dflt-0123456789abcdef}\n")
    cfg = CacheConfig.from_yaml(doc)
    assert cfg.key_prefix == "from-env:"
    assert cfg.admin_token == "dflt-0123456789abcdef"


def test_from_yaml_explicit_environ_overrides_os_environ(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DRAGONFLY_PASSWORD", "from-os-environ")
    cfg = CacheConfig.from_yaml(FULL_YAML, environ={"DRAGONFLY_PASSWORD": SECRET})
    assert cfg.dragonfly.password == SECRET


def test_from_yaml_does_not_read_env_vars_directly() -> None:
    # from_yaml only interpolates ${VAR}; DRAGONFLY_* variables are not applied implicitly.
    cfg = CacheConfig.from_yaml("cache: {}\n", environ={"DRAGONFLY_POOL_SIZE": "99"})
    assert cfg.dragonfly.pool_size == 10


def test_from_yaml_unset_variable_is_empty_as_in_a_shell() -> None:
    """The seed's own file: ``password: ${DRAGONFLY_PASSWORD}`` with nothing set loads,
    with no password (no AUTH)."""
    cfg = CacheConfig.from_yaml(FULL_YAML, environ={"OTHER": "x"})
    assert cfg.dragonfly.password is None
    doc = 'cache:\n  key_prefix: pre-${NOPE}\n  dragonfly:\n    addresses: ["a:1${H}"]\n'
    cfg = CacheConfig.from_yaml(doc, environ={})
    assert cfg.key_prefix == "pre-" and cfg.dragonfly.addresses == ["a:1"]


@pytest.mark.parametrize(
    ("doc", "env", "key", "var", "reason"),
    [
        ("cache:\n  dragonfly:\n    password: ${PW:?set the cache password}\n", {},
         "cache.dragonfly.password", "PW", "set the cache password"),
        ("cache:\n  l1:\n    ttl: ${L1_TTL:?}\n", {"L1_TTL": ""}, "cache.l1.ttl", "L1_TTL",
         "required"),
        ('cache:\n  dragonfly:\n    addresses: ["a:1", "${H:?no host}"]\n', {},
         "cache.dragonfly.addresses", "H", "no host"),
    ],
)
def test_from_yaml_demanded_variable(doc: str, env: dict[str, str], key: str, var: str,
                                     reason: str) -> None:
    pattern = rf"^{re.escape(key)}: environment variable {var} is not set or empty: "
    with pytest.raises(ConfigError, match=pattern + re.escape(reason)):
        CacheConfig.from_yaml(doc, environ=env)
    assert CacheConfig.from_yaml(doc, environ={var: "7s" if "ttl" in key else "h:1"})


# --- error paths


@pytest.mark.parametrize(
    "doc",
    [
        "cache: [\n",
        "cache:\n  l1: {max_size: 1\n",
        "cache:\n  l1:\n    ttl: 1m\n   max_size: 3\n",
        "cache:\n\tl1: {}\n",
        'cache:\n  key_prefix: "unterminated\n',
    ],
)
def test_from_yaml_invalid_syntax(doc: str) -> None:
    with pytest.raises(ConfigError, match=r"^<yaml>: invalid YAML at line \d+, column \d+: "):
        CacheConfig.from_yaml(doc, environ={})


@pytest.mark.parametrize(
    "doc",
    [
        "",
        "   \n",
        "# only a comment\n",
        "l1:\n  ttl: 1m\n",
        "caches:\n  l1: {}\n",
        "- cache\n",
        "just a string\n",
        "42\n",
        "null\n",
    ],
)
def test_from_yaml_missing_cache_root(doc: str) -> None:
    pattern = r"^<yaml>: expected a mapping with a top-level 'cache' key"
    with pytest.raises(ConfigError, match=pattern):
        CacheConfig.from_yaml(doc, environ={})


@pytest.mark.parametrize(
    ("doc", "pattern"),
    [
        ("cache: 5\n", r"^cache: expected a mapping, got int"),
        ("cache: [a, b]\n", r"^cache: expected a mapping, got list"),
        ("cache: text\n", r"^cache: expected a mapping, got str"),
        ("cache:\n  l1: 5\n", r"^cache\.l1: expected a mapping, got int"),
        ("cache:\n  l2: [1]\n", r"^cache\.l2: expected a mapping, got list"),
        ("cache:\n  dragonfly: h:6379\n", r"^cache\.dragonfly: expected a mapping, got str"),
    ],
)
def test_from_yaml_non_mapping_section(doc: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        CacheConfig.from_yaml(doc, environ={})


@pytest.mark.parametrize(
    ("doc", "key", "known"),
    [
        ("cache:\n  l1:\n    maxsize: 5\n", "cache.l1.maxsize", "max_size, ttl"),
        ("cache:\n  l2:\n    max_size: 5\n", "cache.l2.max_size", "ttl"),
        ("cache:\n  dragonfly:\n    host: x\n", "cache.dragonfly.host", "addresses"),
        ("cache:\n  dragonfly:\n    address: x\n", "cache.dragonfly.address", "addresses"),
        ("cache:\n  prefix: x\n", "cache.prefix", "key_prefix"),
        ("cache:\n  l3: {}\n", "cache.l3", "dragonfly, l1, l2"),
        ("cache:\n  L1: {}\n", "cache.L1", "dragonfly, l1, l2"),
        ("cache:\n  l1:\n    1: 2\n", "cache.l1.1", "max_size"),
    ],
)
def test_from_yaml_unknown_key(doc: str, key: str, known: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: unknown key") as exc:
        CacheConfig.from_yaml(doc, environ={})
    assert known in str(exc.value)


@pytest.mark.parametrize(
    ("section", "line", "pattern"),
    [
        ("l1", "ttl: 5 minutes", r"^cache\.l1\.ttl='5 minutes': not a duration"),
        ("l1", "ttl: 0", r"^cache\.l1\.ttl=0: duration must be positive"),
        ("l1", "ttl: -1s", r"^cache\.l1\.ttl='-1s': not a duration"),
        ("l1", "ttl: .inf", r"^cache\.l1\.ttl=inf: duration must be positive and finite"),
        ("l1", "ttl: true", r"^cache\.l1\.ttl=True: expected a duration, got bool"),
        ("l1", "ttl:", r"^cache\.l1\.ttl=None: expected a duration"),
        ("l1", "ttl: [1]", r"^cache\.l1\.ttl=\[1\]: expected a duration, got list"),
        ("l1", "max_size: 0", r"^cache\.l1\.max_size=0: expected an integer >= 1"),
        ("l1", "max_size: 1.5", r"^cache\.l1\.max_size=1\.5: expected an integer >= 1"),
        ("l2", "ttl: 0s", r"^cache\.l2\.ttl='0s': duration must be positive"),
        ("dragonfly", "pool_size: 0", r"^cache\.dragonfly\.pool_size=0: expected an integer >= 1"),
        ("dragonfly", "pool_size: x", r"^cache\.dragonfly\.pool_size='x': expected an integer"),
        ("dragonfly", "pool_size: true", r"^cache\.dragonfly\.pool_size=True: expected an integer"),
        ("dragonfly", "db: -1", r"^cache\.dragonfly\.db=-1: expected an integer >= 0"),
        ("dragonfly", "max_retries: -2", r"^cache\.dragonfly\.max_retries=-2: expected an integer"),
        ("dragonfly", "tls: maybe", r"^cache\.dragonfly\.tls='maybe': expected a boolean"),
        ("dragonfly", "tls: 1", r"^cache\.dragonfly\.tls=1: expected a boolean"),
        ("dragonfly", "username: 7", r"^cache\.dragonfly\.username=7: expected a string, got int"),
        ("dragonfly", "addresses: []", r"^cache\.dragonfly\.addresses=\[\]: at least one address"),
        ("dragonfly", 'addresses: ""', r"^cache\.dragonfly\.addresses='': at least one address"),
        ("dragonfly", "addresses: [6379]", r"^cache\.dragonfly\.addresses=6379: expected 'host:"),
        ("dragonfly", "addresses: {a: 1}", r"^cache\.dragonfly\.addresses=\{'a': 1\}: expected a"),
        ("dragonfly", "addresses: host:0", r"^cache\.dragonfly\.addresses='host:0': port must be"),
        ("dragonfly", "connect_timeout: 0", r"^cache\.dragonfly\.connect_timeout=0: duration must"),
        ("dragonfly", "socket_timeout: soon", r"^cache\.dragonfly\.socket_timeout='soon': not a"),
        ("dragonfly", "pool_timeout: -1", r"^cache\.dragonfly\.pool_timeout=-1: duration must"),
    ],
)
def test_from_yaml_bad_value_names_key(section: str, line: str, pattern: str) -> None:
    doc = f"cache:\n  {section}:\n    {line}\n"
    with pytest.raises(ConfigError, match=pattern):
        CacheConfig.from_yaml(doc, environ={})


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("key_prefix: 5", r"^cache\.key_prefix=5: expected a string, got int"),
        ("key_prefix:", r"^cache\.key_prefix=None: expected a string"),
        ("key_prefix: [a]", r"^cache\.key_prefix=\['a'\]: expected a string, got list"),
    ],
)
def test_from_yaml_bad_root_value_names_key(line: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        CacheConfig.from_yaml(f"cache:\n  {line}\n", environ={})


def test_from_yaml_interpolated_bad_value_names_key() -> None:
    doc = "cache:\n  dragonfly:\n    pool_size: ${POOL}\n"
    pattern = r"^cache\.dragonfly\.pool_size='zero': expected an integer"
    with pytest.raises(ConfigError, match=pattern):
        CacheConfig.from_yaml(doc, environ={"POOL": "zero"})


def test_from_yaml_error_is_value_error_and_cache_error() -> None:
    with pytest.raises(ValueError, match=r"cache\.l1\.maxsize") as exc:
        CacheConfig.from_yaml("cache:\n  l1:\n    maxsize: 5\n", environ={})
    assert isinstance(exc.value, ConfigError)
    assert isinstance(exc.value, CacheError)


def test_from_yaml_loading_options() -> None:
    doc = """\
cache:
  l2:
    negative_ttl: 5s
    refresh_ahead: 0.1
    fleet_lock: yes
  codec: pickle
  pickle_secret: ${SIGNING_KEY}
"""
    cfg = CacheConfig.from_yaml(doc, environ={"SIGNING_KEY": PICKLE_SECRET})
    assert cfg.l2 == L2Config(negative_ttl=5.0, refresh_ahead=0.1, fleet_lock=True)
    assert (cfg.codec, cfg.pickle_secret) == ("pickle", PICKLE_SECRET)


@pytest.mark.parametrize(("value", "expected"),
                         [("30s", 30.0), ("1m30s", 90.0), ("2.5", 2.5), ("0", None),
                          ("0s", None), ("off", None), ("none", None), ("", None)])
def test_stale_if_error_is_a_duration_or_off(value: str, expected: float | None) -> None:
    assert CacheConfig.from_env({"CACHE_STALE_IF_ERROR": value}).l2.stale_if_error == expected
    yaml_value = value or '""'
    doc = f"cache:\n  l2:\n    stale_if_error: {yaml_value}\n"
    assert CacheConfig.from_yaml(doc, environ={}).l2.stale_if_error == expected
    assert L2Config(stale_if_error=timedelta(seconds=7)).stale_if_error == 7.0
    assert L2Config(stale_if_error=0).stale_if_error is None
    assert CacheConfig.from_yaml("cache:\n  l2:\n    stale_if_error: off\n",
                                 environ={}).l2.stale_if_error is None  # YAML's False


@pytest.mark.parametrize("value", ["-1s", "-5", " -0.5 ", "soon", "1x", "inf"])
def test_a_negative_or_malformed_stale_if_error_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^CACHE_STALE_IF_ERROR="):
        CacheConfig.from_env({"CACHE_STALE_IF_ERROR": value})
    with pytest.raises(ConfigError, match=r"^cache\.l2\.stale_if_error="):
        CacheConfig.from_yaml(f"cache:\n  l2:\n    stale_if_error: '{value}'\n", environ={})


@pytest.mark.parametrize("value", [-1, -0.001, timedelta(seconds=-3), float("nan"), True])
def test_a_negative_stale_if_error_field_names_the_field(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^L2Config\.stale_if_error="):
        L2Config(stale_if_error=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("yaml_value", ["off", "false", "none", "null", "~", '""', "OFF"])
def test_from_yaml_refresh_ahead_off_forms(yaml_value: str) -> None:
    doc = f"cache:\n  l2:\n    refresh_ahead: {yaml_value}\n"
    assert CacheConfig.from_yaml(doc, environ={}).l2.refresh_ahead is None


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("negative_ttl: 0", r"^cache\.l2\.negative_ttl=0: duration must be positive"),
        ("refresh_ahead: 1.5", r"^cache\.l2\.refresh_ahead=1\.5: expected a fraction strictly"),
        ("refresh_ahead: 1", r"^cache\.l2\.refresh_ahead=1: expected a fraction strictly"),
        ("refresh_ahead: true", r"^cache\.l2\.refresh_ahead=True: expected a fraction"),
        ("refresh_ahead: [0.5]", r"^cache\.l2\.refresh_ahead=\[0\.5\]: expected a fraction"),
        ("fleet_lock: sometimes", r"^cache\.l2\.fleet_lock='sometimes': expected a boolean"),
    ],
)
def test_from_yaml_bad_loading_option_names_key(line: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        CacheConfig.from_yaml(f"cache:\n  l2:\n    {line}\n", environ={})


# --------------------------------------------------------------------------- loading options


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.2", 0.2), (" 0.5 ", 0.5), (".75", 0.75), ("0.999", 0.999), ("", None), ("off", None),
     ("OFF", None), ("none", None), (" None ", None)],
)
def test_from_env_refresh_ahead(value: str, expected: float | None) -> None:
    assert CacheConfig.from_env({"CACHE_REFRESH_AHEAD": value}).l2.refresh_ahead == expected


@pytest.mark.parametrize(("value", "expected"), [("on", True), ("0", False), ("YES", True)])
def test_from_env_fleet_lock(value: str, expected: bool) -> None:
    assert CacheConfig.from_env({"CACHE_FLEET_LOCK": value}).l2.fleet_lock is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("tracking", "tracking"), (" PubSub ", "pubsub"), ("off", "off"),
     # the booleans of the versions that had pub/sub only
     ("true", "auto"), ("1", "auto"), ("yes", "auto"), ("ON", "auto"),
     ("false", "off"), ("0", "off"), ("no", "off")],
)
def test_from_env_invalidation_modes(value: str, expected: str) -> None:
    assert CacheConfig.from_env({"CACHE_L1_INVALIDATION": value}).l1.invalidation == expected


def test_invalidation_defaults_to_auto_and_takes_booleans_in_python_and_yaml() -> None:
    assert L1Config().invalidation == "auto"
    assert L1Config(invalidation=True).invalidation == "auto"  # type: ignore[arg-type]
    assert L1Config(invalidation=False).invalidation == "off"  # type: ignore[arg-type]
    for text, expected in (("off", "off"), ("false", "off"), ("true", "auto"),
                           ("tracking", "tracking"), ("pubsub", "pubsub")):
        config = CacheConfig.from_yaml(f"cache:\n  l1:\n    invalidation: {text}\n",
                                       environ={})
        assert config.l1.invalidation == expected, text


@pytest.mark.parametrize("value", ["", "sometimes", "broadcast", "2"])
def test_a_bad_invalidation_mode_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^CACHE_L1_INVALIDATION=.*expected auto, "
                                          r"tracking, pubsub or off"):
        CacheConfig.from_env({"CACHE_L1_INVALIDATION": value})
    with pytest.raises(ConfigError, match=r"^cache\.l1\.invalidation=.*expected auto"):
        CacheConfig.from_yaml(f"cache:\n  l1:\n    invalidation: '{value}'\n", environ={})
    with pytest.raises(ConfigError, match=r"^L1Config\.invalidation="):
        L1Config(invalidation=value)


@pytest.mark.parametrize(("value", "expected"), [("250ms", 0.25), ("2m", 120.0), ("10", 10.0)])
def test_from_env_negative_ttl(value: str, expected: float) -> None:
    assert CacheConfig.from_env({"CACHE_NEGATIVE_TTL": value}).l2.negative_ttl == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"negative_ttl": timedelta(seconds=3)}, L2Config(negative_ttl=3.0)),
        ({"negative_ttl": "1m"}, L2Config(negative_ttl=60.0)),
        ({"refresh_ahead": 0.3}, L2Config(refresh_ahead=0.3)),
        ({"refresh_ahead": "0.3"}, L2Config(refresh_ahead=0.3)),
        ({"refresh_ahead": "off"}, L2Config()),
        ({"refresh_ahead": False}, L2Config()),
        ({"fleet_lock": "on"}, L2Config(fleet_lock=True)),
    ],
)
def test_l2_loading_options_direct(kwargs: dict[str, object], expected: L2Config) -> None:
    assert L2Config(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"negative_ttl": 0}, "L2Config.negative_ttl"),
        ({"negative_ttl": None}, "L2Config.negative_ttl"),
        ({"refresh_ahead": 0.0}, "L2Config.refresh_ahead"),
        ({"refresh_ahead": 1.0}, "L2Config.refresh_ahead"),
        ({"refresh_ahead": 1}, "L2Config.refresh_ahead"),
        ({"refresh_ahead": True}, "L2Config.refresh_ahead"),
        ({"refresh_ahead": float("nan")}, "L2Config.refresh_ahead"),
        ({"refresh_ahead": float("inf")}, "L2Config.refresh_ahead"),
        ({"refresh_ahead": 10**400}, "L2Config.refresh_ahead"),
        ({"fleet_lock": 1}, "L2Config.fleet_lock"),
        ({"fleet_lock": None}, "L2Config.fleet_lock"),
    ],
)
def test_l2_loading_options_direct_validation(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(field_name)}="):
        L2Config(**kwargs)  # type: ignore[arg-type]


def test_from_yaml_result_equals_direct_construction() -> None:
    cfg = CacheConfig.from_yaml(FULL_YAML, environ={"DRAGONFLY_PASSWORD": SECRET})
    direct = CacheConfig(
        dragonfly=DragonflyConfig(
            addresses=["10.0.0.1:6379", "10.0.0.2:6380"], password=SECRET, db=0, pool_size=20,
            max_retries=5, tls=True,
        ),
        l1=L1Config(max_size=500, ttl="1m"),  # type: ignore[arg-type]
        l2=L2Config(ttl=timedelta(hours=2)),  # type: ignore[arg-type]
        key_prefix="app:",
    )
    assert cfg == direct
    assert math.isclose(cfg.l2.ttl, 7200.0)


# -- regressions found while writing these tests ------------------------------------------


def test_huge_integer_duration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="too large"):
        parse_duration(10**400, "CACHE_L1_TTL")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DRAGONFLY_ADDRESSES", "host:\u00b2"), ("DRAGONFLY_DB", "1" * 5000),
     ("DRAGONFLY_POOL_SIZE", "\u0663")],  # superscript two; a 5000-digit number; Arabic three
)
def test_odd_digits_are_config_errors_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}="):
        CacheConfig.from_env({variable: value})


def test_long_one_line_yaml_text_is_parsed_not_opened() -> None:
    text = "cache: {key_prefix: '" + "a" * 300 + "'}"
    assert CacheConfig.from_yaml(text).key_prefix == "a" * 300


@pytest.mark.parametrize(
    "text",
    ["cache:\n  dragonfly:\n    password: 's3cr3t\n",
     "cache:\n  dragonfly:\n    password: s3cr3t: oops\n"],
)
def test_yaml_syntax_errors_do_not_quote_the_password(text: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+") as exc:
        CacheConfig.from_yaml(text)
    assert "s3cr3t" not in str(exc.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("65536", 65536), (" 512KiB ", 512 * 1024), ("64MiB", 64 * 2**20), ("100MB", 10**8),
    ("1G", 10**9), ("2gib", 2 * 2**30), ("10kb", 10_000), ("300B", 300), (4096, 4096),
])
def test_l1_max_bytes_takes_sizes(text: object, expected: int) -> None:
    assert CacheConfig.from_env({"CACHE_L1_MAX_BYTES": str(text)}).l1.max_bytes == expected
    assert L1Config(max_bytes=text).max_bytes == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), [
    ("CACHE_L1_MAX_BYTES", "0"), ("CACHE_L1_MAX_BYTES", "1.5MB"), ("CACHE_L1_MAX_BYTES", "lots"),
    ("CACHE_L1_MAX_BYTES", "-5"), ("CACHE_L1_MAX_ENTRY_SHARE", "0"),
    ("CACHE_L1_MAX_ENTRY_SHARE", "1.5"), ("CACHE_L1_MAX_ENTRY_SHARE", "nan"),
])
def test_bad_l1_memory_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}="):
        CacheConfig.from_env({name: value})
