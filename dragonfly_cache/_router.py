"""Where commands go: the standalone server, or the primary serving each key's hash slot.

:class:`Router` is what :class:`~dragonfly_cache._l2.L2` holds to reach the servers: L2
knows *which* commands make each cache operation, the router knows *where* they go. Its
surface is small: :meth:`~Router.call` (one node), :meth:`~Router.keyed` (one key's
commands), :meth:`~Router.batch` (many keys' commands, one round trip per node),
:meth:`~Router.is_cluster` and :meth:`~Router.primaries`. The error boundary (breakers,
retries, counting, logging) is :mod:`dragonfly_cache._nodes`'s; the slot map is
:mod:`dragonfly_cache._topology`'s.

With sentinels (``DRAGONFLY_SENTINELS``) the one server is the primary they name, and a
failover moves every command to the new one (:mod:`dragonfly_cache._sentinel`);
``on_switch`` lets the tiers act around that move. In a cluster (several addresses, or one
server reporting ``cluster_enabled:1``, or ``mode="cluster"``) each key goes to the primary
serving its slot. Commands are driven over our own per-node connections (see
:mod:`dragonfly_cache._connections` for why not redis-py's pipeline), so a batch is sent to
every node before any reply is read; MOVED and ASK are followed up to ``_REDIRECTS`` times
per call. A call then takes at most the time bound of
:mod:`dragonfly_cache._nodes`, plus one slot-map refresh and those redirections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.exceptions import AskError, MovedError

from ._breaker import BreakerState, CircuitBreaker
from ._connections import Command, Connections
from ._nodes import Node, Nodes, format_address
from ._sentinel import Sentinel
from ._topology import SlotMap, Topology
from .config import DragonflyConfig
from .exceptions import CacheUnavailableError
from .types import BreakerStats

__all__ = ["Group", "Result", "Router", "Scatter", "replies_of"]

_REDIRECTS = 3  # MOVED/ASK followed per key per call; more means a resharding outran us
T = TypeVar("T")

Group = tuple[str | bytes, list[Command]]  # a key (or channel), the commands about it
Result = list[Any] | CacheUnavailableError  # a group's replies, or why they failed
# Runs around a move to a new primary; it must call the move it is given, once.
SwitchHandler = Callable[[Callable[[], None]], None]


class Router:
    """Routes commands to the servers of one configuration (see the module docs).

    Args:
        config: connection settings. One address is a standalone server unless it reports
            ``cluster_enabled:1`` (or ``mode`` says otherwise); several are cluster seeds;
            with ``sentinels``, the server is the primary they name.
    """

    def __init__(self, config: DragonflyConfig) -> None:
        self.config = config
        self.address = ",".join(config.addresses)
        # The standalone server (or the first seed); with sentinels, the primary they name
        # (None until they were asked).
        self._first: str | None = config.addresses[0]
        self.nodes = Nodes(config, on_unreachable=self._unreachable)
        self.topology = Topology(config, self.nodes)
        self.topology.on_switch = self._around_switch
        self.on_switch: SwitchHandler | None = None  # set by the tiers of this process
        self.sentinel: Sentinel | None = None
        if config.sentinels:
            self._first = None
            self.address = f"{config.sentinel_master} via {','.join(config.sentinels)}"
            self.sentinel = Sentinel(config, self.nodes, self._switch)

    def after_fork_in_child(self) -> None:
        """Drop the parent's connections, locks, breaker state, counters and threads."""
        self.nodes.start_process_state()
        self.topology.start_process_state()
        if self.sentinel is not None:
            self.sentinel.start_process_state()

    def _unreachable(self) -> None:
        self.topology.mark_stale()
        if self.sentinel is not None:
            self.sentinel.suspect()

    def _server(self) -> str:
        """The standalone server: the configured one, or the primary the sentinels name.

        Raises:
            CacheUnavailableError: no sentinel named a primary yet.
        """
        address = self._first
        if address is None:
            if self.sentinel is None:  # pragma: no cover - _first is None only with sentinels
                raise CacheUnavailableError("no server configured")
            try:
                return self.sentinel.current()
            except CacheUnavailableError as exc:  # counted and logged like any failure
                raise self.nodes.failure("SENTINEL", self.address, str(exc)) from exc
        return address

    def _switch(self, address: str, previous: str | None) -> None:
        """Route to ``address`` from now on (the sentinels' new primary), with
        ``on_switch`` run around the move."""

        def move() -> None:
            # The sentinels vouch for it: a breaker that opened while it was down or a
            # replica must not hold writes back now.
            self.nodes.node(address).breaker.success()
            self._first = address

        if previous is None:
            move()  # the first primary found: nothing to move from
        else:
            self._around_switch(move)

    def _around_switch(self, move: Callable[[], None]) -> None:
        """``move()`` to a new primary (the sentinels', or a cluster's promoted replica),
        with ``on_switch`` run around it."""
        handler = self.on_switch
        if handler is None:
            move()
        else:
            handler(move)

    # -- the surface ----------------------------------------------------------------------

    def is_cluster(self) -> bool:
        """Whether the servers form a cluster (asks once when ``mode`` is auto)."""
        return self.topology.is_cluster()

    def primaries(self) -> list[str]:
        """The addresses of every primary (the one server when standalone)."""
        if self.is_cluster():
            return list(self.topology.current().primaries)
        return [self._first or self._server()]

    def route(self, name: str | bytes) -> str:
        """The address serving key (or shard channel) ``name``."""
        if self.is_cluster():
            return self.topology.current().owner_of(name)
        return self._first or self._server()

    @property
    def sharded(self) -> bool:
        """Whether this is a cluster with sharded pub/sub (SPUBLISH/SSUBSCRIBE)."""
        return self.topology.clustered is True and self.topology.sharded

    def call(self, operation: str, do: Callable[[Connections], T], address: str | None = None
             ) -> T:
        """Run ``do`` on the connections of ``address`` (default: the first configured
        address, the standalone server) inside the error boundary.

        Raises:
            CacheUnavailableError: it failed (any cause; chained).
        """
        if address is None:
            address = self._first or self._server()
        return self.nodes.call(operation, self.nodes.node(address), do)

    def keyed(self, operation: str, name: str | bytes, commands: list[Command]) -> list[Any]:
        """Send one key's ``commands`` to the node serving it; their replies.

        Raises:
            CacheUnavailableError: it failed, or a command got an error reply.
        """
        if self.topology.clustered is False:  # the common case, kept short
            return self.nodes.call(operation, self.nodes.node(self._first or self._server()),
                                   lambda c: c.roundtrip(commands))
        return replies_of(self.batch(operation, [(name, commands)])[0])

    def batch(self, operation: str, groups: list[Group]) -> list[Result]:
        """Send each group's commands to the node serving its key; per group, its replies
        or why they failed.

        Standalone: every command in one round trip, and any failure raises. Cluster: one
        round trip per node, all nodes at once; a node that fails fails only its groups.

        Raises:
            CacheUnavailableError: standalone, anything failed.
        """
        if not self.is_cluster():
            commands = [command for _, group in groups for command in group]
            replies = self.call(operation, lambda c: c.roundtrip(commands))
            results: list[Result] = []
            position = 0
            for _, group in groups:
                results.append(replies[position:position + len(group)])
                position += len(group)
            return results
        return Scatter(self, operation, groups).run()

    # -- introspection ----------------------------------------------------------------------

    def breaker_stats(self) -> BreakerStats:
        """The breaker's state and counters; in a cluster, the worst node's state, summed
        counters and ``nodes`` (address -> state)."""
        slot_map = self.topology.slot_map
        if self._first is None:  # no primary known yet: no breaker has judged it
            config = self.config
            return CircuitBreaker(config.breaker_threshold, config.breaker_cooldown,
                                  config.breaker_max_cooldown).stats()
        if self.topology.clustered is not True or slot_map is None:
            return self.nodes.node(self._first).breaker.stats()
        # The current primaries only: a node that left the cluster must not look open forever.
        per_node = {address: self.nodes.node(address).breaker.stats()
                    for address in slot_map.primaries}
        stats = list(per_node.values())
        return {
            "state": BreakerState.worst(BreakerState(s["state"]) for s in stats).value,
            "consecutive_failures": max(s["consecutive_failures"] for s in stats),
            "cooldown": max(s["cooldown"] for s in stats),
            "opened": sum(s["opened"] for s in stats),
            "closed": sum(s["closed"] for s in stats),
            "rejected": sum(s["rejected"] for s in stats),
            "nodes": {address: s["state"] for address, s in per_node.items()},
        }

    def close(self) -> None:
        """Close every idle connection; stop following the sentinels."""
        if self.sentinel is not None:
            self.sentinel.stop()
        self.nodes.close()


class Scatter:
    """One cluster batch: each group to its slot's owner, all nodes at once, following
    MOVED (route the slot there from now on) and ASK (this once, after ASKING).

    A read may name a ``reader``: ``reader(owner)`` is where a group goes instead of its
    slot's owner (a replica: ``replica_served`` lists those groups), until redirected."""

    def __init__(self, router: Router, operation: str, groups: list[Group],
                 reader: Callable[[str], str] | None = None) -> None:
        self._reader = reader
        self.replica_served: set[int] = set()
        self._nodes = router.nodes
        self._topology = router.topology
        self._operation = operation
        self._groups = groups
        self._results: list[Result | None] = [None] * len(groups)
        self._asked: dict[int, str] = {}  # group -> node that answered ASK for it
        self._redirected: dict[int, tuple[Node, AskError]] = {}

    def run(self) -> list[Result]:
        pending = list(range(len(self._groups)))
        for _ in range(_REDIRECTS + 1):
            try:
                slot_map = self._topology.current()
            except CacheUnavailableError as exc:
                for index in pending:
                    self._results[index] = exc
                return self._finished()
            plan = self._plan(slot_map, pending)
            outcomes = self._nodes.call_all(self._operation,
                                            [(node, commands) for node, _, commands in plan])
            pending = []
            for (node, indexes, _), outcome in zip(plan, outcomes, strict=True):
                pending += self._take(node, indexes, outcome)
            if not pending:
                return self._finished()
        for index in pending:  # still redirected: a resharding that outran us
            node, redirect = self._redirected[index]
            self._results[index] = self._nodes.failure(
                self._operation, node.address,
                f"still redirected after {_REDIRECTS} redirections: {redirect}")
        return self._finished()

    def _finished(self) -> list[Result]:
        return [result if result is not None else CacheUnavailableError(self._operation)
                for result in self._results]

    def _plan(self, slot_map: SlotMap, pending: list[int]
              ) -> list[tuple[Node, list[int], list[Command]]]:
        """Per node: the pending groups it serves and their commands (ASKING where asked)."""
        by_node: dict[Node, list[int]] = {}
        for index in pending:
            try:
                address = self._asked.get(index) or slot_map.owner_of(self._groups[index][0])
            except CacheUnavailableError as exc:
                self._results[index] = exc
                continue
            if self._reader is not None and index not in self._redirected:
                served = self._reader(address)
                if served != address:
                    self.replica_served.add(index)
                    address = served
            else:
                self.replica_served.discard(index)
            by_node.setdefault(self._nodes.node(address), []).append(index)
        return [(node, indexes, [command for index in indexes for command in
                                 _asking(self._groups[index][1], index in self._asked)])
                for node, indexes in by_node.items()]

    def _take(self, node: Node, indexes: list[int], outcome: Result) -> list[int]:
        """Record one node's replies per group; the groups to send again (redirected)."""
        if isinstance(outcome, CacheUnavailableError):
            for index in indexes:
                self._results[index] = outcome
            return []
        again: list[int] = []
        failure: CacheUnavailableError | None = None  # counted once per node
        position = 0
        for index in indexes:
            size = len(self._groups[index][1])
            if index in self._asked:  # every other reply is ASKING's OK
                replies = outcome[position + 1:position + 2 * size:2]
                position += 2 * size
            else:
                replies = outcome[position:position + size]
                position += size
            problem = next((r for r in replies if isinstance(r, redis.ResponseError)), None)
            if problem is None:
                self._results[index] = replies
            elif isinstance(problem, AskError):  # MOVED is an AskError too
                self._redirect(index, node, problem)
                again.append(index)
            else:
                failure = failure or self._nodes.failure(
                    self._operation, node.address, f"{type(problem).__name__}: {problem}")
                self._results[index] = failure
        return again

    def _redirect(self, index: int, node: Node, redirect: AskError) -> None:
        address = format_address(redirect.host, redirect.port)
        if isinstance(redirect, MovedError):
            self._topology.moved(redirect.slot_id, address)
            self._asked.pop(index, None)
        else:
            self._asked[index] = address
        self._redirected[index] = (node, redirect)


def _asking(commands: list[Command], asked: bool) -> list[Command]:
    """The commands, each preceded by ASKING when the node answered ASK for them."""
    if not asked:
        return commands
    return [part for command in commands for part in (("ASKING",), command)]


def replies_of(result: Result) -> list[Any]:
    """The replies, or raise the failure in their place."""
    if isinstance(result, CacheUnavailableError):
        raise result
    return result
