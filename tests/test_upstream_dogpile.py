"""dogpile.cache 1.5.0's own backend tests, run against ``dragonfly_cache`` (the proof).

The pinned sdist is downloaded and unpacked (tests/upstream.fetch); its generic suites
(``_GenericBackendTestSuite``, ``_GenericSerializerTestSuite``, ``_GenericMutexTestSuite``)
and upstream's async-creation lock test run in a subprocess against a fresh private
redis-server, through the subclasses in tests/upstream/dogpile_suite.py, with the sdist's
own pytest settings (``-p no:warnings`` aside: warnings stay errors). Its "time intensive"
tests run too (upstream's nox skips them by default). The README's counts are checked.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.helpers.servers import ServerFactory
from tests.upstream import SUITES, check, fetch, run_pytest

SUITE = "dogpile.cache"
MODULE = Path(__file__).with_name("upstream") / "dogpile_suite.py"


@pytest.mark.upstream
@pytest.mark.timeout(300)
def test_dogpile_generic_suites_pass_against_our_backend(
        redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory()
    source = fetch(SUITES[SUITE])
    env = {"DRAGONFLY_ADDRESSES": server.address, "DOGPILE_SDIST": str(source),
           "CACHE_PICKLE_SECRET": secrets.token_hex(16)}
    outcome = run_pytest(SUITE, source, [
        "-c", "pyproject.toml", "--rootdir", ".",  # the sdist's settings (python_classes)
        "--import-mode=importlib",  # the sdist's package `tests` is not ours
        # upstream marks slow tests without registering the marker (its addopts turn
        # warnings off); registered here, they run with warnings as errors
        "-o", "markers=time_intensive: dogpile's slow tests",
        str(MODULE)], env)
    assert outcome.skipped == 0, outcome.report()  # a backend that cannot connect fails
    check(SUITE, outcome)
