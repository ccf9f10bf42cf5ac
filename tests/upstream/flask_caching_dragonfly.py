"""Flask-Caching's backend-generic tests (``GenericCacheTests``) on our backend.

Flask-Caching's ``tests/test_backend_cache.py`` runs ``GenericCacheTests`` once per backend
through a subclass that provides ``make_cache`` (``TestRedisCache`` for Redis, with real
sleeps: ``_can_use_fast_sleep = False``); this module is that subclass for
:class:`dragonfly_cache.contrib.flask_caching.DragonflyCache`, with the key prefixes
``TestRedisCache`` uses (a string, a callable) and none. ``suite_flask_caching.run`` links
it into the unpacked sdist's ``tests/`` so that it runs with Flask-Caching's conftest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from test_backend_cache import GenericCacheTests  # type: ignore[import-not-found]

from dragonfly_cache.contrib.flask_caching import DragonflyCache


def gen_key_prefix() -> str:
    return "werkzeug-test-case:"


class TestDragonflyCache(GenericCacheTests):  # type: ignore[misc]
    """Flask-Caching's generic backend tests on DragonflyCache."""

    _can_use_fast_sleep = False  # expiry happens on the server: sleep for real

    @pytest.fixture(params=[None, "werkzeug-test-case:", gen_key_prefix],
                    ids=["no_prefix", "prefix", "callable_prefix"])
    def make_cache(self, request: pytest.FixtureRequest
                   ) -> Iterator[Callable[[], DragonflyCache]]:
        cache = DragonflyCache(key_prefix=request.param,
                               pickle_secret=os.environ["DRAGONFLY_TEST_PICKLE_SECRET"])
        cache.tiered.clear()
        yield lambda: cache
        cache.clear()
