"""Cluster topology: standalone or cluster, and which primary serves each hash slot.

The map comes from the servers themselves (``CLUSTER SLOTS``, which Redis Cluster, Valkey and
Dragonfly's cluster modes all answer), and keys are hashed with redis-py's own
``key_slot`` (CRC16, ``{hash tags}`` honoured): we route exactly as the cluster and
redis-py's ``RedisCluster`` do, never by a scheme of our own. The map is fetched on first
use and again after a MOVED reply or a lost node, at most every ``_REFRESH_INTERVAL``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from ._breaker import CLOSED
from ._connections import Connections
from ._nodes import Nodes, format_address, split_address
from ._singleflight import SingleFlight
from .config import DragonflyConfig
from .exceptions import CacheUnavailableError

__all__ = ["REDIS_CLUSTER_HASH_SLOTS", "SlotMap", "Topology", "parse_info", "slot_of"]

_REFRESH_INTERVAL = 0.5  # seconds: the slot map is fetched again at most this often


def slot_of(name: str | bytes) -> int:
    """The hash slot of a key or shard channel name."""
    return key_slot(name.encode() if isinstance(name, str) else name)


def parse_info(reply: bytes | str) -> dict[str, str]:
    """The ``key:value`` lines of an INFO reply."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    fields = (line.split(":", 1) for line in text.splitlines()
              if line and not line.startswith("#") and ":" in line)
    return {key: value for key, value in fields}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _node_address(node: Sequence[Any], asked_host: str) -> str:
    """``host:port`` of a node of a ``CLUSTER SLOTS`` entry (``[host, port, id, ...]``)."""
    host = _text(node[0]) or asked_host
    if host == "?":  # a node that does not know its own address yet
        host = asked_host
    return format_address(host, int(node[1]))


class SlotMap:
    """Slot -> primary address (and each primary's replicas), from a ``CLUSTER SLOTS``
    reply.

    Args:
        reply: the raw reply: ``[[start, end, [host, port, id, ...], replicas...], ...]``.
        asked_host: the host the reply came from; an empty host in the reply means it.

    Raises:
        ValueError: the reply is not a slot map (e.g. a standalone server's error text).
    """

    def __init__(self, reply: Sequence[Any], asked_host: str) -> None:
        owners: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        # Primary -> its replicas (the servers list only those not flagged failed).
        self.replicas: dict[str, list[str]] = {}
        try:
            for entry in reply:
                start, end = int(entry[0]), int(entry[1])
                address, *replicas = (_node_address(node, asked_host) for node in entry[2:])
                owners[start:end + 1] = [address] * (end - start + 1)
                self.replicas[address] = replicas
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"not a CLUSTER SLOTS reply: {exc}") from exc
        if len(owners) != REDIS_CLUSTER_HASH_SLOTS:
            raise ValueError("CLUSTER SLOTS reply has slots out of range")
        self.owners = owners
        self.primaries = sorted({owner for owner in owners if owner is not None})
        if not self.primaries:
            raise ValueError("CLUSTER SLOTS lists no slot at all")

    def owner(self, slot: int) -> str | None:
        """The primary serving ``slot`` (None: no node serves it)."""
        return self.owners[slot]

    def owner_of(self, name: str | bytes) -> str:
        """The address of the primary serving ``name``'s slot.

        Raises:
            CacheUnavailableError: no node serves that slot.
        """
        slot = slot_of(name)
        owner = self.owners[slot]
        if owner is None:
            raise CacheUnavailableError(f"hash slot {slot} of the cluster is not served by "
                                        f"any node (key {name!r})")
        return owner

    def move(self, slot: int, address: str) -> None:
        """Record a MOVED redirection: ``slot`` is served by ``address`` now."""
        self.owners[slot] = address
        self.primaries = sorted({owner for owner in self.owners if owner is not None})

    def uncovered(self) -> int:
        """How many slots no node serves."""
        return self.owners.count(None)


class Topology:
    """Standalone or cluster, and the slot map of a cluster.

    One question to the servers at a time ("cluster?", "slot map?"), no lock held while it
    is asked: threads that need the answer wait for it, not for a lock.

    Args:
        config: the addresses, ``mode`` and ``db``.
        nodes: the error boundary the questions go through.
    """

    def __init__(self, config: DragonflyConfig, nodes: Nodes) -> None:
        self._config = config
        self._nodes = nodes
        # True: cluster; False: standalone; None: not known until the server is asked.
        # A transport that describes its server (a fake one) is a standalone server.
        # A cluster asked for a db other than 0 is asked too: whether it has one is the
        # server's to say (Redis: no; Valkey 9: as many as its cluster-databases).
        described = nodes.transport is not None and nodes.transport.server is not None
        asked = config.clustered is None or (config.clustered and config.db != 0)
        self.clustered: bool | None = (False if described
                                       else None if asked else config.clustered)
        self.slot_map: SlotMap | None = None
        self._stale = False  # a MOVED or a lost node: refresh the map before routing
        self.refreshed_at = -math.inf  # when the map was last fetched (time.monotonic)
        self.sharded = False  # the cluster has SPUBLISH/SSUBSCRIBE (Redis 7+, Dragonfly)
        # Run around the move to a slot map with a new primary (set by the router).
        self.on_switch: Callable[[Callable[[], None]], None] | None = None
        self.start_process_state()

    def start_process_state(self) -> None:
        """A fresh question queue (a forked child must not wait for a parent's thread).
        The slot map is plain data and is kept."""
        self._questions: SingleFlight[Any] = SingleFlight()

    def is_cluster(self) -> bool:
        """Standalone or cluster; asks the first address once when ``mode`` is auto, or
        when a cluster is to use a db other than 0 (does it have that db?)."""
        clustered = self.clustered
        if clustered is None:
            clustered = bool(self._answer("mode", self._ask_mode))
        return clustered

    def _answer(self, question: str, ask: Callable[[], Any]) -> Any:
        """``ask()``, once for every thread that needs the answer now. A thread that waited
        for another's failed question raises an error of its own: the leader's (often the
        invalidation listener's) would show the leader's frames in this thread's traceback."""
        flight, leader = self._questions.claim(question)
        if not leader:
            try:
                return self._questions.wait(flight)
            except CacheUnavailableError as exc:
                raise CacheUnavailableError(str(exc)) from None
        try:
            value = ask()
        except BaseException as exc:
            self._questions.finish(question, flight, error=exc)
            raise
        self._questions.finish(question, flight, value=value)
        return value

    def mark_stale(self) -> None:
        """A node was lost: in a cluster, a failover may have given its slots elsewhere."""
        if self.clustered:
            self._stale = True

    def moved(self, slot: int, address: str) -> None:
        """A MOVED reply: route the slot there now, and refresh the whole map soon (one
        slot rarely moves alone)."""
        if self.slot_map is not None:
            self.slot_map.move(slot, address)
        self._stale = True

    def current(self) -> SlotMap:
        """The slot map: fetched on first use (callers wait for it), and again when known
        to be stale, at most every ``_REFRESH_INTERVAL`` (by one caller; the others keep
        routing with the map they have)."""
        slot_map = self.slot_map
        if slot_map is None:
            fetched: SlotMap = self._answer("map", self._fetch_map)
            return fetched
        if not self._stale or time.monotonic() - self.refreshed_at <= _REFRESH_INTERVAL:
            return slot_map
        flight, leader = self._questions.claim("map")
        if not leader:
            return slot_map
        try:
            slot_map = self._fetch_map()
        except BaseException as exc:
            self._questions.finish("map", flight, error=exc)
            raise
        self._questions.finish("map", flight, value=slot_map)
        return slot_map

    def refresh_soon(self) -> None:
        """Fetch the map again before the next routing (e.g. before following a channel
        whose slot may have moved)."""
        self._stale = True

    def _ask_mode(self) -> bool:
        if self.clustered is None:  # not answered while this thread waited to lead
            seed = self._nodes.node(self._config.addresses[0])
            db = self._config.db
            # On db 0, so that a db the server lacks does not fail the question itself.
            questions: list[tuple[Any, ...]] = [("INFO", "cluster")]
            if db != 0:
                questions.append(("SELECT", db))
            info, *selected = self._nodes.ask_unselected("INFO", seed, questions)
            if isinstance(info, redis.ResponseError):
                raise self._nodes.failure("INFO", seed.address, str(info))
            clustered = self._config.clustered
            if clustered is None:
                clustered = parse_info(info).get("cluster_enabled") == "1"
            if clustered and selected and isinstance(selected[0], redis.ResponseError):
                raise self._nodes.failure("INFO", seed.address, (
                    f"the server runs in cluster mode and has no db {db} (SELECT {db}: "
                    f"{selected[0]}): a Redis cluster has only db 0, a Valkey 9 cluster as "
                    f"many as its cluster-databases; set DRAGONFLY_DB (DragonflyConfig.db) "
                    f"to one it has, or use key_prefix to separate applications"))
            self.clustered = clustered
        return self.clustered

    def _fetch_map(self) -> SlotMap:
        """Ask the known primaries, then the configured addresses, for CLUSTER SLOTS."""
        known = self.slot_map.primaries if self.slot_map is not None else []
        candidates = [self._nodes.node(address) for address in
                      dict.fromkeys([*known, *self._config.addresses])]
        # Nodes that answer lately first: a stalled one would cost a whole timeout.
        candidates.sort(key=lambda node: node.breaker.state != CLOSED)
        problems = []
        for node in candidates:
            try:
                slots_reply, spublish = self._nodes.call("CLUSTER SLOTS", node, _ask_topology)
                if isinstance(slots_reply, redis.ResponseError):
                    raise self._nodes.failure("CLUSTER SLOTS", node.address, str(slots_reply))
                slot_map = SlotMap(slots_reply, split_address(node.address)[0])
            except (CacheUnavailableError, ValueError) as exc:
                problems.append(str(exc))
                continue
            self.sharded = isinstance(spublish, list) and spublish[:1] != [None]
            self._install(slot_map)
            return slot_map
        self.refreshed_at = time.monotonic()
        if self.slot_map is not None:
            return self.slot_map  # keep routing with what we had
        raise CacheUnavailableError(
            "no cluster node answered CLUSTER SLOTS: " + "; ".join(problems))

    def _install(self, slot_map: SlotMap) -> None:
        """Route with ``slot_map`` from now on. A primary that was not one before (a
        replica promoted by a failover) is a switch: ``on_switch`` runs around the move,
        as for a Sentinel failover (writes the old primary took may be lost with it)."""
        old = self.slot_map

        def move() -> None:
            self.slot_map, self._stale = slot_map, False
            self.refreshed_at = time.monotonic()

        handler = self.on_switch
        if handler is None or old is None or set(slot_map.primaries) <= set(old.primaries):
            move()
        else:
            handler(move)


def _ask_topology(connections: Connections) -> list[Any]:
    # COMMAND INFO of an unknown command is [nil]; an error reply means no COMMAND at all.
    return connections.exchange((("CLUSTER", "SLOTS"), ("COMMAND", "INFO", "SPUBLISH")))
