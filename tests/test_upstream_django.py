"""Django's own cache tests, run by Django's own runner against our Django backend.

``BaseCacheTests`` (as Django's ``RedisCacheTests`` runs it for ``RedisCache``), the cache
middleware and ``cache_page``, ``django.utils.cache``, the ``{% cache %}`` tag and cached
sessions, from the pinned Django sdist, unedited: see ``tests/upstream/suite_django.py``
and ``tests/upstream/dragonfly_django_tests.py``. The README states the counts.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.upstream import SUITES, check, fetch, suite_django


@pytest.mark.upstream
@pytest.mark.timeout(300)
def test_djangos_cache_suite_passes_on_our_backend(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    outcome = suite_django.run(fetch(SUITES["django"]), {"DRAGONFLY_ADDRESSES": server.address})
    check("django", outcome)
    # The suite really went through our backend: its writes reached this server.
    commands = server.client().info("commandstats")
    assert commands.get("cmdstat_set", {}).get("calls", 0) > 200, outcome.report()
    assert commands.get("cmdstat_eval", {}).get("calls", 0) > 0  # incr's script
