"""Servers as this process sees them, and the error boundary around every call to them.

Each server (the standalone one, or every primary of a cluster) is a :class:`Node`: its idle
connections, its connection slots and its circuit breaker, so a dead node fails fast without
slowing the others. :class:`Nodes` makes them on first use and runs calls on them: every
redis-py error becomes a :class:`CacheUnavailableError` here, counted and logged (at most
one line per operation every ``_LOG_EVERY`` seconds).

Time bounds (per command). A command that fails with a connection error (refused, reset, a
pooled socket the server closed) is attempted up to ``1 + max_retries`` times with
exponential backoff and full jitter between attempts (``BACKOFF_BASE * 2**n`` capped at
``BACKOFF_CAP``); a timeout ends the call at once. So a stalled server costs one
``connect_timeout`` or ``socket_timeout``, and no call takes longer than ``pool_timeout +
(1 + max_retries) * (connect_timeout + socket_timeout) + max_retries * BACKOFF_CAP``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from ._breaker import CircuitBreaker
from ._connections import Command, Connections, SSLConnection, Tracker, exchange_all
from ._slots import FairSlots
from .config import DragonflyConfig
from .exceptions import CacheUnavailableError
from .types import LatencyObserver

__all__ = ["BACKOFF_CAP", "Node", "Nodes", "Transport", "current_transport", "format_address",
           "split_address", "using_transport"]

logger = logging.getLogger(__name__)

BACKOFF_BASE = 0.01
BACKOFF_CAP = 0.1
_LOG_EVERY = 10.0  # seconds between repeated warnings about the same failing operation
T = TypeVar("T")



@dataclasses.dataclass(frozen=True)
class Transport:
    """What carries commands to a server instead of a TCP (or TLS) connection: the
    connection class, how our connection options (host and port included) become its
    options, and, for servers
    that cannot describe themselves (no INFO), what they are: a standalone server of kind
    ``server[0]``, version ``server[1]``. ``dragonfly_cache.testing`` uses it for
    in-process fake servers."""

    connection_class: type[redis.Connection]
    adapt: Callable[[dict[str, Any]], dict[str, Any]]
    server: tuple[str, str] | None = None


_transport: contextvars.ContextVar[Transport | None] = contextvars.ContextVar(
    "dragonfly_cache_transport", default=None)


@contextlib.contextmanager
def using_transport(transport: Transport) -> Iterator[None]:
    """Every cache made inside the block talks through ``transport`` (for its lifetime)."""
    token = _transport.set(transport)
    try:
        yield
    finally:
        _transport.reset(token)


def current_transport() -> Transport | None:
    """The transport caches made now would use (None: real connections)."""
    return _transport.get()


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets (as configured addresses are)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Node:
    """One server: its idle connections, its connection slots (at most ``pool_size`` in
    use, callers served first come first served) and its circuit breaker."""

    __slots__ = ("address", "breaker", "connections", "last_failure", "slots")

    def __init__(self, address: str, connections: Connections, config: DragonflyConfig
                 ) -> None:
        self.address = address
        self.connections = connections
        self.slots = FairSlots(config.pool_size)
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown,
                                      config.breaker_max_cooldown)
        self.last_failure = ""  # why the last call failed, for the open breaker's message


class Nodes:
    """The nodes of one process, and the error boundary around calls to them.

    Args:
        config: connection settings.
        on_unreachable: called when a node could not be reached, or answered READONLY (a
            cluster then refreshes its slot map, Sentinel asks for the primary: a failover
            may have moved the node's slots, or made it a replica).
    """

    def __init__(self, config: DragonflyConfig, on_unreachable: Callable[[], None]) -> None:
        self.config = config
        self._on_unreachable = on_unreachable
        # Retry connection errors only (refused, reset, a pooled socket the server closed):
        # they fail fast and a retry often succeeds. A timeout means a stalled server, and
        # retrying it would multiply the stall by 1 + max_retries.
        self._retry = Retry(ExponentialWithJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE),
                            config.max_retries, supported_errors=(redis.ConnectionError,))
        self._options: dict[str, Any] = {
            "protocol": 2,  # RESP2: what Redis 6+, Valkey and Dragonfly all speak the same way
            "db": config.db,
            "username": config.username,
            "password": config.password,
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.connect_timeout,
            "socket_keepalive": True,
            "retry": self._retry,
        }
        if config.tls:
            self._options.update(
                ssl_cert_reqs="required", ssl_check_hostname=config.tls_check_hostname,
                ssl_ca_certs=config.tls_ca_file, ssl_certfile=config.tls_cert_file,
                ssl_keyfile=config.tls_key_file)
        # Ours for TLS: it closes the socket of a failed TLS setup (see SSLConnection).
        self.connection_class: type[redis.Connection] = (
            SSLConnection if config.tls else redis.Connection)
        self.transport = transport = _transport.get()  # chosen once, when the cache is made
        if transport is not None:
            self.connection_class = transport.connection_class
        # Kept across forks: observers are not per-process state.
        self._observers: tuple[LatencyObserver, ...] = ()
        # Cluster replica reads: every pooled connection sends READONLY as it connects
        # (a cluster replica then serves reads of its slots; a primary ignores it).
        self.readonly = False
        self.start_process_state()

    def start_process_state(self) -> None:
        """Create what each process must own: nodes (connections, slots, breakers), locks
        and counters.

        After a fork the parent's sockets belong to the parent's sessions (sharing them
        would interleave replies), and any lock may have been held by a parent thread that
        does not exist here. The old connections are dropped without being shut down here
        (redis-py only shuts a socket down in the process that opened it).
        """
        self._nodes: dict[str, Node] = {}
        self._tracker: Tracker | None = None  # the parent's tracks nothing here
        self._lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self.errors = 0
        self.errors_by_operation: dict[str, int] = {}
        self._last_warning: dict[str, float] = {}

    def node(self, address: str) -> Node:
        """The node of ``address``, made on first use."""
        node = self._nodes.get(address)
        if node is None:
            with self._lock:
                node = self._nodes.get(address)
                if node is None:
                    node = self._nodes[address] = Node(address, self._pool(address),
                                                       self.config)
        return node

    def _pool(self, address: str) -> Connections:
        options = self._options_for(address)
        if self._tracker is not None:  # CLIENT TRACKING needs RESP3 on Dragonfly
            options["protocol"] = 3
        if self.readonly:
            options["redis_connect_func"] = _connect_readonly
        return Connections(self.connection_class, options, self._retry, self._tracker)

    def read_only(self) -> None:
        """Send READONLY on every pooled connection from now on (a cluster found by
        ``mode: auto``, with replica reads); pools made before are replaced."""
        self._replace_pools(readonly=True)

    def track(self, tracker: Tracker | None) -> None:
        """Make every pooled connection from now on a tracked one, watched by ``tracker``
        (None: plain ones again). Pools made before are replaced: their connections close
        as they come back, so no call is sent on an untracked connection once this returns
        (one already sent is answered on it)."""
        self._replace_pools(tracker=tracker)

    def _replace_pools(self, **settings: Any) -> None:
        with self._lock:
            self._tracker = settings.get("tracker", self._tracker)
            self.readonly = settings.get("readonly", self.readonly)
            replaced = []
            for node in self._nodes.values():
                replaced.append(node.connections)
                node.connections = self._pool(node.address)
        for connections in replaced:
            connections.close()

    def all(self) -> list[Node]:
        """The nodes made so far."""
        return list(self._nodes.values())

    def ask_unselected(self, operation: str, node: Node, commands: list[Command]) -> list[Any]:
        """``commands`` on a connection of their own that selects no database (db 0),
        inside the error boundary; their replies, error replies in place.

        For what is asked before ``db`` is known to exist there (whether the server is a
        cluster, whether it has that db): the node's own connections SELECT it as they
        connect, so on a server without it they fail before the question is asked.

        Raises:
            CacheUnavailableError: the server could not be reached.
        """
        connections = Connections(self.connection_class,
                                  {**self._options_for(node.address), "db": 0}, self._retry)
        try:
            return self.call(operation, node, lambda _pooled: connections.exchange(commands))
        finally:
            connections.close()

    def client(self, address: str, **overrides: Any) -> redis.Redis:
        """A new redis-py client on its own connection to ``address`` that never retries
        (the invalidation listener must see every drop: messages may be lost in it);
        ``overrides`` replace connection options (a sentinel's own credentials)."""
        # A pool of our connection class: redis.Redis(ssl=True) would use redis-py's.
        pool = redis.ConnectionPool(connection_class=self.connection_class,
                                    **{**self._options_for(address),
                                       "retry": Retry(NoBackoff(), 0), **overrides})
        return redis.Redis.from_pool(pool)  # closing the client disconnects its pool

    def connections(self, address: str, **overrides: Any) -> Connections:
        """Connections of their own to ``address``, outside every node and breaker, that
        never retry; ``overrides`` replace connection options (for the sentinels)."""
        return Connections(self.connection_class, {**self._options_for(address), **overrides},
                           Retry(NoBackoff(), 0))

    def _options_for(self, address: str) -> dict[str, Any]:
        host, port = split_address(address)
        options = {**self._options, "host": host, "port": port}
        return options if self.transport is None else self.transport.adapt(options)

    def rejected(self) -> int:
        """Calls refused by open breakers, over every node."""
        return sum(node.breaker.rejected for node in list(self._nodes.values()))

    def close(self) -> None:
        """Close every idle connection (they reconnect if used again)."""
        for node in list(self._nodes.values()):
            node.connections.close()

    # -- calls ----------------------------------------------------------------------------

    def call(self, operation: str, node: Node, do: Callable[[Connections], T]) -> T:
        """Run ``do`` with ``node``'s connections inside the error boundary.

        Raises:
            CacheUnavailableError: the breaker is open, no connection was free in time, or
                ``do`` failed (any exception: the cause is chained).
        """
        self._admit(operation, node)
        started = time.perf_counter()
        try:
            result = do(node.connections)
        except Exception as exc:
            raise self._verdict(operation, node, exc) from exc
        finally:
            node.slots.release()
            self._observe(operation, time.perf_counter() - started)
        node.breaker.success()
        return result

    def call_all(self, operation: str, batches: list[tuple[Node, list[Command]]]
                 ) -> list[list[Any] | CacheUnavailableError]:
        """:meth:`call` on several nodes at once (all sent, then all read): per batch, its
        replies (error replies in place) or why it failed."""
        results: list[list[Any] | CacheUnavailableError | None] = []
        admitted: list[tuple[Node, list[Command]]] = []
        for node, commands in batches:
            try:
                self._admit(operation, node)
            except CacheUnavailableError as exc:
                results.append(exc)
                continue
            results.append(None)
            admitted.append((node, commands))
        started = time.perf_counter()
        try:
            outcomes = exchange_all([(node.connections, commands) for node, commands in admitted])
        finally:
            for node, _ in admitted:
                node.slots.release()
            self._observe(operation, time.perf_counter() - started)
        replies = iter(zip(admitted, outcomes, strict=True))
        for index, result in enumerate(results):
            if result is None:
                (node, _), outcome = next(replies)
                if isinstance(outcome, Exception):
                    results[index] = self._verdict(operation, node, outcome)
                else:
                    node.breaker.success()
                    results[index] = outcome
        return [result for result in results if result is not None]

    def _admit(self, operation: str, node: Node) -> None:
        """Pass the node's breaker and take one of its connection slots, or raise."""
        breaker = node.breaker
        if not breaker.allow():
            # Still unreachable: in a cluster its slots may have gone to a promoted replica
            # meanwhile (the map is fetched again at most every 0.5 s).
            self._on_unreachable()
            raise CacheUnavailableError(
                f"{operation} on {node.address} not attempted: circuit breaker open "
                f"(probing again within {breaker.stats()['cooldown']:g}s; last failure: "
                f"{node.last_failure})")
        if not node.slots.acquire(self.config.pool_timeout):
            breaker.abandon()  # no verdict on the server: it was never asked
            raise self.failure(operation, node.address, f"no free connection within "
                               f"{self.config.pool_timeout:g}s "
                               f"(pool_size={self.config.pool_size})")

    def _verdict(self, operation: str, node: Node, exc: BaseException) -> CacheUnavailableError:
        """Record a failed call on ``node`` in its breaker and the counters."""
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            node.breaker.failure()  # the server could not be reached (or refused our login)
            self._on_unreachable()
        elif isinstance(exc, redis.ReadOnlyError):
            node.breaker.success()  # it answered: as a replica now (a demoted primary)
            self._on_unreachable()
        elif isinstance(exc, redis.RedisError):
            node.breaker.success()  # it answered, with an error (e.g. out of memory)
        else:
            # Anything else (an OSError, or redis-py tripping over a pool that close()
            # tore down under it) is still a failed call: reads must not see it raise.
            node.breaker.failure()
        node.last_failure = f"{type(exc).__name__}: {exc}"
        return self.failure(operation, node.address, node.last_failure, exc)

    def failure(self, operation: str, where: str, reason: str,
                cause: BaseException | None = None) -> CacheUnavailableError:
        """Count and log a failed operation; the error to raise (or to report)."""
        with self._counter_lock:
            self.errors += 1
            self.errors_by_operation[operation] = self.errors_by_operation.get(operation, 0) + 1
        # redis-py's messages name host and port, never the password (tests check this).
        message = f"{operation} on {where} failed: {reason}"
        self._warn(operation, message)
        error = CacheUnavailableError(message)
        error.__cause__ = cause
        return error

    def _warn(self, operation: str, message: str) -> None:
        # One line per operation per _LOG_EVERY seconds: an outage must not flood the logs.
        now = time.monotonic()
        if now - self._last_warning.get(operation, -_LOG_EVERY) >= _LOG_EVERY:
            self._last_warning[operation] = now
            logger.warning("%s", message)

    # -- latency --------------------------------------------------------------------------

    def add_latency_observer(self, observer: LatencyObserver) -> None:
        """Call ``observer(operation, seconds)`` after every command batch (once, however
        often the same observer is added)."""
        if observer not in self._observers:
            self._observers = (*self._observers, observer)

    def remove_latency_observer(self, observer: LatencyObserver) -> None:
        """Stop calling ``observer`` (no error if it was not added)."""
        self._observers = tuple(o for o in self._observers if o is not observer)

    def _observe(self, operation: str, seconds: float) -> None:
        for observer in self._observers:
            try:
                observer(operation, seconds)
            except Exception:  # a metrics problem must never fail a cache call
                logger.exception("latency observer failed")


def _connect_readonly(connection: redis.Connection) -> None:
    """redis-py's connection set-up (AUTH, HELLO, SELECT), then READONLY."""
    # Unannotated in redis-py.
    connection.on_connect()  # type: ignore[no-untyped-call]
    connection.send_command("READONLY", check_health=False)  # type: ignore[no-untyped-call]
    connection.read_response()  # an error reply raises: the connect fails
