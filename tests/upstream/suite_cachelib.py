"""Run cachelib's backend-generic tests against the cachelib adapter (see cachelib_dragonfly.py)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.upstream import Outcome, run_pytest

__all__ = ["run"]

HERE = Path(__file__).resolve().parent
LINKED = "test_dragonfly_cache.py"  # our module's name inside the unpacked tests/


def link(source: Path, module: str) -> Path:
    """Link our test ``module`` (a file here) into the sdist's ``tests/`` as
    :data:`LINKED`, so it runs there with the suite's conftest; returns the link."""
    target = source / "tests" / LINKED
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(HERE / module)
    return target


def pythonpath() -> str:
    """The suites' PYTHONPATH: our stand-ins and plugins first (``pythonpath/``)."""
    extra = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(HERE / "pythonpath"), *([extra] if extra else [])])


def run(source: Path, env: dict[str, str]) -> Outcome:
    """cachelib's ``CommonTests``, ``ClearTests``, ``HasTests`` and
    ``DeleteManyWithPrefixTests`` on our adapter, in ``source`` (the unpacked sdist)."""
    link(source, "cachelib_dragonfly.py")
    return run_pytest("cachelib", source, [f"tests/{LINKED}"],
                      {**env, "PYTHONPATH": pythonpath()})
