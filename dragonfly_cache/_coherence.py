"""Cross-process L1 coherence: invalidation messages over pub/sub, one listener per cache.

Every write (set, set_many, delete, invalidate, the store after a load) publishes a small
JSON message on the channel named by :func:`dragonfly_cache._l2.channel_name` (from the db
and ``key_prefix``), in the same pipeline as
the write itself, after it, so a receiver that refetches sees the new value. The message
carries the writer's sender id, so a cache ignores its own messages.

Design: one daemon listener thread per :class:`~dragonfly_cache.TieredCache`, on a
dedicated connection outside the pool. One per cache (not one shared per process) keeps
each cache's lifetime, credentials and fork handling self-contained; a process normally
has one cache, so the cost is one thread and one socket per process. The thread starts
when the cache is made, and again in a forked child (with a new sender id), so a process
is coherent from its first read and an idle worker reports itself subscribed.

Why pub/sub and not CLIENT TRACKING: Dragonfly supports tracking only in RESP3 without
BCAST, PREFIX or REDIRECT; pub/sub works on Redis 6+, Valkey and Dragonfly alike. In
cluster mode the same channel goes over sharded pub/sub (SPUBLISH/SSUBSCRIBE) where the
cluster has it (Redis 7+, Dragonfly, whose real cluster mode refuses global pub/sub): the
channel name maps to one slot, so every process meets on the node serving it. When that
slot moves, the server ends the subscription (``sunsubscribe``): the listener treats that
like a lost connection (flush L1, reconnect to the new owner).

Trust. L1 is trusted only while the listener is subscribed. If its connection fails or
stops answering the periodic PING, L1 is flushed at once (messages may be lost from then
on) and the listener reconnects with backoff. Entries stored while it is not subscribed
(before the first subscription, or while reconnecting) live at most ``l1.degraded_ttl``,
and are dropped the moment the subscription is confirmed (with any fill in flight then):
a message sent before it may have been missed, none sent after it can be.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis

from ._glob import compile_glob
from .types import CoherenceStats

__all__ = ["Coherence", "InvalidationTarget"]

logger = logging.getLogger(__name__)

PING_INTERVAL = 1.0  # idle seconds before the listener PINGs the server
PONG_TIMEOUT = 1.0  # a PING unanswered this long means the connection is dead
_POLL = 0.1  # how often the listener checks for stop/ping while idle
WATCH_INTERVAL = 1.0  # seconds between two runs of the listener's watch (see __init__)
_BACKOFF_FIRST, _BACKOFF_CAP = 0.05, 2.0

STOPPED, CONNECTING, SUBSCRIBED, DOWN = "stopped", "connecting", "subscribed", "down"


class InvalidationTarget(Protocol):
    """What the listener acts on: the cache's L1."""

    def invalidate(self, keys: Iterable[str]) -> None: ...

    def invalidate_matching(self, matches: Callable[[str], bool]) -> int: ...

    def clear(self) -> None: ...

    def drop_untrusted(self) -> None: ...


class _ListenerDead(Exception):
    """The listener's connection stopped answering PINGs."""


class Coherence:
    """Publisher side (message building) and listener thread of one cache.

    Args:
        target: the L1 the listener invalidates (held weakly: a cache that is garbage
            collected stops its listener).
        connect: makes a new, dedicated, non-retrying client for the subscription, and
            says whether to subscribe with SSUBSCRIBE (sharded pub/sub, in a cluster that
            has it) rather than SUBSCRIBE.
        channel: the channel name.
        watch: run by the listener once on subscribing and then every
            ``WATCH_INTERVAL`` while subscribed; when it returns True (something changed
            behind the channel's back, e.g. a FLUSHDB by another client), L1 is flushed.
        on_subscribed: called each time a subscription is confirmed (the server answers
            again: the journal of failed invalidations replays at once).
    """

    def __init__(self, target: InvalidationTarget,
                 connect: Callable[[], tuple[redis.Redis, bool]], channel: str,
                 watch: Callable[[], bool] | None = None,
                 on_subscribed: Callable[[], None] | None = None) -> None:
        self._target = weakref.ref(target)
        self._connect = connect
        self.channel = channel
        self._watch = watch
        self._on_subscribed = on_subscribed
        self._lock = threading.Lock()
        self._start_process_state()

    def _start_process_state(self) -> None:
        self.sender = uuid.uuid4().hex
        self._own_prefix = self.keys_message([]).split(",", 1)[0].encode()  # {"s":"<id>"
        self.state = STOPPED
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pubsub: Any = None
        self._client: redis.Redis | None = None
        self.received = 0  # messages from other senders
        self.applied = 0  # of those, the ones that reached L1
        self.flushes = 0  # whole-L1 flushes: lost connections, malformed messages, stop()
        self.reconnects = 0
        self.sharded = False  # whether the last subscription was sharded (SSUBSCRIBE)

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

    @property
    def subscribed(self) -> bool:
        """Whether L1 can be trusted now."""
        return self.state == SUBSCRIBED

    # -- listener --------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the listener thread in this process if it is not running."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self.state = CONNECTING
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"dragonfly_cache-listener-{self.sender[:8]}")
                self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener (idempotent) and flush L1, which nothing keeps coherent now.

        Entries stored from now on live at most ``l1.degraded_ttl``; the flush also makes
        reads that are in flight lose their fills.
        """
        was_subscribed = self.state == SUBSCRIBED
        self._stop.set()
        # Wake the listener from its wait instead of letting it finish a poll interval.
        # redis-py has no public handle on the socket; without one, the poll ends it.
        sock = getattr(getattr(self._pubsub, "connection", None), "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.state = STOPPED
        if was_subscribed:
            self._flush()

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
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_CAP)
            finally:
                self._close()
        self.state = STOPPED

    def _listen(self) -> None:
        self._client, sharded = self._connect()
        # redis-py leaves Redis.pubsub unannotated.
        pubsub = self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        self._subscribe(pubsub, sharded)
        if self._watch is not None:
            self._watch()  # takes note of the server's state before L1 is trusted
        # Entries stored before this moment (and fills in flight now) may have missed
        # messages: none of them stays past it. From here on every message is heard.
        target = self._target()
        if target is not None:
            target.drop_untrusted()
        self.state = SUBSCRIBED
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
                if self._watch():
                    logger.info("the server was flushed by another client; L1 flushed")
                    self._flush()
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
            sender = message["s"]
        except (ValueError, KeyError, TypeError):
            # Something meant to invalidate, but what? Dropping everything is the only
            # answer that cannot leave a stale entry behind.
            logger.warning("malformed invalidation message on %s; L1 flushed", self.channel)
            self._flush()
            return
        if sender == self.sender:
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
        self.state = DOWN
        self.reconnects += 1
        if was_subscribed:
            # Messages may be lost from here on: nothing in L1 can be vouched for.
            self._flush()
            logger.warning("invalidation listener on %s lost its connection (%s: %s); "
                           "L1 flushed, reconnecting", self.channel, type(exc).__name__, exc)

    def _flush(self) -> None:
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

    def stats(self) -> CoherenceStats:
        """Listener state and counters."""
        return {
            "state": self.state,
            "received": self.received,
            "applied": self.applied,
            "flushes": self.flushes,
            "reconnects": self.reconnects,
            "sharded": self.sharded,
        }
