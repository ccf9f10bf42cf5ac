"""Values and remaining lives of many keys on one server, in one round trip.

An L1 entry must never outlive its L2 key, so a batch read needs each key's PTTL along
with its value, and Redis has no multi-key PTTL. One round trip carries an MGET and, right
behind it, the :data:`~dragonfly_cache._scripts.PTTLS` script over the same keys: two
replies, each one flat list that the client parses in C. (MGET + N PTTL commands cost the
client N + 1 replies to read, ten times the script's cost; a script running the MGET too
made the server pass every value through Lua, which cost it more than the N PTTL calls.)
The script gets the keys as ARGV (see PTTLS for why), or as KEYS where the server refuses
that (Dragonfly: undeclared keys). Servers that refuse scripting (disabled, or not
permitted by an ACL) get the N PTTL commands from then on.

Like a single key's GET + PTTL, the two are not one atomic step: a key written between
them (by a TieredCache, which announces it: the racing L1 fill loses, or the entry is
invalidated right after) may pair an old value with the new key's life, and a key created
between them reads as the miss MGET saw.
"""

from __future__ import annotations

import logging

from redis.exceptions import NoScriptError

from ._connections import Connections, Packed, pack_args
from ._scripts import PTTLS, PTTLS_SHA

__all__ = ["MultiGet"]

logger = logging.getLogger(__name__)

_SCRIPT_CHUNK = 500  # keys per EVALSHA: the server runs nothing else meanwhile
# EVALSHA <sha> <numkeys>, to be followed by the packed keys: argument count, digits, numkeys.
_EVALSHA = b"*%%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%%d\r\n%%d\r\n" % PTTLS_SHA.encode()
_EVALSHA_ARGV = b"*%%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n0\r\n" % PTTLS_SHA.encode()


def _counts(total: int) -> list[int]:
    """How many keys each script call gets."""
    return [min(_SCRIPT_CHUNK, total - start) for start in range(0, total, _SCRIPT_CHUNK)]


class MultiGet:
    """The batch read of one server (its scripting verdict is remembered)."""

    def __init__(self) -> None:
        self.scripting = True  # False once the server refused EVALSHA/SCRIPT LOAD
        self.declare = False  # True once the server refused the keys as ARGV

    def read(self, names: list[str], connections: Connections
             ) -> tuple[list[bytes | None], list[int], int]:
        """The values (None: no such key) and PTTLs (ms; -1: no expiry, -2: no key) of the
        keys ``names`` (prefixed), in their order, and how many values are None (each has
        the PTTL -2).

        Raises:
            redis.RedisError: the round trip failed (the caller's error boundary turns it
                into a CacheUnavailableError).
        """
        if not self.scripting:
            values, *pttls = connections.roundtrip([("MGET", *names),
                                                    *(("PTTL", name) for name in names)])
        else:
            # The keys are packed once, and end both commands.
            bodies = [pack_args(names[i:i + _SCRIPT_CHUNK])
                      for i in range(0, len(names), _SCRIPT_CHUNK)]
            scripts = [Packed(_EVALSHA % (count + 3, len(str(count)), count) + body
                              if self.declare else _EVALSHA_ARGV % (count + 3) + body)
                       for count, body in zip(_counts(len(names)), bodies, strict=True)]
            values, *lives = connections.exchange([
                Packed(b"*%d\r\n$4\r\nMGET\r\n%b" % (len(names) + 1, b"".join(bodies))),
                *scripts])
            if isinstance(values, Exception):
                raise values
            refused = next((life for life in lives if isinstance(life, Exception)), None)
            if isinstance(refused, NoScriptError):  # first use here (or after SCRIPT FLUSH)
                lives = connections.exchange([("SCRIPT", "LOAD", PTTLS), *scripts])[1:]
                refused = next((life for life in lives if isinstance(life, Exception)), None)
            if refused is not None:
                # Keys as ARGV refused (Dragonfly): as KEYS from now on. Refused again:
                # scripting is disabled or not permitted here, plain commands from now on.
                if self.declare:
                    logger.info("EVALSHA refused (%s); get_many falls back to PTTL commands",
                                refused)
                    self.scripting = False
                self.declare = True
                return self.read(names, connections)
            pttls = lives[0] if len(lives) == 1 else [pttl for part in lives for pttl in part]
        # No None (nor b"") among the values is the common case, found without comparing
        # each value with None (a slow comparison: bytes and None do not compare).
        misses = 0 if len(list(filter(None, values))) == len(values) else values.count(None)
        if misses:  # a key created after the MGET has a PTTL: the miss stands
            pttls = [-2 if value is None else pttl
                     for value, pttl in zip(values, pttls, strict=True)]
        return values, pttls, misses
