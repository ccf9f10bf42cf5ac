"""Unit tests for dragonfly_cache.codecs and the codec settings of CacheConfig.

Pure and fast: no servers. The signed-pickle tests use a trap object whose unpickling
calls a function that records the call, to prove a rejected value is never unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import pickle
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

import dragonfly_cache
from dragonfly_cache import CacheConfig, CacheError, ConfigError, NotFound, codecs

SECRET = b"0123456789abcdef-signing-key"
OTHER_SECRET = b"fedcba9876543210-another-key"
TEXT_SECRET = "p1ckle-S1gning-k3y-0123"

# --------------------------------------------------------------------------- the trap

TRAP_CALLS: list[str] = []


def _spring() -> str:
    """Runs only if a Trap payload is unpickled."""
    TRAP_CALLS.append("unpickled")
    return "sprung"


class Trap:
    """Pickles to "call _spring()": stands in for an attacker's code-running payload."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_spring, ())


@pytest.fixture(autouse=True)
def _reset_trap() -> None:
    TRAP_CALLS.clear()


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float
    tags: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- public names


def test_public_names() -> None:
    assert dragonfly_cache.codecs is codecs
    assert "codecs" in dragonfly_cache.__all__
    assert "NotFound" in dragonfly_cache.__all__
    for name in codecs.__all__:
        assert hasattr(codecs, name), name


@pytest.mark.parametrize("codec", [codecs.BYTES, codecs.JSON, codecs.MSGPACK,
                                   codecs.SignedPickle(SECRET)])
def test_every_codec_satisfies_the_protocol(codec: codecs.Codec) -> None:
    assert isinstance(codec, codecs.Codec)
    assert codec.name in codecs.NAMES


def test_decode_error_hierarchy() -> None:
    assert issubclass(codecs.DecodeError, CacheError)
    assert issubclass(codecs.DecodeError, ValueError)


def test_not_found_hierarchy() -> None:
    assert issubclass(NotFound, CacheError)
    assert issubclass(NotFound, LookupError)
    assert NotFound.__doc__ and "negative_ttl" in NotFound.__doc__


# --------------------------------------------------------------------------- BYTES


@pytest.mark.parametrize("value", [b"", b"x", bytes(range(256)), b"\x00" * 10_000])
def test_bytes_round_trip(value: bytes) -> None:
    encoded = codecs.BYTES.encode(value)
    assert encoded == value
    assert codecs.BYTES.decode(encoded) == value


@pytest.mark.parametrize("value", ["text", 1, None, bytearray(b"x"), memoryview(b"x"), [b"x"]])
def test_bytes_encode_rejects_non_bytes(value: object) -> None:
    with pytest.raises(TypeError, match=rf"value must be bytes, got {type(value).__name__}"):
        codecs.BYTES.encode(value)


def test_bytes_decode_accepts_bytes_like() -> None:
    assert codecs.BYTES.decode(bytearray(b"ab")) == b"ab"  # type: ignore[arg-type]
    assert codecs.BYTES.decode(memoryview(b"ab")) == b"ab"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- JSON

JSON_VALUES = [
    {"a": 1, "b": [1, 2, 3]},
    [1, "two", 3.5, None, True, False],
    "text",
    "ünïcödé ✓ 🐉",
    "",
    0,
    -17,
    2**70,
    1.5,
    -0.0,
    None,
    True,
    {},
    [],
    {"nested": {"deep": [{"k": [None, {"x": "y"}]}]}, "n": 1e-9},
]


@pytest.mark.parametrize("value", JSON_VALUES)
def test_json_round_trip(value: object) -> None:
    encoded = codecs.JSON.encode(value)
    assert isinstance(encoded, bytes)
    assert codecs.JSON.decode(encoded) == value


def test_json_is_compact_sorted_utf8() -> None:
    assert codecs.JSON.encode({"b": [1, 2], "a": "é"}) == '{"a":"é","b":[1,2]}'.encode()


def test_json_equal_dicts_give_equal_bytes() -> None:
    one = {"z": 1, "a": {"y": 2, "b": 3}, "m": [{"q": 1, "p": 2}]}
    other = {"m": [{"p": 2, "q": 1}], "a": {"b": 3, "y": 2}, "z": 1}
    assert list(one) != list(other)
    assert codecs.JSON.encode(one) == codecs.JSON.encode(other)


def test_json_tuples_come_back_as_lists() -> None:
    assert codecs.JSON.decode(codecs.JSON.encode((1, (2, 3)))) == [1, [2, 3]]


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", datetime(2024, 1, 1), Decimal("1.5"),
                                   {1: "a", "b": 2}])
def test_json_encode_rejects_what_json_cannot_hold(value: object) -> None:
    with pytest.raises(TypeError):
        codecs.JSON.encode(value)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"{'a': 1}", b"[1,]", b"\xff\xfe", b"nope", b'"unterminated', b"[1] [2]",
     b"[" * 200_000 + b"]" * 200_000],
)
def test_json_decode_errors(data: bytes) -> None:
    with pytest.raises(codecs.DecodeError, match=r"^json codec: not a valid value"):
        codecs.JSON.decode(data)


def test_json_decode_accepts_bytes_like_and_rejects_text() -> None:
    assert codecs.JSON.decode(bytearray(b"[1]")) == [1]  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expects bytes, got str"):
        codecs.JSON.decode("[1]")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- MSGPACK

MSGPACK_VALUES = [
    {"a": 1, "b": [1, 2, 3]},
    [1, "two", 3.5, None, True, False],
    "ünïcödé ✓",
    b"\x00raw bytes\xff",
    {"bytes": b"\x01", "str": "\x01"},
    2**63,
    -(2**63),
    None,
    {"nested": {"deep": [{"k": [None, {"x": b"y"}]}]}},
]


@pytest.mark.parametrize("value", MSGPACK_VALUES)
def test_msgpack_round_trip(value: object) -> None:
    encoded = codecs.MSGPACK.encode(value)
    assert isinstance(encoded, bytes)
    decoded = codecs.MSGPACK.decode(encoded)
    assert decoded == value
    assert type(decoded) is type(value)  # str stays str, bytes stays bytes


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xdb\xff\xff\xff\xff", b"\x81\x90\x01"],
    ids=["empty", "never-used byte", "truncated array", "extra data", "truncated str",
         "unhashable map key"],
)
def test_msgpack_decode_errors(data: bytes) -> None:
    with pytest.raises(codecs.DecodeError, match=r"^msgpack codec: not a valid value"):
        codecs.MSGPACK.decode(data)


def test_decode_errors_do_not_quote_the_data() -> None:
    with pytest.raises(codecs.DecodeError) as exc:
        codecs.MSGPACK.decode(b"\x01SECRETDATA")  # a valid value followed by extra bytes
    assert "SECRETDATA" not in str(exc.value)


def test_msgpack_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # makes `import msgpack` fail
    hint = r"needs the msgpack package: pip install 'dragonfly-cache\[msgpack\]'"
    with pytest.raises(ImportError, match=hint):
        codecs.MSGPACK.encode({"a": 1})
    with pytest.raises(ImportError, match=hint):
        codecs.MSGPACK.decode(b"\x80")
    with pytest.raises(ImportError, match=hint):
        codecs.resolve("msgpack")
    with pytest.raises(ConfigError, match=r"^CACHE_CODEC='msgpack': .*needs the msgpack package"):
        CacheConfig.from_env({"CACHE_CODEC": "msgpack"})
    with pytest.raises(ConfigError, match=r"^CacheConfig\.codec='msgpack': .*msgpack package"):
        CacheConfig(codec="msgpack")


# --------------------------------------------------------------------------- SignedPickle

PICKLE_VALUES = [
    Point(1, 2.5, frozenset({"a", "b"})),
    {1, 2, 3},
    frozenset({"x"}),
    datetime(2024, 5, 17, 12, 30, 1, 123456, tzinfo=timezone.utc),
    timedelta(days=2, microseconds=7),
    Decimal("3.14159"),
    (1, (2, 3)),
    {("tuple", "key"): [Point(0, 0.0)], 5: b"bytes"},
    None,
    b"",
]


@pytest.mark.parametrize("value", PICKLE_VALUES)
def test_signed_pickle_round_trip(value: object) -> None:
    codec = codecs.SignedPickle(SECRET)
    decoded = codec.decode(codec.encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_signed_pickle_format() -> None:
    value = codecs.SignedPickle(SECRET).encode({"a": 1})
    version, mac, payload = value[:1], value[1:33], value[33:]
    assert version == b"\x01"
    assert hmac.compare_digest(mac, hmac.new(SECRET, version + payload, hashlib.sha256).digest())
    assert payload[:2] == b"\x80\x05"  # pickle protocol 5
    assert pickle.loads(payload) == {"a": 1}  # noqa: S301 - our own payload


def test_signed_pickle_a_valid_trap_value_does_spring() -> None:
    # The control for the tamper tests: the trap works, so its silence there means something.
    codec = codecs.SignedPickle(SECRET)
    assert codec.decode(codec.encode(Trap())) == "sprung"
    assert TRAP_CALLS == ["unpickled"]


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1:]


def _tampered_values() -> dict[str, bytes]:
    signed = codecs.SignedPickle(SECRET).encode(Trap())
    version, mac, payload = signed[:1], signed[1:33], signed[33:]
    bare = pickle.dumps(Trap(), protocol=5)
    other_payload = pickle.dumps(Trap(), protocol=4)
    return {
        # payload[1] is the protocol number: 5 -> 4 keeps it a working trap pickle.
        "payload byte flipped": version + mac + _flip(payload, 1),
        "payload swapped": version + mac + other_payload,
        "payload extended": signed + b".",
        "mac byte flipped": version + _flip(mac, 0) + payload,
        "mac last bit flipped": version + _flip(mac, 31, 0x80) + payload,
        "mac zeroed": version + bytes(32) + payload,
        "wrong secret": codecs.SignedPickle(OTHER_SECRET).encode(Trap()),
        "version byte changed": _flip(signed, 0, 0x03),
        "unsigned plain pickle": bare,
        "plain pickle behind a version byte": version + bare,
        "truncated payload": signed[:-1],
        "header only": signed[:33],
        "truncated mac": signed[:20],
        "one byte": signed[:1],
        "empty": b"",
    }


@pytest.mark.parametrize("case", list(_tampered_values()))
def test_signed_pickle_rejects_tampering_without_unpickling(case: str) -> None:
    value = _tampered_values()[case]
    with pytest.raises(codecs.DecodeError, match=r"^pickle codec: "):
        codecs.SignedPickle(SECRET).decode(value)
    assert TRAP_CALLS == [], f"{case}: the payload was unpickled"


@pytest.mark.parametrize("case", ["payload byte flipped", "payload swapped", "mac byte flipped",
                                  "wrong secret", "unsigned plain pickle"])
def test_tampered_payloads_are_armed(case: str) -> None:
    # Proves the rejected values above still carry a working trap: plain pickle.loads of
    # their payload would run it. Only the signature check stood in the way.
    value = _tampered_values()[case]
    payload = value if case == "unsigned plain pickle" else value[33:]
    assert pickle.loads(payload) == "sprung"  # noqa: S301 - deliberately, on our own trap
    assert TRAP_CALLS == ["unpickled"]


def test_signed_pickle_validly_signed_garbage_is_a_decode_error() -> None:
    payload = b"not a pickle"
    mac = hmac.new(SECRET, b"\x01" + payload, hashlib.sha256).digest()
    with pytest.raises(codecs.DecodeError, match="does not unpickle"):
        codecs.SignedPickle(SECRET).decode(b"\x01" + mac + payload)


def test_signed_pickle_rejects_text_input() -> None:
    with pytest.raises(TypeError, match="expects bytes, got str"):
        codecs.SignedPickle(SECRET).decode("x" * 40)  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15])
def test_signed_pickle_short_secret(secret: bytes) -> None:
    with pytest.raises(ValueError, match=r"secret must be at least 16 bytes"):
        codecs.SignedPickle(secret)


@pytest.mark.parametrize("secret", [TEXT_SECRET, None, bytearray(SECRET), 12345])
def test_signed_pickle_secret_must_be_bytes(secret: object) -> None:
    with pytest.raises(TypeError, match="secret must be bytes"):
        codecs.SignedPickle(secret)  # type: ignore[arg-type]


def test_signed_pickle_minimum_secret_and_repr() -> None:
    codec = codecs.SignedPickle(b"k" * 16)
    assert codec.decode(codec.encode([1])) == [1]
    assert "k" * 16 not in repr(codecs.SignedPickle(b"k" * 16))
    assert SECRET.decode() not in repr(codecs.SignedPickle(SECRET))


# --------------------------------------------------------------------------- resolve


@pytest.mark.parametrize(
    ("name", "expected"),
    [("bytes", codecs.BYTES), ("json", codecs.JSON), ("msgpack", codecs.MSGPACK),
     ("JSON", codecs.JSON), (" Bytes ", codecs.BYTES)],
)
def test_resolve_names(name: str, expected: codecs.Codec) -> None:
    assert codecs.resolve(name) is expected


def test_resolve_passes_codec_instances_through() -> None:
    class Upper:
        name = "upper"

        def encode(self, obj: Any) -> bytes:
            return str(obj).upper().encode()

        def decode(self, data: bytes) -> Any:
            return data.decode()

    custom = Upper()
    signed = codecs.SignedPickle(SECRET)
    assert codecs.resolve(custom) is custom
    assert codecs.resolve(signed) is signed
    assert codecs.resolve(codecs.JSON) is codecs.JSON


@pytest.mark.parametrize("name", ["pickle", "PICKLE", " pickle "])
def test_resolve_refuses_bare_pickle(name: str) -> None:
    pattern = r"pickle needs a secret: use codecs\.SignedPickle\(secret\)"
    with pytest.raises(ValueError, match=pattern):
        codecs.resolve(name)


def test_resolve_pickle_with_a_secret_signs() -> None:
    for secret in (SECRET, TEXT_SECRET):
        codec = codecs.resolve("pickle", pickle_secret=secret)
        assert isinstance(codec, codecs.SignedPickle)
        key = secret.encode() if isinstance(secret, str) else secret
        # Interchangeable with a SignedPickle built from the same secret.
        assert codecs.SignedPickle(key).decode(codec.encode({1, 2})) == {1, 2}
    with pytest.raises(ValueError, match="at least 16 bytes"):
        codecs.resolve("pickle", pickle_secret=b"short")


def test_resolve_ignores_a_secret_for_other_codecs() -> None:
    assert codecs.resolve("json", pickle_secret=SECRET) is codecs.JSON


@pytest.mark.parametrize("name", ["xml", "", "jsonx", "signedpickle", "marshal"])
def test_resolve_unknown_name_lists_the_valid_ones(name: str) -> None:
    pattern = r"unknown codec .*expected one of 'bytes', 'json', 'msgpack', 'pickle'"
    with pytest.raises(ValueError, match=pattern):
        codecs.resolve(name)


@pytest.mark.parametrize("value", [None, 42, b"json", object(), codecs.JsonCodec])
def test_resolve_rejects_other_types(value: object) -> None:
    with pytest.raises(TypeError, match="codec must be a Codec or a codec name"):
        codecs.resolve(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- CacheConfig


def test_config_codec_default_is_json_and_never_pickle() -> None:
    assert CacheConfig().codec == "json"
    assert CacheConfig.from_env({}).codec == "json"
    assert CacheConfig.from_yaml("cache: {}\n", environ={}).codec == "json"
    assert codecs.resolve(CacheConfig().codec) is codecs.JSON


@pytest.mark.parametrize(
    ("value", "expected"),
    [("bytes", "bytes"), ("json", "json"), ("msgpack", "msgpack"), (" MsgPack ", "msgpack"),
     ("JSON", "json")],
)
def test_config_codec_from_env(value: str, expected: str) -> None:
    assert CacheConfig.from_env({"CACHE_CODEC": value}).codec == expected


def test_config_pickle_with_secret_from_env_resolves_to_signed_pickle() -> None:
    cfg = CacheConfig.from_env({"CACHE_CODEC": "pickle", "CACHE_PICKLE_SECRET": TEXT_SECRET})
    assert (cfg.codec, cfg.pickle_secret) == ("pickle", TEXT_SECRET)
    codec = codecs.resolve(cfg.codec, pickle_secret=cfg.pickle_secret)
    assert isinstance(codec, codecs.SignedPickle)
    assert codec.decode(codec.encode(Point(1, 2.0))) == Point(1, 2.0)


def test_config_pickle_from_yaml() -> None:
    doc = "cache:\n  codec: pickle\n  pickle_secret: ${KEY}\n"
    cfg = CacheConfig.from_yaml(doc, environ={"KEY": TEXT_SECRET})
    assert (cfg.codec, cfg.pickle_secret) == ("pickle", TEXT_SECRET)


@pytest.mark.parametrize(
    "build",
    [
        lambda: CacheConfig.from_env({"CACHE_CODEC": "pickle"}),
        lambda: CacheConfig.from_env({"CACHE_CODEC": "pickle", "CACHE_PICKLE_SECRET": ""}),
        lambda: CacheConfig(codec="pickle"),
        lambda: CacheConfig.from_yaml("cache:\n  codec: pickle\n", environ={}),
        lambda: CacheConfig.from_yaml("cache:\n  codec: pickle\n  pickle_secret: ${K:-}\n",
                                      environ={}),
    ],
    ids=["env", "env-empty-secret", "direct", "yaml", "yaml-empty-secret"],
)
def test_config_pickle_without_secret_is_refused(build: Any) -> None:
    pattern = r"^CACHE_CODEC=pickle \(CacheConfig\.codec, cache\.codec\): CACHE_PICKLE_SECRET .*"
    with pytest.raises(ConfigError, match=pattern + "is required"):
        build()


def test_config_secret_without_pickle_is_allowed() -> None:
    cfg = CacheConfig(pickle_secret=TEXT_SECRET)
    assert (cfg.codec, cfg.pickle_secret) == ("json", TEXT_SECRET)


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: CacheConfig.from_env({"CACHE_CODEC": "xml"}),
         r"^CACHE_CODEC='xml': expected one of bytes, json, msgpack, pickle$"),
        (lambda: CacheConfig(codec="xml"),
         r"^CacheConfig\.codec='xml': expected one of"),
        (lambda: CacheConfig(codec=codecs.JSON),  # type: ignore[arg-type]
         r"^CacheConfig\.codec=codecs\.JSON: expected one of"),
        (lambda: CacheConfig.from_yaml("cache:\n  codec: 5\n", environ={}),
         r"^cache\.codec=5: expected one of"),
        (lambda: CacheConfig.from_yaml("cache:\n  kodec: json\n", environ={}),
         r"^cache\.kodec: unknown key \(expected one of: .*codec, pickle_secret"),
    ],
)
def test_config_bad_codec_names_what_was_written(build: Any, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build()


SHORT_SECRET = "tooShort-15char"


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: CacheConfig.from_env({"CACHE_PICKLE_SECRET": SHORT_SECRET}),
         r"^CACHE_PICKLE_SECRET: must be at least 16 characters \(value not shown\)$"),
        (lambda: CacheConfig(pickle_secret=SHORT_SECRET),
         r"^CacheConfig\.pickle_secret: must be at least 16 characters"),
        (lambda: CacheConfig.from_yaml(f"cache:\n  pickle_secret: {SHORT_SECRET}\n", environ={}),
         r"^cache\.pickle_secret: must be at least 16 characters"),
        (lambda: CacheConfig(pickle_secret=123456789012345678),  # type: ignore[arg-type]
         r"^CacheConfig\.pickle_secret: expected a string \(value not shown"),
        (lambda: CacheConfig.from_yaml("cache:\n  pickle_secret: 123456789012345678\n",
                                       environ={}),
         r"^cache\.pickle_secret: expected a string \(value not shown"),
    ],
)
def test_config_bad_pickle_secret_is_not_echoed(build: Any, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as exc:
        build()
    assert SHORT_SECRET not in str(exc.value)
    assert "123456789012345678" not in str(exc.value)


def test_config_pickle_secret_not_in_repr_or_errors() -> None:
    cfg = CacheConfig.from_env({"CACHE_CODEC": "pickle", "CACHE_PICKLE_SECRET": TEXT_SECRET})
    for text in (repr(cfg), str(cfg)):
        assert TEXT_SECRET not in text
        assert "codec='pickle'" in text
    with pytest.raises(ConfigError) as exc:
        CacheConfig.from_env({"CACHE_PICKLE_SECRET": TEXT_SECRET, "CACHE_CODEC": "xml"})
    assert TEXT_SECRET not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        CacheConfig.from_env({"CACHE_PICKLE_SECRET": TEXT_SECRET, "CACHE_L2_TTL": "x"})
    assert TEXT_SECRET not in str(exc.value)


def test_config_codec_fields_are_frozen() -> None:
    cfg = CacheConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.codec = "pickle"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pickle_secret = TEXT_SECRET  # type: ignore[misc]



@pytest.mark.parametrize("size", [16, 32, 63, 64, 65, 200])
def test_signed_pickle_macs_are_rfc_2104_hmac_sha256(size: int) -> None:
    """The precomputed keyed states give exactly hmac.new's signature, for keys shorter
    than, equal to and longer than SHA-256's 64-byte block (which are hashed first)."""
    secret = (hashlib.sha512(str(size).encode()).digest() * 4)[:size]
    data = codecs.SignedPickle(secret).encode({"n": size})
    mac, payload = data[1:33], data[33:]
    assert mac == hmac.new(secret, b"\x01" + payload, hashlib.sha256).digest()


def test_signed_pickle_remembers_small_verified_values_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    codec = codecs.SignedPickle(b"s" * 32)
    small, large = codec.encode({"a": 1}), codec.encode(b"x" * 10_000)
    macs: list[int] = []
    real_mac = codecs.SignedPickle._mac
    monkeypatch.setattr(codecs.SignedPickle, "_mac",
                        lambda self, payload: macs.append(1) or real_mac(self, payload))
    assert codec.decode(small) == codec.decode(small) == {"a": 1}
    assert len(macs) == 1  # the second decode of the same bytes is not checked again
    assert codec.decode(large) == codec.decode(large)
    assert len(macs) == 3  # a large value is checked every time (nothing kept of it)
    tampered = small[:-2] + bytes([small[-2] ^ 1]) + small[-1:]
    for _ in range(2):  # a failure is never remembered: refused every time
        with pytest.raises(codecs.DecodeError, match="bad signature"):
            codec.decode(tampered)
    assert len(macs) == 5
