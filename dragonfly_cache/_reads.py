"""The reads of the tiers: fetch from L2 (answers and the L1 entries they allow), and
fill L1 under a ticket taken before the request, so an invalidation that races it wins.

:class:`Reads` is composed into :class:`~dragonfly_cache._tiers.Tiers`, which hands it the
one deadline rule (:meth:`~dragonfly_cache._tiers.Tiers.deadline`) and its listener's
start; the batch form (``read_many``) is what ``get_many`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from ._fills import NO_FILLS, Fills, decoded, fills_of
from ._journal import Journal
from ._l1 import L1, Entry, Ticket
from ._l2 import L2
from .exceptions import CacheUnavailableError

__all__ = ["Reads"]


class Reads:
    """Reads through both tiers of one cache in one process.

    Args:
        l1, l2, journal: the cache's tiers and its journal of failed removals.
        deadline: ``deadline(start)``, the latest an L1 entry stored at ``start`` may live.
        listen: starts the invalidation listener (every read that reaches L2 calls it).
    """

    def __init__(self, l1: L1, l2: L2, journal: Journal, deadline: Callable[[float], float],
                 listen: Callable[[], None]) -> None:
        self._l1 = l1
        self._l2 = l2
        self._journal = journal
        self._deadline = deadline
        self._listen = listen

    def fetch(self, keys: Sequence[str], *, strict: bool = False
              ) -> tuple[dict[str, bytes], dict[str, Entry]]:
        """:meth:`fetch_fills`, the L1 entries as a dict: key -> (value, deadline)."""
        found, (fill_keys, values, deadlines) = self.fetch_fills(keys, strict=strict)
        return found, dict(zip(fill_keys, zip(values, deadlines, strict=False), strict=True))

    def fetch_fills(self, keys: Sequence[str], *, strict: bool = False
                    ) -> tuple[dict[str, bytes], Fills]:
        """Read ``keys`` from L2 (GET+PTTL, or MGET+PTTLs): the values found (decompressed),
        and the L1 entries they allow. L2 failures read as misses (the L2 tier counted and
        logged them), or with ``strict`` raise ``CacheUnavailableError``; frames that do
        not decode read as misses (counted and logged)."""
        start = self._l1.timer()
        # The longest any entry read now may live, taken before the request (an
        # invalidation sent while the listener was not yet subscribed may have been missed).
        # Each entry then dies at min(start + its PTTL, latest), which is Tiers.deadline(start,
        # pttl) without a call per key (it is on the get_many path).
        latest = self._deadline(start)
        switches = self._journal.switches
        if self._journal and not (keys := self._journal.unblocked(keys)):
            return {}, NO_FILLS  # all pending: L2 may hold what a failed write removed
        try:
            values, pttls = self._l2.get_many(keys, replica=True)
        except CacheUnavailableError:
            if strict:
                raise
            return {}, NO_FILLS
        if self._journal.switches != switches:  # a failover began meanwhile: keys checked
            return {}, NO_FILLS  # before it may be pending now
        values, pttls = decoded(keys, values, pttls, self._l2.compression.decode)
        return fills_of(keys, values, pttls, start, latest)

    def read_through(self, keys: Sequence[str], *, strict: bool = False) -> dict[str, bytes]:
        """Fetch L1-missing keys from L2 in one round trip and fill L1 with them (an L2
        failure: a miss, or ``CacheUnavailableError`` with ``strict``). The ticket is taken
        before the request, so an invalidation that arrives while it is in flight wins."""
        ticket = self._l1.ticket(keys)
        return self._fill(ticket, ticket.keys, {}, strict)

    def read_many(self, keys: Collection[str]) -> dict[str, bytes]:
        """The values of distinct ``keys`` (:data:`NEGATIVE` included): L1's, then the others
        as :meth:`read_through` reads them (L1 lookup and ticket in one lock round)."""
        found, ticket = self._l1.lookup(keys)
        missing = ticket.keys
        return self._fill(ticket, missing, found, False) if missing else found

    def _fill(self, ticket: Ticket, keys: list[str], found: dict[str, bytes], strict: bool
              ) -> dict[str, bytes]:
        """Fetch ``keys`` (all that ``ticket`` holds), install them, add them to ``found``."""
        with ticket:
            self._listen()
            fetched, fills = self.fetch_fills(keys, strict=strict)
            ticket.install(*fills)
        if not found:
            return fetched
        found.update(fetched)
        return found
