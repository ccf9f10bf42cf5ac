"""The shared tier: which commands make each cache operation, on one server or a cluster.

A dumb store with a small surface: it prefixes keys and batches round trips. Where commands
go, the breaker and the error boundary (every redis-py error becomes a
:class:`CacheUnavailableError`, and the time bounds) are :mod:`dragonfly_cache._router`'s.
Policy (what a failure means for a read or a write, L1 fills, singleflight) lives in
:mod:`dragonfly_cache.tiered`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ._connections import Command, Connections
from ._glob import escape_glob
from ._router import Group, Node, Router, parse_info, replies_of, split_address
from .config import DragonflyConfig
from .exceptions import CacheUnavailableError

__all__ = ["L2", "UNREACHABLE", "ServerInfo", "detect_server"]

logger = logging.getLogger("dragonfly_cache")

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
# The PTTL that get_many reports for a key whose cluster node failed (PTTL itself is >= -2).
UNREACHABLE = -3

ServerInfo = dict[str, Any]


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


class L2(Router):
    """Prefixed, batched access to one Dragonfly/Redis server, or to a cluster.

    Args:
        config: connection settings. One address is a standalone server unless it reports
            ``cluster_enabled:1`` (or ``mode`` says otherwise); several are cluster seeds.
        key_prefix: prepended to every key; as a glob it is escaped, so ``*`` or ``[``
            in the prefix match only themselves.
    """

    def __init__(self, config: DragonflyConfig, key_prefix: str) -> None:
        super().__init__(config, key_prefix)
        self.prefix = key_prefix
        self._scripting = True  # False once the server refused EVALSHA/SCRIPT LOAD

    def __repr__(self) -> str:
        return f"<L2 {self.address} prefix={self.prefix!r}>"

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes | None, int]:
        """GET and PTTL of one key in one round trip.

        Returns:
            (value or None, remaining life in ms: -1 for no expiry, -2 if the key vanished).
        """
        name = self.prefix + key
        commands = (("GET", name), ("PTTL", name))
        if self._clustered is False:  # the common case, kept short
            value, pttl = self._call("GET", self._seed, lambda c: c.roundtrip(commands))
        else:
            value, pttl = replies_of(self._keyed("GET", [(name, list(commands))])[0])
        self._count(value is not None, value is None)
        return value, pttl

    def get_many(self, keys: Sequence[str]) -> list[tuple[bytes | None, int]]:
        """Values and PTTLs of many keys in one round trip (per cluster node).

        Standalone: one EVALSHA per 500 keys (all declared in KEYS, as Dragonfly requires)
        returns both lists: packing and parsing one command instead of 1 + N is what makes
        it fast. Servers that refuse scripting get MGET + one PTTL per key, pipelined.
        Cluster: GET + PTTL per key (a script or MGET may only touch one slot), one
        pipeline per node, all nodes at once. Keys on a node that failed read as
        ``(None, UNREACHABLE)``; only when every node failed does it raise.
        """
        names = [self.prefix + key for key in keys]
        if not self._is_cluster():
            replies = self._call("MGET", self._seed, lambda c: self._values_and_pttls(c, names))
        else:
            results = self._keyed("MGET", [(name, [("GET", name), ("PTTL", name)])
                                           for name in names])
            failed = [result for result in results if isinstance(result, Exception)]
            if failed and len(failed) == len(results):
                raise failed[0]
            replies = [(None, UNREACHABLE) if isinstance(result, Exception)
                       else (result[0], result[1]) for result in results]
        found = sum(value is not None for value, _ in replies)
        self._count(found, sum(pttl != UNREACHABLE for _, pttl in replies) - found)
        return replies

    def _values_and_pttls(self, connections: Connections, names: list[str]
                          ) -> list[tuple[bytes | None, int]]:
        chunks = [names[i:i + _SCRIPT_CHUNK] for i in range(0, len(names), _SCRIPT_CHUNK)]
        if self._scripting:
            commands = [("EVALSHA", _MGET_PTTL_SHA, len(chunk), *chunk) for chunk in chunks]
            try:
                replies = connections.roundtrip(commands)
            except NoScriptError:  # first use on this server (or after SCRIPT FLUSH)
                replies = connections.roundtrip([("SCRIPT", "LOAD", _MGET_PTTL), *commands])[1:]
            except redis.ResponseError as exc:
                # Scripting disabled or not permitted here: plain commands from now on.
                logger.info("EVALSHA refused (%s); get_many falls back to MGET + PTTL", exc)
                self._scripting = False
                return self._values_and_pttls(connections, names)
            return [pair for values, pttls in replies for pair in zip(values, pttls, strict=True)]
        commands = [("MGET", *names), *(("PTTL", name) for name in names)]
        values, *pttls = connections.roundtrip(commands)
        return list(zip(values, pttls, strict=True))

    def exists(self, key: str) -> bool:
        """Whether the key exists in L2."""
        name = self.prefix + key
        return bool(replies_of(self._keyed("EXISTS", [(name, [("EXISTS", name)])])[0])[0])

    # -- writes --------------------------------------------------------------------------

    def _write(self, operation: str, groups: list[Group], announce: str | None
               ) -> list[list[Any]]:
        """:meth:`_keyed`, raising the first failure once the rest are done (and announced:
        in a cluster the writes to healthy nodes stand, and the others must hear of them)."""
        return [replies_of(result) for result in self._keyed(operation, groups, announce)]

    def set_many(self, values: Mapping[str, bytes], ttl: float, announce: str | None = None
                 ) -> None:
        """SET each key with a PX expiry, then PUBLISH ``announce``: one round trip (per
        cluster node, plus the announcement).

        Args:
            values: key -> value.
            ttl: seconds.
            announce: an invalidation message for the other caches, published after the
                writes (so whoever refetches on it sees them).
        """
        ttl_ms = max(1, round(ttl * 1000))
        self._write("SET", [(name, [("SET", name, value, "PX", ttl_ms)]) for name, value in
                            ((self.prefix + key, value) for key, value in values.items())],
                    announce)

    def set_if_absent(self, key: str, value: bytes, ttl: float, announce: str | None = None
                      ) -> bool:
        """SET NX with a PX expiry (then PUBLISH ``announce``): one round trip.

        Returns:
            Whether the value was stored (False: the key exists, written by someone else).
        """
        return bool(self.set_many_if_absent({key: value}, ttl, announce))

    def set_many_if_absent(self, values: Mapping[str, bytes], ttl: float,
                           announce: str | None = None) -> list[str]:
        """SET NX each key (then PUBLISH ``announce``), one round trip.

        Returns:
            The keys that were stored (the others existed already).
        """
        ttl_ms = max(1, round(ttl * 1000))
        keys = list(values)
        replies = self._write("SET", [(self.prefix + key, [(
            "SET", self.prefix + key, values[key], "PX", ttl_ms, "NX")]) for key in keys],
                              announce)
        return [key for key, reply in zip(keys, replies, strict=True) if reply[0] is not None]

    def delete_if_equal(self, key: str, value: bytes, announce: str | None = None) -> None:
        """Delete ``key`` only if it still holds ``value``, atomically (a script that
        declares its key), then PUBLISH ``announce``. Releases fleet locks, and takes back
        a load stored just as the key was invalidated."""
        name = self.prefix + key
        self._write("DELETE", [(name, [("EVAL", _DELETE_IF_EQUAL, 1, name, value)])], announce)

    def delete(self, keys: Sequence[str], announce: str | None = None) -> int:
        """UNLINK the keys, then PUBLISH ``announce`` (one round trip on one server; in a
        cluster one per node, all at once, then the announcement).

        Returns:
            How many of the keys existed.
        """
        return self._unlink("UNLINK", [self.prefix + key for key in keys], announce)

    def _unlink(self, operation: str, names: Sequence[str | bytes], announce: str | None
                ) -> int:
        # One UNLINK per key: a multi-key UNLINK must stay within one slot in a cluster.
        groups: list[Group] = [(name, [("UNLINK", name)]) for name in names]
        return sum(int(replies[0]) for replies in self._write(operation, groups, announce))

    def invalidate(self, pattern: str, announce: str | None = None) -> int:
        """Remove every key matching the glob ``pattern`` (under the prefix).

        SCAN MATCH with the prefix escaped, on every primary of a cluster, then UNLINK of
        each page: never KEYS, which blocks the server (and silently truncates at 8192
        keys on Dragonfly). The ``announce`` message is published with every page (once if
        nothing matched). A cluster node that fails does not stop the others' scans; the
        first failure is raised at the end.

        Returns:
            How many keys were removed.
        """
        match = escape_glob(self.prefix) + pattern
        nodes = ([self._node(a) for a in self._map().primaries] if self._is_cluster()
                 else [self._seed])
        removed, pages, failure = 0, 0, None
        for node in nodes:
            try:
                for page in self._scan_pages(node, match):
                    # Each page is announced with its UNLINK: if the scan dies halfway,
                    # every key already removed has been announced.
                    removed += self._unlink("SCAN/UNLINK", page, announce)
                    pages += 1
            except CacheUnavailableError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        if announce is not None and not pages:
            self._keyed("SCAN/UNLINK", [], announce)
        return removed

    def _scan_pages(self, node: Node, match: str) -> Iterator[list[bytes]]:
        cursor: bytes | int = 0
        while True:
            command: Command = ("SCAN", cursor, "MATCH", match, "COUNT", _SCAN_COUNT)
            cursor, names = self._call("SCAN/UNLINK", node, partial(_one, command))
            if names:
                yield names
            if int(cursor) == 0:
                return

    def subscription(self) -> tuple[redis.Redis, bool]:
        """A new client on its own connection for the invalidation listener, and whether
        to use sharded pub/sub (SSUBSCRIBE) on it.

        In a cluster it connects to the node serving the channel's slot, with the slot map
        refreshed first (the listener reconnects after failovers and slot moves). It never
        retries: redis-py's retry would reconnect and resubscribe silently, and the
        listener must see every drop, since messages may have been lost in it.
        """
        node = self._seed
        if self._is_cluster():
            self._stale_map = True
            node = self._route(self.channel)
        host, port = split_address(node.address)
        # A pool of our connection class, which closes the socket of a failed TLS setup
        # (see _connections.SSLConnection); redis.Redis(ssl=True) would use redis-py's.
        pool = redis.ConnectionPool(
            connection_class=self._connection_class,
            **{**self._connection_options, "host": host, "port": port,
               "retry": Retry(NoBackoff(), 0)})
        client = redis.Redis.from_pool(pool)  # closing the client disconnects its pool
        return client, self._clustered is True and self._sharded

    # -- health --------------------------------------------------------------------------

    def probe(self) -> ServerInfo:
        """PING and INFO of the server, or of every primary of a cluster.

        Returns:
            {"server": "dragonfly"|"redis"|"valkey", "version": str,
             "mode": "standalone"|"cluster"}; a cluster adds "nodes" (address -> "ok" or
            the failure) and, when some primary failed, "error".

        Raises:
            CacheUnavailableError: no server answered.
        """
        commands = (("PING",), ("INFO", "server"), ("INFO", "cluster"))
        clustered = self._is_cluster()
        nodes = [self._node(a) for a in self._map().primaries] if clustered else [self._seed]
        info: ServerInfo = {}
        states: dict[str, str] = {}
        failures: list[CacheUnavailableError] = []
        for node in nodes:
            try:
                _pong, server_info, cluster_info = self._call(
                    "PING", node, lambda c: c.roundtrip(commands))
            except CacheUnavailableError as exc:
                failures.append(exc)
                states[node.address] = str(exc)
                continue
            states[node.address] = "ok"
            if not info:
                server, version = detect_server(parse_info(server_info))
                cluster_enabled = parse_info(cluster_info).get("cluster_enabled") == "1"
                info = {"server": server, "version": version,
                        "mode": "cluster" if cluster_enabled else "standalone"}
        if not info:
            raise failures[0]
        if clustered:
            info["nodes"] = states
            if failures:
                info["error"] = (f"{len(failures)} of {len(nodes)} cluster primaries "
                                 f"unreachable: " + "; ".join(str(f) for f in failures))
        return info

    def stats(self) -> dict[str, Any]:
        """The contract's ``l2_stats``, plus ``rejected`` (calls the open breaker refused)."""
        rejected = sum(node.breaker.rejected for node in list(self._nodes.values()))
        with self._counter_lock:
            lookups = self.hits + self.misses
            return {
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "errors": self.errors,
                "errors_by_operation": dict(self.errors_by_operation),
                "rejected": rejected,
            }


def _one(command: Command, connections: Connections) -> Any:
    return connections.roundtrip((command,))[0]
