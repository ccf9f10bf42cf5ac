"""From a batch read's reply to results and L1 entries, without a Python loop per key in
the common cases: on an L1-cold ``get_many`` the client's work per key is what separates
it from a raw MGET.

:func:`decoded` decodes the values stored as compressed frames (and makes NEGATIVE one
object); :func:`fills_of` gives each value found its L1 entry, which dies at ``min(start +
its key's PTTL, latest)``, ``start`` being the L1 timer read before the request and
``latest`` the most :meth:`~dragonfly_cache._tiers.Tiers.deadline` allows an entry stored
at ``start``: so it never outlives its L2 key (``Tiers.deadline(start, pttl)`` for a
whole reply at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import cast

from ._compression import MAGIC

__all__ = ["NEGATIVE", "NO_FILLS", "Fills", "decoded", "fills_of"]

# The stored form of "no such record". get() answers None for it. Chosen so that no value
# produced by this package's codecs can equal it (JSON and msgpack never start with NUL).
# Reads make every copy of it this one object (decoded()), so hot paths test identity.
NEGATIVE = b"\x00dragonfly_cache:not-found\x00"

_SEP = b"\r\ndragonfly_cache\r\n"  # joins a reply's values: see decoded()
_SEP_NUL, _SEP_MAGIC = _SEP + b"\x00", _SEP + MAGIC

#: L1 entries to store, as parallel sequences: keys, values, deadlines (the deadlines may
#: be an endless ``repeat()``: they are zipped with the values, never counted).
Fills = tuple[Sequence[str], Sequence[bytes], Iterable[float]]
NO_FILLS: Fills = ((), (), ())


def decoded(keys: Sequence[str], values: list[bytes | None], pttls: list[int],
            decode: Callable[[str, bytes], bytes | None]
            ) -> tuple[list[bytes | None], list[int]]:
    """``values`` with each one that begins with NUL decoded (a compressed frame), and
    each equal to :data:`NEGATIVE` replaced by that very object (hot paths test identity); a
    frame that does not decode becomes a miss (None, PTTL -2: ``decode`` counts and logs
    it), and ``pttls`` follows."""
    # Such values are rare (text never begins with NUL), and found without a Python loop
    # (nor a comparison of whole values, as min() would make): in the values joined by
    # _SEP, each value but the first begins right after a _SEP. None and b"" are left
    # out: neither needs decoding. A value that merely contains _SEP followed by NUL or
    # MAGIC only sends the reply down the loop below.
    joined = _SEP.join(filter(None, values))
    if not (joined[:1] == b"\x00" or _SEP_NUL in joined):
        return values, pttls
    if NEGATIVE not in values and not (joined.startswith(MAGIC) or _SEP_MAGIC in joined):
        return values, pttls
    values, pttls = list(values), list(pttls)
    for index, value in enumerate(values):
        if value and value < b"\x01":
            plain = decode(keys[index], value)
            if plain is None:
                pttls[index] = -2
            values[index] = NEGATIVE if plain == NEGATIVE else plain
    return values, pttls


_MAX_MS = 2**62  # a cap beyond any PTTL (an L1 without a time bound)


def fills_of(keys: Sequence[str], values: list[bytes | None], pttls: list[int],
             start: float, latest: float) -> tuple[dict[str, bytes], Fills]:
    """The values found among ``keys``, and the L1 entries they allow.

    Args:
        values, pttls: L2's reply, in the order of ``keys``; a None value comes with a
            negative PTTL (-2: no such key; -1 is a key without expiry).
        start: the L1 timer, read before the request.
        latest: the latest deadline an entry stored at ``start`` may have.
    """
    if not values:
        return {}, NO_FILLS
    shortest = min(pttls)
    if shortest < 0:  # misses, or keys without expiry: key by key
        return _one_by_one(keys, values, pttls, start, latest)
    found = cast(list[bytes], values)  # a None value has a negative PTTL
    # PTTLs from ``cap`` on reach past ``latest``; below it they end before it (an int, so
    # the comparisons stay integer ones; rounded up, so both hold exactly).
    cap = math.ceil(min((latest - start) * 1000, _MAX_MS))
    deadlines: Iterable[float]
    if shortest >= cap:  # every key outlives what L1 may keep it: all die at latest
        deadlines = repeat(latest)
    elif max(pttls) < cap:  # every key dies first: start + pttl
        deadlines = [start + pttl / 1000 for pttl in pttls]
    else:
        deadlines = [start + pttl / 1000 if pttl < cap else latest for pttl in pttls]
    return dict(zip(keys, found, strict=True)), (keys, found, deadlines)


def _one_by_one(keys: Sequence[str], values: list[bytes | None], pttls: list[int],
                start: float, latest: float) -> tuple[dict[str, bytes], Fills]:
    found: dict[str, bytes] = {}
    fill_keys: list[str] = []
    fill_values: list[bytes] = []
    deadlines: list[float] = []
    for key, value, pttl in zip(keys, values, pttls, strict=True):
        if value is None:
            continue
        found[key] = value
        if pttl >= 0:
            deadline = start + pttl / 1000
        elif pttl == -1:  # no expiry on the server: L1's own bounds apply
            deadline = latest
        else:  # -2: the key vanished between GET and PTTL; answer, but don't keep it
            continue
        fill_keys.append(key)
        fill_values.append(value)
        deadlines.append(min(deadline, latest))
    return found, (fill_keys, fill_values, deadlines)
