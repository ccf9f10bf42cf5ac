"""What a new primary (a Sentinel failover) means for the tiers of one process.

The router calls a :class:`Switchover` around its move to the new primary:

1. before the move, the journal turns the writes the old primary took lately into pending
   deletes (:meth:`~dragonfly_cache._journal.Journal.switching`): from this moment those
   keys read as misses, so a value the new primary kept because the old one's delete (or
   overwrite) never reached it is never served; the journal's thread then deletes them
   there, announced to every process. Writes acknowledged while the move is under way, or
   sent before it, may have reached the old primary only: they go the same way;
2. the move: every command goes to the new primary from now on;
3. L1 is flushed: invalidations other processes sent through the old primary around the
   failover may never have reached this one;
4. coherence follows (:meth:`~dragonfly_cache._invalidation.Invalidation.follow`): in
   pub/sub mode the old primary's listener stops and one on the new primary starts; in
   tracking mode the new primary's pool is a tracked one from its first connection.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

from ._invalidation import Invalidation
from ._journal import Journal
from ._l1 import L1

__all__ = ["Switchover"]

logger = logging.getLogger(__name__)


class Switchover:
    """The tiers' part of a switch to a new primary (see the module docs).

    The router holds it and the listener threads hold the router (through the L2 they
    connect with), so it holds the journal (whose replay holds the tiers) and L1 weakly:
    a cache dropped without ``close()`` must not be kept alive by its threads.

    Args:
        journal: the cache's journal (made with a ``window``).
        l1: the cache's L1.
        coherence: its coherence (None: off).
    """

    def __init__(self, journal: Journal, l1: L1, coherence: Invalidation | None) -> None:
        self._journal = weakref.ref(journal)
        self._l1 = weakref.ref(l1)
        self._coherence = coherence

    def __call__(self, move: Callable[[], None]) -> None:
        """Re-apply, move (``move()``), flush, follow."""
        journal, l1 = self._journal(), self._l1()
        if journal is None or l1 is None:  # the cache is gone
            move()
            return
        with journal.switching() as reapplied:
            move()
        l1.clear()
        if self._coherence is not None:
            self._coherence.follow()
        logger.warning("new primary: L1 flushed, %d recent write(s) re-applied there as "
                       "deletes", reapplied)
