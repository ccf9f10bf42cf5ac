"""Connections to the shared tier: a small pool, and command batches in one round trip.

We keep redis-py's ``Connection`` (protocol, TLS, AUTH, hiredis parsing) and its ``Retry``,
and drop the layers above them. Measured on the L2 read path (benchmarks/, this machine):
GET+PTTL through a redis-py ``Pipeline`` from a ``BlockingConnectionPool`` took 1.4x a bare
GET; the same two commands written straight to a pooled connection took 1.03x. The
Pipeline object, the pool's ``queue.Queue`` checkout and the observability hooks on both
cost more than Redis does.

Bounds: the caller holds a :class:`~dragonfly_cache._slots.FairSlots` slot around every
batch, so at most ``pool_size`` connections exist per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.retry import Retry

__all__ = ["Connections"]

Command = tuple[Any, ...]


class Connections:
    """Idle connections of one process, and :meth:`roundtrip`.

    Args:
        connection_class: ``redis.Connection`` or ``redis.SSLConnection``.
        options: keyword arguments of the connection class (host, port, auth, timeouts).
        retry: retries of connection errors; a retried batch is sent again whole, which
            is safe for what we send (reads, SET/UNLINK of given values, PUBLISH of an
            invalidation, which receivers may apply twice).
    """

    def __init__(self, connection_class: type[redis.Connection], options: dict[str, Any],
                 retry: Retry) -> None:
        self._connection_class = connection_class
        self._options = options
        self._retry = retry
        self._idle: list[redis.Connection] = []  # list.pop/append are atomic under the GIL

    def _take(self) -> redis.Connection:
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._connection_class(**self._options)
        # A connection that is readable while idle was closed by the server (restart,
        # idle timeout) or carries a stray reply: start it afresh rather than fail a call.
        try:
            stale = connection.is_connected and connection.can_read(timeout=0)
        except (redis.ConnectionError, OSError):  # hiredis reports the close as an error
            stale = True
        if stale:
            connection.disconnect()
        return connection

    def roundtrip(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` back to back on one connection and read every reply.

        Returns:
            The raw replies, in order (bytes, ints, lists; None for nil).

        Raises:
            redis.RedisError: the first error reply (e.g. OOM) or a connection failure
                left after the retries. The connection is then reset, since replies after
                the failed one may still be unread.
        """
        connection = self._take()
        clean = False
        try:

            def attempt() -> list[Any]:
                connection.send_packed_command(connection.pack_commands(commands),
                                               check_health=False)
                return [connection.read_response() for _ in commands]

            replies = self._retry.call_with_retry(attempt, lambda _error: connection.disconnect())
            clean = True
            return replies
        finally:
            if not clean:
                connection.disconnect()
            self._idle.append(connection)

    def close(self) -> None:
        """Disconnect every idle connection (they reconnect if used again)."""
        while self._idle:
            self._idle.pop().disconnect()
