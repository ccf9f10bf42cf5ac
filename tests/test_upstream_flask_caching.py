"""Flask-Caching 2.5.1's own backend, memoize, view and template tests pass on our backend."""

from __future__ import annotations

import secrets

import pytest

from tests.helpers.servers import ServerFactory
from tests.upstream import SUITES, check, fetch, suite_flask_caching


@pytest.mark.upstream
def test_flask_caching_suite(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory()
    outcome = suite_flask_caching.run(fetch(SUITES["flask-caching"]), {
        "DRAGONFLY_ADDRESSES": server.address,
        # The apps' pickle secret is their SECRET_KEY (set by the plugin); this one is
        # for the backends GenericCacheTests builds without an app.
        "DRAGONFLY_TEST_PICKLE_SECRET": secrets.token_hex(16),
    })
    check("flask-caching", outcome)
