"""One invalidation listener: a thread on a dedicated connection to one server, subscribed
to that server's invalidation channel (see :mod:`dragonfly_cache._coherence`).

Trust. While subscribed, every message reaches L1. When the connection fails or stops
answering the periodic PING, L1 is flushed at once (messages may be lost from then on) and
the listener reconnects with backoff. When a subscription is confirmed, what L1 stored
before (and any fill in flight then) is dropped: a message sent before it may have been
missed, none sent after it can be. A message that cannot be parsed flushes L1 too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import redis

from ._glob import compile_glob

if TYPE_CHECKING:
    from ._l1 import Ticket

__all__ = ["CONNECTING", "DOWN", "STATE_CHANGES", "STOPPED", "SUBSCRIBED", "InvalidationTarget",
           "Listener", "state_changed"]

logger = logging.getLogger(__name__)

PING_INTERVAL = 1.0  # idle seconds before the listener PINGs the server
PONG_TIMEOUT = 1.0  # a PING unanswered this long means the connection is dead
_POLL = 0.1  # how often the listener checks for stop/ping while idle
WATCH_INTERVAL = 1.0  # seconds between two runs of the listener's watch
_BACKOFF_FIRST, _BACKOFF_CAP = 0.05, 2.0

STOPPED, CONNECTING, SUBSCRIBED, DOWN = "stopped", "connecting", "subscribed", "down"

Connect = Callable[[str], tuple[redis.Redis, bool, str]]

#: Called (in the listener's thread) whenever a listener subscribes or loses its server (and
#: when tracking starts or its poller fails, and when ``auto`` has chosen a mode):
#: the metrics module refreshes this process's gauges then, so an idle worker's
#: ``coherence_subscribed`` does not keep the value of its last request.
STATE_CHANGES: list[Callable[[], None]] = []


def state_changed() -> None:
    """Tell the observers a coherence state changed (a listener's, or tracking's)."""
    for observer in list(STATE_CHANGES):
        try:
            observer()
        except Exception:  # a metrics problem must never stop a listener
            logger.exception("coherence state observer failed")


class InvalidationTarget(Protocol):
    """What a listener acts on: the cache's L1 (``keep``, ``spare`` and :meth:`holds` serve
    own writes in tracking mode: :mod:`dragonfly_cache._ownwrites`)."""

    def invalidate(self, keys: Iterable[str], *, keep: Mapping[str, float] | None = None,
                   spare: Mapping[str, Ticket] | None = None) -> None: ...

    def holds(self, key: str, deadline: float | None) -> bool: ...

    def invalidate_matching(self, matches: Callable[[str], bool]) -> int: ...

    def clear(self) -> None: ...

    def drop_untrusted(self) -> None: ...


class _ListenerDead(Exception):
    """The listener's connection stopped answering PINGs."""


class Listener:
    """The listener thread of one cache on one server.

    Args:
        address: the server (a cluster primary) to subscribe on.
        target: the L1 to invalidate (held weakly: a collected cache stops its listener).
        connect: ``connect(address)`` -> a new, dedicated, non-retrying client, whether to
            subscribe with SSUBSCRIBE (sharded pub/sub) rather than SUBSCRIBE, and the
            channel; raises :class:`CacheUnavailableError` if ``address`` has none now.
        own_prefix: how this cache's own messages begin (they are skipped).
        watch: ``watch(address)``, run on subscribing and then every ``WATCH_INTERVAL``
            while subscribed; when it returns True (e.g. a FLUSHDB of that server by
            another client), L1 is flushed.
        on_subscribed: called each time a subscription is confirmed.
        on_lost: called after the connection was lost or could not be made (the set of
            servers may have changed: a failover, a slot move).
    """

    def __init__(self, address: str, target: InvalidationTarget, connect: Connect,
                 own_prefix: bytes, watch: Callable[[str], bool] | None = None,
                 on_subscribed: Callable[[], None] | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.address = address
        self._target = weakref.ref(target)
        self._connect = connect
        self._own_prefix = own_prefix
        self._watch = watch
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self.channel = ""
        self.state = CONNECTING
        self._stop = threading.Event()
        self._pubsub: Any = None
        self._client: redis.Redis | None = None
        self.received = 0  # messages from other senders
        self.applied = 0  # of those, the ones that reached L1
        self.flushes = 0  # whole-L1 flushes: lost connections, malformed messages, stop()
        self.reconnects = 0
        self.sharded = False  # whether the last subscription was sharded (SSUBSCRIBE)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"dragonfly_cache-listener-{address}")
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the thread (idempotent); whether it was subscribed."""
        was_subscribed = self.state == SUBSCRIBED
        self._stop.set()
        # Wake the thread from its wait instead of letting it finish a poll interval.
        # redis-py has no public handle on the socket; without one, the poll ends it.
        sock = getattr(getattr(self._pubsub, "connection", None), "_sock", None)
        if sock is not None:
            # Only a wake-up: the poll ends the thread anyway. fakeredis's socket raises
            # ValueError ("generator already executing") while the thread reads from it.
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.state = STOPPED
        return was_subscribed

    def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stop.is_set() and self._target() is not None:
            try:
                self._listen()
                backoff = _BACKOFF_FIRST
            except Exception as exc:  # whatever broke, L1 must stop being trusted
                if self._stop.is_set():
                    break
                self._lost(exc)
                if self._on_lost is not None:
                    try:
                        self._on_lost()
                    except Exception:  # the set could not be brought in line: keep trying
                        logger.exception("invalidation listener for %s: following the "
                                         "servers failed", self.address)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_CAP)
            finally:
                self._close()
        self.state = STOPPED

    def _listen(self) -> None:
        self._client, sharded, self.channel = self._connect(self.address)
        # redis-py leaves Redis.pubsub unannotated.
        pubsub = self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        self._subscribe(pubsub, sharded)
        if self._watch is not None:
            self._watch(self.address)  # notes the server's state (L1 is dropped below)
        # Entries stored before this moment (and fills in flight now) may have missed
        # messages: none of them stays past it. From here on every message is heard.
        target = self._target()
        if target is not None:
            target.drop_untrusted()
        del target  # this loop must not keep a dropped cache's L1 alive
        self.state = SUBSCRIBED
        state_changed()
        if self._on_subscribed is not None:
            self._on_subscribed()
        last_heard = watched = time.monotonic()
        ping_sent: float | None = None
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=_POLL)
            now = time.monotonic()
            if message is not None:
                last_heard, ping_sent = now, None
                self._on_message(message)
            elif ping_sent is not None:
                if now - ping_sent > PONG_TIMEOUT:
                    raise _ListenerDead(f"no answer to PING within {PONG_TIMEOUT:g}s")
            elif now - last_heard > PING_INTERVAL:
                pubsub.ping()
                ping_sent = now
            if self._watch is not None and now - watched >= WATCH_INTERVAL:
                watched = now
                if self._watch(self.address):
                    logger.info("the server was flushed by another client; L1 flushed")
                    self.flush()
            if self._target() is None:
                return

    def _subscribe(self, pubsub: Any, sharded: bool) -> None:
        """Subscribe and wait for the server's confirmation."""
        if sharded:
            pubsub.ssubscribe(self.channel)
        else:
            pubsub.subscribe(self.channel)
        self.sharded = sharded
        deadline = time.monotonic() + PONG_TIMEOUT
        while True:
            message = pubsub.get_message(timeout=_POLL)
            if message is not None and message["type"] in ("subscribe", "ssubscribe"):
                return
            if time.monotonic() > deadline or self._stop.is_set():
                raise _ListenerDead("no subscribe confirmation")

    def _on_message(self, message: dict[str, Any]) -> None:
        if message["type"] in ("message", "smessage"):
            self._apply(message["data"])
        elif message["type"] in ("unsubscribe", "sunsubscribe"):
            # A cluster unsubscribes shard channels whose slot moved elsewhere.
            raise _ListenerDead(f"the server ended the subscription ({message['type']})")

    def _apply(self, data: bytes) -> None:
        if data.startswith(self._own_prefix):
            return  # our own write, already applied locally: skip the JSON decoding
        target = self._target()
        if target is None:
            return
        try:
            message = json.loads(data)
            if not isinstance(message, dict) or "s" not in message:
                raise ValueError("every message is an object naming its sender")
        except ValueError:
            # Something meant to invalidate, but what? Dropping everything is the only
            # answer that cannot leave a stale entry behind.
            logger.warning("malformed invalidation message on %s; L1 flushed", self.channel)
            self.flush()
            return
        self.received += 1
        if "k" in message:
            target.invalidate([str(key) for key in message["k"]])
        elif "p" in message:
            target.invalidate_matching(compile_glob(str(message["p"])))
        else:
            target.clear()
        self.applied += 1

    def _lost(self, exc: BaseException) -> None:
        was_subscribed = self.state == SUBSCRIBED
        self.state = DOWN  # first: from now on new L1 entries are short-lived
        self.reconnects += 1
        if was_subscribed:
            # Messages may be lost from here on: nothing in L1 can be vouched for.
            self.flush()
            state_changed()
            logger.warning("invalidation listener on %s lost its connection (%s: %s); "
                           "L1 flushed, reconnecting", self.channel, type(exc).__name__, exc)
        elif self.reconnects == 1 and self.address:
            # Never subscribed yet: say why once (an ACL without the channel, say); the
            # state stays "down" and it keeps trying.
            logger.warning("invalidation listener for %s cannot subscribe yet (%s: %s); "
                           "L1 entries live l1.degraded_ttl meanwhile, retrying",
                           self.address, type(exc).__name__, exc)

    def flush(self) -> None:
        """Empty L1 (counted)."""
        target = self._target()
        if target is not None:
            target.clear()
            self.flushes += 1

    def _close(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        for closeable in (pubsub, client):
            if closeable is not None:
                # A broken connection has nothing left to release.
                with contextlib.suppress(redis.RedisError, OSError):
                    closeable.close()
