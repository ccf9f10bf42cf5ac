"""What sentinels answer: the primary each names with its configuration epoch, which
answer wins, and the replicas a sentinel reports healthy (for replica reads)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

from ._nodes import format_address

__all__ = ["Answer", "choose", "healthy_replicas"]

# A replica flagged so is not read from: down in a sentinel's eyes, or out of its sight.
_UNHEALTHY = frozenset({"s_down", "o_down", "disconnected"})


@dataclasses.dataclass(frozen=True)
class Answer:
    """What one sentinel said: the primary (None: it does not monitor the service), the
    configuration epoch of that view, and the replicas it reports healthy."""

    sentinel: str
    primary: str | None
    epoch: int
    replicas: tuple[str, ...] = ()


def choose(answers: Sequence[Answer]) -> Answer | None:
    """The answer of the newest configuration: the highest epoch, then the address most
    sentinels of that epoch name (the first such answer on a tie); None if no sentinel
    named a primary."""
    known = [answer for answer in answers if answer.primary is not None]
    if not known:
        return None
    newest = max(answer.epoch for answer in known)
    votes = collections.Counter(answer.primary for answer in known if answer.epoch == newest)
    top = max(votes.values())
    return next(answer for answer in known
                if answer.epoch == newest and votes[answer.primary] == top)


def healthy_replicas(reply: Any) -> tuple[str, ...]:
    """The replicas of a ``SENTINEL REPLICAS`` reply (one flat field list per replica)
    that are neither down nor disconnected and whose link to the primary is up (a replica
    that lost it serves ever older data); () for an error reply."""
    if not isinstance(reply, list):
        return ()
    found = []
    for fields in reply:
        info = {_text(key): _text(value) for key, value in
                zip(fields[::2], fields[1::2], strict=True)}
        flags = set(info.get("flags", "").split(","))
        if flags & _UNHEALTHY or info.get("master-link-status", "ok") != "ok":
            continue
        if "ip" in info and info.get("port", "").isdigit():
            found.append(format_address(info["ip"], int(info["port"])))
    return tuple(found)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
