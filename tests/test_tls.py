"""TLS against a real TLS-only redis-server: CA files, client certificates, hostname checks."""

from __future__ import annotations

import gc
import select
import socket
import struct
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dragonfly_cache import (
    CacheConfig,
    CacheUnavailableError,
    ConfigError,
    DragonflyConfig,
    L1Config,
    TieredCache,
    _invalidation,
)
from tests.helpers import wait_until
from tests.helpers.pki import tls_server_args
from tests.helpers.servers import free_port


@pytest.fixture
def tls_server(tls_redis_binary: str, pki: Path, tmp_path: Path
               ) -> Iterator[Callable[..., str]]:
    """``start(cert="server", clients="no") -> "127.0.0.1:PORT"``: a TLS-only redis-server."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(cert: str = "server", clients: str = "no") -> str:
        port = free_port()
        process = subprocess.Popen(
            [tls_redis_binary, "--port", "0", "--bind", "127.0.0.1",
             *tls_server_args(pki, port, cert, clients),
             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(process)
        probe = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(pki / "ca.crt"),
                            ssl_check_hostname=False, ssl_certfile=str(pki / "client.crt"),
                            ssl_keyfile=str(pki / "client.key"), socket_timeout=0.5,
                            socket_connect_timeout=0.5, protocol=2)
        deadline = time.monotonic() + 5
        while True:
            try:
                probe.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("the TLS redis-server did not start", pytrace=False)
                time.sleep(0.02)
            finally:
                probe.close()
        return f"127.0.0.1:{port}"

    yield start
    for process in processes:
        process.kill()
        process.wait(5)


def make(address: str, **tls: Any) -> TieredCache:
    return TieredCache(CacheConfig(dragonfly=DragonflyConfig(addresses=[address], tls=True,
                                                             **tls)))


def test_tls_with_a_ca_file_round_trips_and_stays_coherent(tls_server: Callable[..., str],
                                                           pki: Path) -> None:
    address = tls_server()
    ca = str(pki / "ca.crt")
    with make(address, tls_ca_file=ca) as writer, make(address, tls_ca_file=ca) as reader:
        writer.set("k", b"over tls")
        assert reader.get("k") == b"over tls"
        report = reader.health()
        assert report["status"] == "healthy"
        assert report["dragonfly"]["server"] == "redis"
        assert report["dragonfly"]["mode"] == "standalone"
        wait_until(lambda: reader.stats()["coherence"]["state"] == "subscribed")
        writer.set("k", b"newer")
        wait_until(lambda: reader.get("k") == b"newer", timeout=2)


def test_an_untrusted_certificate_is_reported_clearly(tls_server: Callable[..., str],
                                                      pki: Path) -> None:
    address = tls_server()
    with make(address, tls_ca_file=str(pki / "other-ca.crt"),
              password="not-shown-anywhere") as cache:
        report = cache.health()
        assert report["status"] == "unhealthy"
        assert "certificate verify failed" in report["dragonfly"]["error"]
        assert "not-shown-anywhere" not in repr(report)
        assert cache.get("k") is None  # reads degrade
        with pytest.raises(CacheUnavailableError, match="certificate"):
            cache.set("k", b"v")


def test_hostname_checking(tls_server: Callable[..., str], pki: Path) -> None:
    address = tls_server(cert="elsewhere")  # a valid certificate, for another name
    ca = str(pki / "ca.crt")
    with make(address, tls_ca_file=ca) as checked:
        error = checked.health()["dragonfly"]["error"]
        assert "127.0.0.1" in error and ("hostname" in error or "match" in error), error
    with make(address, tls_ca_file=ca, tls_check_hostname=False) as unchecked:
        assert unchecked.health()["status"] == "healthy"


def test_client_certificates(tls_server: Callable[..., str], pki: Path) -> None:
    address = tls_server(clients="yes")
    ca = str(pki / "ca.crt")
    with make(address, tls_ca_file=ca) as anonymous:
        assert anonymous.health()["status"] == "unhealthy"
    with make(address, tls_ca_file=ca, tls_cert_file=str(pki / "client.crt"),
              tls_key_file=str(pki / "client.key")) as identified:
        identified.set("k", b"v")
        assert identified.health()["status"] == "healthy"


def test_tls_settings_are_validated(pki: Path) -> None:
    ca = str(pki / "ca.crt")
    with pytest.raises(ConfigError, match="DRAGONFLY_TLS is false"):
        DragonflyConfig(tls_ca_file=ca)
    with pytest.raises(ConfigError, match="go together"):
        DragonflyConfig(tls=True, tls_cert_file=str(pki / "client.crt"))
    with pytest.raises(ConfigError, match=r"^DRAGONFLY_TLS_CA_FILE='/nonexistent\.crt': not a "):
        CacheConfig.from_env({"DRAGONFLY_TLS": "true",
                              "DRAGONFLY_TLS_CA_FILE": "/nonexistent.crt"})
    config = CacheConfig.from_env({"DRAGONFLY_TLS": "1", "DRAGONFLY_TLS_CA_FILE": ca,
                                   "DRAGONFLY_TLS_CHECK_HOSTNAME": "false"})
    assert config.dragonfly.tls_ca_file == ca
    assert config.dragonfly.tls_check_hostname is False


@pytest.mark.parametrize("path", ["pool", "listener"])
def test_a_connection_reset_before_the_tls_handshake_leaves_no_socket_open(
        path: str, pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server killed (or restarting) just as we connect accepts the TCP connection, then
    resets it before the TLS handshake. Before Python 3.11.8/3.12.2 (CPython gh-113280)
    the failed wrap leaves its SSLSocket open for the garbage collector to find: a
    ResourceWarning in whichever test runs next. The cache's pooled connections and its
    listener's client must both close it on the spot."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def connect_then_reset(connection: redis.Connection) -> socket.socket:
            # The plain TCP step of redis-py's connect, then the server's RST, which has
            # arrived (the socket reads as ready) before the TLS wrap starts.
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            accepted, _ = server.accept()
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            accepted.close()
            assert select.select([sock], [], [], 5)[0], "the reset never arrived"
            return sock

        monkeypatch.setattr(redis.Connection, "_connect", connect_then_reset)
        cache = TieredCache(CacheConfig(
            dragonfly=DragonflyConfig(addresses=[f"127.0.0.1:{port}"], mode="standalone",
                                      tls=True, tls_ca_file=str(pki / "ca.crt"),
                                      max_retries=0),
            l1=L1Config(invalidation=False)))  # no listener thread racing this one
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if path == "pool":
                assert cache.get("k") is None  # the read degrades to a miss
            else:
                client, _sharded, _channel = _invalidation.subscription(cache._l2,
                                                                        cache._l2.address)
                with pytest.raises(redis.ConnectionError):
                    client.ping()
                client.close()
            cache.close()
            # Only to find a socket left open now, in this test, rather than in a later one.
            gc.collect()
        assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
