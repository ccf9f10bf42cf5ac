"""Tests of the fault-injection proxy the resilience tests rely on (tests/helpers/proxy.py).

Clients run without retries and with short timeouts, so every fault shows as an error at once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers.proxy import FaultProxy, proxy_for
from tests.helpers.servers import RedisServer, ServerFactory

TIMEOUT = 0.3  # client socket timeout through the proxy
QUIET = 0.1  # how long "nothing arrives" is watched for

Connect = Callable[..., redis.Redis]


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with proxy_for(redis_server) as proxy:
        yield proxy


@pytest.fixture
def connect(proxy: FaultProxy) -> Iterator[Connect]:
    """``connect(**overrides)``: a no-retry RESP2 client through the proxy, closed at teardown."""
    clients: list[redis.Redis] = []

    def connect(**overrides: Any) -> redis.Redis:
        options: dict[str, Any] = {
            "host": proxy.host,
            "port": proxy.port,
            "socket_timeout": TIMEOUT,
            "socket_connect_timeout": TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
            "protocol": 2,
        }
        client = redis.Redis(**{**options, **overrides})
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def raw(proxy: FaultProxy) -> Iterator[Callable[[], socket.socket]]:
    """``raw()``: a plain socket connected to the proxy, closed at teardown."""
    sockets: list[socket.socket] = []

    def raw() -> socket.socket:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=1.0)
        sockets.append(sock)
        return sock

    yield raw
    for sock in sockets:
        sock.close()


def resp(*parts: str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part.encode()))
    return b"".join(out)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return data


def assert_silent(sock: socket.socket) -> None:
    sock.settimeout(QUIET)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(1.0)


def timed(call: Callable[[], object]) -> float:
    start = time.monotonic()
    call()
    return time.monotonic() - start


# -- basics ----------------------------------------------------------------------------------


def test_binds_loopback_only_on_its_own_port(proxy: FaultProxy, redis_server: RedisServer) -> None:
    assert proxy.host == "127.0.0.1"
    assert proxy.port not in (0, redis_server.port)
    assert proxy.address == f"127.0.0.1:{proxy.port}"
    assert proxy.mode == "pass"


def test_pass_mode_forwards_both_ways(connect: Connect, redis_server: RedisServer) -> None:
    client = connect()
    client.set("k", b"v")
    assert client.get("k") == b"v"
    assert redis_server.client().get("k") == b"v"  # it really reached the server


def test_pass_mode_forwards_large_values(connect: Connect) -> None:
    value = bytes(range(256)) * 16384  # 4 MiB: partial sends and backpressure in both ways
    client = connect(socket_timeout=5.0)
    client.set("big", value)
    assert client.get("big") == value


def test_counters_track_open_and_accepted_connections(proxy: FaultProxy, connect: Connect) -> None:
    assert (proxy.connections, proxy.accepted) == (0, 0)
    first, second = connect(), connect()
    first.ping()
    second.ping()
    assert (proxy.connections, proxy.accepted) == (2, 2)

    first.close()
    assert proxy.wait_connections(1)
    assert proxy.accepted == 2


# -- stall -----------------------------------------------------------------------------------


def test_stall_makes_commands_time_out(proxy: FaultProxy, connect: Connect) -> None:
    client = connect()
    client.set("k", b"v")
    proxy.stall()
    assert proxy.mode == "stall"
    start = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.get("k")
    assert time.monotonic() - start < TIMEOUT + 0.5

    proxy.passthrough()
    assert connect().get("k") == b"v"


def test_stall_holds_bytes_and_healing_delivers_them_in_order(
    proxy: FaultProxy, raw: Callable[[], socket.socket], redis_server: RedisServer
) -> None:
    sock = raw()
    sock.sendall(resp("PING"))
    assert read_exactly(sock, 7) == b"+PONG\r\n"

    proxy.stall()
    sock.sendall(resp("SET", "k", "1"))
    sock.sendall(resp("APPEND", "k", "2"))
    sock.sendall(resp("GET", "k"))
    assert_silent(sock)
    assert redis_server.client().get("k") is None  # held, not forwarded

    proxy.passthrough()
    assert read_exactly(sock, 5 + 4 + 8) == b"+OK\r\n:2\r\n$2\r\n12\r\n"


def test_connection_opened_during_stall_is_accepted_then_served_on_heal(
    proxy: FaultProxy, raw: Callable[[], socket.socket]
) -> None:
    proxy.stall()
    sock = raw()
    sock.sendall(resp("PING"))
    assert_silent(sock)
    assert (proxy.accepted, proxy.connections) == (1, 1)

    proxy.passthrough()
    assert read_exactly(sock, 7) == b"+PONG\r\n"


def test_hang_up_during_stall_is_held_until_heal(
    proxy: FaultProxy, raw: Callable[[], socket.socket]
) -> None:
    sock = raw()
    sock.sendall(resp("PING"))
    assert read_exactly(sock, 7) == b"+PONG\r\n"
    proxy.stall()
    sock.close()
    assert not proxy.wait_connections(0, timeout=QUIET)

    proxy.passthrough()
    assert proxy.wait_connections(0)


# -- reset and refuse ------------------------------------------------------------------------


def test_reset_breaks_open_connections_and_lets_new_ones_pass(
    proxy: FaultProxy, connect: Connect
) -> None:
    # A pooled client would notice the dead socket on checkout and silently redial;
    # a single-connection client keeps using the connection it has.
    client = connect(single_connection_client=True)
    client.ping()
    proxy.reset()
    assert proxy.connections == 0
    with pytest.raises(redis.ConnectionError, match=r"(?i)reset|closed|broken pipe"):
        client.ping()

    assert proxy.mode == "pass"
    assert client.ping() is True  # the client redials through the proxy
    assert connect().ping() is True
    assert proxy.accepted == 3


def test_reset_ends_stall(proxy: FaultProxy, connect: Connect) -> None:
    proxy.stall()
    proxy.reset()
    assert proxy.mode == "pass"
    assert connect().ping() is True


def test_refuse_resets_new_connections_fast_and_open_ones_too(
    proxy: FaultProxy, connect: Connect
) -> None:
    existing = connect(single_connection_client=True)
    existing.ping()
    proxy.refuse()
    assert proxy.mode == "refuse"
    with pytest.raises(redis.ConnectionError):
        existing.ping()

    fresh = connect()
    start = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        fresh.ping()
    assert time.monotonic() - start < 0.2
    assert proxy.accepted >= 2
    assert proxy.connections == 0

    proxy.passthrough()
    assert connect().ping() is True


# -- latency ---------------------------------------------------------------------------------


def test_latency_delays_round_trips_and_zero_removes_it(
    proxy: FaultProxy, connect: Connect
) -> None:
    client = connect(socket_timeout=2.0)
    client.ping()  # connect and handshake before the delay is added

    proxy.latency(0.1)
    elapsed = timed(client.ping)
    assert 0.1 <= elapsed < 0.5

    proxy.latency(0)
    assert timed(client.ping) < 0.1


def test_latency_keeps_order_even_when_changed_mid_stream(
    proxy: FaultProxy, raw: Callable[[], socket.socket]
) -> None:
    sock = raw()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one chunk per command
    proxy.latency(0.1)
    for _ in range(20):
        sock.sendall(resp("INCR", "counter"))
    proxy.latency(0)  # later chunks are due sooner but must not overtake
    for _ in range(20):
        sock.sendall(resp("INCR", "counter"))
    expected = b"".join(b":%d\r\n" % n for n in range(1, 41))
    assert read_exactly(sock, len(expected)) == expected


def test_latency_rejects_negative(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="latency must be >= 0"):
        proxy.latency(-1)


# -- upstream failures -----------------------------------------------------------------------


def test_upstream_death_closes_clients_and_restart_heals(
    proxy: FaultProxy, connect: Connect, redis_server: RedisServer
) -> None:
    client = connect()
    client.set("k", b"v")

    redis_server.kill()
    assert proxy.wait_connections(0)  # the proxy hung up on the client side
    start = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    with pytest.raises(redis.ConnectionError):
        connect().ping()
    assert time.monotonic() - start < 0.5

    redis_server.restart()
    assert client.get("k") is None  # same proxy, fresh (empty) server
    client.set("k", b"again")
    assert client.get("k") == b"again"


def test_unreachable_target_resets_the_client() -> None:
    # A bound socket that never listens holds the port and refuses every connection to it.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        with FaultProxy("127.0.0.1", closed_port.getsockname()[1]) as proxy:
            # The RST may even beat create_connection() back; any of the three steps may fail.
            with (
                pytest.raises((ConnectionResetError, BrokenPipeError)),
                socket.create_connection((proxy.host, proxy.port), timeout=1.0) as sock,
            ):
                sock.sendall(resp("PING"))
                sock.recv(1)
            assert proxy.wait_connections(0)
            assert proxy.accepted == 1


def test_retarget_sends_new_connections_elsewhere(
    proxy: FaultProxy, connect: Connect, redis_server_factory: ServerFactory
) -> None:
    before = connect(single_connection_client=True)
    before.set("where", b"first")
    other = redis_server_factory()
    other.client().set("where", b"second")

    proxy.retarget(other.port)
    assert connect().get("where") == b"second"
    assert before.get("where") == b"first"  # an open connection keeps its target


# -- lifecycle -------------------------------------------------------------------------------


def test_close_is_prompt_and_releases_everything(redis_server: RedisServer) -> None:
    proxy = FaultProxy(redis_server.host, redis_server.port).start()
    try:
        threads_before = threading.active_count()
        client = socket.create_connection((proxy.host, proxy.port), timeout=1.0)
        with client:
            client.sendall(resp("PING"))
            assert read_exactly(client, 7) == b"+PONG\r\n"
            proxy.stall()
            client.sendall(resp("PING"))  # a held chunk must not keep close() waiting

            assert timed(proxy.close) < 1.0
            assert proxy.connections == 0
            assert threading.active_count() == threads_before - 1
            assert client.recv(1) == b""  # the proxy hung up
    finally:
        proxy.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=1.0).close()

    proxy.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        proxy.passthrough()
    with pytest.raises(RuntimeError, match="closed"):
        proxy.start()


def test_close_without_start_releases_the_port(redis_server: RedisServer) -> None:
    proxy = FaultProxy(redis_server.host, redis_server.port)
    proxy.stall()  # settings before start() apply directly
    assert proxy.mode == "stall"
    proxy.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=1.0).close()
