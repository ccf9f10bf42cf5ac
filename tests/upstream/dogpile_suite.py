"""dogpile.cache's own backend tests, aimed at ``dragonfly_cache`` (no upstream test edited).

Run by tests/test_upstream_dogpile.py with the unpacked sdist as the working directory, so
``dogpile`` below is the sdist's (checked at import); upstream's redis test module is
loaded from the sdist by its path (its package is called ``tests``, like ours). Our own
test run never collects this module (its name does not start with ``test_``).

The classes mirror the sdist's tests/cache/test_redis_backend.py, which aims the same
generic suites at ``dogpile.cache.redis``: the backend suite with the redis-style
``arguments`` (an unknown ``foo`` included, as upstream passes it), the serializer suite,
the mutex suite with ``distributed_lock``, the backend suite again with the distributed
lock under the region, and upstream's check that an async creator can release the lock
from another thread. The server comes from ``DRAGONFLY_ADDRESSES`` and the pickle secret
from ``CACHE_PICKLE_SECRET`` (the test sets both); a backend that cannot reach the
server fails the class, it never skips it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, ClassVar

import dogpile
from dogpile.testing.fixtures import (
    _GenericBackendTestSuite,
    _GenericMutexTestSuite,
    _GenericSerializerTestSuite,
)

SDIST = Path(os.environ["DOGPILE_SDIST"]).resolve()
_spec = importlib.util.spec_from_file_location(
    "dogpile_sdist_test_redis_backend", SDIST / "tests" / "cache" / "test_redis_backend.py")
assert _spec is not None and _spec.loader is not None
upstream_redis = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(upstream_redis)
for module in (dogpile, upstream_redis):
    assert SDIST in Path(module.__file__ or "").resolve().parents, (
        f"{module.__name__} is {module.__file__}, not from the pinned sdist {SDIST}")

HOST, _, PORT = os.environ["DRAGONFLY_ADDRESSES"].rpartition(":")
SERVER = {"host": HOST, "port": int(PORT), "db": 0}


class _DragonflyConn:
    """Upstream's _TestRedisConn check, without its skip: the server must answer."""

    @classmethod
    def _check_backend_available(cls, backend: Any) -> None:
        backend.set_serialized("x", b"y")
        assert backend.get_serialized("x") == b"y"
        backend.delete("x")


class DragonflyTest(_DragonflyConn, _GenericBackendTestSuite):
    backend = "dragonfly_cache"
    config_args: ClassVar[dict[str, Any]] = {"arguments": {**SERVER, "foo": "barf"}}


class DragonflySerializerTest(_GenericSerializerTestSuite, DragonflyTest):
    pass


class DragonflyDistributedMutexTest(_DragonflyConn, _GenericMutexTestSuite):
    backend = "dragonfly_cache"
    config_args: ClassVar[dict[str, Any]] = {"arguments": {**SERVER, "distributed_lock": True}}


class DragonflyDistributedLockTest(_DragonflyConn, _GenericBackendTestSuite):
    backend = "dragonfly_cache"
    config_args: ClassVar[dict[str, Any]] = {"arguments": {
        "url": f"redis://{HOST}:{PORT}/0", "distributed_lock": True, "thread_local_lock": False,
        "redis_expiration_time": 60}}


class DragonflyAsyncCreationTest(_DragonflyConn, upstream_redis.RedisAsyncCreationTest):
    backend = "dragonfly_cache"
    config_args: ClassVar[dict[str, Any]] = {"arguments": {
        **SERVER, "distributed_lock": True, "thread_local_lock": False}}
