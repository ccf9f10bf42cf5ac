"""Where the contract suite runs: one server, the same over TLS, or a 3-primary cluster.

Each :class:`Backend` gives the DragonflyConfig fields that reach it, a raw client to look at
the data behind the cache's back, and a way to take down the server that holds a key (and
bring it back), so the same tests check the contract on every topology.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers.cluster import LocalCluster
from tests.helpers.servers import RedisServer

__all__ = ["Backend", "ClusterBackend", "ServerBackend", "TlsBackend"]


class Backend:
    """The common surface; see the subclasses."""

    name = "backend"

    @property
    def kind(self) -> str:
        """``"redis"`` or ``"valkey"``: the server behind it, as ``health()`` names it."""
        raise NotImplementedError

    @property
    def version(self) -> str:
        """The version of the server behind it, as ``health()`` reports it."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """DragonflyConfig fields that reach this backend."""
        raise NotImplementedError

    def raw(self) -> Any:
        """A raw redis-py client (``redis.Redis`` or ``RedisCluster``): get, set, pttl..."""
        raise NotImplementedError

    def dbsize(self) -> int:
        """Keys stored, over every node."""
        raise NotImplementedError

    def kill_holder(self, key: str) -> None:
        """SIGKILL the server (or cluster node) that holds ``key``."""
        raise NotImplementedError

    def restore(self) -> None:
        """Bring every killed server back (empty) and wait until it serves keys."""
        raise NotImplementedError


class ServerBackend(Backend):
    """A standalone redis-server."""

    name = "standalone"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    @property
    def kind(self) -> str:
        return self.server.kind

    @property
    def version(self) -> str:
        return self.server.version

    def options(self) -> dict[str, Any]:
        return {"addresses": [self.server.address], "password": self.server.password}

    def raw(self) -> Any:
        return self.server.client()

    def dbsize(self) -> int:
        return int(self.server.client().dbsize())

    def kill_holder(self, key: str) -> None:
        self.server.kill()

    def restore(self) -> None:
        if not self.server.is_running():
            self.server.restart()


class TlsBackend(ServerBackend):
    """A redis-server that the cache reaches over TLS only (its plain port is for the
    harness); the server's certificate is signed by the throw-away CA in ``pki``."""

    name = "tls"

    def __init__(self, server: RedisServer, tls_port: int, pki: Path) -> None:
        super().__init__(server)
        self.tls_port = tls_port
        self.pki = pki

    def options(self) -> dict[str, Any]:
        return {"addresses": [f"127.0.0.1:{self.tls_port}"], "password": self.server.password,
                "tls": True, "tls_ca_file": str(self.pki / "ca.crt")}


class ClusterBackend(Backend):
    """A 3-primary Redis Cluster, given to the cache as its list of seed addresses."""

    name = "cluster"

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    @property
    def kind(self) -> str:
        return self.cluster.kind

    @property
    def version(self) -> str:
        return self.cluster.version

    def options(self) -> dict[str, Any]:
        return {"addresses": list(self.cluster.addresses)}

    def raw(self) -> Any:
        return self.cluster.client()

    def dbsize(self) -> int:
        return sum(int(node.command("DBSIZE")) for node in self.cluster.nodes
                   if node.is_running())

    def kill_holder(self, key: str) -> None:
        self.cluster.node_for_key(key).kill()

    def restore(self) -> None:
        self.cluster.heal()
