"""Pub/sub mode of cross-process L1 coherence: invalidation messages, listened to per server
(``l1.invalidation=pubsub``, or what ``auto`` runs where the server has no tracking: see
:mod:`dragonfly_cache._invalidation`; tracking mode is :mod:`dragonfly_cache._tracking`).

Every write (set, set_many, delete, invalidate, the store after a load) publishes a small
JSON message on an invalidation channel (:mod:`dragonfly_cache._channels`), after the
write itself, so a receiver that refetches sees the new value. The message carries the
writer's sender id, so a cache ignores its own messages.

Design: per cache and process, one :class:`~dragonfly_cache._listener.Listener` thread per
server that has a channel: the server, or every primary of a cluster. One set per cache
(not one shared per process) keeps each cache's lifetime, credentials and fork handling
self-contained; a process normally has one cache. They start when the cache is made, and
again in a forked child (with a new sender id), so a process is coherent from its first
read and an idle worker reports itself subscribed. The set follows the servers: a
listener that loses its connection asks for the current primaries (a failover, a slot
move) and the set is brought in line.

Pub/sub works on Redis 6+, Valkey and Dragonfly alike, and with any server that has no
tracking (the fake servers of ``dragonfly_cache.testing``); it hears only the writes of
caches in pub/sub mode. In cluster mode the channels go over sharded pub/sub
(SPUBLISH/SSUBSCRIBE) where the cluster has it (Redis 7+, Dragonfly, whose real cluster
mode refuses global pub/sub).

Trust. L1 entries live their full life only while every listener is subscribed; entries
stored otherwise (starting up, reconnecting, a primary down) live at most
``l1.degraded_ttl``. A listener that loses its subscription flushes L1 at once; one that
confirms a subscription drops what L1 stored before (see the listener module).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable

import redis

from ._listener import (
    CONNECTING,
    DOWN,
    STOPPED,
    SUBSCRIBED,
    Connect,
    InvalidationTarget,
    Listener,
)
from .exceptions import CacheUnavailableError
from .types import CoherenceStats

__all__ = ["Coherence", "InvalidationTarget", "weakly"]

logger = logging.getLogger(__name__)

FOLLOW_INTERVAL = 5.0  # seconds between two checks of a cluster's primaries and channels


def weakly(method: Callable[[], None]) -> Callable[[], None]:
    """``method``, called only while its object lives: a listener thread holding the
    callback must not keep a dropped cache (and its L1) alive."""
    reference = weakref.WeakMethod(method)

    def call() -> None:
        bound = reference()
        if bound is not None:
            bound()

    return call


class Coherence:
    """Message building and the listeners of one cache in one process.

    Args:
        target: the L1 the listeners invalidate (held weakly by them).
        servers: the servers to listen on now, each with its channel (may ask the server:
            called in the listeners' threads, never in the caller's).
        connect: ``connect(address)``: see :class:`~dragonfly_cache._listener.Listener`.
        watch: ``watch(address)``, see :class:`~dragonfly_cache._listener.Listener`.
        on_subscribed: called each time a subscription is confirmed (the server answers
            again: the journal of failed invalidations replays at once).
        refresh: in a cluster, asks for a fresh slot map; then the listeners check the
            servers and channels every ``FOLLOW_INTERVAL``.
    """

    def __init__(self, target: InvalidationTarget, servers: Callable[[], dict[str, str]],
                 connect: Connect, watch: Callable[[str], bool] | None = None,
                 on_subscribed: Callable[[], None] | None = None,
                 refresh: Callable[[], None] | None = None) -> None:
        self._target = weakref.ref(target)  # the listeners hold this object: never L1 itself
        self._servers = servers
        self._connect = connect
        self._watch = watch
        self._on_subscribed = on_subscribed
        self._refresh = refresh
        self._lock = threading.Lock()
        self.sender = uuid.uuid4().hex
        self._own_prefix = self.keys_message([]).split(",", 1)[0].encode()  # {"s":"<id>"
        self._listeners: dict[str, Listener] = {}
        self._started = False
        self._stopped = False
        self._following = self._follow_again = False
        self._followed_at = time.monotonic()
        self._retired = {"received": 0, "applied": 0, "flushes": 0, "reconnects": 0}

    # -- publisher side -------------------------------------------------------------------

    def keys_message(self, keys: list[str]) -> str:
        """The message that invalidates ``keys`` elsewhere."""
        return json.dumps({"s": self.sender, "k": keys}, separators=(",", ":"))

    def pattern_message(self, pattern: str) -> str:
        """The message that invalidates the keys matching ``pattern`` elsewhere."""
        return json.dumps({"s": self.sender, "p": pattern}, separators=(",", ":"))

    def clear_message(self) -> str:
        """The message that empties every other cache's L1 (``clear()``)."""
        return json.dumps({"s": self.sender}, separators=(",", ":"))

    # -- the listeners ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``subscribed`` when every listener is; ``down`` if one lost its server;
        ``connecting`` before that; ``stopped`` after :meth:`stop`."""
        if self._stopped:
            return STOPPED
        states = {listener.state for listener in list(self._listeners.values())}
        if not states:
            return CONNECTING if self._started else STOPPED
        if DOWN in states:
            return DOWN
        return SUBSCRIBED if states == {SUBSCRIBED} else CONNECTING

    @property
    def subscribed(self) -> bool:
        """Whether L1 can be trusted now."""
        return self.state == SUBSCRIBED

    def ensure_started(self) -> None:
        """Start listening in this process (idempotent; the set of servers is found in a
        thread of its own, so this never waits for the network)."""
        if self._started:
            return
        with self._lock:
            if self._started or self._stopped:
                return
            self._started = True
        threading.Thread(target=self.follow, daemon=True,
                         name=f"dragonfly_cache-coherence-{self.sender[:8]}").start()

    def follow(self) -> None:
        """Bring the listeners in line with the servers and their channels now: start the
        missing ones (a new primary, a primary whose channel changed), stop those no
        longer wanted. One at a time: a call made while another runs has that one run
        again, with the newest answer."""
        with self._lock:
            self._follow_again = True
            if self._following:
                return
            self._following = True
        try:
            while True:
                with self._lock:
                    if not self._follow_again:
                        self._following = False
                        return
                    self._follow_again = False
                self._follow_once()
        except BaseException:
            with self._lock:
                self._following = False
            raise

    def _follow_once(self) -> None:
        try:
            wanted: dict[str, str] | None = self._servers()
        except CacheUnavailableError as exc:
            logger.debug("invalidation listeners: the servers are not known yet (%s)", exc)
            wanted = None
        target = self._target()
        with self._lock:
            if self._stopped or target is None:
                return
            if wanted is None:  # keep what runs, or try through a first one
                wanted = {address: listener.channel
                          for address, listener in self._listeners.items()} or {"": ""}
            gone = [self._listeners.pop(address) for address, listener
                    in list(self._listeners.items())
                    if address not in wanted
                    or (listener.channel and wanted[address]
                        and listener.channel != wanted[address])]
            for address in wanted:
                if address not in self._listeners:
                    self._listeners[address] = Listener(
                        address, target, self._reconnect, self._own_prefix,
                        watch=self._watched, on_subscribed=self._on_subscribed,
                        on_lost=self.follow)
        for listener in gone:
            if listener.stop():
                listener.flush()  # it was trusted: what it vouched for, nobody does now
            self._retire(listener)

    def _watched(self, address: str) -> bool:
        """A listener's periodic watch: its server's flush counters, and (by one listener
        every ``FOLLOW_INTERVAL``) whether the servers or their channels changed: a new
        primary, or a channel that moved without ending any subscription."""
        now = time.monotonic()
        if self._refresh is not None and now - self._followed_at >= FOLLOW_INTERVAL:
            self._followed_at = now
            self._refresh()
            self.follow()
        return self._watch(address) if self._watch is not None else False

    def _reconnect(self, address: str) -> tuple[redis.Redis, bool, str]:
        if not address:  # the placeholder of a first start: the servers were unknown
            raise CacheUnavailableError("the servers to listen on are not known yet")
        return self._connect(address)

    def _retire(self, listener: Listener) -> None:
        with self._lock:
            for name in self._retired:
                self._retired[name] += getattr(listener, name)

    def stop(self) -> None:
        """Stop every listener (idempotent) and flush L1, which nothing keeps coherent
        now: entries stored from now on live at most ``l1.degraded_ttl``, and reads in
        flight lose their fills."""
        with self._lock:
            self._stopped = True
            listeners = list(self._listeners.values())
        trusted = [listener.stop() for listener in listeners]
        if any(trusted):
            listeners[0].flush()

    def stats(self) -> CoherenceStats:
        """The listeners' state and counters, summed."""
        listeners = list(self._listeners.values())
        totals = dict(self._retired)
        for listener in listeners:
            for name in totals:
                totals[name] += getattr(listener, name)
        return {
            "state": self.state,
            "received": totals["received"],
            "applied": totals["applied"],
            "flushes": totals["flushes"],
            "reconnects": totals["reconnects"],
            "sharded": any(listener.sharded for listener in listeners),
        }
