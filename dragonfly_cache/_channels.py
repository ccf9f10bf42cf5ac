"""The invalidation channels: one for a server, one per primary in a cluster.

Every channel name begins with the key prefix, so an ACL user limited to
``~<prefix>* &<prefix>*`` may use them. On one server there is one channel,
``<prefix>dragonfly_cache:invalidate:<db>``. In a cluster each primary has its own,
``<prefix>dragonfly_cache:invalidate:0:{n}``, where ``n`` is the smallest number whose
channel name hashes to a slot that primary serves: a write is announced on the channel of
the primary that took it, through that primary, and every process subscribes to every
primary's channel on that primary. So losing one primary loses only the announcements of
writes to it, which fail anyway; the other primaries' writes are still announced.

Every process derives the same names from the same slot map. After a failover the
promoted replica serves the same slots, hence the same channel; when a slot moves, the
server ends the shard subscriptions of its channel (``sunsubscribe``) and the listeners
subscribe again under the new map.
"""

from __future__ import annotations

from ._topology import SlotMap
from .exceptions import CacheUnavailableError

__all__ = ["NodeChannels", "channel_name"]

# How far to look for a number whose channel lands on a given primary: a primary serving
# a share s of the 16384 slots is found after about 1/s tries; a key prefix with a hash
# tag ({app}:) puts every channel on one slot, and the other primaries then have none.
_SEARCH = 1 << 16


def channel_name(db: int, key_prefix: str) -> str:
    """The invalidation channel of every cache on one server, db and key prefix."""
    return f"{key_prefix}dragonfly_cache:invalidate:{db}"


class NodeChannels:
    """Each cluster primary's channel under one base name, recomputed when the map moves.

    Args:
        base: :func:`channel_name` of the caches' db and key prefix.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self._map: SlotMap | None = None
        self._channels: dict[str, str] = {}

    def of(self, slot_map: SlotMap) -> dict[str, str]:
        """Primary address -> its channel, for the primaries that can have one."""
        channels = self._channels
        if self._map is not slot_map or any(_owner(slot_map, channel) != address
                                            for address, channel in channels.items()):
            channels = self._derive(slot_map)
            self._map, self._channels = slot_map, channels
        return channels

    def channel(self, slot_map: SlotMap, address: str) -> str:
        """The channel of primary ``address``.

        Raises:
            CacheUnavailableError: ``address`` is not a primary of the map (any more).
        """
        channel = self.of(slot_map).get(address)
        if channel is None:
            raise CacheUnavailableError(f"{address} serves no slot of the invalidation "
                                        f"channels under {self.base!r} (not a primary now)")
        return channel

    def _derive(self, slot_map: SlotMap) -> dict[str, str]:
        if _hash_tag(self.base):  # every channel hashes by the prefix's tag: one slot
            channel = f"{self.base}:{{0}}"
            owner = _owner(slot_map, channel)
            return {} if owner is None else {owner: channel}
        wanted = set(slot_map.primaries)
        channels: dict[str, str] = {}
        for number in range(_SEARCH):
            channel = f"{self.base}:{{{number}}}"
            owner = _owner(slot_map, channel)
            if owner in wanted and owner not in channels:
                channels[owner] = channel
                if len(channels) == len(wanted):
                    break
        return channels


def _owner(slot_map: SlotMap, channel: str) -> str | None:
    """The primary serving ``channel``'s slot, None if none does (a failed primary)."""
    try:
        return slot_map.owner_of(channel)
    except CacheUnavailableError:
        return None


def _hash_tag(name: str) -> bool:
    """Whether Redis hashes ``name`` (and so every name it begins) by a tag of its own:
    its first ``{`` is closed by a ``}`` with something between them."""
    start = name.find("{")
    return start >= 0 and name.find("}", start + 1) > start + 1
