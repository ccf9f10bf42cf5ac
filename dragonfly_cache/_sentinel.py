"""Redis Sentinel: which server is the primary of a service now, and following its failovers.

With ``DRAGONFLY_SENTINELS`` the cache does not know its server in advance: it asks the
sentinels (``SENTINEL GET-MASTER-ADDR-BY-NAME``, with ``SENTINEL MASTER`` for the
configuration epoch of each answer) and routes to the primary they name. A thread of the
cache then follows the service:

* it subscribes to ``+switch-master`` on one sentinel (the next one when that one goes
  away), so a failover, whether caused by a dead primary or by ``SENTINEL FAILOVER``, is
  followed the moment that sentinel announces it;
* it asks every sentinel again when it (re)subscribes (an event may have been missed),
  every ``POLL_INTERVAL`` seconds, and soon after the primary failed to answer or answered
  ``READONLY`` (``suspect``), with a backoff from ``SUSPECT_FIRST`` to ``SUSPECT_CAP``.

Which answer wins. Sentinels can disagree for a moment during a failover. Each answer
carries the sentinel's configuration epoch, which grows with every failover, so the
newest configuration wins (among equal epochs, the address most sentinels name). A
``+switch-master`` event is newer than every answer seen before it. An older answer is
taken only when the primary in use fails and every sentinel that answered names the same
other server (sentinels redeployed from scratch restart their epochs).

With every sentinel unreachable the last known primary stays in use (``health()`` says
so); before any primary is known, calls fail with :class:`CacheUnavailableError`, at most
one question to the sentinels per ``SUSPECT_CAP`` seconds on the callers' side.

What a switch does to the cache (re-applying recent writes, flushing L1, moving the
listener) is :mod:`dragonfly_cache._switchover`'s; where commands go is the router's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis

from ._connections import Connections
from ._nodes import Nodes, format_address
from ._sentinel_answers import Answer, choose, healthy_replicas
from ._singleflight import SingleFlight
from .config import DragonflyConfig
from .exceptions import CacheUnavailableError
from .types import SentinelHealth

__all__ = ["CHANNEL", "POLL_INTERVAL", "Answer", "Sentinel", "choose"]

logger = logging.getLogger(__name__)

CHANNEL = "+switch-master"  # "<service> <old ip> <old port> <new ip> <new port>"
POLL_INTERVAL = 5.0  # seconds between two questions to every sentinel while subscribed
SUSPECT_FIRST, SUSPECT_CAP = 0.1, 2.0  # re-asking while the primary keeps failing
_RECONNECT_FIRST, _RECONNECT_CAP = 0.05, 2.0  # the watcher, between sentinels
_TICK = 0.1  # the watcher's longest wait for a message before it looks at its flags
_PING_INTERVAL, _PONG_TIMEOUT = 1.0, 1.0  # a silent subscription is checked, as listeners do
_LOG_EVERY = 10.0


class Sentinel:
    """The sentinels of one cache: the primary they name, and a thread following it.

    Args:
        config: ``sentinels``, ``sentinel_master`` and their credentials; timeouts and TLS
            as for the servers.
        nodes: makes the connections (same connection class, TLS and transport).
        on_switch: ``on_switch(new, previous)``: route to ``new`` from now on (``previous``
            is None for the first primary found). Called by one thread at a time.
    """

    def __init__(self, config: DragonflyConfig, nodes: Nodes,
                 on_switch: Callable[[str, str | None], None]) -> None:
        self.service = config.sentinel_master or ""
        self.addresses = list(config.sentinels)
        self._nodes = nodes
        self._credentials = {"db": 0, "username": config.sentinel_username,
                             "password": config.sentinel_password}
        self._on_switch = on_switch
        self.primary: str | None = None
        # Replica reads: the replicas the winning answer reported healthy (asked only then).
        self.with_replicas = config.read_from_replicas
        self.replicas: tuple[str, ...] = ()
        self._epoch = -1.0  # the configuration epoch of the primary in use
        self._newest_seen = -1  # the highest epoch any answer carried
        self.answered = 0  # sentinels that answered the last question
        self.error: str | None = None  # why the last question found no primary
        self.switches = 0  # failovers followed
        self.subscribed: str | None = None  # the sentinel whose events are followed
        self._stopped = False
        self.start_process_state()

    def start_process_state(self) -> None:
        """What each process owns: locks, connections and the watcher thread (started
        here unless stopped). The primary and the epochs are plain data and are kept."""
        self._lock = threading.Lock()
        self._switching = threading.Lock()  # one switch at a time, in order
        self._questions: SingleFlight[None] = SingleFlight()
        self._connections: dict[str, Connections] = {}
        self._asked_at = -float("inf")
        self._suspect = threading.Event()
        self._suspect_delay, self._suspect_at = SUSPECT_FIRST, 0.0
        self._last_warning = -_LOG_EVERY
        self.subscribed = None
        if not self._stopped:
            threading.Thread(target=_watch, args=(weakref.ref(self),), daemon=True,
                             name=f"dragonfly_cache-sentinel-{self.service}").start()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopped

    def stop(self) -> None:
        """Stop following (the watcher ends within ``_TICK``) and close the connections.
        The last primary stays in use, and is asked for again only if none is known."""
        self._stopped = True
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            connection.close()

    # -- the primary ----------------------------------------------------------------------

    def current(self) -> str:
        """The primary in use; asked for now if none is known yet (at most once per
        ``SUSPECT_CAP`` seconds when the sentinels do not answer).

        Raises:
            CacheUnavailableError: no sentinel named a primary.
        """
        primary = self.primary
        if primary is None:
            if time.monotonic() - self._asked_at >= SUSPECT_CAP:
                self.refresh()
            primary = self.primary
            if primary is None:
                raise CacheUnavailableError(
                    f"no primary of Sentinel service {self.service!r} known: {self.error}")
        return primary

    def suspect(self) -> None:
        """The primary did not answer (or said it is a replica): ask the sentinels soon."""
        self._suspect.set()

    def refresh(self, suspected: bool = False) -> None:
        """Ask every sentinel now and follow the newest answer (one question at a time:
        threads that need it wait for the one under way)."""
        flight, leader = self._questions.claim("ask")
        if not leader:
            self._questions.wait(flight)
            return
        try:
            answers, problems = self._ask_all()
            self._asked_at = time.monotonic()
            self._record(answers, problems)
            best = choose(answers)
            if best is not None and best.primary is not None:
                unanimous = all(answer.primary == best.primary for answer in answers)
                self._adopt(best.primary, best.epoch, force=suspected and unanimous)
                if self.primary == best.primary:  # not the replicas of an older primary
                    self.replicas = best.replicas
        finally:
            self._questions.finish("ask", flight)

    def switch_message(self, data: bytes | str) -> None:
        """A ``+switch-master`` event: follow it if it is about our service."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        parts = text.split()
        if len(parts) != 5 or parts[0] != self.service or not parts[4].isdigit():
            return
        # Newer than every answer seen so far, older than the next failover's epoch.
        self._adopt(format_address(parts[3], int(parts[4])), self._newest_seen + 0.5)

    def ask_if_due(self, now: float) -> None:
        """The watcher's schedule: ask again every ``POLL_INTERVAL``, and after a
        :meth:`suspect` with a backoff while the answer stays the same (a switch, or a
        quiet spell, starts it afresh)."""
        if self._suspect.is_set() and now >= self._suspect_at:
            self._suspect.clear()
            primary = self.primary
            self.refresh(suspected=True)
            self._suspect_delay = (SUSPECT_FIRST if self.primary != primary
                                   else min(self._suspect_delay * 2, SUSPECT_CAP))
            self._suspect_at = now + self._suspect_delay
        elif now - self._suspect_at > SUSPECT_CAP:
            self._suspect_delay = SUSPECT_FIRST
        if now - self._asked_at >= POLL_INTERVAL:
            self.refresh()

    def unsubscribed(self, address: str, error: BaseException) -> None:
        """The watcher could not subscribe on ``address``, or lost that subscription: ask
        the sentinels if due (nothing else would tell us of a failover now)."""
        if self.subscribed == address:
            self.subscribed = None
            logger.info("Sentinel %s: lost the %s subscription (%s: %s)", address, CHANNEL,
                        type(error).__name__, error)
        else:
            self._warn(f"Sentinel service {self.service!r}: cannot subscribe to {CHANNEL} "
                       f"on {address} ({type(error).__name__}: {error}); trying the next "
                       "sentinel")
        self.ask_if_due(time.monotonic())

    def _adopt(self, address: str, epoch: float, force: bool = False) -> None:
        with self._switching:
            with self._lock:
                previous = self.primary
                if address == previous:
                    self._epoch = max(self._epoch, epoch)
                    return
                if previous is not None and epoch <= self._epoch and not force:
                    return  # news older than what we follow
                self.primary, self._epoch = address, epoch
                if previous is not None:
                    self.switches += 1
                    self.replicas = ()  # the old primary's: known again at the next ask
            if previous is not None:
                logger.warning("Sentinel service %r: the primary is now %s (was %s)",
                               self.service, address, previous)
            try:
                self._on_switch(address, previous)
            except Exception:  # the switch is made; what follows it must not end a thread
                logger.exception("Sentinel service %r: following the switch to %s failed",
                                 self.service, address)

    # -- asking -----------------------------------------------------------------------------

    def _ask_all(self) -> tuple[list[Answer], list[str]]:
        answers: list[Answer] = []
        problems: list[str] = []
        for address in self.addresses:
            try:
                answers.append(self._ask(address))
            except (redis.RedisError, OSError, ValueError) as exc:
                problems.append(f"{address}: {type(exc).__name__}: {exc}")
        return answers, problems

    def _ask(self, address: str) -> Answer:
        connections = self._connections.get(address)
        if connections is None:
            with self._lock:
                connections = self._connections.setdefault(
                    address, self._nodes.connections(address, **self._credentials))
        located, master, *replicas = connections.exchange((
            ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service),
            ("SENTINEL", "MASTER", self.service),
            *((("SENTINEL", "REPLICAS", self.service),) if self.with_replicas else ())))
        if isinstance(located, redis.ResponseError):
            raise located  # e.g. NOAUTH: the sentinel answered, but not to us
        if not located:
            return Answer(address, None, -1)
        fields = {} if isinstance(master, redis.ResponseError) else dict(
            zip(master[::2], master[1::2], strict=True))
        epoch = int(fields.get(b"config-epoch", 0))
        return Answer(address, format_address(_text(located[0]), int(located[1])), epoch,
                      healthy_replicas(replicas[0]) if replicas else ())

    def _record(self, answers: list[Answer], problems: list[str]) -> None:
        with self._lock:
            self.answered = len(answers)
            self._newest_seen = max([self._newest_seen, *(a.epoch for a in answers)])
            if any(answer.primary is not None for answer in answers):
                self.error = None
                return
            if answers:
                self.error = (f"{len(answers)} sentinel(s) answered but none monitors "
                              f"service {self.service!r}")
            else:
                self.error = f"no sentinel answered ({'; '.join(problems)})"
            error = self.error
        self._warn(f"Sentinel service {self.service!r}: {error}" + (
            f"; still using the last known primary {self.primary}" if self.primary else ""))

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            logger.warning("%s", message)

    def report(self) -> SentinelHealth:
        """``health()["dragonfly"]["sentinel"]``, from a question asked now."""
        self.refresh()
        with self._lock:
            report: SentinelHealth = {
                "service": self.service, "primary": self.primary,
                "sentinels": len(self.addresses), "answered": self.answered,
                "switches": self.switches}
            if self.subscribed is not None:
                report["subscribed"] = self.subscribed
            if self.error is not None:
                report["error"] = self.error + (
                    f"; using the last known primary {self.primary}" if self.primary else "")
        return report

    def subscribe(self, address: str) -> Any:
        """A confirmed ``+switch-master`` subscription on the sentinel at ``address``.

        Raises:
            redis.RedisError, OSError: it could not be made.
        """
        client = self._nodes.client(address, **self._credentials)
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        try:
            pubsub.subscribe(CHANNEL)
            deadline = time.monotonic() + _PONG_TIMEOUT
            while True:
                message = pubsub.get_message(timeout=_TICK)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
                if time.monotonic() > deadline:
                    raise redis.TimeoutError(f"no subscribe confirmation from {address}")
        except BaseException:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()
            raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _watch(reference: weakref.ref[Sentinel]) -> None:
    """The watcher thread: subscribe on one sentinel after another, follow their events,
    ask again when due. Holds its sentinel weakly: a dropped cache ends it."""
    index, backoff = 0, _RECONNECT_FIRST
    while True:
        sentinel = reference()
        if sentinel is None or sentinel.stopped:
            return
        address = sentinel.addresses[index % len(sentinel.addresses)]
        try:
            pubsub = sentinel.subscribe(address)
        except (redis.RedisError, OSError) as exc:
            sentinel.unsubscribed(address, exc)
            pubsub = None
        except Exception:  # a bug: say so, and keep following
            logger.exception("Sentinel %s: subscribing failed", address)
            pubsub = None
        del sentinel
        if pubsub is not None:
            try:
                _follow(reference, pubsub, address)
                backoff = _RECONNECT_FIRST
            except Exception as exc:  # the subscription broke (or a bug): the next sentinel
                sentinel = reference()
                if sentinel is not None:
                    sentinel.unsubscribed(address, exc)
                del sentinel
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()
        index += 1
        time.sleep(backoff)
        backoff = min(backoff * 2, _RECONNECT_CAP)


def _follow(reference: weakref.ref[Sentinel], pubsub: Any, address: str) -> None:
    """Follow one subscription until it fails (raises) or the sentinel is gone."""
    sentinel = reference()
    if sentinel is None:
        return
    sentinel.subscribed = address
    sentinel.refresh()  # a failover may have happened while nobody was subscribed
    del sentinel
    last_heard = time.monotonic()
    ping_sent: float | None = None
    while True:
        message = pubsub.get_message(timeout=_TICK)
        sentinel = reference()
        if sentinel is None or sentinel.stopped:
            return
        now = time.monotonic()
        if message is not None:
            last_heard, ping_sent = now, None
            if message["type"] == "message":
                sentinel.switch_message(message["data"])
        elif ping_sent is not None:
            if now - ping_sent > _PONG_TIMEOUT:
                raise TimeoutError(f"no answer to PING within {_PONG_TIMEOUT:g}s")
        elif now - last_heard > _PING_INTERVAL:
            pubsub.ping()
            ping_sent = now
        sentinel.ask_if_due(now)
        del sentinel
