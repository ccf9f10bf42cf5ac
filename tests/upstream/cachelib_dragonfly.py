"""cachelib's backend-generic tests, run against our adapter as cachelib runs them on Redis.

cachelib's ``tests/test_redis_cache.py`` mixes ``CommonTests``, ``ClearTests``, ``HasTests``
and ``DeleteManyWithPrefixTests`` into one class and gives it an autouse ``cache_factory``
fixture; this module does the same for :class:`dragonfly_cache.contrib.cachelib.DragonflyCache`.
(Its ``SerializerTests`` swap cachelib serializers in, which this adapter does not use: its
values are signed pickles, always.) ``suite_cachelib.run`` links this file into the
unpacked sdist's ``tests/`` so that it runs there, with cachelib's own conftest (the
``key_prefix`` fixture runs each test with and without a prefix).

The server and the pickle secret come from the environment (``DRAGONFLY_ADDRESSES``,
``CACHE_PICKLE_SECRET``) set by tests/test_upstream_cachelib.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from clear import ClearTests  # type: ignore[import-not-found]
from common import CommonTests  # type: ignore[import-not-found]
from delete_many_with_prefix import DeleteManyWithPrefixTests  # type: ignore[import-not-found]
from has import HasTests  # type: ignore[import-not-found]

from dragonfly_cache.contrib.cachelib import DragonflyCache


@pytest.fixture(autouse=True)
def cache_factory(request: pytest.FixtureRequest, key_prefix: str | None) -> None:
    def _factory(self: Any, *args: Any, **kwargs: Any) -> DragonflyCache:
        kwargs.setdefault("key_prefix", key_prefix)
        cache = DragonflyCache(*args, **kwargs)
        # Where cachelib's factory runs FLUSHDB on its client, empty the server through
        # the cache, so no process keeps L1 copies of what went.
        cache.tiered.clear()
        return cache

    request.cls.cache_factory = _factory


class TestDragonflyCache(CommonTests, ClearTests, HasTests,  # type: ignore[misc]
                         DeleteManyWithPrefixTests):
    """cachelib's generic tests on DragonflyCache."""
