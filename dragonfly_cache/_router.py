"""Reaching the servers: per-node connections and breakers, the cluster's slot map, routing.

:class:`Router` is the lower half of :class:`~dragonfly_cache._l2.L2`: it knows *where*
each command goes and what a failure there means; L2 knows *which* commands make each
cache operation. Every redis-py error becomes a :class:`CacheUnavailableError` here.

Standalone, everything goes to the one server. In a cluster (several addresses, or one
server reporting ``cluster_enabled:1``, or ``mode="cluster"``), each key goes to the primary
serving its hash slot, per the map the servers give (``CLUSTER SLOTS``), refreshed after a
MOVED reply or a lost node, at most every ``_REFRESH_INTERVAL``. Commands are driven over
our own per-node connections (see :mod:`dragonfly_cache._connections` for why not redis-py's
pipeline), so a batch is sent to every node before any reply is read. Each node has its own
breaker and connection slots: a dead primary fails fast without slowing the others.

Time bounds (per command; ``health()`` sends one per node, ``invalidate`` two per page). A
command that fails with a connection error (refused, reset, a pooled socket the server
closed) is attempted up to ``1 + max_retries`` times with exponential backoff and full
jitter between attempts (``_BACKOFF_BASE * 2**n`` capped at ``_BACKOFF_CAP``); a timeout
ends the call at once. So a stalled server costs one ``connect_timeout`` or
``socket_timeout``, and no call takes longer than ``pool_timeout + (1 + max_retries) *
(connect_timeout + socket_timeout) + max_retries * _BACKOFF_CAP`` (in a cluster, plus one
slot-map refresh and up to ``_REDIRECTS`` redirections).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AskError, MovedError
from redis.retry import Retry

from ._breaker import CLOSED, CircuitBreaker
from ._coherence import channel_name
from ._connections import Command, Connections, SSLConnection, exchange_all
from ._singleflight import SingleFlight
from ._slots import FairSlots
from ._topology import SlotMap, format_address, slot_of
from .config import DragonflyConfig
from .exceptions import CacheUnavailableError

__all__ = ["Group", "Node", "Router", "parse_info", "replies_of", "split_address"]

logger = logging.getLogger("dragonfly_cache")

_BACKOFF_BASE = 0.01
_BACKOFF_CAP = 0.1
_REDIRECTS = 3  # MOVED/ASK followed per key per call; more means a resharding outran us
_REFRESH_INTERVAL = 0.5  # seconds: the slot map is fetched again at most this often
_BREAKER_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}
_LOG_EVERY = 10.0  # seconds between repeated warnings about the same failing operation
T = TypeVar("T")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def parse_info(reply: bytes | str) -> dict[str, str]:
    """The ``key:value`` lines of an INFO reply."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    fields = (line.split(":", 1) for line in text.splitlines()
              if line and not line.startswith("#") and ":" in line)
    return {key: value for key, value in fields}


class Node:
    """One server as this process sees it: its idle connections, its connection slots
    (at most ``pool_size`` in use, callers served first come first served) and its
    circuit breaker. In cluster mode every primary has its own, so a dead node fails fast
    without slowing the others down."""

    __slots__ = ("address", "breaker", "connections", "last_failure", "slots")

    def __init__(self, address: str, connections: Connections, config: DragonflyConfig
                 ) -> None:
        self.address = address
        self.connections = connections
        self.slots = FairSlots(config.pool_size)
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown,
                                      config.breaker_max_cooldown)
        self.last_failure = ""  # why the last call failed, for the open breaker's message


Group = tuple[str | bytes, list[Command]]  # a key (or channel), the commands about it


class Router:
    """Where commands go, and the error boundary around them (see the module docs).

    Args:
        config: connection settings. One address is a standalone server unless it reports
            ``cluster_enabled:1`` (or ``mode`` says otherwise); several are cluster seeds.
        key_prefix: the cache's key prefix (it names the invalidation channel).
    """

    def __init__(self, config: DragonflyConfig, key_prefix: str) -> None:
        self.config = config
        self.address = ",".join(config.addresses)
        self.channel = channel_name(config.db, key_prefix)
        # True: cluster; False: standalone; None: not known until the server is asked.
        self._clustered: bool | None = config.clustered
        self._slot_map: SlotMap | None = None
        self._stale_map = False  # a MOVED or a lost node: refresh the map before routing
        self._refreshed_at = -math.inf
        self._sharded = False  # the cluster has SPUBLISH/SSUBSCRIBE (Redis 7+, Dragonfly)
        # Retry connection errors only (refused, reset, a pooled socket the server closed):
        # they fail fast and a retry often succeeds. A timeout means a stalled server, and
        # retrying it would multiply the stall by 1 + max_retries.
        self._retry = Retry(ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE),
                            config.max_retries, supported_errors=(redis.ConnectionError,))
        self._connection_options: dict[str, Any] = {
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
            self._connection_options.update(
                ssl_cert_reqs="required", ssl_check_hostname=config.tls_check_hostname,
                ssl_ca_certs=config.tls_ca_file, ssl_certfile=config.tls_cert_file,
                ssl_keyfile=config.tls_key_file)
        self._connection_class = SSLConnection if config.tls else redis.Connection
        self._pool_timeout = config.pool_timeout
        # Called with (operation, seconds) after every command that reached the server;
        # the metrics module sets it. Kept across forks: it is not per-process state.
        self.latency_observer: Callable[[str, float], None] | None = None
        self._start_process_state()

    def _start_process_state(self) -> None:
        """Create what each process must own: nodes (connections, slots, breakers), locks
        and counters. The slot map is plain data and is kept."""
        self._nodes: dict[str, Node] = {}
        self._nodes_lock = threading.Lock()
        # One question to the servers at a time ("cluster?", "slot map?"), no lock held
        # while it is asked; threads that need the answer wait for it, not for a lock.
        self._topology: SingleFlight[Any] = SingleFlight()
        self._seed = self._node(self.config.addresses[0])
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

    def _node(self, address: str) -> Node:
        node = self._nodes.get(address)
        if node is None:
            with self._nodes_lock:
                node = self._nodes.get(address)
                if node is None:
                    host, port = split_address(address)
                    options = {**self._connection_options, "host": host, "port": port}
                    connections = Connections(self._connection_class, options, self._retry)
                    node = self._nodes[address] = Node(address, connections, self.config)
        return node

    # -- the error boundary --------------------------------------------------------------

    def _admit(self, operation: str, node: Node) -> None:
        """Pass the node's breaker and take one of its connection slots, or raise."""
        breaker = node.breaker
        if not breaker.allow():
            raise CacheUnavailableError(
                f"{operation} on {node.address} not attempted: circuit breaker open "
                f"(probing again within {breaker.stats()['cooldown']:g}s; last failure: "
                f"{node.last_failure})")
        if not node.slots.acquire(self._pool_timeout):
            breaker.abandon()  # no verdict on the server: it was never asked
            raise self._failure(operation, node, f"no free connection within "
                                f"{self._pool_timeout:g}s (pool_size={self.config.pool_size})")

    def _verdict(self, operation: str, node: Node, exc: BaseException
                 ) -> CacheUnavailableError:
        """Record a failed call on ``node`` in its breaker and the counters."""
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            node.breaker.failure()  # the server could not be reached (or refused our login)
            if self._clustered:
                self._stale_map = True  # a failover may have given its slots to a replica
        elif isinstance(exc, redis.RedisError):
            node.breaker.success()  # it answered, with an error (e.g. out of memory)
        else:
            # Anything else (an OSError, or redis-py tripping over a pool that close()
            # tore down under it) is still a failed call: reads must not see it raise.
            node.breaker.failure()
        node.last_failure = f"{type(exc).__name__}: {exc}"
        return self._failure(operation, node, node.last_failure, exc)

    def _call(self, operation: str, node: Node, do: Callable[[Connections], T]) -> T:
        """Run ``do`` with ``node``'s connections inside the error boundary."""
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

    def _call_all(self, operation: str, batches: list[tuple[Node, list[Command]]]
                  ) -> list[list[Any] | CacheUnavailableError]:
        """:meth:`_call` on several nodes at once (all sent, then all read): per batch, its
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

    def _observe(self, operation: str, seconds: float) -> None:
        observer = self.latency_observer
        if observer is not None:
            try:
                observer(operation, seconds)
            except Exception:  # a metrics problem must never fail a cache call
                logger.exception("latency observer failed")

    def _failure(self, operation: str, node: Node | None, reason: str,
                 cause: BaseException | None = None) -> CacheUnavailableError:
        """Count and log a failed operation; the error to raise (or to report)."""
        with self._counter_lock:
            self.errors += 1
            self.errors_by_operation[operation] = self.errors_by_operation.get(operation, 0) + 1
        # redis-py's messages name host and port, never the password (tests check this).
        where = self.address if node is None else node.address
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

    def _count(self, hits: int, misses: int) -> None:
        with self._counter_lock:
            self.hits += hits
            self.misses += misses

    # -- topology ------------------------------------------------------------------------

    def _is_cluster(self) -> bool:
        """Standalone or cluster; asks the first address once when ``mode`` is auto."""
        clustered = self._clustered
        if clustered is None:
            clustered = bool(self._topology.do("mode", self._ask_mode))
        return clustered

    def _ask_mode(self) -> bool:
        if self._clustered is None:  # not answered while this thread waited to lead
            reply = self._call("INFO", self._seed,
                               lambda c: c.roundtrip((("INFO", "cluster"),))[0])
            clustered = parse_info(reply).get("cluster_enabled") == "1"
            if clustered and self.config.db != 0:
                raise self._failure("INFO", self._seed, (
                    f"the server runs in cluster mode, which has only db 0, but "
                    f"DRAGONFLY_DB (DragonflyConfig.db) is {self.config.db}"))
            self._clustered = clustered
        return self._clustered

    def _map(self) -> SlotMap:
        """The slot map: fetched on first use (callers wait for it), and again when known
        to be stale, at most every ``_REFRESH_INTERVAL`` (by one caller; the others keep
        routing with the map they have)."""
        slot_map = self._slot_map
        if slot_map is None:
            fetched: SlotMap = self._topology.do("map", self._fetch_map)
            return fetched
        if not self._stale_map or time.monotonic() - self._refreshed_at <= _REFRESH_INTERVAL:
            return slot_map
        flight, leader = self._topology.claim("map")
        if not leader:
            return slot_map
        try:
            slot_map = self._fetch_map()
        except BaseException as exc:
            self._topology.finish("map", flight, error=exc)
            raise
        self._topology.finish("map", flight, value=slot_map)
        return slot_map

    def _fetch_map(self) -> SlotMap:
        """Ask the known primaries, then the configured addresses, for CLUSTER SLOTS."""
        known = self._slot_map.primaries if self._slot_map is not None else []
        candidates = [self._node(address) for address in
                      dict.fromkeys([*known, *self.config.addresses])]
        # Nodes that answer lately first: a stalled one would cost a whole timeout.
        candidates.sort(key=lambda node: node.breaker.state != CLOSED)
        problems = []
        for node in candidates:
            try:
                slots_reply, spublish = self._call("CLUSTER SLOTS", node, _ask_topology)
                if isinstance(slots_reply, redis.ResponseError):
                    raise self._failure("CLUSTER SLOTS", node, str(slots_reply))
                slot_map = SlotMap(slots_reply, split_address(node.address)[0])
            except (CacheUnavailableError, ValueError) as exc:
                problems.append(str(exc))
                continue
            self._sharded = isinstance(spublish, list) and spublish[:1] != [None]
            self._slot_map, self._stale_map = slot_map, False
            self._refreshed_at = time.monotonic()
            return slot_map
        self._refreshed_at = time.monotonic()
        if self._slot_map is not None:
            return self._slot_map  # keep routing with what we had
        raise CacheUnavailableError(
            "no cluster node answered CLUSTER SLOTS: " + "; ".join(problems))

    def _route(self, name: str | bytes) -> Node:
        """The primary serving key (or shard channel) ``name``."""
        return self._node(_owner(self._map(), name))

    def _keyed(self, operation: str, groups: list[Group], announce: str | None = None
               ) -> list[list[Any] | CacheUnavailableError]:
        """Send each group's commands to the node serving its key, then ``announce``.

        Standalone: every command, then the PUBLISH, in one round trip; an error reply or
        a failure raises. Cluster: one round trip per node, all nodes at once; MOVED and
        ASK are followed (up to ``_REDIRECTS`` times); then the announcement goes to the
        node serving the channel (SPUBLISH where the cluster has sharded pub/sub), after
        the writes were acknowledged, and only if one of them was. Per group: its replies,
        or why they failed.

        Raises:
            CacheUnavailableError: standalone, anything failed; cluster, the announcement
                failed (a write nobody heard about must be reported).
        """
        if not self._is_cluster():
            commands = [command for _, group in groups for command in group]
            if announce is not None:
                commands.append(("PUBLISH", self.channel, announce))
            replies = self._call(operation, self._seed, lambda c: c.roundtrip(commands))
            results: list[list[Any] | CacheUnavailableError] = []
            position = 0
            for _, group in groups:
                results.append(replies[position:position + len(group)])
                position += len(group)
            return results
        results = self._scatter(operation, groups)
        if announce is not None and (not groups or any(
                not isinstance(result, Exception) for result in results)):
            command = ("SPUBLISH" if self._sharded else "PUBLISH", self.channel, announce)
            published = self._scatter("PUBLISH", [(self.channel, [command])])[0]
            if isinstance(published, CacheUnavailableError):
                raise published
        return results

    def _scatter(self, operation: str, groups: list[Group]
                 ) -> list[list[Any] | CacheUnavailableError]:
        results: list[list[Any] | CacheUnavailableError | None] = [None] * len(groups)
        pending = list(range(len(groups)))
        asked: dict[int, str] = {}  # group -> node that answered ASK for it
        redirected: dict[int, tuple[Node, AskError]] = {}
        for _ in range(_REDIRECTS + 1):
            try:
                slot_map = self._map()
            except CacheUnavailableError as exc:
                for index in pending:
                    results[index] = exc
                return [r if r is not None else exc for r in results]
            batches: dict[Node, list[int]] = {}
            for index in pending:
                try:
                    address = asked.get(index) or _owner(slot_map, groups[index][0])
                except CacheUnavailableError as exc:
                    results[index] = exc
                    continue
                batches.setdefault(self._node(address), []).append(index)
            plan = [(node, [command for index in indexes for command in
                            _asking(groups[index][1], index in asked)])
                    for node, indexes in batches.items()]
            outcomes = self._call_all(operation, plan)
            pending = []
            for (node, indexes), outcome in zip(batches.items(), outcomes, strict=True):
                if isinstance(outcome, CacheUnavailableError):
                    for index in indexes:
                        results[index] = outcome
                    continue
                failure: CacheUnavailableError | None = None  # counted once per node
                position = 0
                for index in indexes:
                    size = len(groups[index][1])
                    if index in asked:  # every other reply is ASKING's OK
                        replies = outcome[position + 1:position + 2 * size:2]
                        position += 2 * size
                    else:
                        replies = outcome[position:position + size]
                        position += size
                    problem = None
                    for reply in replies:
                        if isinstance(reply, redis.ResponseError):
                            problem = reply
                            break
                    if problem is None:
                        results[index] = replies
                    elif isinstance(problem, AskError):  # MOVED is an AskError too
                        address = format_address(problem.host, problem.port)
                        if isinstance(problem, MovedError):
                            self._moved(problem.slot_id, address)
                            asked.pop(index, None)
                        else:
                            asked[index] = address
                        pending.append(index)
                        redirected[index] = (node, problem)
                    else:
                        if failure is None:
                            failure = self._failure(operation, node,
                                                    f"{type(problem).__name__}: {problem}")
                        results[index] = failure
            if not pending:
                break
        for index in pending:  # still redirected: a resharding that outran us
            node, redirect = redirected[index]
            results[index] = self._failure(operation, node, f"still redirected after "
                                           f"{_REDIRECTS} redirections: {redirect}")
        return [result if result is not None else CacheUnavailableError(operation)
                for result in results]

    def _moved(self, slot: int, address: str) -> None:
        """A MOVED reply: route the slot there now, and refresh the whole map soon (one
        slot rarely moves alone)."""
        slot_map = self._slot_map
        if slot_map is not None:
            slot_map.move(slot, address)
        self._stale_map = True

    def breaker_stats(self) -> dict[str, Any]:
        """The breaker's state and counters; in a cluster, the worst node's state, summed
        counters and ``nodes`` (address -> state)."""
        slot_map = self._slot_map
        if self._clustered is not True or slot_map is None:
            return self._seed.breaker.stats()
        # The current primaries only: a node that left the cluster must not look open forever.
        per_node = {address: self._node(address).breaker.stats()
                    for address in slot_map.primaries}
        states = [stats["state"] for stats in per_node.values()]
        worst = max(states, key=_BREAKER_SEVERITY.__getitem__)
        return {
            "state": worst,
            "consecutive_failures": max(s["consecutive_failures"] for s in per_node.values()),
            "cooldown": max(s["cooldown"] for s in per_node.values()),
            **{counter: sum(s[counter] for s in per_node.values())
               for counter in ("opened", "closed", "rejected")},
            "nodes": {address: s["state"] for address, s in per_node.items()},
        }

    def close(self) -> None:
        """Close every idle connection."""
        for node in list(self._nodes.values()):
            node.connections.close()


def _owner(slot_map: SlotMap, name: str | bytes) -> str:
    """The address of the primary serving ``name``'s slot, or CacheUnavailableError."""
    slot = slot_of(name)
    owner = slot_map.owner(slot)
    if owner is None:
        raise CacheUnavailableError(f"hash slot {slot} of the cluster is not served by any "
                                    f"node (key {name!r})")
    return owner


def _ask_topology(connections: Connections) -> list[Any]:
    # COMMAND INFO of an unknown command is [nil]; an error reply means no COMMAND at all.
    return connections.exchange((("CLUSTER", "SLOTS"), ("COMMAND", "INFO", "SPUBLISH")))


def _asking(commands: list[Command], asked: bool) -> list[Command]:
    """The commands, each preceded by ASKING when the node answered ASK for them."""
    if not asked:
        return commands
    return [part for command in commands for part in (("ASKING",), command)]


def replies_of(result: list[Any] | CacheUnavailableError) -> list[Any]:
    """The replies, or raise the failure in their place."""
    if isinstance(result, CacheUnavailableError):
        raise result
    return result

