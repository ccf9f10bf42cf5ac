"""Redis glob semantics in L1: fixed cases, and a cross-check against a real server's SCAN."""

from __future__ import annotations

import random

import pytest

from dragonfly_cache._glob import compile_glob, escape_glob

CASES = [
    ("*", "anything", True),
    ("user:*", "user:1", True),
    ("user:*", "users:1", False),
    ("user:?", "user:1", True),
    ("user:?", "user:12", False),
    ("user:[12]", "user:2", True),
    ("user:[12]", "user:3", False),
    ("user:[^1]", "user:2", True),  # Redis negates with ^ ...
    ("user:[^1]", "user:1", False),
    ("user:[!1]", "user:!", True),  # ... and '!' is an ordinary member (unlike fnmatch)
    ("user:[!1]", "user:2", False),
    ("[a-c]x", "bx", True),
    ("[c-a]x", "bx", True),  # reversed ranges are swapped
    ("[a-c]x", "dx", False),
    (r"a\*b", "a*b", True),
    (r"a\*b", "axb", False),
    (r"a\?", "a?", True),
    (r"[\]]", "]", True),
    (r"[\^a]", "^", True),
    ("[]x", "x", False),  # an empty set matches nothing
    ("[^]x", "ax", True),  # a negated empty set matches any one character
    ("ab[cd", "abc", True),  # an unterminated '[' takes the rest as its set
    ("ab[cd", "abx", False),
    ("*", "line\nbreak", True),
    ("?", "é", False),  # '?' is one byte; 'é' is two in UTF-8
    ("??", "é", True),
    ("a*b*c", "axxbyyc", True),
    ("a*b*c", "axxbyy", False),
    ("A*", "a1", False),  # case-sensitive
]


@pytest.mark.parametrize(("pattern", "key", "expected"), CASES)
def test_fixed_cases(pattern: str, key: str, expected: bool) -> None:
    assert compile_glob(pattern)(key) is expected


@pytest.mark.parametrize("text", ["plain", "a*b", "q?[x]", "back\\slash", "[^]-*"])
def test_escape_glob_matches_only_itself(text: str) -> None:
    matches = compile_glob(escape_glob(text) + "*")
    assert matches(text)
    assert matches(text + ":tail")
    assert not matches("X" + text)


def test_agrees_with_a_real_server(redis_server) -> None:
    """Every pattern selects, among the same keys, exactly what SCAN MATCH selects."""
    rng = random.Random(1234)
    alphabet = "ab]c[^-*?\\:é"
    keys = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(400)}
    keys |= {case[1] for case in CASES}
    client = redis_server.client()
    client.mset({key: b"1" for key in keys})
    patterns = [case[0] for case in CASES]
    patterns += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
                 for _ in range(300)]
    for pattern in patterns:
        on_server = {key.decode() for key in client.scan_iter(match=pattern, count=1000)}
        in_l1 = {key for key in keys if compile_glob(pattern)(key)}
        assert in_l1 == on_server, pattern


def test_many_stars_do_not_backtrack_catastrophically() -> None:
    # A naive '.*' translation takes minutes here (with the L1 lock held during invalidate).
    matches = compile_glob("*a" * 11 + "b")
    assert not matches("a" * 41)
    assert not matches("a" * 5000)
    assert matches("a" * 40 + "b")
