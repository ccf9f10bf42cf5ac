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

from ._router import Group, Router, replies_of
from ._topology import SlotMap
from .exceptions import CacheUnavailableError

__all__ = ["NodeChannels", "announce_in_cluster", "channel_name"]

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


def announce_in_cluster(router: Router, node_channels: NodeChannels, announce: str,
                        written: list[str | bytes], any_writes: bool) -> None:
    """Publish ``announce`` on the channel of each primary that took one of the keys
    ``written``, through that primary (SPUBLISH where the cluster has sharded pub/sub);
    for a write of no keys (``any_writes`` false), on any one primary's channel.

    Raises:
        CacheUnavailableError: a publish failed, or a primary that took a write has no
            channel in the slot map yet (never skip an announcement silently: the
            journal replays it).
    """
    if any_writes and not written:
        return  # nothing was written: nothing to tell (the write's failure is raised)
    slot_map = router.topology.current()
    channels = node_channels.of(slot_map)
    command = "SPUBLISH" if router.sharded else "PUBLISH"
    if written:
        owners = dict.fromkeys(router.route(name) for name in written)
        unheard = [owner for owner in owners if owner not in channels]
        groups: list[Group] = [(channels[owner], [(command, channels[owner], announce)])
                               for owner in owners if owner in channels]
        for result in router.batch("PUBLISH", groups):
            replies_of(result)
        if unheard:
            router.topology.refresh_soon()
            raise CacheUnavailableError(
                f"PUBLISH: the write to {', '.join(unheard)} could not be announced: "
                "no invalidation channel of it in the slot map yet (slots moving)")
        return
    failure: CacheUnavailableError | None = None
    for channel in channels.values():  # every process hears every primary's channel
        try:
            replies_of(router.batch("PUBLISH", [(channel, [(command, channel, announce)])])[0])
            return
        except CacheUnavailableError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


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
