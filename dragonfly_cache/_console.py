"""The command line's output: results on stdout, one-line errors on stderr, never a
secret of the configuration (:mod:`dragonfly_cache.cli`)."""

from __future__ import annotations

import sys

from .config import CacheConfig

__all__ = ["PROG", "Console"]

PROG = "dragonfly-cache"


class Console:
    """Writes the command's output, never letting a secret of the configuration through.

    The package never puts passwords in its messages; this is the second line of defence
    for text that comes from elsewhere (a server's error reply, a redis-py message).
    """

    def __init__(self, config: CacheConfig | None = None) -> None:
        secrets = [] if config is None else [config.dragonfly.password, config.admin_token]
        # Short secrets are left alone: masking every "1" or "6379" in a message (an
        # address, an error number) would show which text is the password.
        self._secrets = [secret for secret in secrets if secret and len(secret) >= 8]

    def redact(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def out(self, text: str) -> None:
        """A result on stdout."""
        print(self.redact(text), file=sys.stdout)

    def error(self, text: str) -> None:
        """One line on stderr, prefixed with the program name; newlines are folded."""
        print(f"{PROG}: {' '.join(self.redact(text).split())}", file=sys.stderr)
