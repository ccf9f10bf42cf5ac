"""cachelib 0.17.0's own backend-generic tests pass against our cachelib adapter."""

from __future__ import annotations

import secrets

import pytest

from tests.helpers.servers import ServerFactory
from tests.upstream import SUITES, check, fetch, suite_cachelib


@pytest.mark.upstream
def test_cachelib_suite(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory()
    outcome = suite_cachelib.run(fetch(SUITES["cachelib"]), {
        "DRAGONFLY_ADDRESSES": server.address,
        "CACHE_PICKLE_SECRET": secrets.token_hex(16),
    })
    check("cachelib", outcome)
