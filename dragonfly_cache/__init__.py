"""dragonfly_cache: a synchronous, thread-safe two-tier cache (in-process L1 + Dragonfly L2)."""

from . import codecs
from ._version import __version__
from .config import CacheConfig, DragonflyConfig, L1Config, L2Config
from .exceptions import CacheError, CacheUnavailableError, ConfigError, MissingExtraError, NotFound
from .tiered import TieredCache

__all__ = [
    "CacheConfig",
    "CacheError",
    "CacheUnavailableError",
    "ConfigError",
    "DragonflyConfig",
    "L1Config",
    "L2Config",
    "MissingExtraError",
    "NotFound",
    "TieredCache",
    "__version__",
    "codecs",
]
