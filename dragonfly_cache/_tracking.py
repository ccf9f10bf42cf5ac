"""Server-assisted invalidation (CLIENT TRACKING): the server tells each connection when a
key read through it changes, whoever changed it.

Built for Dragonfly's rules, which are the narrowest (its docs and source; Redis 6+ and
Valkey follow the same ones in the default mode used here): tracking runs over RESP3
only, without ``REDIRECT``, ``BCAST`` or ``PREFIX``; a key is tracked for a connection
only once that connection has read it; and its invalidation arrives on that same
connection, as a push frame between replies. So:

- Every pooled connection (each node's, :mod:`dragonfly_cache._nodes`) speaks RESP3 and
  sends ``CLIENT TRACKING ON`` (with ``NOLOOP`` where the server takes it) whenever it
  connects. A connection the server refuses tracking on is not used: the call fails.
- A push read while a call reads its replies is applied there and then (redis-py's parser
  hands it to :meth:`Tracking._on_push` and goes on to the reply).
- A push that arrives on an idle connection is applied by this cache's poller thread: it
  waits on the idle connections' sockets (epoll, armed for one event as each connection
  comes back to the pool; pushes already in the parser's buffer are applied then, by the
  caller, since no poll can see them), takes a readable one out of the idle list (so no
  caller has it meanwhile, and under one of the node's connection slots, so the pool
  never grows past ``pool_size``), reads the pushes and gives it back. It PINGs a
  connection idle for ``PING_INTERVAL``: one that died silently (a partition: no FIN, no
  RST) must not hide lost invalidations; no answer within ``socket_timeout`` is a loss.
- A tracked connection that is lost, reset or closed takes its tracking with it: L1 is
  flushed (the simplest answer that cannot leave a stale entry). In a cluster the poller
  then asks for the slot map again, with backoff, until that server answers again or is
  no longer a primary (a failover: the promoted replica takes its slots), as the pub/sub
  listeners do (:mod:`dragonfly_cache._lostservers`). A push with no keys (a
  FLUSHALL or FLUSHDB) flushes L1 too.
- Pushes go through the same door as the listener's messages (the
  L1, whose invalidations stamp tickets in flight, so a racing read never installs a value
  older than the push). Keys arrive with the key prefix; others are not ours.

Own writes (:mod:`dragonfly_cache._ownwrites`): every write that then keeps its value in
L1 reads its key back in the same transaction, so a key this process only wrote is tracked
too, and each connection's pushes are applied knowing which socket (:class:`Link`) they
came on, so that those our own writes cause on our other connections leave the value
just written in L1 when that is provably safe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import redis

from ._connections import PUSHED, Connections
from ._l1 import Ticket
from ._listener import (
    CONNECTING,
    DOWN,
    PING_INTERVAL,
    STOPPED,
    SUBSCRIBED,
    InvalidationTarget,
    state_changed,
)
from ._lostservers import LostServers
from ._nodes import Nodes, format_address
from ._ownwrites import NO_FLIGHT, Flight, Link, NoFlight, OwnWrites
from ._slots import FairSlots
from .types import CoherenceStats

__all__ = ["Tracking"]

logger = logging.getLogger(__name__)

_POLL = 0.25  # seconds between the poller's checks for stop and for connections to PING
_FALLBACK_POLL = 0.01  # without epoll: how often the set of idle sockets is rebuilt
_RETRY_POLL = 0.005  # seconds: how soon a connection that could not be tended is tried again
_LOG_EVERY = 10.0  # seconds between two warnings about lost tracked connections
_ONE_SHOT = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLONESHOT", 0)

class Tracking:
    """Tracking-mode invalidation for one cache in one process.

    Args:
        target: the L1 to invalidate (held weakly: a dropped cache stops its poller).
        nodes: the servers; their pools become tracked ones when :meth:`start` runs.
        prefix: the key prefix (pushes name keys with it).
        primaries: the primaries now (in a cluster, under a fresh slot map): asked after
            a server was lost, until it is back or no primary any more.
    """

    def __init__(self, target: InvalidationTarget, nodes: Nodes, prefix: str,
                 primaries: Callable[[], list[str]] | None = None) -> None:
        self._away = LostServers(primaries)
        self._target = weakref.ref(target)
        self.own = OwnWrites(target)
        self._nodes = nodes
        self._prefix = prefix.encode()
        self._lock = threading.Lock()  # the registry of idle connections, the counters
        # Each tracked connection's socket now, as its pushes name it.
        self._tracked: weakref.WeakKeyDictionary[redis.Connection, Link] = (
            weakref.WeakKeyDictionary())
        # Idle connections: their pool, since when, their socket's descriptor (-1: none).
        self._idle: dict[redis.Connection, tuple[Connections, float, int]] = {}
        self._by_fd: dict[int, redis.Connection] = {}
        # Idle connections whose pushes wait for a free slot (the poller thread's own).
        self._deferred: list[redis.Connection] = []
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._noloop = True  # until a server refuses it
        self._stop = threading.Event()
        self._life = threading.Lock()  # start() and stop(), one at a time
        self._thread: threading.Thread | None = None
        self._warned_at = -math.inf
        self.state = CONNECTING
        self.received = 0  # pushes read
        self.applied = 0  # of those, the ones that reached L1
        self.flushes = 0  # whole-L1 flushes: lost tracked connections, flushed databases
        self.reconnects = 0  # tracked connections lost

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Track every pooled connection from now on, start the poller, and drop what L1
        holds (filled through untracked connections, and fills in flight on them)."""
        with self._life:
            if self._stop.is_set():
                return
            self._nodes.track(self)
            target = self._target()
            if target is not None:
                target.drop_untrusted()
            del target
            self.state = SUBSCRIBED
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="dragonfly_cache-tracking")
            self._thread.start()
        state_changed()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the poller and the tracking of new connections (idempotent); whether it
        was running (L1 was trusted)."""
        with self._life:
            was_running = self.state == SUBSCRIBED
            self.state = STOPPED
            started = not self._stop.is_set() and self._thread is not None
            self._stop.set()
            if started:
                self._nodes.track(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return was_running

    # -- the pools' side (Tracker) ---------------------------------------------------------

    def adopt(self, connections: Connections, connection: redis.Connection) -> None:
        """Turn tracking on whenever ``connection`` connects (redis-py keeps the callback
        weakly: it goes with this object)."""
        connection.register_connect_callback(self._connected)

    def _connected(self, connection: redis.Connection) -> None:
        with self._lock:
            old = self._tracked.pop(connection, None)
        if old is not None:  # a new socket, and nobody told us that the old one closed
            self.own.lost(old)
            self._lost(connection, "reconnected")
        link = Link(connection, noloop=False)
        parser = connection._parser
        parser.set_invalidation_push_handler(functools.partial(self._on_push, link))
        parser.set_pubsub_push_handler(lambda _push: PUSHED)  # none expected: skip them
        for options in ((("NOLOOP",) if self._noloop else ()), ()):
            connection.send_command("CLIENT", "TRACKING", "ON", *options, check_health=False)
            try:
                connection.read_response()
            except redis.ResponseError as exc:
                if options:  # a server without NOLOOP: without it then
                    self._noloop = False
                    continue
                connection.disconnect()
                raise redis.ConnectionError(
                    f"CLIENT TRACKING ON refused ({exc}); l1.invalidation=tracking needs it "
                    "(auto picks pubsub where the server refuses it)") from exc
            link.noloop = bool(options)
            with self._lock:
                self._tracked[connection] = link
            self._away.back(format_address(connection.host, connection.port))
            return

    def taken(self, connection: redis.Connection, armed: bool = True) -> None:
        # The socket stays registered, disarmed: armed, the reply the caller waits for
        # would wake the poller thread too (a thread switch per call: measured 0.5 futex
        # waits and one epoll_wait per get_many), and the next return arms it again.
        # (``armed=False``: its one-shot event fired, which disarmed it already.)
        with self._lock:
            entry = self._idle.pop(connection, None)
            if entry is not None and entry[2] >= 0:
                del self._by_fd[entry[2]]
        if armed and entry is not None and entry[2] >= 0 and self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):  # closed, or the poller stopped
                self._epoll.modify(entry[2], 0)

    def returned(self, connections: Connections, connection: redis.Connection) -> None:
        sock = connection._sock
        fd = sock.fileno() if sock is not None else -1
        with self._lock:
            self._idle[connection] = (connections, time.monotonic(), fd)
            if fd >= 0:
                self._by_fd[fd] = connection
        if fd >= 0 and self._epoll is not None:
            try:
                self._epoll.modify(fd, _ONE_SHOT)  # registered while in use: arm it again
            except FileNotFoundError:  # a new socket (a closed one leaves epoll by itself)
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.register(fd, _ONE_SHOT)
            except (OSError, ValueError):  # the poller stopped and closed it
                pass

    def preferred(self) -> redis.Connection | None:
        return self.own.preferred()

    def replied(self, connection: redis.Connection) -> None:
        if self.own.writing():  # only a thread with an own write in flight needs to know
            with self._lock:
                link = self._tracked.get(connection)
            if link is not None:
                self.own.replied(link)

    def dropped(self, connection: redis.Connection) -> None:
        with self._lock:
            link = self._tracked.pop(connection, None)
        if link is not None:
            self.own.lost(link)
            self._lost(connection, "closed")

    def _lost(self, connection: redis.Connection, how: str) -> None:
        """A tracked connection is gone, and with it what the server tracked for it."""
        if self._stop.is_set():
            return  # stopping: L1 is flushed once, by the coherence's stop()
        target = self._target()
        if target is None:
            return
        target.clear()
        with self._lock:
            self.flushes += 1
            self.reconnects += 1
        self._away.lost(format_address(connection.host, connection.port))
        now = time.monotonic()
        if now - self._warned_at >= _LOG_EVERY:
            self._warned_at = now
            logger.warning("a tracked connection to %s:%s was %s; L1 flushed (its "
                           "invalidations may be lost)", connection.host, connection.port, how)

    # -- pushes ----------------------------------------------------------------------------

    def own_write(self, key: str, ticket: Ticket) -> Flight | NoFlight:
        """The :class:`Flight` of an own write of one key (see :mod:`._ownwrites`)."""
        return self.own.flight(key, ticket) if self.state == SUBSCRIBED else NO_FLIGHT

    def wrote_untracked(self, names: Iterable[str | bytes]) -> None:
        """An own write of ``names`` (prefixed) that does not read them back has run."""
        self.own.forget(self._ours(names))

    def _on_push(self, link: Link, push: Any) -> object:
        """Apply one push frame read on ``link`` (redis-py's parser calls this, in whatever
        thread reads)."""
        target = self._target()
        if target is None or len(push) < 2 or push[0] not in (b"invalidate", "invalidate"):
            return PUSHED
        with self._lock:
            self.received += 1
        try:
            keys = push[1]
            if keys is None:  # FLUSHALL, FLUSHDB: every key went
                target.clear()
                with self._lock:
                    self.flushes += 1
            else:
                self.own.apply(link, self._ours(keys))
        except Exception:  # never break the read of the reply behind this push
            logger.exception("applying an invalidation failed; L1 flushed")
            target.clear()
            return PUSHED
        with self._lock:
            self.applied += 1
        return PUSHED

    def _ours(self, names: Iterable[Any]) -> list[str]:
        prefix, size = self._prefix, len(self._prefix)
        encoded = (name.encode() if isinstance(name, str) else name for name in names)
        return [name[size:].decode("utf-8", "replace") for name in encoded
                if isinstance(name, bytes) and name.startswith(prefix)]

    # -- the poller --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self._target() is not None:
                deferred, self._deferred = self._deferred, []
                timeout = _RETRY_POLL if deferred else _POLL
                for connection in [*deferred, *self._readable(timeout)]:
                    self._tend(connection, ping=False)
                now = time.monotonic()
                with self._lock:
                    due = [connection for connection, (_, since, fd) in self._idle.items()
                           if fd >= 0 and now - since >= PING_INTERVAL]
                for connection in due:
                    self._tend(connection, ping=True)
                if self._away:
                    self._away.follow(now)
        except Exception:  # a bug: say so, and stop vouching for L1
            logger.exception("the invalidation poller failed; L1 entries now live "
                             "l1.degraded_ttl at most")
            self.state = DOWN
            target = self._target()
            if target is not None:
                target.clear()
            state_changed()
        finally:
            if self._epoll is not None:
                self._epoll.close()

    def _readable(self, timeout: float) -> list[redis.Connection]:
        """Idle connections with something to read, waiting up to ``timeout`` for one."""
        if self._epoll is not None:
            events = self._epoll.poll(timeout)
            with self._lock:
                return [self._by_fd[fd] for fd, _ in events if fd in self._by_fd]
        with self._lock:  # no epoll: poll the idle sockets of now, briefly
            sockets = dict(self._by_fd)
        poller = select.poll()
        for fd in sockets:
            poller.register(fd, select.POLLIN)
        return [sockets[fd] for fd, _ in poller.poll(_FALLBACK_POLL * 1000)]

    def _tend(self, connection: redis.Connection, ping: bool) -> None:
        """Read what arrived on an idle connection (and PING it): under one of its node's
        slots, while no caller can take it."""
        with self._lock:
            entry = self._idle.get(connection)
        if entry is None:
            return
        connections = entry[0]
        slots = self._slots_of(connections)
        if slots is None:
            return
        # No slot free: every connection is busy or about to be. A caller that takes this
        # one reads its pushes before its reply; if none does (it took another, or gave
        # up), its fired event is spent, so try again soon rather than at the next PING.
        if not slots.acquire(0):
            if not ping:
                self._deferred.append(connection)
            return
        try:
            if not connections.borrow(connection):
                return
            self.taken(connection, armed=ping)  # read because it fired: disarmed
            connections.settle(connection, ping)
            connections.give_back(connection, True)  # settle() disconnected it if it failed
        finally:
            slots.release()

    def _slots_of(self, connections: Connections) -> FairSlots | None:
        for node in self._nodes.all():
            if node.connections is connections:
                return node.slots
        return None  # a pool replaced meanwhile: its connections close as they return

    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> CoherenceStats:
        """The state and counters, shaped as the listeners' are."""
        with self._lock:
            return {"state": self.state, "received": self.received, "applied": self.applied,
                    "flushes": self.flushes, "reconnects": self.reconnects, "sharded": False}
