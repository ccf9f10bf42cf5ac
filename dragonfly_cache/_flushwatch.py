"""Noticing a FLUSHDB or FLUSHALL made by any client, so L1 does not outlive it.

Pub/sub coherence hears about the writes caches make; a raw ``FLUSHDB`` (redis-cli, a test
suite, an operator) announces nothing. The server counts every command it ran
(``INFO commandstats``: ``cmdstat_flushdb``, ``cmdstat_flushall``), Redis, Valkey and
Dragonfly alike, so each invalidation listener reads those counts on its own server (every
primary of a cluster has one) when it subscribes and then once a second
(``_listener.WATCH_INTERVAL``). When they move (a flush
of any db, or the counters were reset), the whole L1 is flushed. That bounds how long a
process can serve a flushed value: about one interval plus one round trip. Nothing is
written to the server for it.

Servers that do not answer INFO (the fake servers of ``dragonfly_cache.testing``) are not
watched: there a flush is bounded by ``l1.ttl``.
"""

from __future__ import annotations

import re

from ._router import Router
from .exceptions import CacheUnavailableError

__all__ = ["FlushWatch"]

_CALLS = re.compile(rb"^cmdstat_(?:flushdb|flushall):calls=(\d+)", re.MULTILINE)


class FlushWatch:
    """The flush counters of each primary, as last seen.

    Args:
        router: where the primaries are.
    """

    def __init__(self, router: Router) -> None:
        self._router = router
        self._seen: dict[str, int] = {}

    def flushed(self, address: str) -> bool:
        """Whether the primary at ``address`` ran FLUSHDB/FLUSHALL since the last call for
        it (the first call only takes note). Each invalidation listener watches its own
        server; one that cannot be asked now is asked again next time."""
        transport = self._router.nodes.transport
        if transport is not None and transport.server is not None:
            return False  # a server that cannot describe itself: not watched
        try:
            reply = self._router.call(
                "INFO", lambda c: c.roundtrip((("INFO", "commandstats"),))[0], address)
        except CacheUnavailableError:
            return False
        text = reply if isinstance(reply, bytes) else str(reply).encode()
        count = sum(int(calls) for calls in _CALLS.findall(text))
        previous = self._seen.get(address)
        self._seen[address] = count
        return previous is not None and count != previous
