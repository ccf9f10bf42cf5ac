"""A batch read's reply turned into results and L1 entries (pure logic, no server)."""

from __future__ import annotations

import math

import pytest

from dragonfly_cache._compression import MAGIC, Compression
from dragonfly_cache._fills import NEGATIVE, decoded, fills_of

START = 1000.0
LATEST = START + 300.0  # L1 may keep an entry 300 s


def entries(keys: list[str], values: list[bytes | None], pttls: list[int]
            ) -> tuple[dict[str, bytes], dict[str, tuple[bytes, float]]]:
    found, (fill_keys, fill_values, deadlines) = fills_of(keys, values, pttls, START, LATEST)
    return found, dict(zip(fill_keys, zip(fill_values, deadlines, strict=False), strict=True))


@pytest.mark.parametrize(("pttls", "deadlines"), [
    ([400_000, 300_000], [LATEST, LATEST]),  # both outlive L1's bound
    ([1_500, 299_999], [START + 1.5, START + 299.999]),  # both die first
    ([1_500, 300_001], [START + 1.5, LATEST]),  # one of each
])
def test_each_entry_dies_with_its_key_or_at_l1_s_bound(pttls: list[int],
                                                       deadlines: list[float]) -> None:
    found, fills = entries(["a", "b"], [b"1", b"2"], pttls)
    assert found == {"a": b"1", "b": b"2"}
    assert fills == {"a": (b"1", deadlines[0]), "b": (b"2", deadlines[1])}


def test_no_deadline_is_later_than_the_key_s_death_at_the_cap() -> None:
    # A PTTL a fraction of a ms below L1's bound: the key dies first, so must the entry.
    latest = START + 0.3005
    _, (_, _, deadlines) = fills_of(["a", "b"], [b"1", b"2"], [300, 301], START, latest)
    assert list(deadlines)[:2] == [START + 0.3, latest]


def test_misses_no_expiry_and_vanished_keys() -> None:
    found, fills = entries(["miss", "forever", "gone", "ok"],
                           [None, b"f", b"g", b"o"], [-2, -1, -2, 5_000])
    assert found == {"forever": b"f", "gone": b"g", "ok": b"o"}  # "gone" is answered ...
    assert fills == {"forever": (b"f", LATEST), "ok": (b"o", START + 5.0)}  # ... not kept


def test_an_unbounded_l1_keeps_an_entry_until_the_key_dies() -> None:
    _, (keys, values, deadlines) = fills_of(["a"], [b"1"], [2_000], START, math.inf)
    assert list(zip(keys, values, deadlines, strict=False)) == [("a", b"1", START + 2.0)]


def test_an_empty_reply() -> None:
    assert entries([], [], []) == ({}, {})


def test_plain_values_are_not_copied_or_decoded() -> None:
    def decode(key: str, stored: bytes) -> bytes | None:
        raise AssertionError(f"{key} decoded")

    for values in ([b"text", b"\x00binary", b"", None, MAGIC[:5] + b"\x00"],
                   [b"\x00\x01", b"\x00zzz", MAGIC[:5], NEGATIVE[:-1]],
                   [b"a" + MAGIC, b"x\r\ndragonfly_cache\r\n" + MAGIC]):  # MAGIC inside
        pttls = [1] * len(values)
        assert decoded(list("abcde")[:len(values)], values, pttls, decode) == (
            values, pttls)


def test_frames_and_negatives_are_decoded_and_corrupt_frames_read_as_misses() -> None:
    zlib = Compression("zlib", 1)
    frame = zlib.encode(b"x" * 100)
    assert frame.startswith(MAGIC)
    negative = bytes(bytearray(NEGATIVE))  # equal, another object (bytes(NEGATIVE) is it)
    assert decoded(["n", "x"], [negative, b"\x00zzz"], [1, 1],
                   zlib.decode)[0][0] is NEGATIVE  # found among other NUL values too
    assert decoded(["x", "f"], [b"text", frame], [1, 1],
                   zlib.decode)[0] == [b"text", b"x" * 100]  # a frame after the first value
    stored: list[bytes | None] = [frame, negative, MAGIC + b"\x01garbage", b"\x00plain"]
    values, pttls = decoded(list("abcd"), stored, [1, 2, 3, 4], zlib.decode)
    assert values == [b"x" * 100, NEGATIVE, None, b"\x00plain"]
    assert values[1] is NEGATIVE  # the one object: hot paths test identity
    assert pttls == [1, 2, -2, 4]
    assert zlib.corrupt == 1
