"""The shared tier: a redis-py client on a bounded, blocking connection pool.

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

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from ._breaker import CircuitBreaker
from ._coherence import channel_name
from ._glob import escape_glob
from ._slots import FairSlots
from .config import DragonflyConfig
from .exceptions import CacheUnavailableError, ConfigError

__all__ = ["L2", "ServerInfo"]

logger = logging.getLogger("dragonfly_cache")

_BACKOFF_BASE = 0.01
_BACKOFF_CAP = 0.1
_SCAN_COUNT = 1000
_LOG_EVERY = 10.0  # seconds between repeated warnings about the same failing operation
T = TypeVar("T")

ServerInfo = dict[str, Any]


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


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
        self._pool_kwargs: dict[str, Any] = {
            "max_connections": config.pool_size,
            "timeout": config.pool_timeout,
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
            self._pool_kwargs["connection_class"] = redis.SSLConnection
        self._pool_timeout = config.pool_timeout
        # Called with (operation, seconds) after every command that reached the server;
        # the metrics module sets it. Kept across forks: it is not per-process state.
        self.latency_observer: Callable[[str, float], None] | None = None
        self._start_process_state()

    def _start_process_state(self) -> None:
        """Create what each process must own: the pool, locks, counters, breaker, slots."""
        config = self.config
        # redis-py leaves BlockingConnectionPool.__init__ unannotated.
        self._pool = redis.BlockingConnectionPool(**self._pool_kwargs)  # type: ignore[no-untyped-call]
        self._client = redis.Redis(connection_pool=self._pool, retry=self._retry)
        # At most pool_size sockets per process. Callers queue fairly for a slot (at most
        # pool_timeout) before they touch the pool, so the pool itself never has to block;
        # its own timeout only guards against a slot/connection mismatch.
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
        here. A new pool, not ``pool.reset()``: reset takes the pool's lock, which such a
        thread may hold forever. The old pool is dropped without closing its sockets here
        (redis-py only shuts a socket down in the process that opened it).
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

        def do() -> tuple[bytes | None, int]:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(name)
            pipe.pttl(name)
            value, pttl = pipe.execute()
            return value, pttl

        value, pttl = self._call("GET", do)
        self._count(value is not None, value is None)
        return value, pttl

    def get_many(self, keys: Sequence[str]) -> list[tuple[bytes | None, int]]:
        """One MGET plus one PTTL per key, pipelined into a single round trip."""
        names = [self.prefix + key for key in keys]

        def do() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.mget(names)
            for name in names:
                pipe.pttl(name)
            return pipe.execute()

        values, *pttls = self._call("MGET", do)
        found = sum(value is not None for value in values)
        self._count(found, len(keys) - found)
        return list(zip(values, pttls, strict=True))

    def exists(self, key: str) -> bool:
        """Whether the key exists in L2."""
        return bool(self._call("EXISTS", lambda: self._client.exists(self.prefix + key)))

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

        def do() -> None:
            pipe = self._client.pipeline(transaction=False)
            for key, value in values.items():
                pipe.set(self.prefix + key, value, px=ttl_ms)
            if announce is not None:
                pipe.publish(self.channel, announce)
            pipe.execute()

        self._call("SET", do)

    def set_if_absent(self, key: str, value: bytes, ttl: float, announce: str | None = None
                      ) -> bool:
        """SET NX with a PX expiry (then PUBLISH ``announce``): one round trip.

        Returns:
            Whether the value was stored (False: the key exists, written by someone else).
        """
        ttl_ms = max(1, round(ttl * 1000))

        def do() -> bool:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self.prefix + key, value, px=ttl_ms, nx=True)
            if announce is not None:
                pipe.publish(self.channel, announce)
            return bool(pipe.execute()[0])

        return self._call("SET", do)

    def delete(self, keys: Sequence[str], announce: str | None = None) -> int:
        """UNLINK the keys (and PUBLISH ``announce`` after, same round trip).

        Returns:
            How many of the keys existed.
        """
        names = [self.prefix + key for key in keys]

        def do() -> int:
            pipe = self._client.pipeline(transaction=False)
            pipe.unlink(*names)
            if announce is not None:
                pipe.publish(self.channel, announce)
            return int(pipe.execute()[0])

        return self._call("UNLINK", do)

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
            for page in self._scan_pages(match):
                # Each page is announced with its UNLINK, in one round trip: if the scan
                # dies halfway, every key already removed has been announced.
                pipe = self._client.pipeline(transaction=False)
                pipe.unlink(*page)
                if announce is not None:
                    pipe.publish(self.channel, announce)
                removed += int(pipe.execute()[0])
                pages += 1
            if announce is not None and not pages:
                self._client.publish(self.channel, announce)
            return removed

        return self._call("SCAN/UNLINK", do)

    def subscriber(self) -> redis.Redis:
        """A new client on its own connection for the invalidation listener.

        It never retries: redis-py's retry would reconnect and resubscribe silently, and
        the listener must see every drop, since messages may have been lost in it.
        """
        kwargs = {k: v for k, v in self._pool_kwargs.items()
                  if k not in ("max_connections", "timeout")}
        kwargs["retry"] = Retry(NoBackoff(), 0)
        if kwargs.pop("connection_class", None) is not None:
            kwargs["ssl"] = True  # Redis() takes the flag, not the pool's connection class
        return redis.Redis(**kwargs)

    def _scan_pages(self, match: str) -> Iterator[list[bytes | str]]:
        cursor = 0
        while True:
            cursor, names = self._client.scan(cursor=cursor, match=match, count=_SCAN_COUNT)
            if names:
                yield names
            if cursor == 0:
                return

    # -- health --------------------------------------------------------------------------

    def probe(self) -> ServerInfo:
        """PING and INFO server; raises CacheUnavailableError when the server can't answer.

        Returns:
            {"server": "dragonfly"|"redis"|"valkey", "version": str}
        """

        def do() -> ServerInfo:
            self._client.ping()
            server, version = detect_server(self._client.info("server"))
            return {"server": server, "version": version}

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
        """Close every pooled connection."""
        self._client.close()
        self._pool.disconnect()
