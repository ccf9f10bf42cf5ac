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

import contextlib

# Registered now, in the importing thread: CPython looks the "idna" codec up on a socket's
# first use of a host name, and two threads doing that at once can fail with "LookupError:
# unknown encoding: idna" (seen: the invalidation listener connecting while a gunicorn
# worker's first request did). Importing it once, up front, removes the race.
import encodings.idna  # noqa: F401
import socket
import ssl
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis
from redis.retry import Retry

__all__ = ["PUSHED", "Connections", "Packed", "SSLConnection", "Tracker", "pack_args"]

Command = tuple[Any, ...]

_pack: Callable[[Command], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # redis-py packs in Python then
    _pack = None


class SSLConnection(redis.SSLConnection):
    """redis-py's ``SSLConnection``, except that a failed TLS setup leaves no socket open.

    CPython's ``ssl.SSLSocket`` creation (before 3.11.8 and 3.12.2: CPython gh-113280)
    raises without closing the ``SSLSocket`` it made when the TCP connection is reset
    between ``connect()`` and the handshake, as it is by a server that is killed or
    restarting while we connect (``getpeername()`` fails with ENOTCONN, then its probing
    ``recv(1)`` with ECONNRESET). redis-py's clean-up then closes the plain socket, which
    has already handed its descriptor to the ``SSLSocket`` (``detach()``), so it closes
    nothing. The ``SSLSocket``, held only by the traceback, stays open until the garbage
    collector finds it, with a ``ResourceWarning``, on whatever thread happens to run it.

    A subclass rather than a wrapper: redis-py makes connections from a class
    (``ConnectionPool(connection_class=...)``), and so do :class:`Connections`.
    """

    def _connect(self) -> socket.socket:
        try:
            sock: socket.socket = super()._connect()
        except BaseException as exc:
            _close_tls_sockets_left_in(exc)
            raise
        return sock


def _close_tls_sockets_left_in(error: BaseException) -> None:
    """Close every ``ssl.SSLSocket`` still open in the frames that ``error`` unwound.

    Those are the frames of one failed connect (ours, redis-py's, ssl's): a socket made
    there was never handed to anyone, so no one else can be using or closing it.
    """
    for frame, _line in traceback.walk_tb(error.__traceback__):
        for value in list(frame.f_locals.values()):
            if isinstance(value, ssl.SSLSocket) and value.fileno() != -1:
                with contextlib.suppress(OSError):  # the connect's own error is the one to see
                    value.close()


class Tracker(Protocol):
    """What watches the connections of a pool in tracking mode (see
    :mod:`dragonfly_cache._tracking`): each connection tracks the keys read through it, and
    the server sends their invalidations on it, interleaved with replies."""

    def adopt(self, connections: Connections, connection: redis.Connection) -> None:
        """A new connection of ``connections``: turn tracking on whenever it connects."""

    def taken(self, connection: redis.Connection) -> None:
        """``connection`` left the idle list for a call: stop watching it."""

    def returned(self, connections: Connections, connection: redis.Connection) -> None:
        """``connection`` is idle again: watch it for invalidations."""

    def preferred(self) -> redis.Connection | None:
        """The connection the calling thread should take if it is idle, if any."""

    def replied(self, connection: redis.Connection) -> None:
        """The thread that took ``connection`` read every reply it was due (and nothing
        after them yet): called in that thread, before the connection goes back."""

    def dropped(self, connection: redis.Connection) -> None:
        """``connection`` was disconnected: what it tracked is no longer tracked."""


#: What a tracker's push handler answers for a push, so that a reader can tell pushes
#: (applied as they are read) from replies.
PUSHED = object()


class Connections:
    """Idle connections of one process, and :meth:`roundtrip`.

    Args:
        connection_class: ``redis.Connection`` or :class:`SSLConnection`.
        options: keyword arguments of the connection class (host, port, auth, timeouts).
        retry: retries of connection errors; a retried batch is sent again whole, which
            is safe for what we send (reads, SET/UNLINK of given values, PUBLISH of an
            invalidation, which receivers may apply twice).
        tracker: in tracking mode, what turns tracking on for each connection and watches
            the idle ones for invalidations (``options`` then ask for RESP3).
    """

    def __init__(self, connection_class: type[redis.Connection], options: dict[str, Any],
                 retry: Retry, tracker: Tracker | None = None) -> None:
        self._connection_class = connection_class
        self._options = options
        self._retry = retry
        self._tracker = tracker
        self._lock = threading.Lock()  # the idle list: callers and the tracker's poller
        self._idle: list[redis.Connection] = []
        self._closed = False  # set by close(): from then on no connection is kept

    def _take(self) -> redis.Connection:
        tracker = self._tracker
        preferred = tracker.preferred() if tracker is not None else None
        with self._lock:
            if preferred is not None and any(idle is preferred for idle in self._idle):
                self._idle.remove(preferred)
                connection: redis.Connection | None = preferred
            else:
                connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._connection_class(**self._options)
            if self._tracker is not None:
                self._tracker.adopt(self, connection)
            return connection
        if self._tracker is not None:
            # Readable while idle: invalidations arrived (or the server closed it).
            self._tracker.taken(connection)
            self.settle(connection)
            return connection
        # A connection that is readable while idle was closed by the server (restart,
        # idle timeout) or carries a stray reply: start it afresh rather than fail a call.
        try:
            stale = connection.is_connected and connection.can_read(timeout=0)
        except (redis.ConnectionError, OSError):  # hiredis reports the close as an error
            stale = True
        if stale:
            connection.disconnect()
        return connection

    def settle(self, connection: redis.Connection, ping: bool = False) -> None:
        """Apply the invalidations that arrived on an idle tracked ``connection`` (and,
        with ``ping``, check that it answers): it leaves in step, or disconnected."""
        try:
            while connection.is_connected and connection.can_read(timeout=0):
                # A push answers PUSHED (ours) or None (kinds redis-py drops); an idle
                # connection has no reply due, so anything else means it is out of step.
                if connection.read_response(push_request=True) not in (PUSHED, None):
                    raise redis.ConnectionError("a reply nobody asked for: out of step")
            if ping:
                connection.send_command("PING", check_health=False)
                connection.read_response()  # pushes before the PONG are applied on the way
        except (redis.RedisError, OSError):
            self.drop(connection)

    def borrow(self, connection: redis.Connection) -> bool:
        """Take this idle ``connection`` out of the idle list (for the tracker to read its
        invalidations): False if a caller has it now. Give it back with :meth:`give_back`."""
        with self._lock:
            for index, idle in enumerate(self._idle):
                if idle is connection:
                    del self._idle[index]
                    return True
        return False

    def drop(self, connection: redis.Connection) -> None:
        """Disconnect ``connection`` (it reconnects on its next use)."""
        connection.disconnect()
        if self._tracker is not None:
            self._tracker.dropped(connection)

    def roundtrip(self, commands: Sequence[Command | Packed]) -> list[Any]:
        """Send ``commands`` back to back on one connection and read every reply.

        Returns:
            The raw replies, in order (bytes, ints, lists; None for nil).

        Raises:
            redis.RedisError: the first error reply (e.g. OOM), once every reply has been
                read, or a connection failure left after the retries.
        """
        replies = self.exchange(commands)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def exchange(self, commands: Sequence[Command | Packed]) -> list[Any]:
        """Like :meth:`roundtrip`, but error replies (MOVED, OOM...) come back in place,
        as ``redis.ResponseError`` instances, instead of being raised."""
        connection = self._take()
        clean = False
        try:

            def attempt() -> list[Any]:
                _send(connection, commands)
                return _read(connection, len(commands))

            replies = self._retry.call_with_retry(attempt, lambda _error: self.drop(connection))
            clean = True
            return replies
        finally:
            self.give_back(connection, clean)

    def give_back(self, connection: redis.Connection, clean: bool) -> None:
        """Return a taken connection to the idle list (disconnected unless ``clean``)."""
        if not clean:  # replies may be left unread: start afresh next time
            self.drop(connection)
        elif self._tracker is not None:
            self._tracker.replied(connection)
            # Pushes that came with the last reply may sit in the parser's buffer, where
            # no poll of the socket can see them: apply them now. Those still in the
            # socket wake the poller once the connection is idle (returned() arms it), so
            # the socket is not polled here: a system call saved on every round trip.
            if _buffered(connection):
                self.settle(connection)
        with self._lock:
            self._idle.append(connection)
        if self._tracker is not None:
            self._tracker.returned(self, connection)
        # A connection in use while close() ran (a background refresh, the listener asking
        # for the slot map) must not outlive it. Read after the append: either close() has
        # set the flag by now, or it has yet to empty _idle and will find the connection.
        if self._closed:
            self.close()

    def close(self) -> None:
        """Disconnect every idle connection, and from now on each one as it is released:
        a closed cache still works, but keeps no connection open."""
        self._closed = True
        while True:
            with self._lock:
                if not self._idle:
                    return
                connection = self._idle.pop()
            if self._tracker is not None:
                self._tracker.taken(connection)
            self.drop(connection)


def _buffered(connection: redis.Connection) -> bool:
    """Whether the connection's parser holds bytes not yet read as replies or pushes
    (with a parser that cannot tell, True)."""
    has_data = getattr(getattr(connection._parser, "_reader", None), "has_data", None)
    return True if has_data is None else bool(has_data())


class Packed(bytes):
    """A command already in the wire format (RESP), sent as it is: see :func:`pack_args`."""


def pack_args(args: Sequence[str]) -> bytes:
    """The wire format of ``args`` as a command's arguments (without the array header).

    Packing costs per argument (hiredis formats each length with sprintf), so a batch that
    names the same keys in two commands packs them once and ends both with it::

        Packed(b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1) + pack_args(keys))
    """
    if _pack is None:
        return b"".join(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in map(str.encode, args))
    whole = _pack(tuple(args))
    return whole[whole.index(b"\n") + 1:]  # drop "*<count>\r\n"


def _send(connection: redis.Connection, commands: Sequence[Command | Packed]) -> None:
    if _pack is None:
        packed: list[bytes] = [part for command in commands for part in (
            (command,) if isinstance(command, Packed) else connection.pack_command(*command))]
    else:
        # hiredis packs a command in C; redis-py's wrapper around it (which also splits
        # command names with spaces, which we never send) cost more than the packing:
        # a third of a cluster get_many(100) that sends 200 commands.
        pack = _pack
        packed = [b"".join([command if isinstance(command, Packed) else pack(command)
                            for command in commands])]
    connection.send_packed_command(packed, check_health=False)


def _read(connection: redis.Connection, count: int) -> list[Any]:
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as error:  # read whole: the connection stays in step
            replies.append(error)
    return replies


def exchange_all(batches: Sequence[tuple[Connections, Sequence[Command]]]
                 ) -> list[list[Any] | Exception]:
    """:meth:`Connections.exchange` on several servers at once: every batch is written
    before any reply is read, so N servers cost about one round trip, not N.

    Returns:
        Per batch, its replies (error replies in place) or the exception that ended it
        (a connection failure left after that server's retries).
    """
    sent: list[tuple[redis.Connection, Exception | None]] = []
    for connections, commands in batches:
        connection = connections._take()
        try:
            _send(connection, commands)
            sent.append((connection, None))
        except Exception as exc:
            sent.append((connection, exc))
    results: list[list[Any] | Exception] = []
    for (connections, commands), (connection, error) in zip(batches, sent, strict=True):
        if error is None:
            try:
                results.append(_read(connection, len(commands)))
                connections.give_back(connection, True)
                continue
            except Exception as exc:
                error = exc
        connections.give_back(connection, False)
        if not isinstance(error, redis.ConnectionError):
            results.append(error)  # a timeout (or worse): not retried, as in exchange()
            continue
        try:  # the one-server path, with its retries and backoff
            results.append(connections.exchange(commands))
        except Exception as exc:
            results.append(exc)
    return results
