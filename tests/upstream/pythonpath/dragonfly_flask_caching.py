"""pytest plugin (``-p dragonfly_flask_caching``) aiming Flask-Caching's own tests at our backend.

No upstream file is edited; their fixtures are used as they are, with three additions:

- **The backend.** Their ``app`` fixture configures ``CACHE_TYPE = "SimpleCache"``; as it is
  set up, this plugin changes that one setting to our backend and gives the app a
  ``SECRET_KEY`` (the pickle secret a Flask app has). The server comes from the
  environment (``DRAGONFLY_ADDRESSES``), as an app's would.
- **An empty server per test.** Each of their tests gets a new ``SimpleCache``, empty; ours
  share one server, so it is emptied before each test through the cache itself
  (``TieredCache.clear()``: SCAN + UNLINK and every L1), never by a FLUSHDB behind its back.
- **Their clock moves the server's clock.** Their ``clock`` fixture fast-forwards the time
  cachelib's SimpleCache reads. A server's expiry cannot be fast-forwarded, so
  ``clock.advance(s)`` here does it key by key: every key's remaining life shrinks by ``s``
  (PEXPIRE) and a key whose life runs out is deleted through the cache, which drops it
  from every L1 as its expiry would have. (Tests that sleep for real are left alone.)

And a guard: a test that passes without building our backend fails, so the passed count
is a count of tests that ran against it (those that build another backend on purpose are
listed in excluded.txt with their reason).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator
from typing import Any

import flask
import pytest
import redis

from dragonfly_cache import TieredCache
from dragonfly_cache.contrib._common import shared_cache
from dragonfly_cache.contrib.cachelib import DragonflyCache as CachelibAdapter
from dragonfly_cache.contrib.flask_caching import BACKEND, cache_config

SECRET_KEY = secrets.token_hex(16)
_built = [0]  # how many of our backends were made, so far


def _count_instances() -> None:
    init = CachelibAdapter.__init__

    def counting_init(self: CachelibAdapter, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        _built[0] += 1

    CachelibAdapter.__init__ = counting_init  # type: ignore[method-assign]


_count_instances()


def _cache() -> TieredCache:
    """The process's cache for the environment's server: the one every app here uses."""
    return shared_cache(cache_config({}))


def _fast_forward(seconds: float) -> None:
    """Every key on the server ages by ``seconds``; those whose life ends are deleted."""
    cache = _cache()
    host, _, port = os.environ["DRAGONFLY_ADDRESSES"].rpartition(":")
    milliseconds = int(seconds * 1000)
    with redis.Redis(host=host, port=int(port)) as server:
        for name in server.scan_iter(count=1000):
            left = server.pttl(name)
            if left == -1:
                continue  # never expires (nothing of ours: timeout 0 is 100 years)
            if left <= milliseconds:
                cache.delete(name.decode())
            elif left > 0:
                server.pexpire(name, left - milliseconds)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
                         ) -> Generator[None, Any, Any]:
    result = yield
    if fixturedef.argname == "app" and isinstance(result, flask.Flask):
        assert result.config["CACHE_TYPE"] == "SimpleCache", result.config["CACHE_TYPE"]
        result.config.update(CACHE_TYPE=BACKEND, SECRET_KEY=SECRET_KEY)
    elif fixturedef.argname == "clock":
        advance = result.advance

        def advance_the_server_too(seconds: float) -> None:
            advance(seconds)
            _fast_forward(seconds)

        result.advance = advance_the_server_too
    return result


@pytest.fixture(autouse=True)
def _empty_server() -> None:
    _cache().clear()


_BUILT_BEFORE = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_BUILT_BEFORE] = _built[0]
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield
    assert _built[0] > item.stash[_BUILT_BEFORE], (
        f"{item.nodeid} passed without using the DragonflyCache backend: list it in "
        "tests/upstream/excluded.txt with the reason")
