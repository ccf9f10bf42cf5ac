"""Run Flask-Caching's backend, memoize, view and template tests against our backend.

Their files run unchanged, from the unpacked sdist, with two things of ours: the plugin
``pythonpath/dragonfly_flask_caching.py`` (``-p``), which sets ``CACHE_TYPE`` to our backend
in their ``app`` fixture (see its docstring), and ``flask_caching_dragonfly.py``, linked
into their ``tests/``, which runs their ``GenericCacheTests`` on the backend directly.
"""

from __future__ import annotations

from pathlib import Path

from tests.upstream import Outcome, run_pytest
from tests.upstream.suite_cachelib import LINKED, link, pythonpath

__all__ = ["FILES", "run"]

#: Their test files that exercise whatever backend ``CACHE_TYPE`` names (through their
#: ``app``/``cache`` fixtures). test_backend_cache.py's generic class comes through
#: flask_caching_dragonfly.py; its other classes, test_basic_app.py, test_init.py,
#: test_serializer.py and test_cachelib.py test named backends, serializers and
#: Flask-Caching's own set-up; test_py314_annotations.py runs on Python 3.14 only.
FILES = ("test_cache.py", "test_memoize.py", "test_view.py", "test_templates.py",
         "test_signals.py", "test_subclassing.py", "test_hash_method.py")


def run(source: Path, env: dict[str, str]) -> Outcome:
    """Flask-Caching's suite in ``source`` (the unpacked sdist) on our backend."""
    link(source, "flask_caching_dragonfly.py")
    files = [f"tests/{LINKED}", *(f"tests/{name}" for name in FILES)]
    return run_pytest("flask-caching", source, ["-p", "dragonfly_flask_caching", *files],
                      {**env, "PYTHONPATH": pythonpath()})
