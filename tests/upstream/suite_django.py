"""Django's own cache tests against our backend, through Django's ``tests/runtests.py``.

The unpacked Django sdist provides the runner, the tests and the ``django`` package itself
(first on ``PYTHONPATH``, so the tests and the framework are the same release). This
directory provides what aims them at our backend, as new modules beside them, never as
edits: ``dragonfly_django_settings`` (the ``--settings`` module) and
``dragonfly_django_tests`` (the upstream test classes with ``CACHES`` pointed at
``DragonflyCache``). ``cache.models`` and ``sessions_tests.models`` are labels with no
tests: naming them makes the runner install the apps whose models the tests use.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.upstream import Outcome, clean_environ, excluded, run_unittest

__all__ = ["LABELS", "run"]

HERE = Path(__file__).resolve().parent
LABELS = ["cache.models", "sessions_tests.models", "dragonfly_django_tests"]


def run(source: Path, env: dict[str, str], timeout: float = 600) -> Outcome:
    """Run the suite in the unpacked sdist ``source`` with ``env`` (``DRAGONFLY_ADDRESSES``:
    the private server) over a clean environment (no ``DRAGONFLY_*``/``CACHE_*`` of ours)."""
    source = source.resolve()
    skipped = excluded("django")
    full_env = {
        **clean_environ(), **env,
        "PYTHONPATH": os.pathsep.join([str(source), str(HERE)]),
        "UPSTREAM_EXCLUDED": ",".join(skipped),
    }
    command = [sys.executable, str(source / "tests" / "runtests.py"),
               "--settings=dragonfly_django_settings", "--parallel=1", "--noinput",
               "--verbosity=2", *LABELS]
    return run_unittest(command, source / "tests", full_env, deselected=len(skipped),
                        timeout=timeout)
