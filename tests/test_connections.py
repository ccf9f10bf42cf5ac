"""The connections of one server: what close() leaves behind."""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dragonfly_cache._connections import Connections
from tests.helpers import wait_until


def connections_to(server: Any) -> Connections:
    return Connections(redis.Connection, {"host": server.host, "port": server.port,
                                          "password": server.password, "protocol": 2},
                       Retry(NoBackoff(), 0))


def test_a_connection_in_use_during_close_is_closed_when_released(redis_server: Any) -> None:
    """close() can run while another thread is mid-call (a background refresh, or the
    listener asking for the slot map): that call's connection must not be kept
    afterwards, where nothing would ever close it."""
    connections = connections_to(redis_server)
    replies: list[Any] = []
    call = threading.Thread(
        target=lambda: replies.append(connections.roundtrip([("BLPOP", "go", 10)])))
    call.start()
    admin = redis_server.client()
    wait_until(lambda: admin.info("clients")["blocked_clients"] == 1)  # in flight
    connections.close()
    admin.lpush("go", "1")
    call.join(10)
    assert replies == [[[b"go", b"1"]]]
    assert not [c for c in connections._idle if c.is_connected]
    # Still usable once closed, without keeping what it opens.
    assert connections.roundtrip([("PING",)]) == [b"PONG"]
    assert not [c for c in connections._idle if c.is_connected]
