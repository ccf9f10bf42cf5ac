"""A throw-away Redis Cluster for the tests: N primaries (and R replicas of each) on 127.0.0.1.

:class:`LocalCluster` starts N :class:`ClusterNode` processes (a :class:`RedisServer` with
``--cluster-enabled yes`` and a private ``nodes-PORT.conf``), forms the cluster as
``redis-cli --cluster create`` does but with plain commands (``CLUSTER ADDSLOTSRANGE``,
``SET-CONFIG-EPOCH``, ``MEET``: no CLI needed, so a valkey-server alone makes a cluster too),
then polls ``CLUSTER INFO`` / ``CLUSTER SLOTS`` on every node until all of them report
``cluster_state:ok`` and agree on who serves each of the 16384 slots.

Readiness has two levels. A node answers PING (and the harness's INFO probe) as soon as it
listens, long before it belongs to a cluster, so :meth:`RedisServer.start` only means "the
process is up"; :meth:`LocalCluster.wait_healthy` is what means "the cluster serves keys".

With ``replicas=R``, R more nodes per primary are started, meet the others, and are made
replicas with ``CLUSTER REPLICATE``; healthy then also means every replica's link to its
primary is up. A killed primary's replica is promoted by the cluster itself (after
``cluster-node-timeout`` plus a random delay of up to 500 ms), and the killed node, once
restarted, rejoins as a replica of it.

Nodes run with ``--cluster-require-full-coverage no``. With no replicas, a killed primary's
slots have no one to fail over to; with the default (``yes``) every surviving node would turn
``cluster_state:fail`` once the death is detected (after ``cluster-node-timeout``) and refuse
*all* keys with CLUSTERDOWN. With ``no`` the survivors keep serving their own slots and only
the dead node's keys fail (connection refused), which is what fault tests want to observe.

Timings (redis 7.0, ``cluster-node-timeout`` 2000 ms):

* Forming takes well under a second: the nodes learn of each other by gossip, and each
  reports ``ok`` soon after it knows every slot's owner.
* A restarted primary reports ``cluster_state:fail`` (and answers keys with CLUSTERDOWN) for
  its first 2 s: redis waits ``CLUSTER_WRITABLE_DELAY`` before a rebooted primary serves.
* Peers flag a silent node PFAIL after the node timeout and FAIL soon after. A primary that
  still owns slots has its FAIL flag cleared only ``2 x node-timeout`` after it was set, so a
  node that stayed dead for more than ~2 s takes up to ~4 s after its restart before
  :meth:`LocalCluster.wait_healthy` passes (every node must count all slots as ok).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from tests.helpers.servers import (
    CLIENT_TIMEOUT,
    HOST,
    RedisServer,
    RedisServerError,
    _PortInUseError,  # private, but it is the one signal that a port race was lost
    describe_server,
    find_redis_server,
    free_port,
)

__all__ = [
    "HASH_SLOTS",
    "ClusterError",
    "ClusterNode",
    "LocalCluster",
    "free_cluster_port",
    "wait_for",
]

HASH_SLOTS = 16384
BUS_PORT_OFFSET = 10000  # redis's cluster bus listens on port + 10000 (no --cluster-port)
MAX_PORT = 65535
NODE_TIMEOUT_MS = 2000
HEALTHY_TIMEOUT = 15.0  # seconds; worst expected case is ~4 s (see the module docstring)
PORT_ATTEMPTS = 3  # tries per node when another process takes its port before it binds
POLL_INTERVAL = 0.02

class ClusterError(RedisServerError):
    """Raised when a test cluster cannot be formed or does not become healthy in time."""


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_port(avoid: Collection[int] = ()) -> int:
    """Return a port P such that P and its cluster-bus port P + 10000 were free a moment ago.

    Ports whose bus port would pass 65535 are never returned (redis refuses to start on
    them), nor ports in ``avoid`` or whose bus port is in ``avoid``.

    Raises:
        ClusterError: no such port turned up after many tries.
    """
    for _ in range(200):
        port = free_port()
        bus_port = port + BUS_PORT_OFFSET
        if bus_port > MAX_PORT or port in avoid or bus_port in avoid:
            continue
        if _bindable(bus_port):
            return port
    raise ClusterError("could not find a free port P with P + 10000 free as well")


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = POLL_INTERVAL
) -> None:
    """Poll ``condition`` until it returns true; the test-side way to wait, never a bare sleep.

    Raises:
        ClusterError: ``condition`` stayed false for ``timeout`` seconds (message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class ClusterNode(RedisServer):
    """One cluster-enabled redis-server (a primary of a :class:`LocalCluster`).

    Its cluster state lives in ``nodes-PORT.conf`` inside its private directory, which
    :meth:`kill`, :meth:`stop` and :meth:`restart` keep: a restarted node comes back on the
    same port with the same node id and slots (and, as ever, an empty dataset) and rejoins.
    Only :meth:`close` removes it.

    Args:
        binary: path of the redis-server executable.
        port: the client port; its bus port ``port + 10000`` must be free too
            (see :func:`free_cluster_port`). Fixed: a node never moves to another port.
        node_timeout_ms: ``cluster-node-timeout``.
        extra_args: more command-line arguments.
    """

    def __init__(
        self,
        binary: str,
        *,
        port: int,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        extra_args: Collection[str] = (),
    ) -> None:
        self.node_timeout_ms = node_timeout_ms
        super().__init__(binary, port=port, extra_args=extra_args)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<ClusterNode {self.address} {state}>"

    @property
    def bus_port(self) -> int:
        """The cluster-bus port, ``port + 10000``."""
        return self.port + BUS_PORT_OFFSET

    @property
    def config_file(self) -> Path:
        """The node's ``nodes-PORT.conf`` (its id, epoch and view of the cluster)."""
        return self.workdir / f"nodes-{self.port}.conf"

    def argv(self) -> list[str]:
        """The redis-server command line: the standalone one plus the cluster options."""
        cluster_args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.config_file),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # Survivors keep serving their slots while a primary (no replicas) is down.
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip
        standalone = super().argv()
        split = len(standalone) - len(self.extra_args)  # extra_args stay last, so they win
        return [*standalone[:split], *cluster_args, *standalone[split:]]

    # -- cluster introspection (one short-lived connection each, no retries) ---------------

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict of strings, e.g. ``{"cluster_state": "ok", ...}``."""
        raw = self.command("CLUSTER", "INFO")
        pairs = (line.split(":", 1) for line in raw.splitlines() if ":" in line)
        return {name: value for name, value in pairs}

    def cluster_slots(self) -> list[tuple[int, int, int]]:
        """This node's view of ``CLUSTER SLOTS``: sorted ``(first, last, primary port)``."""
        ranges = [
            (int(entry[0]), int(entry[1]), int(entry[2][1]))
            for entry in self.command("CLUSTER", "SLOTS")
        ]
        return sorted(ranges)

    def node_id(self) -> str:
        """``CLUSTER MYID``; stable across restarts (it is kept in :attr:`config_file`)."""
        node_id: str = self.command("CLUSTER", "MYID")
        return node_id

    def command(self, *args: str) -> Any:
        """Run one command on a short-lived RESP2 connection (str replies, no retries)."""
        with redis.Redis(**self._client_options(), decode_responses=True, protocol=2) as client:
            return client.execute_command(*args)


class LocalCluster:
    """A Redis Cluster of ``size`` primaries (and ``replicas`` of each) on 127.0.0.1; see the
    module docs.

    Use as a context manager, or call :meth:`start` and :meth:`close`. Nothing is started by
    the constructor. A node may be killed, paused or restarted through :attr:`nodes`;
    :meth:`heal` brings every node back and waits until the cluster is healthy.

    Args:
        binary: path of redis-server or valkey-server (default: :func:`find_redis_server`).
        size: number of primaries.
        replicas: replicas of each primary.
        node_timeout_ms: ``cluster-node-timeout`` of every node.
        extra_args: more redis-server arguments for every node.
    """

    host = HOST

    def __init__(
        self,
        binary: str | None = None,
        *,
        size: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        extra_args: Collection[str] = (),
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least 1 primary, not {size}")
        if replicas < 0:
            raise ValueError(f"replicas must be at least 0, not {replicas}")
        self.binary = binary if binary is not None else find_redis_server()
        self.size = size
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self._nodes: list[ClusterNode] = []
        self._clients: list[RedisCluster] = []

    def __repr__(self) -> str:
        return f"<LocalCluster {' '.join(self.addresses) or '(not started)'}>"

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def nodes(self) -> list[ClusterNode]:
        """The nodes, in the order the cluster was created (``nodes[0]`` seeds :meth:`client`):
        the ``size`` first primaries, then their replicas."""
        return list(self._nodes)

    def primaries(self) -> list[ClusterNode]:
        """The nodes that own slots now (a running node's view of ``CLUSTER SLOTS``), in
        slot order: after a failover, the promoted replica in its primary's place."""
        ports = dict.fromkeys(port for _, _, port in self._running_node().cluster_slots())
        return [self._node_on_port(port) for port in ports]

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        """A running replica of ``primary`` (as that replica reports it: INFO replication).

        Raises:
            ClusterError: it has none.
        """
        for node in self._nodes:
            if node is primary or not node.is_running() or node.is_paused:
                continue
            with contextlib.suppress(redis.RedisError):
                info = node.command("INFO", "replication")  # parsed: a dict
                if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
                    return node
        raise ClusterError(f"{primary.address} has no running replica")

    @property
    def kind(self) -> str:
        """``"redis"`` or ``"valkey"``: the server the nodes run (from the binary)."""
        return describe_server(self.binary).kind

    @property
    def version(self) -> str:
        """The version of the server the nodes run."""
        return describe_server(self.binary).version

    @property
    def addresses(self) -> list[str]:
        """``["127.0.0.1:PORT", ...]``, one per node, the form DRAGONFLY_ADDRESSES takes."""
        return [node.address for node in self._nodes]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = HEALTHY_TIMEOUT) -> LocalCluster:
        """Start fresh nodes, form the cluster and wait until it is healthy; returns self.

        On any failure every process started so far is killed and its directory removed.

        Raises:
            RedisServerError: a node did not start.
            ClusterError: a node refused to join, or the cluster was not healthy within
                ``timeout``.
        """
        if self._nodes:
            raise ClusterError(f"{self!r} is already started; close() it first")
        try:
            for _ in range(self.size * (1 + self.replicas)):
                self._nodes.append(self._start_node())
            self._create()
            self.wait_healthy(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close clients, kill every node and remove their directories. Idempotent."""
        self.close_clients()
        nodes, self._nodes = self._nodes, []
        for node in nodes:
            with contextlib.suppress(Exception):  # cleanup must never mask a test result
                node.close()

    def heal(self, timeout: float = HEALTHY_TIMEOUT) -> None:
        """Resume paused nodes, restart killed ones, then :meth:`wait_healthy`."""
        for node in self._nodes:
            node.resume()
            if not node.is_running():
                node.restart()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT) -> None:
        """Poll until every node is running, reports ``cluster_state:ok`` with all 16384 slots
        assigned and ok (none PFAIL/FAIL), knows all nodes, and all agree on the slot map.

        Raises:
            ClusterError: not healthy within ``timeout``; the message has each node's view.
        """
        stopped = [node.address for node in self._nodes if not node.is_running()]
        if stopped:
            raise ClusterError(f"nodes {stopped} are not running; restart them (or heal())")
        try:
            wait_for(self._is_healthy, timeout=timeout, what="a healthy cluster")
        except ClusterError as exc:
            raise ClusterError(f"{exc}:\n{self._describe()}") from None

    # -- clients and keys ------------------------------------------------------------------

    def client(self, **kwargs: Any) -> RedisCluster:
        """A redis-py :class:`~redis.cluster.RedisCluster` client, RESP2, short timeouts.

        Its startup node is ``nodes[0]``, or the first running node if that one is down (a
        client cannot be built from a dead startup node); it discovers the others through
        ``CLUSTER SLOTS``. It retries once, at once (redis-py's cluster default is 10
        retries): a command for a dead node's slot then fails within milliseconds with
        ``ConnectionError`` (two refused connects, each followed by a slot-map refresh).
        Zero retries is not enough: the constructor sends COMMAND to the *default node*
        (the owner of slot 0), and only a retry moves it to another primary when that node
        is dead. A pooled connection left over from before a node restart needs no retry:
        redis-py replaces it at checkout. Keyword arguments override the defaults. Clients
        are closed by :meth:`close_clients` and :meth:`close`.

        Raises:
            ClusterError: no node is running.
        """
        seed = next((node for node in self._nodes if node.is_running()), None)
        if seed is None:
            raise ClusterError(f"{self!r} has no running node to start a client from")
        options: dict[str, Any] = {
            "host": self.host,
            "port": seed.port,
            "protocol": 2,
            "socket_timeout": CLIENT_TIMEOUT,
            "socket_connect_timeout": CLIENT_TIMEOUT,
            "retry": Retry(NoBackoff(), 1),
        }
        client = RedisCluster(**{**options, **kwargs})
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close every client handed out by :meth:`client`."""
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):  # closing must never mask a test result
                client.close()

    def keyslot(self, key: str | bytes) -> int:
        """The hash slot of ``key``, as the server computes it (``CLUSTER KEYSLOT``)."""
        text = key.decode() if isinstance(key, bytes) else key
        slot: int = self._running_node().command("CLUSTER", "KEYSLOT", text)
        return int(slot)

    def node_for_key(self, key: str | bytes) -> ClusterNode:
        """The primary that owns ``key``'s slot (``CLUSTER KEYSLOT`` + ``CLUSTER SLOTS``)."""
        seed = self._running_node()
        slot = self.keyslot(key)
        for first, last, port in seed.cluster_slots():
            if first <= slot <= last:
                return self._node_on_port(port)
        raise ClusterError(f"slot {slot} of {key!r} is not assigned ({seed.address}'s view)")

    def key_for_node(self, node: ClusterNode, prefix: str = "key:") -> str:
        """The first of ``prefix0``, ``prefix1``, ... whose slot ``node`` owns.

        Raises:
            ClusterError: ``node`` owns no slot (none found in many tries).
        """
        seed = self._running_node()
        ranges = [(first, last) for first, last, port in seed.cluster_slots() if port == node.port]
        for index in range(10_000):
            key = f"{prefix}{index}"
            slot = self.keyslot(key)
            if any(first <= slot <= last for first, last in ranges):
                return key
        raise ClusterError(f"no key with prefix {prefix!r} lands on {node.address}")

    def flushall(self) -> None:
        """FLUSHALL on every running node (a killed node is empty anyway: no persistence)."""
        for node in self._nodes:
            if node.is_running():
                node.flushall()

    # -- internals -------------------------------------------------------------------------

    def _start_node(self) -> ClusterNode:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            taken = {port for node in self._nodes for port in (node.port, node.bus_port)}
            node = ClusterNode(
                self.binary,
                port=free_cluster_port(avoid=taken),
                node_timeout_ms=self.node_timeout_ms,
                extra_args=self.extra_args,
            )
            try:
                node.start()
                return node
            except _PortInUseError:
                node.close()
                if attempt == PORT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(self) -> None:
        """What ``redis-cli --cluster create --cluster-replicas R`` sends: an equal share of
        the slots and a distinct config epoch for each primary (no epoch collision to
        resolve later), then one node meets the others (gossip does the rest), then each
        replica follows its primary."""
        size = self.size
        bounds = [HASH_SLOTS * index // size for index in range(size + 1)]
        try:
            for epoch, node in enumerate(self._nodes[:size], start=1):
                first, last = bounds[epoch - 1], bounds[epoch] - 1
                node.command("CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
                node.command("CLUSTER", "SET-CONFIG-EPOCH", str(epoch))
            seed = self._nodes[0]
            for node in self._nodes[1:]:
                seed.command("CLUSTER", "MEET", node.host, str(node.port))
            for index, replica in enumerate(self._nodes[size:]):
                primary = self._nodes[index % size]
                primary_id = primary.node_id()
                # A replica can follow a primary only once gossip has told it of that node.
                wait_for(lambda r=replica, p=primary_id: p in r.command("CLUSTER", "NODES"),
                         timeout=HEALTHY_TIMEOUT, what=f"{replica.address} to learn of "
                         f"{primary.address}")
                replica.command("CLUSTER", "REPLICATE", primary_id)
        except redis.RedisError as exc:
            raise ClusterError(f"forming the cluster {self!r} failed: "
                               f"{type(exc).__name__}: {exc}") from None

    def _is_healthy(self) -> bool:
        views = set()
        try:
            for node in self._nodes:
                info = node.cluster_info()
                if (
                    info.get("cluster_state") != "ok"
                    or info.get("cluster_slots_assigned") != str(HASH_SLOTS)
                    or info.get("cluster_slots_ok") != str(HASH_SLOTS)
                    or info.get("cluster_known_nodes") != str(len(self._nodes))
                ):
                    return False
                views.add(tuple(node.cluster_slots()))
                replication = node.command("INFO", "replication")  # parsed: a dict
                if (replication.get("role") == "slave"
                        and replication.get("master_link_status") != "up"):
                    return False
        except redis.RedisError:
            return False
        if len(views) != 1:
            return False
        owners = {port for _, _, port in views.pop()}
        # Any `size` of the nodes may own the slots: after a failover, the promoted ones.
        return len(owners) == self.size and owners <= {node.port for node in self._nodes}

    def _describe(self) -> str:
        lines = []
        for node in self._nodes:
            try:
                info = node.cluster_info()
                keys = ("cluster_state", "cluster_slots_ok", "cluster_known_nodes")
                state = " ".join(f"{name}={info.get(name)}" for name in keys)
            except redis.RedisError as exc:
                state = f"unreachable ({exc})"
            lines.append(f"  {node.address}: {state}")
        return "\n".join(lines)

    def _running_node(self) -> ClusterNode:
        for node in self._nodes:
            if node.is_running() and not node.is_paused:
                return node
        raise ClusterError(f"{self!r} has no running node")

    def _node_on_port(self, port: int) -> ClusterNode:
        for node in self._nodes:
            if node.port == port:
                return node
        raise ClusterError(f"port {port} is not one of {self.addresses}")

