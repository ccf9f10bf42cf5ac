"""Configuration: frozen, typed dataclasses built once and shared across threads.

Three ways in, one set of rules: every field has exactly one validator (see
:mod:`dragonfly_cache._validators`), used by the dataclass itself
(``DragonflyConfig(pool_size=0)``), by :meth:`CacheConfig.from_env` and by
:meth:`CacheConfig.from_yaml`. Each way names the value by what the user wrote: the field
(``DragonflyConfig.pool_size``), the environment variable (``DRAGONFLY_POOL_SIZE``) or the
YAML key (``cache.dragonfly.pool_size``). Secrets (passwords, tokens) are never echoed and
never appear in ``repr``/``str``.

Durations are Go-style strings ("250ms", "30s", "5m", "1h30m"), bare seconds ("30", "0.5"),
numbers (float seconds) or :class:`datetime.timedelta`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import _validators as v
from ._validators import Option, parse_duration
from ._yaml import load_root, mapping, reject_unknown, yaml_values
from .exceptions import ConfigError

__all__ = [
    "CacheConfig",
    "DragonflyConfig",
    "L1Config",
    "L2Config",
    "Option",
    "parse_duration",
    "variable_names",
]


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
    breaker_threshold: int = 5
    breaker_cooldown: float = 1.0
    breaker_max_cooldown: float = 10.0
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_check_hostname: bool = True
    mode: str = "auto"
    sentinels: list[str] = field(default_factory=list)
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    read_from_replicas: bool = False

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("addresses", "DRAGONFLY_ADDRESSES", v.addresses,
               "comma-separated host:port list (IPv6 as [::1]:6379)"),
        Option("password", "DRAGONFLY_PASSWORD", v.secret, "AUTH password; never logged"),
        Option("db", "DRAGONFLY_DB", v.int_at_least(0), "logical database number"),
        Option("pool_size", "DRAGONFLY_POOL_SIZE", v.int_at_least(1),
               "maximum connections per process (a blocking pool: callers wait, bounded)"),
        Option("max_retries", "DRAGONFLY_MAX_RETRIES", v.int_at_least(0),
               "retries of a failed command on connection errors/timeouts, with "
               "exponential backoff and jitter"),
        Option("tls", "DRAGONFLY_TLS", v.boolean, "connect with TLS"),
        Option("username", "DRAGONFLY_USERNAME", v.optional_text, "ACL user name (with password)"),
        Option("connect_timeout", "DRAGONFLY_CONNECT_TIMEOUT", v.duration,
               "TCP connect timeout"),
        Option("socket_timeout", "DRAGONFLY_SOCKET_TIMEOUT", v.duration,
               "per-command read/write timeout"),
        Option("pool_timeout", "DRAGONFLY_POOL_TIMEOUT", v.duration,
               "longest wait for a free pooled connection"),
        Option("breaker_threshold", "DRAGONFLY_BREAKER_THRESHOLD", v.int_at_least(1),
               "consecutive connection failures/timeouts that open the circuit breaker"),
        Option("breaker_cooldown", "DRAGONFLY_BREAKER_COOLDOWN", v.duration,
               "wait before the first probe of an open breaker"),
        Option("breaker_max_cooldown", "DRAGONFLY_BREAKER_MAX_COOLDOWN", v.duration,
               "cap of the cooldown, which doubles after each failed probe"),
        Option("tls_ca_file", "DRAGONFLY_TLS_CA_FILE", v.readable_file,
               "CA bundle that signs the server's certificate (default: the system's)"),
        Option("tls_cert_file", "DRAGONFLY_TLS_CERT_FILE", v.readable_file,
               "client certificate, for servers that require one (with tls_key_file)"),
        Option("tls_key_file", "DRAGONFLY_TLS_KEY_FILE", v.readable_file,
               "private key of the client certificate"),
        Option("tls_check_hostname", "DRAGONFLY_TLS_CHECK_HOSTNAME", v.boolean,
               "check that the server's certificate names the host connected to"),
        Option("mode", "DRAGONFLY_MODE", v.one_of("auto", "standalone", "cluster"),
               "auto: cluster when several addresses are given or the server reports "
               "cluster_enabled:1; standalone or cluster force it"),
        Option("sentinels", "DRAGONFLY_SENTINELS", v.sentinel_addresses,
               "comma-separated host:port list of Redis Sentinels (port 26379 by default); "
               "the primary is the one they name, followed through failovers"),
        Option("sentinel_master", "DRAGONFLY_SENTINEL_MASTER", v.service_name,
               "the service name the sentinels monitor (required with sentinels)"),
        Option("sentinel_password", "DRAGONFLY_SENTINEL_PASSWORD", v.secret,
               "the sentinels' own AUTH password; never logged"),
        Option("sentinel_username", "DRAGONFLY_SENTINEL_USERNAME", v.secret,
               "the sentinels' own ACL user (with sentinel_password); never logged"),
        Option("read_from_replicas", "DRAGONFLY_READ_FROM_REPLICAS", v.boolean,
               "L2 reads that fill L1 may go to a replica (the sentinels' replicas, or the "
               "slot's replica in a cluster); writes, locks and scripts stay on primaries"),
    )

    def __post_init__(self) -> None:
        v.validate_fields(self)
        files = {"DRAGONFLY_TLS_CA_FILE": self.tls_ca_file,
                 "DRAGONFLY_TLS_CERT_FILE": self.tls_cert_file,
                 "DRAGONFLY_TLS_KEY_FILE": self.tls_key_file}
        given = [name for name, path in files.items() if path is not None]
        if given and not self.tls:
            raise ConfigError(f"{', '.join(given)} (DragonflyConfig.tls_*_file) set but "
                              "DRAGONFLY_TLS is false: turn TLS on, or drop the files")
        if self.mode == "standalone" and len(self.addresses) > 1:
            raise ConfigError(
                f"DRAGONFLY_ADDRESSES (DragonflyConfig.addresses) lists "
                f"{len(self.addresses)} servers but DRAGONFLY_MODE is standalone: give one "
                "address, or use cluster mode")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("DRAGONFLY_TLS_CERT_FILE and DRAGONFLY_TLS_KEY_FILE "
                              "(DragonflyConfig.tls_cert_file/tls_key_file) go together")
        _check_sentinels(self)
        _check_replica_reads(self)

    @property
    def clustered(self) -> bool | None:
        """True for cluster mode, False for standalone (always, with sentinels), None when
        the server decides (``mode="auto"`` with one address: cluster if it reports
        ``cluster_enabled:1``)."""
        if self.sentinels:
            return False
        if self.mode == "auto":
            return True if len(self.addresses) > 1 else None
        return self.mode == "cluster"

    def __hash__(self) -> int:
        # addresses is a list (as the contract spells it); hash it as a tuple so configs
        # can be dict keys and lru_cache arguments like any frozen value.
        return hash(tuple((f, tuple(v) if isinstance(v, list) else v)
                          for f, v in vars(self).items()))


def _check_sentinels(config: DragonflyConfig) -> None:
    """Sentinel settings go together, and only with one standalone server to find."""
    with_sentinels = "DRAGONFLY_SENTINELS (DragonflyConfig.sentinels)"
    if not config.sentinels:
        given = [name for name, value in (
            ("DRAGONFLY_SENTINEL_MASTER", config.sentinel_master),
            ("DRAGONFLY_SENTINEL_PASSWORD", config.sentinel_password),
            ("DRAGONFLY_SENTINEL_USERNAME", config.sentinel_username)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} set but {with_sentinels} is empty: "
                              "list the sentinels, or drop the Sentinel settings")
        return
    if config.sentinel_master is None:
        raise ConfigError(f"{with_sentinels} set but DRAGONFLY_SENTINEL_MASTER "
                          "(DragonflyConfig.sentinel_master) is not: name the service the "
                          "sentinels monitor")
    if len(config.addresses) > 1:
        raise ConfigError(
            f"{with_sentinels} and DRAGONFLY_ADDRESSES (DragonflyConfig.addresses) with "
            f"{len(config.addresses)} servers: the sentinels name the one primary to use; "
            "drop the addresses, or drop the sentinels to use a cluster")
    if config.mode == "cluster":
        raise ConfigError(
            f"{with_sentinels} and DRAGONFLY_MODE=cluster (DragonflyConfig.mode): Sentinel "
            "manages a primary and its replicas, not a cluster; choose one")


def _check_replica_reads(config: DragonflyConfig) -> None:
    """Replica reads need replicas to find: the sentinels', or a cluster's."""
    if config.read_from_replicas and not config.sentinels and config.mode == "standalone":
        raise ConfigError(
            "DRAGONFLY_READ_FROM_REPLICAS (DragonflyConfig.read_from_replicas) is on but "
            "DRAGONFLY_MODE is standalone without DRAGONFLY_SENTINELS: replica reads need "
            "sentinel or cluster mode (a standalone server's replicas are not known)")


@dataclass(frozen=True)
class L1Config:
    """The in-process tier."""

    max_size: int = 10000
    ttl: float = 300.0
    invalidation: str = "auto"
    degraded_ttl: float = 1.0
    max_bytes: int = 64 * 1024 * 1024
    max_entry_share: float = 0.1

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("max_size", "CACHE_L1_MAX_SIZE", v.int_at_least(1), "maximum entries in L1 (LRU)"),
        Option("ttl", "CACHE_L1_TTL", v.duration, "longest life of an L1 entry"),
        Option("invalidation", "CACHE_L1_INVALIDATION", v.invalidation_mode,
               "cross-process L1 invalidation: auto (tracking where the server supports "
               "it, else pubsub), tracking (CLIENT TRACKING), pubsub or off; true/false "
               "mean auto/off"),
        Option("degraded_ttl", "CACHE_L1_DEGRADED_TTL", v.duration,
               "longest life of an L1 entry stored while the invalidation listener is not "
               "subscribed"),
        Option("max_bytes", "CACHE_L1_MAX_BYTES", v.byte_size,
               "maximum bytes in L1 (values plus 240 bytes per entry; LRU): an int, or a "
               "size such as 64MiB, 100MB, 512KiB"),
        Option("max_entry_share", "CACHE_L1_MAX_ENTRY_SHARE", v.share,
               "a value larger than this share of max_bytes is not kept in L1 (it still "
               "goes to L2), in (0, 1]"),
    )

    def __post_init__(self) -> None:
        v.validate_fields(self)


@dataclass(frozen=True)
class L2Config:
    """The shared tier's policy."""

    ttl: float = 3600.0
    negative_ttl: float = 30.0
    refresh_ahead: float | None = None
    refresh_jitter: float = 0.25
    refresh_sync: float | None = None
    fleet_lock: bool = False
    fleet_lock_ttl: float = 10.0
    compression: str = "off"
    compress_min_size: int = 1024
    stale_if_error: float | None = None

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("ttl", "CACHE_L2_TTL", v.duration, "default TTL of keys written to L2"),
        Option("negative_ttl", "CACHE_NEGATIVE_TTL", v.duration,
               "how long a loader's NotFound answer is remembered"),
        Option("refresh_ahead", "CACHE_REFRESH_AHEAD", v.optional_fraction,
               "refresh a loaded entry in the background during this last fraction of its "
               "life, in (0, 1); empty/off/none: no early refresh"),
        Option("refresh_jitter", "CACHE_REFRESH_JITTER", v.unit_fraction,
               "spread of the refresh point, as a fraction of the refresh window, in [0, 1): "
               "processes holding the same entry refresh at different moments"),
        Option("refresh_sync", "CACHE_REFRESH_SYNC", v.optional_fraction,
               "below this last fraction of an entry's life, a get_or_load hit refreshes "
               "synchronously (callers wait for the new value) instead of in the background; "
               "smaller than refresh_ahead; empty/off/none: never"),
        Option("fleet_lock", "CACHE_FLEET_LOCK", v.boolean,
               "on a get_or_load miss, take a short Redis lock so one process in the fleet "
               "runs the loader"),
        Option("fleet_lock_ttl", "CACHE_FLEET_LOCK_TTL", v.duration,
               "life of a fleet lock: how long the others wait if its holder dies mid-load"),
        Option("compression", "CACHE_COMPRESSION", v.compression_name,
               "off, zlib or zstd: how values of at least compress_min_size bytes are "
               "stored in L2 (readers decode every form whatever their own setting)"),
        Option("compress_min_size", "CACHE_COMPRESS_MIN_SIZE", v.byte_size_at_least(0),
               "smallest value that is compressed: an int, or a size such as 1KiB"),
        Option("stale_if_error", "CACHE_STALE_IF_ERROR", v.optional_duration,
               "when a get_or_load reload fails (the loader raises, or L2 cannot be reached), "
               "answer with the value L1 held if it expired less than this long ago; "
               "0/off/none: never (the default)"),
    )

    def __post_init__(self) -> None:
        v.validate_fields(self)
        if (self.refresh_sync is not None and self.refresh_ahead is not None
                and self.refresh_sync >= self.refresh_ahead):
            raise ConfigError(
                f"CACHE_REFRESH_SYNC={self.refresh_sync!r} (L2Config.refresh_sync, "
                "cache.l2.refresh_sync): must be smaller than CACHE_REFRESH_AHEAD="
                f"{self.refresh_ahead!r}")


@dataclass(frozen=True)
class CacheConfig:
    """The whole configuration of a :class:`~dragonfly_cache.TieredCache`."""

    dragonfly: DragonflyConfig = field(default_factory=DragonflyConfig)
    l1: L1Config = field(default_factory=L1Config)
    l2: L2Config = field(default_factory=L2Config)
    key_prefix: str = ""
    admin_token: str | None = field(default=None, repr=False)
    codec: str = "json"
    pickle_secret: str | None = field(default=None, repr=False)

    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("dragonfly", None, v.section(DragonflyConfig), "connection settings"),
        Option("l1", None, v.section(L1Config), "L1 settings"),
        Option("l2", None, v.section(L2Config), "L2 settings"),
        Option("key_prefix", "CACHE_KEY_PREFIX", v.text,
               "prepended to every L2 key; glob characters in it are literal"),
        Option("admin_token", "CACHE_ADMIN_TOKEN", v.strong_secret,
               "bearer token (>= 16 characters) for the admin endpoints and the health "
               "details; never logged"),
        Option("codec", "CACHE_CODEC", v.codec_name,
               "default codec for cached objects: bytes, json, msgpack or pickle "
               "(pickle needs CACHE_PICKLE_SECRET)"),
        Option("pickle_secret", "CACHE_PICKLE_SECRET", v.strong_secret,
               "HMAC key (>= 16 characters) signing pickled values; never logged"),
    )

    def __post_init__(self) -> None:
        v.validate_fields(self)
        # Pickle is never unsigned: unpickling bytes from a shared server runs their code.
        if self.codec == "pickle" and self.pickle_secret is None:
            raise ConfigError(
                "CACHE_CODEC=pickle (CacheConfig.codec, cache.codec): CACHE_PICKLE_SECRET "
                "(CacheConfig.pickle_secret, cache.pickle_secret) is required, at least 16 "
                "characters; pickled values are HMAC-signed with it and never unpickled "
                "unsigned"
            )

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
    def from_settings(cls, settings: Mapping[str, Any],
                      environ: Mapping[str, str] | None = None) -> CacheConfig:
        """Build a config from a framework's settings (a Flask ``app.config``, a Django
        ``OPTIONS`` dict...) that use the environment's names, over the environment.

        Only the names of :func:`variable_names` are read from ``settings`` (values native
        or text); a name absent there comes from ``environ``, else keeps its default.

        Raises:
            ConfigError: a value is invalid (the message names it).
        """
        env = os.environ if environ is None else environ
        names = variable_names()
        values: dict[str, Any] = {name: env[name] for name in names if name in env}
        values.update({name: settings[name] for name in names if name in settings})
        return cls.from_env(values)

    @classmethod
    def from_yaml(
        cls, path_or_text: str | os.PathLike[str], environ: Mapping[str, str] | None = None
    ) -> CacheConfig:
        """Build a config from a YAML document whose root key is ``cache:``.

        String values may reference environment variables as a shell does: ``${VAR}``
        (empty if unset), ``${VAR:-default}``, ``${VAR:?message}`` (a ``ConfigError`` if
        unset or empty); ``$$`` is a literal ``$``. Unknown keys are errors, so a typo
        never silently falls back to a default.

        Args:
            path_or_text: a path to a YAML file, or the YAML text itself.
            environ: the mapping used for ``${VAR}`` (default ``os.environ``).

        Raises:
            ConfigError: unreadable/invalid YAML, an unknown key or an invalid value
                (the message names the key, e.g. ``cache.l1.ttl``).
        """
        env = os.environ if environ is None else environ
        root = load_root(path_or_text)
        sections = {"dragonfly": DragonflyConfig, "l1": L1Config, "l2": L2Config}
        reject_unknown(root, "cache", [o.field for o in cls.OPTIONS])
        kwargs: dict[str, Any] = {}
        for key, section in sections.items():
            data = mapping(root.get(key, {}), f"cache.{key}")
            kwargs[key] = section(**yaml_values(section, data, f"cache.{key}", env))
        kwargs.update(yaml_values(cls, {k: v for k, v in root.items() if k not in sections},
                                   "cache", env))
        return cls(**kwargs)


def variable_names() -> list[str]:
    """Every environment variable the configuration reads (``DRAGONFLY_*``, ``CACHE_*``)."""
    return [option.env for section in (DragonflyConfig, L1Config, L2Config, CacheConfig)
            for option in section.OPTIONS if option.env is not None]
