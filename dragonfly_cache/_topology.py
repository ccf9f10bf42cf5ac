"""Cluster topology: which primary serves each of the 16384 hash slots.

The map comes from the servers themselves (``CLUSTER SLOTS``, which Redis Cluster, Valkey and
Dragonfly's cluster modes all answer), and keys are hashed with redis-py's own
``key_slot`` (CRC16, ``{hash tags}`` honoured): we route exactly as the cluster and
redis-py's ``RedisCluster`` do, never by a scheme of our own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = ["REDIS_CLUSTER_HASH_SLOTS", "SlotMap", "format_address", "slot_of"]


def slot_of(name: str | bytes) -> int:
    """The hash slot of a key or shard channel name."""
    return key_slot(name.encode() if isinstance(name, str) else name)


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets (as configured addresses are)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SlotMap:
    """Slot -> primary address, from a ``CLUSTER SLOTS`` reply.

    Args:
        reply: the raw reply: ``[[start, end, [host, port, id, ...], replicas...], ...]``.
        asked_host: the host the reply came from; an empty host in the reply means it.

    Raises:
        ValueError: the reply is not a slot map (e.g. a standalone server's error text).
    """

    def __init__(self, reply: Sequence[Any], asked_host: str) -> None:
        owners: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        try:
            for entry in reply:
                start, end, primary = int(entry[0]), int(entry[1]), entry[2]
                host = _text(primary[0]) or asked_host
                if host == "?":  # a node that does not know its own address yet
                    host = asked_host
                address = format_address(host, int(primary[1]))
                owners[start:end + 1] = [address] * (end - start + 1)
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

    def move(self, slot: int, address: str) -> None:
        """Record a MOVED redirection: ``slot`` is served by ``address`` now."""
        self.owners[slot] = address
        self.primaries = sorted({owner for owner in self.owners if owner is not None})

    def uncovered(self) -> int:
        """How many slots no node serves."""
        return self.owners.count(None)
