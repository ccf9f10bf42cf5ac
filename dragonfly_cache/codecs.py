"""Codecs: how cached objects become bytes in the shared tier, and back.

The cache itself stores bytes. ``memoize``, and any caller that caches objects, passes them
through a codec:

- :data:`BYTES` -- identity; values must already be ``bytes``.
- :data:`JSON` -- the default: compact UTF-8 JSON with sorted keys, so equal dicts give equal
  bytes. Tuples come back as lists and non-string dict keys as strings, as JSON defines.
- :data:`MSGPACK` -- MessagePack (the optional extra: ``pip install 'dragonfly-cache[msgpack]'``).
- :class:`SignedPickle` -- any picklable object, HMAC-SHA256 signed with a secret you supply.
  Pickle is never a default: unpickling attacker-controlled bytes runs arbitrary code, and a
  shared cache is writable by everything that can reach the server. A signed value is
  unpickled only after its signature checks out.

Wherever a codec is accepted, its name is accepted too: ``"bytes"``, ``"json"``,
``"msgpack"`` (see :func:`resolve`). The bare name ``"pickle"`` is refused unless a secret
comes with it.

A stored value that fails to decode raises :class:`DecodeError`; the cache treats it as a
miss (and counts it), it never reaches the caller as an exception.

Example::

    from dragonfly_cache import codecs

    codecs.JSON.decode(codecs.JSON.encode({"b": 1, "a": [1, 2]}))   # {'a': [1, 2], 'b': 1}
    signed = codecs.SignedPickle(secret)                             # secret: >= 16 bytes
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import pickle  # used only by SignedPickle, which checks the signature before unpickling
from types import ModuleType
from typing import Any, Final, Protocol, runtime_checkable

from ._extras import require
from .exceptions import CacheError

__all__ = [
    "BYTES",
    "JSON",
    "MIN_SECRET_BYTES",
    "MSGPACK",
    "NAMES",
    "BytesCodec",
    "Codec",
    "DecodeError",
    "JsonCodec",
    "MsgpackCodec",
    "SignedPickle",
    "resolve",
]

#: The codec names :func:`resolve` accepts (``"pickle"`` only together with a secret).
NAMES: Final = ("bytes", "json", "msgpack", "pickle")

#: The shortest secret :class:`SignedPickle` accepts.
MIN_SECRET_BYTES: Final = 16


class DecodeError(CacheError, ValueError):
    """Stored bytes could not be turned back into a value.

    Raised by a codec's ``decode``: malformed JSON or MessagePack, or a :class:`SignedPickle`
    value that is unsigned, truncated, tampered with or signed with another secret (such a
    value is never unpickled). The cache treats a value that fails to decode as a miss and
    counts it; it does not reach the caller as an exception.
    """


@runtime_checkable
class Codec(Protocol):
    """Turns objects into bytes and back; implement it to plug in your own format.

    Attributes:
        name: a short name for stats and error messages (e.g. ``"json"``).
    """

    name: str

    def encode(self, obj: Any) -> bytes:
        """Serialise ``obj``.

        Raises:
            TypeError: the codec cannot represent ``obj`` (or ValueError, as the format's
                library raises it).
        """
        ...

    def decode(self, data: bytes) -> Any:
        """Deserialise bytes made by :meth:`encode`.

        Raises:
            DecodeError: the bytes are not a valid value of this codec.
        """
        ...


def _reason(exc: BaseException) -> str:
    # The type and message only: a repr may quote the cached data (msgpack's ExtraData does).
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _as_bytes(data: object, codec: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{codec} codec: decode() expects bytes, got {type(data).__name__}")


class BytesCodec:
    """Identity: the value already is ``bytes`` and is stored as it is."""

    __slots__ = ()
    name = "bytes"

    def encode(self, obj: Any) -> bytes:
        """Return ``obj`` unchanged.

        Raises:
            TypeError: ``obj`` is not ``bytes``.
        """
        if not isinstance(obj, bytes):
            raise TypeError(f"bytes codec: value must be bytes, got {type(obj).__name__}")
        return obj

    def decode(self, data: bytes) -> bytes:
        """Return the stored bytes unchanged."""
        return _as_bytes(data, self.name)

    def __repr__(self) -> str:
        return "codecs.BYTES"


class JsonCodec:
    """Compact UTF-8 JSON with sorted keys: equal values give equal bytes."""

    __slots__ = ()
    name = "json"

    def encode(self, obj: Any) -> bytes:
        """Serialise ``obj`` as JSON.

        Raises:
            TypeError: ``obj`` holds something JSON cannot represent (a set, bytes, a
                datetime, dict keys of mixed types, ...).
            ValueError: ``obj`` is (or contains) a circular reference.
        """
        return json.dumps(obj, separators=(",", ":"), sort_keys=True,
                          ensure_ascii=False).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        """Parse JSON bytes.

        Raises:
            DecodeError: the bytes are not UTF-8 JSON.
        """
        try:
            return json.loads(_as_bytes(data, self.name).decode("utf-8"))
        # RecursionError: absurdly deep nesting ("[[[[..."), which is malformed data too.
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise DecodeError(f"json codec: not a valid value ({_reason(exc)})") from exc

    def __repr__(self) -> str:
        return "codecs.JSON"


class MsgpackCodec:
    """MessagePack via the optional ``msgpack`` package, imported on first use."""

    __slots__ = ()
    name = "msgpack"

    @staticmethod
    def module() -> ModuleType:
        """Import and return ``msgpack``.

        Raises:
            MissingExtraError: msgpack is not installed (an ImportError whose message
                says how to get it).
        """
        # The msgpack extra, imported on first use.
        return require("msgpack", "msgpack", "the msgpack codec")

    def encode(self, obj: Any) -> bytes:
        """Serialise ``obj`` as MessagePack (str and bytes stay distinct).

        Raises:
            TypeError: ``obj`` holds something MessagePack cannot represent.
            ImportError: msgpack is not installed.
        """
        packed: bytes = self.module().packb(obj, use_bin_type=True)
        return packed

    def decode(self, data: bytes) -> Any:
        """Parse MessagePack bytes (map keys must be str or bytes, msgpack's safe default).

        Raises:
            DecodeError: the bytes are not one valid MessagePack value.
            ImportError: msgpack is not installed.
        """
        msgpack = self.module()
        try:
            return msgpack.unpackb(_as_bytes(data, self.name), raw=False)
        # msgpack signals bad input with ValueError subclasses (ExtraData, FormatError,
        # StackError), UnpackException subclasses (OutOfData) and TypeError (unhashable key).
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise DecodeError(f"msgpack codec: not a valid value ({_reason(exc)})") from exc

    def __repr__(self) -> str:
        return "codecs.MSGPACK"


_BLOCK = hashlib.sha256().block_size
_REMEMBERED, _REMEMBERED_SIZE = 1024, 4096
_HEADER_SIZE = 1 + hashlib.sha256().digest_size  # SignedPickle: version byte, then the MAC
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


class SignedPickle:
    """Pickle (protocol 5) signed with HMAC-SHA256, for objects JSON cannot hold.

    Stored format: one version byte (``0x01``), the 32-byte HMAC-SHA256 of the version byte
    and payload keyed with ``secret``, then the pickle payload. :meth:`decode` checks the
    signature with :func:`hmac.compare_digest` before anything is unpickled, so a value
    that is unsigned, truncated, tampered with or signed with another secret raises
    :class:`DecodeError` and is never unpickled.

    A small value (up to 4 KiB) whose signature was checked is remembered (the last 1024 of
    them, by content), so an L1 hit of it is not checked again: its bytes cannot change.

    Every process that shares the cache must use the same secret; changing it turns the
    existing values into misses. Keep it out of source control (``CACHE_PICKLE_SECRET``).

    Args:
        secret: the HMAC key, at least 16 bytes (use ``secrets.token_bytes(32)``).

    Raises:
        TypeError: ``secret`` is not bytes.
        ValueError: ``secret`` is shorter than 16 bytes.
    """

    __slots__ = ("_inner", "_outer", "_remembered")
    name = "pickle"
    VERSION: Final = b"\x01"
    _HEADER_SIZE: Final = _HEADER_SIZE

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes):
            raise TypeError(
                f"SignedPickle: secret must be bytes, got {type(secret).__name__} "
                "(encode a text secret, e.g. secret.encode())"
            )
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"SignedPickle: secret must be at least {MIN_SECRET_BYTES} bytes "
                f"(got {len(secret)}; use secrets.token_bytes(32))"
            )
        # HMAC-SHA256 (RFC 2104) with its two keyed states made once: each value then
        # costs two hash copies instead of hmac.new's setup (0.65 us instead of 1.8 us on
        # a small value: a third of an adapter's L1 hit). Same bytes as hmac.new.
        key = secret if len(secret) <= _BLOCK else hashlib.sha256(secret).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))
        # The small values verified lately, by content, with their payload: an L1 hit hands
        # out the same bytes object again and again, and its signature cannot change. Only
        # successes are remembered (an exception is never cached), and at most _REMEMBERED
        # values of at most _REMEMBERED_SIZE bytes, so the memo holds at most 8 MiB.
        self._remembered = functools.lru_cache(maxsize=_REMEMBERED)(self._payload)

    def _mac(self, payload: bytes | memoryview) -> bytes:
        inner = self._inner.copy()
        inner.update(self.VERSION)
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def encode(self, obj: Any) -> bytes:
        """Pickle and sign ``obj``.

        Raises:
            TypeError: ``obj`` cannot be pickled (or pickle's own PicklingError,
                AttributeError for local classes and functions).
        """
        payload = pickle.dumps(obj, protocol=5)
        return self.VERSION + self._mac(payload) + payload

    def decode(self, data: bytes) -> Any:
        """Verify the signature, then unpickle.

        Raises:
            DecodeError: the value is too short, has an unknown version, a wrong signature,
                or a valid signature over a payload that no longer unpickles (e.g. its class
                was renamed). In the first three cases nothing is unpickled.
        """
        if type(data) is not bytes:  # the hot path (an adapter's L1 hit) skips the call
            data = _as_bytes(data, self.name)
        # The signature check must come first: unpickling unverified bytes runs their code.
        payload: bytes | memoryview
        if len(data) <= _REMEMBERED_SIZE:
            payload = self._remembered(data)
        else:
            self._verify(data)
            payload = memoryview(data)[_HEADER_SIZE:]  # read in place, not copied
        try:
            return pickle.loads(payload)  # noqa: S301 - signed by a holder of the secret
        except Exception as exc:
            raise DecodeError(
                f"pickle codec: signed value does not unpickle ({_reason(exc)})"
            ) from exc

    def _payload(self, data: bytes) -> bytes:
        """The pickle in a small ``data`` this codec signed (a copy is cheaper than a view
        when small), else :class:`DecodeError`."""
        self._verify(data)
        return data[_HEADER_SIZE:]

    def _verify(self, data: bytes) -> bool:
        """True if ``data`` is a value this codec signed, else :class:`DecodeError`."""
        if len(data) <= self._HEADER_SIZE:
            raise DecodeError("pickle codec: value too short to be signed")
        if data[:1] != self.VERSION:
            raise DecodeError("pickle codec: unknown format version (not a signed value?)")
        mac, payload = data[1:self._HEADER_SIZE], memoryview(data)[self._HEADER_SIZE:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise DecodeError("pickle codec: bad signature (tampered, or another secret)")
        return True

    def __repr__(self) -> str:
        return "codecs.SignedPickle(secret=<hidden>)"


#: Identity codec for values that already are bytes.
BYTES: Final = BytesCodec()
#: The default codec.
JSON: Final = JsonCodec()
#: MessagePack (needs the ``msgpack`` extra when used).
MSGPACK: Final = MsgpackCodec()

_BY_NAME: Final[dict[str, Codec]] = {"bytes": BYTES, "json": JSON, "msgpack": MSGPACK}


def resolve(codec: Codec | str, *, pickle_secret: bytes | str | None = None) -> Codec:
    """Turn a codec or a codec name into a codec.

    Args:
        codec: a :class:`Codec` (returned as it is) or one of ``"bytes"``, ``"json"``,
            ``"msgpack"`` (any case). ``"pickle"`` is accepted only with ``pickle_secret``.
        pickle_secret: the secret for ``"pickle"`` (bytes, or text encoded as UTF-8, as
            ``CacheConfig.pickle_secret`` holds it); ignored for the other names.

    Returns:
        The codec.

    Raises:
        ValueError: an unknown name, or ``"pickle"`` without a secret.
        TypeError: ``codec`` is neither a Codec nor a string.
        ImportError: ``"msgpack"`` but the msgpack package is not installed.
    """
    if isinstance(codec, str):
        name = codec.strip().lower()
        if name == "pickle":
            if pickle_secret is None:
                raise ValueError(
                    "pickle needs a secret: use codecs.SignedPickle(secret) "
                    "(or set CACHE_CODEC=pickle with CACHE_PICKLE_SECRET)"
                )
            if isinstance(pickle_secret, str):
                pickle_secret = pickle_secret.encode("utf-8")
            return SignedPickle(pickle_secret)
        if name not in _BY_NAME:
            raise ValueError(
                f"unknown codec {codec!r}: expected one of {', '.join(map(repr, NAMES))} "
                "or a Codec instance ('pickle' needs a secret)"
            )
        if name == "msgpack":
            MSGPACK.module()  # fail now, with instructions, rather than on the first write
        return _BY_NAME[name]
    # A class has the protocol's attributes too (codec=codecs.JsonCodec): not a codec.
    if isinstance(codec, Codec) and not isinstance(codec, type):
        return codec
    got = f"the class {codec.__name__}" if isinstance(codec, type) else type(codec).__name__
    raise TypeError(f"codec must be a Codec or a codec name, got {got}")
