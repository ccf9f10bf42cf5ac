"""Compression of L2 values (``l2.compression``, ``l2.compress_min_size``): the frame
format, both codecs and both zstd implementations, a mixed fleet on a real server (one
cache compressing, one not), corrupt frames, and the configuration's errors."""

from __future__ import annotations

import importlib
import json
import logging
import os
import struct
import sys
import zlib
from typing import Any

import pytest

from dragonfly_cache import CacheConfig, ConfigError, DragonflyConfig, L2Config, NotFound
from dragonfly_cache._compression import MAGIC, Codec, Compression, StdlibZstd, ZstandardZstd
from dragonfly_cache._l2 import L2
from tests.helpers import CacheFactory, fork

ZLIB, ZSTD = 1, 2
HEADER = struct.Struct(">6sBQ")

# A 100 kB JSON document, as an API would cache it (deterministic, compressible).
DOCUMENT = json.dumps([{"id": i, "name": f"item {i}", "price": round(i * 1.25, 2),
                        "tags": ["red", "large"] if i % 3 else ["blue"], "stock": i % 17}
                       for i in range(1300)]).encode()[:100_000]


def implementations() -> list[Any]:
    """Every zstd implementation installed: the standard library's API (``compression.zstd``
    on 3.14+, ``backports.zstd`` before) and the ``zstandard`` package."""
    found = []
    for name, adapter in (("compression.zstd", StdlibZstd), ("backports.zstd", StdlibZstd),
                          ("zstandard", ZstandardZstd)):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found.append(pytest.param(adapter(module), id=name))
    return found


IMPLEMENTATIONS = implementations()


def test_the_test_extra_brings_both_zstd_apis() -> None:
    names = {param.id for param in IMPLEMENTATIONS}
    assert names & {"compression.zstd", "backports.zstd"}  # the standard library's API
    if sys.version_info < (3, 14):
        assert "zstandard" in names  # what the zstd extra installs there


def block_zstd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every zstd implementation fail to import, as on a Python without any."""
    for module in ("compression", "compression.zstd", "zstandard"):
        monkeypatch.setitem(sys.modules, module, None)


def frame(codec: int, length: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, codec, length) + payload


# -- the frame format ---------------------------------------------------------------------


def test_a_compressed_value_is_a_frame_that_decodes_back() -> None:
    compression = Compression("zlib", 1024)
    stored = compression.encode(DOCUMENT)
    assert stored[:6] == b"\x00\xffDFC\x01"
    assert stored[6] == ZLIB
    assert int.from_bytes(stored[7:15], "big") == len(DOCUMENT)
    assert zlib.decompress(stored[15:]) == DOCUMENT  # the payload is a plain zlib stream
    assert len(stored) < len(DOCUMENT) / 4
    assert compression.decode("k", stored) == DOCUMENT


@pytest.mark.parametrize("name", ["off", "zlib", "zstd"])
def test_values_below_the_threshold_or_incompressible_are_stored_as_they_are(
        name: str) -> None:
    compression = Compression(name, 1024)
    small = DOCUMENT[:1023]
    noise = os.urandom(4096)  # compressing it would make it larger
    for value in (b"", b"x", small, noise):
        assert compression.encode(value) is value
        assert compression.decode("k", value) is value


@pytest.mark.parametrize("name", ["zlib", "zstd"])
def test_the_threshold_is_inclusive_and_zero_compresses_what_shrinks(name: str) -> None:
    assert Compression(name, 1024).encode(DOCUMENT[:1024]).startswith(MAGIC)
    everything = Compression(name, 0)
    assert everything.encode(DOCUMENT[:200]).startswith(MAGIC)
    assert everything.encode(b"12") == b"12"  # a frame would be larger: not framed


@pytest.mark.parametrize("name", ["off", "zlib", "zstd"])
def test_a_value_that_begins_like_a_frame_is_framed_and_reads_back_exactly(name: str) -> None:
    compression = Compression(name, 1024)
    for value in (MAGIC, MAGIC + b"\x01" + b"\x00" * 8 + b"not zlib", MAGIC + os.urandom(3000)):
        stored = compression.encode(value)
        assert stored == frame(0, len(value), value)
        assert compression.decode("k", stored) == value


def test_values_from_other_clients_read_back_as_they_are() -> None:
    compression = Compression("off")
    for value in (b"", b"\x00", b"\x00\xff", MAGIC[:5], zlib.compress(DOCUMENT),
                  b"\x00\xffDFC\x02" + DOCUMENT):
        assert compression.decode("k", value) is value


@pytest.mark.parametrize("writer", IMPLEMENTATIONS)
@pytest.mark.parametrize("reader", IMPLEMENTATIONS)
def test_zstd_frames_read_the_same_through_every_implementation(writer: Codec,
                                                                 reader: Codec) -> None:
    """A fleet on mixed Pythons: 3.14's standard library reads zstandard's frames, and
    back."""
    stored = Compression("zstd", 1024, zstd=writer).encode(DOCUMENT)
    assert stored[6] == ZSTD
    assert len(stored) < len(DOCUMENT) / 4
    assert Compression("off", zstd=reader).decode("k", stored) == DOCUMENT


# -- corrupt frames ---------------------------------------------------------------------------


def corrupt_frames() -> dict[str, bytes]:
    zlib_frame = Compression("zlib").encode(DOCUMENT)
    zstd_frame = Compression("zstd").encode(DOCUMENT)
    flipped = bytearray(zstd_frame)
    flipped[len(flipped) // 2] ^= 0x55
    payload = zlib_frame[HEADER.size:]
    return {
        "zlib truncated": zlib_frame[:-10],
        "zlib altered": zlib_frame[:40] + bytes(b ^ 0xFF for b in zlib_frame[40:60])
        + zlib_frame[60:],
        "zlib longer than declared": frame(ZLIB, len(DOCUMENT) - 1, payload),
        "zlib shorter than declared": frame(ZLIB, len(DOCUMENT) + 1, payload),
        "zlib with trailing bytes": zlib_frame + b"junk",
        "zlib payload not zlib": frame(ZLIB, 10, b"not a zlib stream"),
        "zstd altered": bytes(flipped),
        "zstd truncated": zstd_frame[:-4],
        "zstd length declared wrong": frame(ZSTD, len(DOCUMENT) + 5, zstd_frame[HEADER.size:]),
        "zstd with trailing bytes": zstd_frame + b"junk",
        "stored, wrong length": frame(0, 99, b"abc"),
        "unknown codec": frame(9, 3, b"abc"),
        "shorter than a header": MAGIC + b"\x01\x00",
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", sorted(corrupt_frames()))
def test_a_corrupt_frame_decodes_to_none_and_is_counted(kind: str, implementation: Codec
                                                        ) -> None:
    compression = Compression("off", zstd=implementation)
    assert compression.decode("k", corrupt_frames()[kind]) is None
    assert compression.corrupt == 1


def test_a_zstd_frame_without_zstd_here_is_a_miss_that_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stored = Compression("zstd").encode(DOCUMENT)
    block_zstd(monkeypatch)
    reader = Compression("off")
    assert reader.decode("k", stored) is None
    assert reader.corrupt == 1
    assert "pip install 'dragonfly-cache[zstd]'" in caplog.text
    assert reader.decode("k", Compression("zlib").encode(DOCUMENT)) == DOCUMENT


def test_a_frame_declaring_more_than_a_value_can_hold_is_never_inflated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone who can write L2 could store a frame whose codec would allocate what it
    declares: refused on the declared length alone, before any codec runs."""
    from dragonfly_cache import _compression

    compression = Compression("zlib")
    inflated: list[int] = []
    for codec in compression._codecs.values():
        if codec is not None:
            monkeypatch.setattr(codec, "decompress",
                                lambda payload, length: inflated.append(length) or b"")
    payload = Compression("zlib").encode(DOCUMENT)[HEADER.size:]
    for ident in (ZLIB, ZSTD):
        assert compression.decode("k", frame(ident, _compression.MAX_LENGTH + 1, payload)) is None
    assert inflated == []
    assert compression.corrupt == 2


def test_corrupt_frames_are_logged_once_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dragonfly_cache._compression")
    compression = Compression("zlib")
    for kind, stored in corrupt_frames().items():
        assert compression.decode(kind, stored) is None
    records = [r for r in caplog.records if r.name == "dragonfly_cache._compression"]
    assert [r.levelno for r in records] == [logging.WARNING] + [logging.DEBUG] * (
        len(records) - 1)
    assert len(records) == compression.corrupt == len(corrupt_frames())
    assert "l2_stats.corrupt" in records[0].getMessage()


# -- a mixed fleet on a real server -----------------------------------------------------------


@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_a_mixed_fleet_reads_each_others_values(cache_factory: CacheFactory, redis_server: Any,
                                                codec: str) -> None:
    """One cache compresses, one does not: each reads what the other wrote, whatever its
    own setting, through get, get_many and get_or_load; a raw client sees the sizes."""
    raw = redis_server.client()
    compressing = cache_factory(l2={"compression": codec, "compress_min_size": "1KiB"})
    plain = cache_factory()
    compressing.set("by-compressing", DOCUMENT)
    compressing.set_many({"many-a": DOCUMENT, "many-b": DOCUMENT[:500]})
    plain.set("by-plain", DOCUMENT)

    stored = raw.get("by-compressing")
    assert stored[:7] == MAGIC + bytes([ZLIB if codec == "zlib" else ZSTD])
    assert raw.strlen("by-compressing") < len(DOCUMENT) / 4
    assert raw.strlen("many-a") == len(stored)
    assert raw.get("many-b") == DOCUMENT[:500]  # below the threshold: stored as it is
    assert raw.get("by-plain") == DOCUMENT  # the plain cache stores plain bytes

    # Fresh caches: every read below is an L1 miss.
    fresh_plain, fresh_compressing = cache_factory(), cache_factory(l2={"compression": codec})
    for reader in (fresh_plain, fresh_compressing):
        assert reader.get("by-compressing") == DOCUMENT
        assert reader.get("by-plain") == DOCUMENT
        assert reader.get_many(["many-a", "many-b", "by-plain", "missing"]) == {
            "many-a": DOCUMENT, "many-b": DOCUMENT[:500], "by-plain": DOCUMENT}
        assert reader.stats()["l2_stats"]["corrupt"] == 0

    loaded = compressing.get_or_load("loaded", lambda: DOCUMENT)
    assert loaded == DOCUMENT
    assert raw.get("loaded").startswith(MAGIC)
    assert cache_factory().get_or_load("loaded", lambda: b"not called") == DOCUMENT


def test_every_operation_works_when_everything_is_compressed(cache_factory: CacheFactory,
                                                            redis_server: Any) -> None:
    """compress_min_size 0: negative answers, counters, add, the fleet lock, empty values."""
    cache = cache_factory(l2={"compression": "zlib", "compress_min_size": 0, "fleet_lock": True})
    reader = cache_factory()
    calls = []

    def missing() -> bytes:
        calls.append(1)
        raise NotFound("no such record")

    for _ in range(2):
        with pytest.raises(NotFound):
            cache.get_or_load("absent", missing)
    assert calls == [1]
    assert reader.get("absent") is None
    assert cache.incr("counter", 5) == 5 and cache.incr("counter") == 6
    assert redis_server.client().get("counter") == b"6"
    assert cache.add("added", DOCUMENT) and not cache.add("added", b"other")
    assert reader.get("added") == DOCUMENT
    with cache.lock("resource"):
        assert redis_server.client().keys("*resource*")
    assert not redis_server.client().keys("*resource*")  # released: the token matched
    cache.set("empty", b"")
    assert reader.get("empty") == b"" and cache_factory().get("empty") == b""
    assert cache.stats()["l2_stats"]["corrupt"] == reader.stats()["l2_stats"]["corrupt"] == 0


def test_l1_holds_the_decompressed_value(cache_factory: CacheFactory) -> None:
    writer = cache_factory(l2={"compression": "zlib"})
    writer.set("doc", DOCUMENT)
    reader = cache_factory(l2={"compression": "zlib"})
    assert reader.get("doc") == DOCUMENT  # from L2, as a frame
    l1 = reader.stats()["l1_stats"]
    assert l1["size"] == 1
    assert l1["bytes"] == len(DOCUMENT) + 240  # the value's own length (plus the overhead)
    assert reader.get("doc") == DOCUMENT
    assert reader.stats()["l1_stats"]["hits"] == 1


def test_a_value_like_a_frame_round_trips_through_the_server(cache_factory: CacheFactory,
                                                              redis_server: Any) -> None:
    value = MAGIC + b"\x01" + b"\x00" * 8 + b"user data"
    plain = cache_factory()
    plain.set("lookalike", value)
    assert redis_server.client().get("lookalike") == frame(0, len(value), value)
    assert cache_factory().get("lookalike") == value


def test_take_back_and_fleet_lock_release_compare_the_stored_form(redis_server: Any) -> None:
    """delete_if_equal (a load's take-back, a fleet lock's release) finds a compressed
    value it stored."""
    l2 = L2(DragonflyConfig(addresses=[redis_server.address], password=redis_server.password),
            "", L2Config(compression="zlib", compress_min_size=0))
    try:
        assert l2.set_if_absent("k", DOCUMENT, 60)
        l2.delete_if_equal("k", DOCUMENT[:-1])  # not the stored value: kept
        assert redis_server.client().exists("k") == 1
        l2.delete_if_equal("k", DOCUMENT)
        assert redis_server.client().exists("k") == 0
    finally:
        l2.close()


def test_corrupt_values_in_l2_are_counted_misses_never_exceptions(
        cache_factory: CacheFactory, redis_server: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dragonfly_cache._compression")
    raw = redis_server.client()
    frames = corrupt_frames()
    raw.mset(frames)
    raw.set("fine", DOCUMENT)
    cache = cache_factory(l2={"compression": "zlib"})
    for key in frames:
        assert cache.get(key) is None
    assert cache.get_many([*frames, "fine"]) == {"fine": DOCUMENT}
    assert cache.get_or_load("zlib truncated", lambda: b"loaded") == b"loaded"
    reads = 2 * len(frames) + 1
    stats = cache.stats()["l2_stats"]
    assert stats["corrupt"] == reads
    assert stats["hits"] == 1  # "fine"
    assert stats["misses"] == reads
    assert stats["errors"] == 0
    assert cache.stats()["l1_stats"]["size"] == 1  # "fine" (the load found the key taken)
    warnings = [r for r in caplog.records
                if r.name == "dragonfly_cache._compression" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1


def test_a_forked_child_counts_corrupt_frames_from_zero(cache_factory: CacheFactory,
                                                       redis_server: Any) -> None:
    """Like the cache's other counters: the child's hits never go negative (a corrupt
    frame is reported as a miss by taking it off the tier's hits)."""
    redis_server.client().set("bad", frame(ZLIB, 5, b"bad"))
    cache = cache_factory()
    assert cache.get("bad") is None
    assert cache.stats()["l2_stats"]["corrupt"] == 1
    report, told = os.pipe()
    pid = fork()
    if pid == 0:
        code = 1
        try:
            before = cache.stats()["l2_stats"]
            found = cache.get("bad")
            after = cache.stats()["l2_stats"]
            os.write(told, json.dumps([before, after, found]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(told)
    with os.fdopen(report, "rb") as reader:
        before, after, found = json.loads(reader.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert found is None
    assert (before["hits"], before["misses"], before["corrupt"]) == (0, 0, 0)
    assert (after["hits"], after["misses"], after["corrupt"]) == (0, 1, 1)
    assert cache.stats()["l2_stats"]["corrupt"] == 1  # the parent's own count


def test_the_corrupt_counter_is_exported_as_a_metric(cache_factory: CacheFactory,
                                                     redis_server: Any) -> None:
    from dragonfly_cache.metrics import METRICS, CacheMetrics

    def exported() -> float:
        return sum(sample.value for metric in METRICS.l2_corrupt.collect()
                   for sample in metric.samples if sample.name.endswith("_total"))

    cache = cache_factory()
    metrics = CacheMetrics(cache)
    metrics.sync()
    before = exported()
    redis_server.client().set("bad", frame(ZLIB, 5, b"bad"))
    assert cache.get("bad") is None
    assert cache.get_many(["bad"]) == {}
    metrics.sync()
    assert exported() == before + 2


# -- configuration --------------------------------------------------------------------------


def test_the_defaults_are_off_and_1_kib() -> None:
    assert (L2Config().compression, L2Config().compress_min_size) == ("off", 1024)


def test_from_env_and_yaml_read_both_options() -> None:
    config = CacheConfig.from_env({"CACHE_COMPRESSION": " ZSTD ",
                                   "CACHE_COMPRESS_MIN_SIZE": "4KiB"})
    assert (config.l2.compression, config.l2.compress_min_size) == ("zstd", 4096)
    assert CacheConfig.from_env({"CACHE_COMPRESS_MIN_SIZE": "0"}).l2.compress_min_size == 0
    yaml = "cache:\n  l2:\n    compression: {}\n    compress_min_size: {}\n"
    config = CacheConfig.from_yaml(yaml.format("zlib", "2000"), environ={})
    assert (config.l2.compression, config.l2.compress_min_size) == ("zlib", 2000)
    # A bare `off` is a boolean in YAML.
    assert CacheConfig.from_yaml(yaml.format("off", "1KB"), environ={}).l2.compression == "off"


@pytest.mark.parametrize(("environ", "named"), [
    ({"CACHE_COMPRESSION": "lz4"}, "CACHE_COMPRESSION='lz4'"),
    ({"CACHE_COMPRESSION": ""}, "CACHE_COMPRESSION=''"),
    ({"CACHE_COMPRESS_MIN_SIZE": "-1"}, "CACHE_COMPRESS_MIN_SIZE='-1'"),
    ({"CACHE_COMPRESS_MIN_SIZE": "1.5KiB"}, "CACHE_COMPRESS_MIN_SIZE='1.5KiB'"),
])
def test_bad_environment_values_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}: expected "):
        CacheConfig.from_env(environ)


@pytest.mark.parametrize(("setting", "named"), [
    ("compression: brotli", "cache.l2.compression='brotli'"),
    ("compress_min_size: -1", "cache.l2.compress_min_size=-1"),
])
def test_bad_yaml_values_name_the_key(setting: str, named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}: expected "):
        CacheConfig.from_yaml(f"cache:\n  l2:\n    {setting}\n", environ={})


def test_bad_fields_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^L2Config\.compression='gzip': expected one of "
                                          r"off, zlib, zstd$"):
        L2Config(compression="gzip")
    with pytest.raises(ConfigError, match=r"^L2Config\.compress_min_size=-5: "):
        L2Config(compress_min_size=-5)


def test_zstd_without_an_implementation_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    block_zstd(monkeypatch)
    with pytest.raises(ConfigError, match=r"^CACHE_COMPRESSION='zstd': zstd needs Python "
                                          r"3\.14\+ .*pip install 'dragonfly-cache\[zstd\]'"):
        CacheConfig.from_env({"CACHE_COMPRESSION": "zstd"})
    with pytest.raises(ConfigError, match=r"^cache\.l2\.compression='zstd': "):
        CacheConfig.from_yaml("cache:\n  l2:\n    compression: zstd\n", environ={})
    # zlib needs nothing.
    assert CacheConfig.from_env({"CACHE_COMPRESSION": "zlib"}).l2.compression == "zlib"
    assert Compression("zlib").decode("k", Compression("zlib").encode(DOCUMENT)) == DOCUMENT
