"""Own writes in tracking mode: the pushes our own writes cause on our other connections,
and why they may leave the value we just wrote in L1.

The server tracks a key per connection, and a write of it by any connection but the one
that writes it with ``NOLOOP`` sends a push to every other connection that read it. Our
own write of ``k`` on connection A (``MULTI``, the write, ``PTTL k``, ``EXEC``:
:func:`tracked`) therefore sends pushes to our *other* pooled
connections that had read ``k``, and applied blindly they drop the value the write just
put in L1: one extra L2 miss after nearly every write (issue 15). Three rules make those
pushes harmless without ever letting another client's write go unheard.

**1. A owns the entry its write installed** (:meth:`OwnWrites.landed`). Once the write's
transaction ran, A tracks ``k`` (the ``PTTL`` inside it read the key, and no other client
could come between the write and that read). From then on the server sends A a push for
*every* change of ``k`` by anyone but A, until the first such push (tracking is one-shot).
So while L1's entry for ``k`` is still the very entry the write installed (recognised by
its deadline object, under the L1 lock: ``L1.holds``), and A is still the same live,
NOLOOP socket, a push for ``k`` arriving on another connection B is redundant: it is
caused by our write itself, by a change older than our write (which our value
supersedes), or by a change after it, for which A gets a push too. That push, and any
push for ``k`` on A, is always applied.

**2. A write in flight is not spoilt by pushes from other connections**
(:class:`Flight`). Between sending the write and reading its replies, a push for ``k``
would stamp the write's ticket and make it drop its value. While the write is in flight,
a push for ``k`` on a connection other than A still drops L1's (older) entry and stamps
every other ticket out, but spares this write's ticket, for the same reasons as rule 1.
Until the replies are read we do not know which connection is A, so each push's connection
is noted; when the thread that wrote has read every reply on A (:meth:`OwnWrites.replied`),
a push already heard on A stamps the ticket after all (it may report a change after ours:
no assumption on how a server orders pushes and replies on one socket), and from then on
every push on A does. A write that fails applies every push it spared.

**3. A change A makes itself that does not read the key back leaves ownership**
(:meth:`OwnWrites.forget`). With NOLOOP the server tells A nothing about A's own changes,
and a change that is not a tracked write (``UNLINK``, the compare-and-delete script)
also ends A's tracking of the key silently. So after every such write (its reply read, or
its failure) the owned entries of its keys are dropped, and writes of them in flight may
no longer own what they install: exactly what the push NOLOOP spared A would have done.
Tracked writes need nothing: they read the key back (A tracks it again) and their ticket
replaces or drops the entry (a load's ``SET NX`` that skips a stamped key stores only where
the key had gone, a change A is told of).

Most of those pushes need not be sent at all: a write prefers the connection that owns
its key when it is idle (:meth:`OwnWrites.preferred`, asked by the pool as the writing
thread takes a connection); written there, NOLOOP spares A its push, and the others
stopped tracking the key with the push of an earlier write unless they read it since
(rare while L1 answers it).

Everything else is as before: a lost tracked connection flushes L1 (so an owned entry
outlives its owner's tracking only until the loss is seen: at once for a closed socket,
within the PING interval and socket timeout for one that died silently, as any tracked
entry),
a write that loses a race with another write of the key drops it (the ticket rule), and
nothing here ever installs a value: the rules only decide whether a push removes one.
Writes of several keys at once, and clusters (where a write can be redirected), keep the
plain behaviour (an extra miss); so does a server that refuses NOLOOP.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import redis

from ._connections import Command
from ._l1 import Entry, Ticket
from ._listener import InvalidationTarget
from .exceptions import CacheUnavailableError

__all__ = ["NO_FLIGHT", "TRACKED_WRITES", "Flight", "Link", "NoFlight", "OwnWrites", "exec_replies",
           "tracked"]

_PRUNE_FIRST = 1024  # owned entries kept before the first look for ones L1 no longer holds


#: The write operations whose value then goes to L1, sent as :func:`tracked` writes.
TRACKED_WRITES = frozenset({"SET", "INCR", "TOUCH"})


def tracked(name: str | bytes, commands: list[Command]) -> list[Command]:
    """``commands`` (writes of key ``name``) as one transaction that also reads the key,
    so the connection that wrote it tracks it from that moment on."""
    return [("MULTI",), *commands, ("PTTL", name), ("EXEC",)]


def exec_replies(replies: list[Any], fail: Callable[[str], CacheUnavailableError]
                 ) -> list[Any]:
    """The replies of the commands a :func:`tracked` group wraps, from its replies
    (``OK``, ``QUEUED``..., then EXEC's array, whose last item is the PTTL's).

    Raises:
        CacheUnavailableError: ``fail(reason)``, when a command failed inside the
            transaction (an error reply there is the server's refusal, as anywhere).
    """
    executed = replies[-1]
    if not isinstance(executed, list):
        raise fail(f"EXEC answered {executed!r}")
    for reply in executed:
        if isinstance(reply, Exception):
            raise fail(f"{type(reply).__name__}: {reply}")
    return executed[:-1]


class Link:
    """One socket of a tracked connection, as the pushes read from it name it: a new one
    for every (re)connection. ``alive`` turns False when the socket is lost or closed;
    ``noloop``: the server took ``NOLOOP`` on it; ``connection``: its connection (weakly)."""

    __slots__ = ("alive", "connection", "noloop")

    def __init__(self, connection: redis.Connection, noloop: bool) -> None:
        self.alive = True
        self.connection = weakref.ref(connection)
        self.noloop = noloop


class Flight:
    """One own write of one key in flight (rule 2): use it as a context manager around the
    write, call :meth:`abort` before applying a failed write to L1, :meth:`landed` with
    what the write installed."""

    __slots__ = ("_own", "heard", "key", "link", "spared", "ticket", "void")

    def __init__(self, own: OwnWrites, key: str, ticket: Ticket) -> None:
        self._own = own
        self.key = key
        self.ticket = ticket
        self.link: Link | None = None  # A, once the writer read its replies
        self.heard: list[Link] = []  # links that sent a push for key before that
        self.spared = False  # a push spared the ticket
        self.void = False  # rule 3 struck: what lands is not owned

    def __enter__(self) -> Flight:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._own.end(self)

    def abort(self) -> None:
        """The write failed: the pushes it spared apply now (the key leaves L1 and every
        ticket holding it, this one included, is stamped)."""
        self._own.abort(self)

    def landed(self, installed: Mapping[str, Entry]) -> None:
        """The write succeeded and installed ``installed`` (what ``Ticket.write`` returns)."""
        self._own.landed(self, installed)


class NoFlight:
    """What an own write gets when the rules do not apply: it changes nothing."""

    def __enter__(self) -> NoFlight:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def abort(self) -> None:
        return None

    def landed(self, installed: Mapping[str, Entry]) -> None:
        return None


NO_FLIGHT = NoFlight()


class OwnWrites:
    """The flights and owned entries of one cache in one process (see the module docs).

    Args:
        l1: the L1 the pushes act on (held weakly, as the poller holds it), or what
            stands for it (:class:`~dragonfly_cache._listener.InvalidationTarget`).
    """

    def __init__(self, l1: InvalidationTarget) -> None:
        self._target = weakref.ref(l1)
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}
        # key -> the owner, and the deadline object of the entry it owns (which names the
        # entry without keeping it, or its value, alive once L1 lets it go).
        self._owners: dict[str, tuple[Link, float]] = {}
        self._prune_at = _PRUNE_FIRST
        self._local = threading.local()  # the flight of the thread writing, if any
        self.kept = 0  # push keys that left an own write's entry, or its ticket, alone

    # -- the writer's side -----------------------------------------------------------------

    def flight(self, key: str, ticket: Ticket) -> Flight | NoFlight:
        """A flight for one write of ``key`` under ``ticket`` (none while another write of
        the key is in flight in this process: that one races ours, and the ticket rule
        drops the key)."""
        with self._lock:
            if key in self._flights:
                return NO_FLIGHT
            flight = self._flights[key] = Flight(self, key, ticket)
        self._local.flight = flight
        return flight

    def preferred(self) -> redis.Connection | None:
        """For a thread with a write in flight: the connection that owns its key, if any.
        Written on that one, the write sends no push at all (NOLOOP), where on another it
        sends one to the owner (applied there, and the entry goes)."""
        flight: Flight | None = getattr(self._local, "flight", None)
        if flight is None:
            return None
        owned = self._owners.get(flight.key)
        return owned[0].connection() if owned is not None and owned[0].alive else None

    def writing(self) -> bool:
        """Whether this thread has a write in flight (it is about to read its replies)."""
        return getattr(self._local, "flight", None) is not None

    def replied(self, link: Link) -> None:
        """This thread read every reply of a round trip on ``link``: for a thread with a
        write in flight, the last such link before it lands is the one that wrote (A)."""
        flight: Flight | None = getattr(self._local, "flight", None)
        if flight is None:
            return
        with self._lock:
            flight.link = link
            heard = link in flight.heard
            flight.heard.clear()
        if heard:  # A itself reported a change: maybe one after ours
            self._invalidate([flight.key])

    def abort(self, flight: Flight) -> None:
        with self._lock:
            flight.void = True
            spared = flight.spared or bool(flight.heard)
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
        if spared:
            self._invalidate([flight.key])

    def landed(self, flight: Flight, installed: Mapping[str, Entry]) -> None:
        entry = installed.get(flight.key)
        link = flight.link
        with self._lock:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            if entry is None or link is None or flight.void or not (link.alive
                                                                   and link.noloop):
                return
            self._owners[flight.key] = (link, entry[1])
            crowded = len(self._owners) > self._prune_at
        if crowded:
            self._prune()

    def end(self, flight: Flight) -> None:
        with self._lock:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
        self._local.flight = None

    def _prune(self) -> None:
        """Forget owned entries L1 no longer holds; look again when twice as many are
        owned (the L1 lock is never taken under ours)."""
        l1 = self._target()
        if l1 is None:
            return
        with self._lock:
            owners = list(self._owners.items())
        gone = [(key, owned) for key, owned in owners if not l1.holds(key, owned[1])]
        with self._lock:
            for key, owned in gone:
                if self._owners.get(key) is owned:
                    del self._owners[key]
            self._prune_at = max(_PRUNE_FIRST, 2 * len(self._owners))

    def forget(self, keys: list[str]) -> None:
        """Rule 3: an own write of ``keys`` that does not read them back has run (or
        failed); their owned entries leave L1, and writes of them in flight will own
        nothing. (Such a write's own caller drops the keys from L1 and stamps the tickets
        out, as before: a delete does, the journal's replay does.)"""
        with self._lock:
            doomed = [key for key in keys if self._owners.pop(key, None) is not None]
            for key in keys:
                flight = self._flights.get(key)
                if flight is not None:
                    flight.void = True
        if doomed:
            self._invalidate(doomed)

    # -- the pushes' side ------------------------------------------------------------------

    def apply(self, link: Link, keys: list[str]) -> None:
        """Apply a push read on ``link`` that names ``keys``, under rules 1 and 2."""
        if not self._owners and not self._flights:  # the common case: no own write around
            self._invalidate(keys)
            return
        keep: dict[str, float] = {}
        spare: dict[str, Ticket] = {}
        with self._lock:
            for key in keys:
                flight = self._flights.get(key)
                if flight is not None and flight.link is not link:
                    if flight.link is None:
                        flight.heard.append(link)
                    flight.spared = True
                    spare[key] = flight.ticket
                owned = self._owners.get(key)
                if owned is not None:
                    owner = owned[0]
                    if owner is link or not owner.alive:
                        del self._owners[key]
                    else:
                        keep[key] = owned[1]
            self.kept += len(keep) + len(spare)
        l1 = self._target()
        if l1 is not None:
            l1.invalidate(keys, keep=keep, spare=spare)

    def _invalidate(self, keys: list[str]) -> None:
        l1 = self._target()
        if l1 is not None:
            l1.invalidate(keys)

    def lost(self, link: Link) -> None:
        """``link``'s socket is gone: what it owned is owned no more (L1 is flushed too)."""
        link.alive = False

    def owned(self) -> int:
        """How many entries are owned now (for tests and introspection)."""
        with self._lock:
            return len(self._owners)
