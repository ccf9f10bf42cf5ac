"""``python -m dragonfly_cache``: the command line (see :mod:`dragonfly_cache.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
