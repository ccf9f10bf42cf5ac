"""Redis glob patterns: matching in L1 exactly as the server matches in SCAN MATCH.

fnmatch is not Redis: it treats ``[!...]`` as negation, has no ``\\`` escapes and normalises
case on some platforms. Redis (``stringmatchlen`` in util.c) works on bytes and knows
``*``, ``?``, ``[...]`` with ``^`` negation, ``a-z`` ranges (either order) and ``\\`` escapes
(also inside brackets); an unterminated ``[`` takes the rest of the pattern as its set, and
``[]`` matches nothing. We translate to a bytes regex over the UTF-8 encoding, so ``?``
matches one byte just as it does on the server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

__all__ = ["compile_glob", "escape_glob"]

_SPECIAL = frozenset(b"*?[]\\")


def escape_glob(text: str) -> str:
    """Escape ``text`` so that, as a Redis glob, it matches only itself."""
    return "".join("\\" + ch if ord(ch) < 128 and ord(ch) in _SPECIAL else ch for ch in text)


def _byte(value: int) -> bytes:
    return re.escape(bytes([value]))


def _single(members: bytes, negate: bool) -> bytes:
    if members:
        return b"[" + (b"^" if negate else b"") + members + b"]"
    return b"." if negate else b"(?!)"


def _tokens(pattern: bytes) -> list[bytes | None]:
    """Split a glob into single-byte regex pieces; ``None`` stands for a run of ``*``."""
    tokens: list[bytes | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == ord("*"):
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
        elif c == ord("?"):
            tokens.append(b".")
        elif c == ord("["):
            i += 1
            negate = i < n and pattern[i] == ord("^")
            if negate:
                i += 1
            members: list[bytes] = []
            while i < n:
                c = pattern[i]
                if c == ord("\\") and i + 1 < n:
                    members.append(_byte(pattern[i + 1]))
                    i += 1
                elif c == ord("]"):
                    break
                elif i + 2 < n and pattern[i + 1] == ord("-"):
                    low, high = sorted((c, pattern[i + 2]))
                    members.append(_byte(low) + b"-" + _byte(high))
                    i += 2
                else:
                    members.append(_byte(c))
                i += 1
            # An unterminated '[' ends with the pattern: the loop ran off the end, which is
            # what Redis does too (it steps back and treats what it saw as the set).
            tokens.append(_single(b"".join(members), negate))
        elif c == ord("\\") and i + 1 < n:
            i += 1
            tokens.append(_byte(pattern[i]))
        else:
            tokens.append(_byte(c))
        i += 1
    return tokens


def _translate(pattern: bytes) -> bytes:
    """A regex that cannot backtrack catastrophically (as fnmatch does since bpo-40480).

    Between two stars every piece matches exactly one byte, so placing each such segment at
    its leftmost possible position is always right; the segment is matched inside a
    lookahead and consumed through a backreference, which Python never backtracks into.
    Without this, ``*a*a*a*a*a*a*b`` takes minutes on a long key, with the L1 lock held.
    """
    segments: list[list[bytes]] = [[]]
    for token in _tokens(pattern):
        if token is None:
            segments.append([])
        else:
            segments[-1].append(token)
    head, *middle = segments
    if not middle:
        return b"".join(head)
    *middle, tail = middle
    out = [b"".join(head)]
    for number, segment in enumerate(middle):
        group = b"g%d" % number
        out.append(b"(?=(?P<" + group + b">.*?" + b"".join(segment) + b"))(?P=" + group + b")")
    out.append(b".*" + b"".join(tail))
    return b"".join(out)


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> Callable[[str], bool]:
    """Return a predicate that tells whether a key matches the Redis glob ``pattern``."""
    fullmatch = re.compile(_translate(pattern.encode("utf-8")), re.DOTALL).fullmatch

    def matches(key: str) -> bool:
        return fullmatch(key.encode("utf-8")) is not None

    return matches
