"""The stored form of values in L2: the bytes as given, or a compressed frame.

Writers compress a value of at least ``l2.compress_min_size`` bytes with their codec
(``l2.compression``) when that makes it smaller. Readers decode every form, whatever their
own setting, so a fleet can turn compression on (or off, or change codec) one process at
a time; values that other clients wrote read back as they are.

A frame is::

    MAGIC (6 bytes: 00 FF 44 46 43 01, "\\x00\\xffDFC\\x01")
    codec (1 byte: 0 stored as is, 1 zlib, 2 zstd)
    length of the value (8 bytes, unsigned, big-endian)
    payload (the value, compressed by the codec; for codec 0, the value itself)

No text starts with a NUL byte, and no UTF-8 text holds an FF byte anywhere; other binary
formats would have to begin with these exact six bytes. A value written through this
package that happens to begin with them is stored as a frame of codec 0, so it reads back
exactly. A frame that does not decode (truncated, altered, a codec this process lacks or
does not know, a payload that does not decompress to exactly ``length`` bytes) is a miss:
counted, logged at WARNING the first time (at DEBUG after that), never raised.
"""

from __future__ import annotations

import importlib
import logging
import struct
import threading
import zlib
from types import ModuleType
from typing import Any, Protocol

from ._extras import install_line

__all__ = ["MAGIC", "NAMES", "Compression", "CorruptFrame", "zstd_module"]

logger = logging.getLogger(__name__)

# Begins with NUL, as NEGATIVE does: Tiers.fetch sends only such values to decode().
MAGIC = b"\x00\xffDFC\x01"
_HEADER = struct.Struct(">6sBQ")  # MAGIC, codec, length of the value
_STORED, _ZLIB, _ZSTD = 0, 1, 2
NAMES = ("off", "zlib", "zstd")
_ZSTD_LEVEL = 3  # zstd's own default: about zlib's ratio, several times its speed
# The longest value a frame may declare: a Redis string's limit (proto-max-bulk-len), so a
# frame claiming more (written by anyone with write access) cannot make us allocate it.
MAX_LENGTH = 512 * 1024 * 1024


class CorruptFrame(ValueError):
    """A frame that does not decode to the value it declares."""


class Codec(Protocol):
    """One compression algorithm: ``decompress`` returns exactly ``length`` bytes or raises
    :class:`CorruptFrame` (never more than ``length + 1`` bytes are produced)."""

    ident: int
    name: str

    def compress(self, value: bytes) -> bytes: ...

    def decompress(self, payload: bytes, length: int) -> bytes: ...


class Zlib:
    """zlib (the standard library's), level 6: a zlib stream with its Adler-32 check."""

    ident, name = _ZLIB, "zlib"

    def compress(self, value: bytes) -> bytes:
        return zlib.compress(value)

    def decompress(self, payload: bytes, length: int) -> bytes:
        stream = zlib.decompressobj()
        try:
            # One byte of room past the declared length: a longer stream is caught below
            # instead of being inflated in full.
            value = stream.decompress(payload, length + 1)
        except zlib.error as exc:
            raise CorruptFrame(f"zlib: {exc}") from None
        if not stream.eof or stream.unused_data or len(value) != length:
            raise CorruptFrame(f"zlib: not one stream of {length} bytes")
        return value


class StdlibZstd:
    """zstd through the standard library's ``compression.zstd`` (Python 3.14+), or a module
    with its API; frames carry their content size and checksum."""

    ident, name = _ZSTD, "zstd"

    def __init__(self, module: ModuleType) -> None:
        self._zstd = module
        parameter = module.CompressionParameter
        self._options = {parameter.compression_level: _ZSTD_LEVEL,
                         parameter.checksum_flag: 1}

    def compress(self, value: bytes) -> bytes:
        return bytes(self._zstd.compress(value, options=self._options))

    def decompress(self, payload: bytes, length: int) -> bytes:
        stream = self._zstd.ZstdDecompressor()
        try:
            value = bytes(stream.decompress(payload, max_length=length + 1))
        except self._zstd.ZstdError as exc:
            raise CorruptFrame(f"zstd: {exc}") from None
        if not stream.eof or stream.unused_data or len(value) != length:
            raise CorruptFrame(f"zstd: not one frame of {length} bytes")
        return value


class ZstandardZstd:
    """zstd through the ``zstandard`` package; frames carry their content size and
    checksum, so they read the same through either implementation."""

    ident, name = _ZSTD, "zstd"

    def __init__(self, module: Any) -> None:
        self._zstd = module
        # A compressor or decompressor serves one thread at a time: one of each per thread.
        self._local = threading.local()

    def _contexts(self) -> Any:
        local = self._local
        if not hasattr(local, "compressor"):
            local.compressor = self._zstd.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)
            local.decompressor = self._zstd.ZstdDecompressor()
        return local

    def compress(self, value: bytes) -> bytes:
        return bytes(self._contexts().compressor.compress(value))

    def decompress(self, payload: bytes, length: int) -> bytes:
        try:
            # It allocates the frame's declared content size: check that first.
            if self._zstd.frame_content_size(payload) != length:
                raise CorruptFrame(f"zstd: the frame does not declare {length} bytes")
            value = self._contexts().decompressor.decompress(payload, allow_extra_data=False)
        except self._zstd.ZstdError as exc:
            raise CorruptFrame(f"zstd: {exc}") from None
        if len(value) != length:
            raise CorruptFrame(f"zstd: not one frame of {length} bytes")
        return bytes(value)


def zstd_module() -> ModuleType | None:
    """The zstd implementation this Python offers: the standard library's
    ``compression.zstd`` (3.14+), else the ``zstandard`` package (the ``zstd`` extra);
    None if neither."""
    for name in ("compression.zstd", "zstandard"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _zstd_codec() -> Codec | None:
    module = zstd_module()
    if module is None:
        return None
    if module.__name__ == "zstandard":
        return ZstandardZstd(module)
    return StdlibZstd(module)


class Compression:
    """How one cache writes values to L2, and how it reads back every stored form.

    Args:
        name: ``off``, ``zlib`` or ``zstd`` (the configuration checked that zstd exists).
        min_size: values shorter than this many bytes are stored as they are.
        zstd: the zstd codec to use (default: the one this Python offers); tests pass one.
    """

    def __init__(self, name: str = "off", min_size: int = 1024, *,
                 zstd: Codec | None = None) -> None:
        self.name = name
        self.min_size = min_size
        self._codecs: dict[int, Codec | None] = {_ZLIB: Zlib(),
                                                 _ZSTD: zstd if zstd else _zstd_codec()}
        self._codec = {"zlib": self._codecs[_ZLIB], "zstd": self._codecs[_ZSTD]}.get(name)
        if name != "off" and self._codec is None:
            raise ValueError(f"compression {name!r}: no such codec here")
        self._start_process_state()

    def _start_process_state(self) -> None:
        self._lock = threading.Lock()
        self.corrupt = 0
        self._warned = False

    def after_fork_in_child(self) -> None:
        """Start the counter (and the first warning) afresh, as the cache's other counters
        do in a forked child (and never inherit a lock a parent thread held)."""
        self._start_process_state()

    def __repr__(self) -> str:
        return f"<Compression {self.name} from {self.min_size} bytes>"

    def encode(self, value: bytes) -> bytes:
        """The form in which ``value`` is stored: a compressed frame when compression is
        on, the value is at least ``min_size`` bytes and the frame is smaller; else the
        value itself (framed as stored if it begins with :data:`MAGIC`)."""
        codec = self._codec
        if codec is not None and len(value) >= self.min_size:
            payload = codec.compress(value)
            if len(payload) + _HEADER.size < len(value):
                return _HEADER.pack(MAGIC, codec.ident, len(value)) + payload
        if value.startswith(MAGIC):  # would read back as a frame: make it one
            return _HEADER.pack(MAGIC, _STORED, len(value)) + value
        return value

    def decode(self, key: str, stored: bytes) -> bytes | None:
        """The value ``stored`` holds (itself, unless it begins with :data:`MAGIC`).

        Returns:
            The value, or None for a frame that does not decode: counted in
            :attr:`corrupt`, logged, never raised (a read answers it as a miss).
        """
        if not stored.startswith(MAGIC):
            return stored
        try:
            return self._unframe(stored)
        except (CorruptFrame, MemoryError) as exc:
            self._count_corrupt(key, exc)
            return None

    def _unframe(self, stored: bytes) -> bytes:
        if len(stored) < _HEADER.size:
            raise CorruptFrame(f"{len(stored)} bytes: shorter than a frame header")
        _, ident, length = _HEADER.unpack_from(stored)
        if length > MAX_LENGTH:
            raise CorruptFrame(f"declares {length} bytes, more than a value can hold")
        payload = stored[_HEADER.size:]
        if ident == _STORED:
            if len(payload) != length:
                raise CorruptFrame(f"stored: {len(payload)} bytes, {length} declared")
            return payload
        if ident not in self._codecs:
            raise CorruptFrame(f"unknown codec {ident} (written by a newer version?)")
        codec = self._codecs[ident]
        if codec is None:
            raise CorruptFrame(f"a zstd frame, and no zstd here: {install_line('zstd')}")
        return codec.decompress(payload, length)

    def _count_corrupt(self, key: str, exc: BaseException) -> None:
        with self._lock:
            self.corrupt += 1
            first, self._warned = not self._warned, True
        if first:
            logger.warning("the L2 value of %r is a compressed frame that does not decode "
                           "(%s); read as a miss. Further ones are counted in "
                           "l2_stats.corrupt and logged at DEBUG", key, exc)
        else:
            logger.debug("the L2 value of %r does not decode (%s); read as a miss", key, exc)
