"""The shared tier: commands to Dragonfly/Redis over a bounded set of connections.

A dumb store with a small surface: it prefixes keys, batches round trips and translates every
redis-py error into :class:`CacheUnavailableError` at this boundary. Policy (what a failure
means for a read or a write, L1 fills, singleflight) lives in :mod:`dragonfly_cache.tiered`.

Time bounds (per command; ``health()`` sends two, ``invalidate`` two per page). A command
that fails with a connection error (refused, reset, a pooled socket
the server closed) is attempted up to ``1 + max_retries`` times with exponential backoff and
full jitter between attempts (``_BACKOFF_BASE * 2**n`` capped at ``_BACKOFF_CAP``); a
timeout ends the call at once. So a stalled server costs one ``connect_timeout`` or
``socket_timeout``, and no call takes longer than ``pool_timeout + (1 + max_retries) *
(connect_timeout + socket_timeout) + max_retries * _BACKOFF_CAP``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ._breaker import CircuitBreaker
from ._coherence import channel_name
from ._connections import Connections
from ._glob import escape_glob
from ._slots import FairSlots
from .config import DragonflyConfig
from .exceptions import CacheUnavailableError, ConfigError

__all__ = ["L2", "ServerInfo"]

logger = logging.getLogger("dragonfly_cache")

_BACKOFF_BASE = 0.01
_BACKOFF_CAP = 0.1
_SCAN_COUNT = 1000
_SCRIPT_CHUNK = 500  # keys per EVALSHA (Lua's unpack() has a limit near 8000)
# Every key is declared in KEYS: Dragonfly rejects scripts that touch undeclared keys.
_MGET_PTTL = """
local values = redis.call('MGET', unpack(KEYS))
local ttls = {}
for i = 1, #KEYS do ttls[i] = redis.call('PTTL', KEYS[i]) end
return {values, ttls}
"""
_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_MGET_PTTL_SHA = hashlib.sha1(_MGET_PTTL.encode(), usedforsecurity=False).hexdigest()
_LOG_EVERY = 10.0  # seconds between repeated warnings about the same failing operation
T = TypeVar("T")

ServerInfo = dict[str, Any]


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def parse_info(reply: bytes | str) -> dict[str, str]:
    """The ``key:value`` lines of an INFO reply."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    fields = (line.split(":", 1) for line in text.splitlines()
              if line and not line.startswith("#") and ":" in line)
    return {key: value for key, value in fields}


def detect_server(info: Mapping[str, Any]) -> tuple[str, str]:
    """Tell the server kind and version from an ``INFO server`` reply.

    Dragonfly reports a fake ``redis_version`` (7.4.0) next to ``dragonfly_version``
    ("df-v1.x.y"), so it is recognised by the latter and "df-" is stripped. Valkey reports
    ``valkey_version`` (and ``server_name:valkey``) next to a compatibility redis_version.
    """
    if "dragonfly_version" in info:
        version = str(info["dragonfly_version"])
        return "dragonfly", version.removeprefix("df-")
    if "valkey_version" in info or info.get("server_name") == "valkey":
        return "valkey", str(info.get("valkey_version", info.get("redis_version", "")))
    return "redis", str(info.get("redis_version", ""))


class L2:
    """Prefixed, batched access to one Dragonfly/Redis server.

    Args:
        config: connection settings.
        key_prefix: prepended to every key; as a glob it is escaped, so ``*`` or ``[``
            in the prefix match only themselves.
    """

    def __init__(self, config: DragonflyConfig, key_prefix: str) -> None:
        if len(config.addresses) > 1:
            raise ConfigError(
                f"DragonflyConfig.addresses={config.addresses!r}: several addresses mean "
                "cluster mode, which this version does not support yet; give one address"
            )
        host, port = _split_address(config.addresses[0])
        self.address = config.addresses[0]
        self.prefix = key_prefix
        self.channel = channel_name(config.db, key_prefix)
        self.config = config
        # Retry connection errors only (refused, reset, a pooled socket the server closed):
        # they fail fast and a retry often succeeds. A timeout means a stalled server, and
        # retrying it would multiply the stall by 1 + max_retries.
        self._retry = Retry(ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE),
                            config.max_retries, supported_errors=(redis.ConnectionError,))
        self._connection_options: dict[str, Any] = {
            "protocol": 2,  # RESP2: what Redis 6+, Valkey and Dragonfly all speak the same way
            "host": host,
            "port": port,
            "db": config.db,
            "username": config.username,
            "password": config.password,
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.connect_timeout,
            "socket_keepalive": True,
            "retry": self._retry,
        }
        if config.tls:
            self._connection_options.update(
                ssl_cert_reqs="required", ssl_check_hostname=config.tls_check_hostname,
                ssl_ca_certs=config.tls_ca_file, ssl_certfile=config.tls_cert_file,
                ssl_keyfile=config.tls_key_file)
        self._connection_class = redis.SSLConnection if config.tls else redis.Connection
        self._pool_timeout = config.pool_timeout
        self._scripting = True  # False once the server refused EVALSHA/SCRIPT LOAD
        # Called with (operation, seconds) after every command that reached the server;
        # the metrics module sets it. Kept across forks: it is not per-process state.
        self.latency_observer: Callable[[str, float], None] | None = None
        self._start_process_state()

    def _start_process_state(self) -> None:
        """Create what each process must own: the pool, locks, counters, breaker, slots."""
        config = self.config
        self._connections = Connections(self._connection_class, self._connection_options,
                                        self._retry)
        # At most pool_size connections per process: a call holds a slot (waiting at most
        # pool_timeout, first come first served) while it uses a connection.
        self._slots = FairSlots(config.pool_size)
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown,
                                      config.breaker_max_cooldown)
        self._counter_lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.errors_by_operation: dict[str, int] = {}
        self._last_warning: dict[str, float] = {}

    def after_fork_in_child(self) -> None:
        """Drop the parent's connections, locks, breaker state and counters.

        The pool's sockets belong to the parent's sessions (sharing them would interleave
        replies), and any lock may have been held by a parent thread that does not exist
        here. The old connections are dropped without being shut down here (redis-py only
        shuts a socket down in the process that opened it).
        """
        self._start_process_state()

    def __repr__(self) -> str:
        return f"<L2 {self.address} prefix={self.prefix!r}>"

    # -- the error boundary --------------------------------------------------------------

    def _call(self, operation: str, do: Callable[[], T]) -> T:
        breaker = self.breaker
        if not breaker.allow():
            raise CacheUnavailableError(
                f"{operation} on {self.address} not attempted: circuit breaker open "
                f"(probing again within {breaker.stats()['cooldown']:g}s)")
        if not self._slots.acquire(self._pool_timeout):
            breaker.abandon()  # no verdict on the server: it was never asked
            self._fail(operation, f"no free connection within {self._pool_timeout:g}s "
                                  f"(pool_size={self.config.pool_size})")
        started = time.perf_counter()
        try:
            result = do()
        except redis.RedisError as exc:
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                breaker.failure()  # the server could not be reached (or refused our login)
            else:
                breaker.success()  # it answered, with an error (e.g. out of memory)
            self._fail(operation, f"{type(exc).__name__}: {exc}", exc)
        except Exception as exc:
            # Anything else (an OSError, or redis-py tripping over a pool that close()
            # tore down under it) is still a failed call: reads must not see it raise.
            breaker.failure()
            self._fail(operation, f"{type(exc).__name__}: {exc}", exc)
        finally:
            self._slots.release()
            self._observe(operation, time.perf_counter() - started)
        breaker.success()
        return result

    def _observe(self, operation: str, seconds: float) -> None:
        observer = self.latency_observer
        if observer is not None:
            try:
                observer(operation, seconds)
            except Exception:  # a metrics problem must never fail a cache call
                logger.exception("latency observer failed")

    def _fail(self, operation: str, reason: str, cause: BaseException | None = None
              ) -> NoReturn:
        with self._counter_lock:
            self.errors += 1
            self.errors_by_operation[operation] = self.errors_by_operation.get(operation, 0) + 1
        # redis-py's messages name host and port, never the password (tests check this).
        message = f"{operation} on {self.address} failed: {reason}"
        self._warn(operation, message)
        raise CacheUnavailableError(message) from cause

    def _warn(self, operation: str, message: str) -> None:
        # One line per operation per _LOG_EVERY seconds: an outage must not flood the logs.
        now = time.monotonic()
        if now - self._last_warning.get(operation, -_LOG_EVERY) >= _LOG_EVERY:
            self._last_warning[operation] = now
            logger.warning("%s", message)

    def _count(self, hits: int, misses: int) -> None:
        with self._counter_lock:
            self.hits += hits
            self.misses += misses

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes | None, int]:
        """GET and PTTL of one key in one round trip.

        Returns:
            (value or None, remaining life in ms: -1 for no expiry, -2 if the key vanished).
        """
        name = self.prefix + key
        value, pttl = self._call("GET", lambda: self._connections.roundtrip(
            (("GET", name), ("PTTL", name))))
        self._count(value is not None, value is None)
        return value, pttl

    def get_many(self, keys: Sequence[str]) -> list[tuple[bytes | None, int]]:
        """Values and PTTLs of many keys in one round trip.

        One EVALSHA per 500 keys (all declared in KEYS, as Dragonfly requires) returns
        both lists: packing and parsing one command instead of 1 + N is what makes it
        fast. Servers that refuse scripting get MGET + one PTTL per key, pipelined.
        """
        names = [self.prefix + key for key in keys]
        replies = self._call("MGET", lambda: self._values_and_pttls(names))
        found = sum(value is not None for value, _ in replies)
        self._count(found, len(keys) - found)
        return replies

    def _values_and_pttls(self, names: list[str]) -> list[tuple[bytes | None, int]]:
        chunks = [names[i:i + _SCRIPT_CHUNK] for i in range(0, len(names), _SCRIPT_CHUNK)]
        if self._scripting:
            commands = [("EVALSHA", _MGET_PTTL_SHA, len(chunk), *chunk) for chunk in chunks]
            try:
                replies = self._connections.roundtrip(commands)
            except NoScriptError:  # first use on this server (or after SCRIPT FLUSH)
                replies = self._connections.roundtrip(
                    [("SCRIPT", "LOAD", _MGET_PTTL), *commands])[1:]
            except redis.ResponseError as exc:
                # Scripting disabled or not permitted here: plain commands from now on.
                logger.info("EVALSHA refused (%s); get_many falls back to MGET + PTTL", exc)
                self._scripting = False
                return self._values_and_pttls(names)
            return [pair for values, pttls in replies for pair in zip(values, pttls, strict=True)]
        commands = [("MGET", *names), *(("PTTL", name) for name in names)]
        values, *pttls = self._connections.roundtrip(commands)
        return list(zip(values, pttls, strict=True))

    def exists(self, key: str) -> bool:
        """Whether the key exists in L2."""
        name = self.prefix + key
        return bool(self._call("EXISTS", lambda: self._connections.roundtrip(
            (("EXISTS", name),))[0]))

    # -- writes --------------------------------------------------------------------------

    def set_many(self, values: Mapping[str, bytes], ttl: float, announce: str | None = None
                 ) -> None:
        """SET each key with a PX expiry, then PUBLISH ``announce``: one round trip.

        Args:
            values: key -> value.
            ttl: seconds.
            announce: an invalidation message for the other caches, published after the
                writes in the same pipeline (so whoever refetches on it sees them).
        """
        ttl_ms = max(1, round(ttl * 1000))
        commands: list[tuple[Any, ...]] = [("SET", self.prefix + key, value, "PX", ttl_ms)
                                           for key, value in values.items()]
        if announce is not None:
            commands.append(("PUBLISH", self.channel, announce))
        self._call("SET", lambda: self._connections.roundtrip(commands))

    def set_if_absent(self, key: str, value: bytes, ttl: float, announce: str | None = None
                      ) -> bool:
        """SET NX with a PX expiry (then PUBLISH ``announce``): one round trip.

        Returns:
            Whether the value was stored (False: the key exists, written by someone else).
        """
        ttl_ms = max(1, round(ttl * 1000))
        commands: list[tuple[Any, ...]] = [("SET", self.prefix + key, value, "PX", ttl_ms,
                                            "NX")]
        if announce is not None:
            commands.append(("PUBLISH", self.channel, announce))
        return self._call("SET", lambda: self._connections.roundtrip(commands)[0] is not None)

    def set_many_if_absent(self, values: Mapping[str, bytes], ttl: float,
                           announce: str | None = None) -> list[str]:
        """SET NX each key (then PUBLISH ``announce``), one round trip.

        Returns:
            The keys that were stored (the others existed already).
        """
        ttl_ms = max(1, round(ttl * 1000))
        keys = list(values)
        commands: list[tuple[Any, ...]] = [("SET", self.prefix + key, values[key], "PX", ttl_ms,
                                            "NX") for key in keys]
        if announce is not None:
            commands.append(("PUBLISH", self.channel, announce))
        replies = self._call("SET", lambda: self._connections.roundtrip(commands))
        return [key for key, reply in zip(keys, replies, strict=False) if reply is not None]

    def delete_if_equal(self, key: str, value: bytes, announce: str | None = None) -> None:
        """Delete ``key`` only if it still holds ``value``, atomically (a script that
        declares its key), then PUBLISH ``announce``. Releases fleet locks, and takes back
        a load stored just as the key was invalidated."""
        commands: list[tuple[Any, ...]] = [("EVAL", _DELETE_IF_EQUAL, 1, self.prefix + key,
                                            value)]
        if announce is not None:
            commands.append(("PUBLISH", self.channel, announce))
        self._call("DELETE", lambda: self._connections.roundtrip(commands))

    def delete(self, keys: Sequence[str], announce: str | None = None) -> int:
        """UNLINK the keys (and PUBLISH ``announce`` after, same round trip).

        Returns:
            How many of the keys existed.
        """
        commands: list[tuple[Any, ...]] = [("UNLINK", *(self.prefix + key for key in keys))]
        if announce is not None:
            commands.append(("PUBLISH", self.channel, announce))
        return int(self._call("UNLINK", lambda: self._connections.roundtrip(commands)[0]))

    def invalidate(self, pattern: str, announce: str | None = None) -> int:
        """Remove every key matching the glob ``pattern`` (under the prefix).

        SCAN MATCH with the prefix escaped, then UNLINK of each page: never KEYS, which
        blocks the server (and silently truncates at 8192 keys on Dragonfly). The
        ``announce`` message is published with every page (once if nothing matched).

        Returns:
            How many keys were removed.
        """
        match = escape_glob(self.prefix) + pattern

        def do() -> int:
            removed, pages = 0, 0
            publish = [] if announce is None else [("PUBLISH", self.channel, announce)]
            for page in self._scan_pages(match):
                # Each page is announced with its UNLINK, in one round trip: if the scan
                # dies halfway, every key already removed has been announced.
                removed += int(self._connections.roundtrip([("UNLINK", *page), *publish])[0])
                pages += 1
            if publish and not pages:
                self._connections.roundtrip(publish)
            return removed

        return self._call("SCAN/UNLINK", do)

    def subscriber(self) -> redis.Redis:
        """A new client on its own connection for the invalidation listener.

        It never retries: redis-py's retry would reconnect and resubscribe silently, and
        the listener must see every drop, since messages may have been lost in it.
        """
        return redis.Redis(**{**self._connection_options, "retry": Retry(NoBackoff(), 0)},
                           ssl=self.config.tls)

    def _scan_pages(self, match: str) -> Iterator[list[bytes]]:
        cursor: bytes | int = 0
        while True:
            cursor, names = self._connections.roundtrip(
                (("SCAN", cursor, "MATCH", match, "COUNT", _SCAN_COUNT),))[0]
            if names:
                yield names
            if int(cursor) == 0:
                return

    # -- health --------------------------------------------------------------------------

    def probe(self) -> ServerInfo:
        """PING and INFO server; raises CacheUnavailableError when the server can't answer.

        Returns:
            {"server": "dragonfly"|"redis"|"valkey", "version": str,
             "mode": "standalone"|"cluster"}
        """

        def do() -> ServerInfo:
            _pong, server_info, cluster_info = self._connections.roundtrip(
                (("PING",), ("INFO", "server"), ("INFO", "cluster")))
            server, version = detect_server(parse_info(server_info))
            clustered = parse_info(cluster_info).get("cluster_enabled") == "1"
            return {"server": server, "version": version,
                    "mode": "cluster" if clustered else "standalone"}

        return self._call("PING", do)

    def stats(self) -> dict[str, Any]:
        """The contract's ``l2_stats``, plus ``rejected`` (calls the open breaker refused)."""
        with self._counter_lock:
            lookups = self.hits + self.misses
            return {
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "errors": self.errors,
                "errors_by_operation": dict(self.errors_by_operation),
                "rejected": self.breaker.rejected,
            }

    def close(self) -> None:
        """Close every idle connection."""
        self._connections.close()
