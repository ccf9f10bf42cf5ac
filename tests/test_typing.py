"""The public types hold for a user's type checker (mypy --strict on code that uses them).

``memoize`` keeps the wrapped function's signature and return type, ``stats()`` and
``health()`` are described by TypedDicts, and every ttl parameter takes the one ``TTL``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = '''
from datetime import timedelta

from dragonfly_cache import TieredCache
from dragonfly_cache.types import TTL, Health, Memoized, Stats

cache = TieredCache()


@cache.memoize(ttl=timedelta(minutes=1))
def user(user_id: int, *, full: bool = False) -> dict[str, int]:
    return {"id": user_id}


memoized: Memoized[[int], dict[str, int]] = cache.memoize()(lambda user_id: {"id": user_id})
reveal_type(user(1, full=True))
reveal_type(user.invalidate_all())
reveal_type(user.cache_key(1))
user("1")  # E: wrong argument type
user(1, fully=True)  # E: no such keyword

stats: Stats = cache.stats()
reveal_type(stats["l1_stats"]["hit_rate"])
reveal_type(stats["breaker"]["state"])
stats["l1_stats"]["hitrate"]  # E: no such key
health: Health = cache.health()
reveal_type(health["dragonfly"]["connected"])

ttl: TTL = timedelta(seconds=5)
cache.set("k", b"v", ttl)
cache.get_or_load("k", lambda: b"v", ttl=2.5)
cache.get_or_load_many(["k"], lambda keys: {}, ttl=None)
cache.set("k", b"v", "5s")  # E: a string is not a TTL
'''


def run_mypy(tmp_path: Path, source: str) -> list[str]:
    path = tmp_path / "user_code.py"
    path.write_text(textwrap.dedent(source))
    stdout, stderr, _status = api.run(["--strict", "--cache-dir", str(ROOT / ".mypy_cache"),
                                       "--no-error-summary", "--hide-error-context",
                                       str(path)])
    assert not stderr, stderr
    return [line.split(": ", 1)[1] for line in stdout.splitlines() if ": " in line]


def test_public_types_as_a_user_s_type_checker_sees_them(tmp_path: Path) -> None:
    lines = run_mypy(tmp_path, USER_CODE)
    notes = [line for line in lines if line.startswith("note: Revealed type")]
    assert notes == [
        'note: Revealed type is "dict[str, int]"',
        'note: Revealed type is "int"',
        'note: Revealed type is "str"',
        'note: Revealed type is "float"',
        'note: Revealed type is "str"',
        'note: Revealed type is "bool"',
    ]
    errors = [line for line in lines if line.startswith("error:")]
    expected = USER_CODE.count("# E:")
    assert len(errors) == expected, "\n".join(lines)
    assert any(re.search(r'"__call__" of "Memoized" has incompatible type "str"', e)
               for e in errors)
    assert any('Unexpected keyword argument "fully"' in e for e in errors)
    assert any('"hitrate"' in e for e in errors)
    assert any('incompatible type "str"; expected "float | int | timedelta | None"' in e
               for e in errors)
