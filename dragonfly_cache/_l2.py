"""The shared tier: which commands make each cache operation, on one server or a cluster.

A dumb store with a small surface: it prefixes keys, batches round trips and appends the
invalidation announcement to writes. Where the commands go, the breaker and the error
boundary (every redis-py error becomes a :class:`CacheUnavailableError`, and the time
bounds) belong to the :class:`~dragonfly_cache._router.Router` it holds. Policy (what a
failure means for a read or a write, L1 fills, singleflight) lives in
:mod:`dragonfly_cache.tiered` and the modules it is composed of.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

from ._channels import NodeChannels, announce_in_cluster, channel_name
from ._compression import Compression
from ._connections import Command, Connections
from ._glob import escape_glob
from ._multiget import MultiGet
from ._ownwrites import TRACKED_WRITES, exec_replies
from ._ownwrites import tracked as track
from ._replicas import ReplicaReads
from ._router import Group, Result, Router, replies_of
from ._scripts import DELETE_IF_EQUAL, INCR
from .config import DragonflyConfig, L2Config
from .exceptions import CacheUnavailableError
from .types import BreakerStats, L2Stats, LatencyObserver

__all__ = ["L2", "UNREACHABLE"]

logger = logging.getLogger(__name__)

_SCAN_COUNT = 1000
# The PTTL that get_many reports for a key whose cluster node failed (PTTL itself is >= -2).
UNREACHABLE = -3

class L2:
    """Prefixed, batched access to one Dragonfly/Redis server, or to a cluster.

    Args:
        config: connection settings. One address is a standalone server unless it reports
            ``cluster_enabled:1`` (or ``mode`` says otherwise); several are cluster seeds.
        key_prefix: prepended to every key; as a glob it is escaped, so ``*`` or ``[``
            in the prefix match only themselves.
        policy: the stored form of values (``compression``): writes encode with
            ``self.compression``; readers decode (:mod:`dragonfly_cache._compression`).
    """

    def __init__(self, config: DragonflyConfig, key_prefix: str,
                 policy: L2Config | None = None) -> None:
        self.config = config
        policy = policy or L2Config()
        self.compression = Compression(policy.compression, policy.compress_min_size)
        self.prefix = key_prefix
        self.channel = channel_name(config.db, key_prefix)
        self.channels = NodeChannels(self.channel)
        self.tracked_writes = False  # tracking mode: writes that fill L1 also read the key
        # Tracking mode: given the keys of each write that does not read them back (_ownwrites)
        self.untracked_write: Callable[[list[str | bytes]], None] | None = None
        self.router = Router(config)
        # The reads that fill L1 (``replica=True``) may go to replicas (read_from_replicas).
        self.replica_reads = ReplicaReads(self.router) if config.read_from_replicas else None
        self.address = self.router.address
        self._multiget = MultiGet()
        self._start_process_state()

    def _start_process_state(self) -> None:
        self._counter_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def after_fork_in_child(self) -> None:
        """Drop the parent's connections, locks, breaker state and counters."""
        self.router.after_fork_in_child()
        self.compression.after_fork_in_child()
        if self.replica_reads is not None:
            self.replica_reads.start_process_state()
        self._start_process_state()

    def __repr__(self) -> str:
        return f"<L2 {self.address} prefix={self.prefix!r}>"

    @property
    def scripting(self) -> bool:
        """Whether batch reads use the script (False once the server refused it)."""
        return self._multiget.scripting

    def _count(self, hits: int, misses: int) -> None:
        with self._counter_lock:
            self.hits += hits
            self.misses += misses

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str, *, count: bool = True, replica: bool = False
            ) -> tuple[bytes | None, int]:
        """GET and PTTL of one key in one round trip (``count``: as a hit or a miss;
        ``replica``: a read that fills L1, which may go to a replica).

        Returns:
            (value or None, remaining life in ms: -1 for no expiry, -2 if the key vanished).
        """
        name = self.prefix + key
        reads = self.replica_reads if replica else None
        value, pttl = (reads or self.router).keyed("GET", name, [("GET", name), ("PTTL", name)])
        if count:
            self._count(value is not None, value is None)
        return value, pttl

    def get_many(self, keys: Sequence[str], *, replica: bool = False
                 ) -> tuple[list[bytes | None], list[int]]:
        """Values and PTTLs of many keys in one round trip (per cluster node); with
        ``replica`` (a read that fills L1), maybe from replicas (:mod:`._replicas`).

        One key: GET + PTTL. Standalone: MGET and a PTTL script (:mod:`._multiget`).
        Cluster: GET + PTTL per key (a script or MGET may only touch one slot), one
        pipeline per node, all nodes at once. Keys on a node that failed read as None with
        the PTTL ``UNREACHABLE``; only when every node failed does it raise.

        Returns:
            The values (None: no such key) and the PTTLs (ms; -1: no expiry, -2: no key),
            both in the order of ``keys``; a None value always has a negative PTTL.
        """
        if len(keys) == 1:  # GET + PTTL
            value, pttl = self.get(keys[0], replica=replica)
            return [value], [pttl if value is not None else -2]
        prefix = self.prefix
        names = [prefix + key for key in keys] if prefix else list(keys)
        reads = self.replica_reads if replica else None
        if not self.router.is_cluster():
            read = partial(self._multiget.read, names)
            values, pttls, misses = (self.router.call("MGET", read) if reads is None
                                     else reads.call("MGET", read, names))
            self._count(len(values) - misses, misses)
            return values, pttls
        results = (reads or self.router).batch(
            "MGET", [(name, [("GET", name), ("PTTL", name)]) for name in names])
        failed = sum(isinstance(result, Exception) for result in results)
        if failed and failed == len(results):
            raise next(result for result in results if isinstance(result, Exception))
        values = [None if isinstance(result, Exception) else result[0] for result in results]
        pttls = [UNREACHABLE if isinstance(result, Exception) else
                 -2 if result[0] is None else result[1] for result in results]
        misses = values.count(None)
        self._count(len(values) - misses, misses - failed)
        return values, pttls

    def by_server(self, keys: list[str]) -> list[list[str]]:
        """``keys`` grouped by the server that holds them (one group on one server; keys
        of a slot nobody serves now in a group of their own)."""
        if not keys or not self.router.is_cluster():
            return [keys] if keys else []
        groups: dict[str, list[str]] = {}
        for key in keys:
            try:
                owner = self.router.route(self.prefix + key)
            except CacheUnavailableError:
                owner = ""
            groups.setdefault(owner, []).append(key)
        return list(groups.values())

    def exists(self, key: str) -> bool:
        """Whether the key exists in L2."""
        name = self.prefix + key
        return bool(self.router.keyed("EXISTS", name, [("EXISTS", name)])[0])

    # -- writes --------------------------------------------------------------------------

    def _write(self, operation: str, groups: list[Group], announce: str | None
               ) -> list[list[Any]]:
        """Send the writes, then ``announce`` them; per group, its replies.

        Standalone: the writes and the PUBLISH in one round trip. Cluster: the writes, one
        round trip per node, then the announcement on the channel of each primary that
        took one, through that primary (SPUBLISH where the cluster has sharded pub/sub),
        or on any one primary's channel for a write of no keys. A primary that failed
        costs only its own writes: the others' are still announced. The first failure is
        raised once that is done.

        Raises:
            CacheUnavailableError: a write or the announcement failed (a write nobody
                heard about must be reported).
        """
        tracked = self.tracked_writes and operation in TRACKED_WRITES
        untracked = None if tracked or not groups else self.untracked_write
        try:
            return self._send_writes(operation, groups, announce, tracked)
        finally:  # sent or not, these keys may have changed
            if untracked is not None:
                untracked([name for name, _ in groups])
            if self.replica_reads is not None:  # read from the primary for a while
                self.replica_reads.recent.note(name for name, _ in groups)

    def _send_writes(self, operation: str, groups: list[Group], announce: str | None,
                     tracked: bool) -> list[list[Any]]:
        results: list[Result]
        if tracked:
            groups = [(name, track(name, commands)) for name, commands in groups]
        if announce is None:
            results = self.router.batch(operation, groups)
        elif not self.router.is_cluster():
            publish: Group = (self.channel, [("PUBLISH", self.channel, announce)])
            results = self.router.batch(operation, [*groups, publish])[:-1]
        else:
            results = self.router.batch(operation, groups)
            announce_in_cluster(self.router, self.channels, announce, [
                name for (name, _), result in zip(groups, results, strict=True)
                if not isinstance(result, Exception)], bool(groups))
        if tracked:
            fail = partial(self.router.nodes.failure, operation, self.address)
            return [exec_replies(replies_of(result), fail) for result in results]
        return [replies_of(result) for result in results]

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
        ttl_ms, encode = max(1, round(ttl * 1000)), self.compression.encode
        self._write("SET", [(name, [("SET", name, encode(value), "PX", ttl_ms)]) for name, value
                            in ((self.prefix + key, value) for key, value in values.items())],
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
        ttl_ms, encode = max(1, round(ttl * 1000)), self.compression.encode
        keys = list(values)
        replies = self._write("SET", [(self.prefix + key, [(
            "SET", self.prefix + key, encode(values[key]), "PX", ttl_ms, "NX")]) for key in keys],
                              announce)
        return [key for key, reply in zip(keys, replies, strict=True) if reply[0] is not None]

    def delete_if_equal(self, key: str, value: bytes, announce: str | None = None) -> None:
        """Delete ``key`` only if it still holds ``value``, atomically (a script that
        declares its key), then PUBLISH ``announce``. Releases fleet locks, and takes back
        a load stored just as the key was invalidated (``value`` as given: it is encoded
        as set_if_absent stored it)."""
        name, stored = self.prefix + key, self.compression.encode(value)
        self._write("DELETE", [(name, [("EVAL", DELETE_IF_EQUAL, 1, name, stored)])], announce)

    def incr(self, key: str, delta: int, ttl: float, announce: str | None = None
             ) -> tuple[int, int]:
        """Add ``delta`` to the integer stored at ``key`` (a missing key starts from 0 and
        expires in ``ttl``; an existing one keeps its expiry), then PUBLISH ``announce``:
        one round trip, atomic (a script that declares its key).

        Returns:
            The new value, and the key's remaining life in ms (-1: no expiry).

        Raises:
            ValueError: the stored value is not an integer, or the sum would overflow;
                nothing was changed.
        """
        name = self.prefix + key
        ttl_ms = max(1, round(ttl * 1000))
        reply = self._write("INCR", [(name, [("EVAL", INCR, 1, name, delta, ttl_ms)])],
                            announce)[0][0]
        if not reply[0]:
            reason = reply[1].decode(errors="replace") if isinstance(reply[1], bytes) \
                else str(reply[1])
            raise ValueError(f"cannot add {delta} to the value of key {key!r}: {reason}")
        return int(reply[1]), int(reply[2])

    def touch(self, key: str, ttl: float, announce: str | None = None) -> bool:
        """PEXPIRE the key (then PUBLISH ``announce``): one round trip.

        Returns:
            Whether the key existed (and now expires in ``ttl``).
        """
        name = self.prefix + key
        ttl_ms = max(1, round(ttl * 1000))
        return bool(self._write("TOUCH", [(name, [("PEXPIRE", name, ttl_ms)])], announce)[0][0])

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
        removed, pages, failure = 0, 0, None
        for address in self.router.primaries():
            try:
                for page in self._scan_pages(address, match):
                    # Each page is announced with its UNLINK: if the scan dies halfway,
                    # every key already removed has been announced.
                    removed += self._unlink("SCAN/UNLINK", page, announce)
                    pages += 1
            except CacheUnavailableError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        if announce is not None and not pages:
            self._write("SCAN/UNLINK", [], announce)
        return removed

    def _scan_pages(self, address: str, match: str) -> Iterator[list[bytes]]:
        cursor: bytes | int = 0
        while True:
            command: Command = ("SCAN", cursor, "MATCH", match, "COUNT", _SCAN_COUNT)
            cursor, names = self.router.call("SCAN/UNLINK", partial(_one, command), address)
            if names:
                yield names
            if int(cursor) == 0:
                return

    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> L2Stats:
        """The contract's ``l2_stats``, plus ``errors_by_operation``, ``rejected`` (calls
        the open breaker refused) and ``corrupt`` (frames that did not decode: counted by
        this tier as hits, answered by the cache as misses, so reported as misses)."""
        nodes = self.router.nodes
        corrupt = self.compression.corrupt  # first: each was counted as a hit before
        with self._counter_lock:
            hits, misses = self.hits - corrupt, self.misses + corrupt
        lookups = hits + misses
        stats: L2Stats = {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / lookups if lookups else 0.0,
            "errors": nodes.errors,
            "errors_by_operation": dict(nodes.errors_by_operation),
            "rejected": nodes.rejected(),
            "corrupt": corrupt,
        }
        if self.replica_reads is not None:
            stats["replicas"] = self.replica_reads.stats()
        return stats

    def breaker_stats(self) -> BreakerStats:
        """The circuit breaker's state and counters (see :meth:`Router.breaker_stats`)."""
        return self.router.breaker_stats()

    def add_latency_observer(self, observer: LatencyObserver) -> None:
        """Call ``observer(operation, seconds)`` after every command batch."""
        self.router.nodes.add_latency_observer(observer)

    def remove_latency_observer(self, observer: LatencyObserver) -> None:
        """Stop calling ``observer``."""
        self.router.nodes.remove_latency_observer(observer)

    def close(self) -> None:
        """Close every idle connection (they reconnect if used again)."""
        self.router.close()


def _one(command: Command, connections: Connections) -> Any:
    return connections.roundtrip((command,))[0]
