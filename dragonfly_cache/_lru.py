"""The storage of L1: ``key -> (value, deadline)`` in least-recently-used order, bounded in
entries and in bytes, counting what each bound pushes out.

Not thread-safe: :class:`~dragonfly_cache._l1.L1` holds its lock around every call.

Why not ``cachetools.LRUCache`` (which L1 used before): storing one entry there runs five
Python-level calls (the size function, three ``__setitem__`` layers, the order update) and
keeps three dicts per entry. An L1-cold ``get_many(100)`` spent more time storing its 100
entries than the server spent answering them. Here an entry lives in one ``OrderedDict``
(order and lookup in C), its size is recomputed from the entry when needed instead of
being stored, and :meth:`LRU.put_many` stores an L1-cold batch in one C-level ``update``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import islice
from operator import itemgetter

__all__ = ["ENTRY_OVERHEAD", "LRU", "Entry", "entry_bytes"]

Entry = tuple[bytes, float]  # (value, deadline on the L1 timer's clock)

#: What an entry counts against ``l1.max_bytes`` besides its value's bytes: the key, the
#: (value, deadline) tuple, the dict slot and the LRU order (measured on CPython 3.11 with
#: short keys, with the margin of the structure L1 used before).
ENTRY_OVERHEAD = 240


_value_of = itemgetter(0)


def entry_bytes(entry: Entry) -> int:
    """What an entry counts against ``l1.max_bytes``."""
    return len(entry[0]) + ENTRY_OVERHEAD


class LRU:
    """Entries in least-recently-used order (the least recent first).

    Args:
        max_entries: most entries held; storing past it evicts the least recently used.
        max_bytes: most bytes held (each entry's :func:`entry_bytes`); the same.
        max_entry_bytes: a larger entry is not stored at all, and its key's older entry
            leaves (it must not stay); counted in ``too_large``. At most ``max_bytes``.
    """

    __slots__ = ("_data", "bytes", "evicted", "max_bytes", "max_entries", "max_entry_bytes",
                 "stores", "too_large")

    def __init__(self, max_entries: int, max_bytes: int, max_entry_bytes: int) -> None:
        self._data: OrderedDict[str, Entry] = OrderedDict()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.bytes = 0
        self.evicted = {"entries": 0, "bytes": 0}
        self.too_large = 0
        self.stores = 0  # calls that may have added keys: see absent()

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def get(self, key: str) -> Entry | None:
        """The entry of ``key`` (now the most recently used), or None."""
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
        return entry

    def absent(self, keys: Collection[str]) -> bool:
        """Whether none of ``keys`` has an entry (they stay absent while ``stores`` is
        unchanged: only storing adds keys)."""
        return self._data.keys().isdisjoint(keys)

    def get_many(self, keys: Collection[str], now: float, retain: float = 0.0
                 ) -> tuple[dict[str, bytes], list[str], int]:
        """The values of the ``keys`` whose entries are live at ``now`` (each now recently
        used), the keys that have none (in order), and how many expired entries were
        dropped on the way (an entry less than ``retain`` past its deadline is kept)."""
        data = self._data
        if data.keys().isdisjoint(keys):  # none of them (an L1-cold batch): no loop
            return {}, list(keys), 0
        get = data.get
        found: dict[str, bytes] = {}
        missing: list[str] = []
        expired = 0
        for key in keys:
            entry = get(key)
            if entry is None:
                missing.append(key)
            elif entry[1] > now:
                found[key] = entry[0]
                data.move_to_end(key)
            else:
                if now >= entry[1] + retain:
                    self.pop(key)
                    expired += 1
                missing.append(key)
        return found, missing, expired

    def peek(self, key: str) -> Entry | None:
        """The entry of ``key``, leaving the order alone."""
        return self._data.get(key)

    def pop(self, key: str) -> Entry | None:
        """Remove ``key``; its entry, or None if it had none."""
        entry = self._data.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry[0]) + ENTRY_OVERHEAD
        return entry

    def put(self, key: str, entry: Entry) -> Entry | None:
        """Store ``entry`` as the most recently used, then evict down to the bounds; the
        entry it replaced (or dropped, being too large itself), if any."""
        if len(entry[0]) + ENTRY_OVERHEAD > self.max_entry_bytes:
            self.too_large += 1
            return self.pop(key)
        data = self._data
        self.stores += 1
        old = data.get(key)
        if old is not None:
            self.bytes -= len(old[0])
            data.move_to_end(key)
        else:
            self.bytes += ENTRY_OVERHEAD
        data[key] = entry
        self.bytes += len(entry[0])
        if self.bytes > self.max_bytes or len(data) > self.max_entries:
            self._evict()
        return old

    def put_many(self, keys: Sequence[str], values: Sequence[bytes],
                 deadlines: Iterable[float], absent: bool = False) -> list[Entry]:
        """:meth:`put` of each of the distinct ``keys`` with its value and deadline (in
        order; ``deadlines`` may run longer), then evict once: the bounds may be exceeded
        inside the call only, so a batch larger than them keeps its last entries. Returns
        the entries it replaced.

        A batch of keys that have no entry yet, none too large (an L1-cold batch read),
        is stored in one ``update``, without a Python loop per key; ``absent``: the caller
        knows the keys have none (see :meth:`absent`).
        """
        data = self._data
        size = sum(map(len, values))
        if size > self.max_entry_bytes - ENTRY_OVERHEAD or not (absent or self.absent(keys)):
            replaced = [self.put(key, (value, deadline))
                        for key, value, deadline in zip(keys, values, deadlines, strict=False)]
            return [old for old in replaced if old is not None]
        before = len(data)
        self.stores += 1
        data.update(zip(keys, zip(values, deadlines, strict=False), strict=True))
        if len(data) - before != len(keys):  # keys were not distinct after all: recount
            self.bytes = sum(len(entry[0]) + ENTRY_OVERHEAD for entry in data.values())
        else:
            self.bytes += size + len(keys) * ENTRY_OVERHEAD
        if self.bytes > self.max_bytes or len(data) > self.max_entries:
            self._evict()
        return []

    def _evict(self) -> None:
        """Drop least-recently-used entries until both bounds hold, counting each under
        the bound that was exceeded (entries first: it is the one a byte-light L1 hits)."""
        data, evicted = self._data, self.evicted
        excess = len(data) - self.max_entries
        if excess > 1:  # a batch stored into a full L1: pop the oldest at C speed
            doomed = list(islice(data, excess))
            self.bytes -= sum(map(len, map(_value_of, map(data.pop, doomed))))
            self.bytes -= excess * ENTRY_OVERHEAD
            evicted["entries"] += excess
        while data:
            if len(data) > self.max_entries:
                cause = "entries"
            elif self.bytes > self.max_bytes:
                cause = "bytes"
            else:
                return
            _, entry = data.popitem(last=False)
            self.bytes -= len(entry[0]) + ENTRY_OVERHEAD
            evicted[cause] += 1

    def clear(self) -> None:
        """Drop every entry (not counted as evictions)."""
        self._data.clear()
        self.bytes = 0
