"""Fork safety: in a forked child, every live cache rebuilds what it must not inherit.

Why an at-fork hook rather than pid checks on every call: a pid check costs the L1 hit
path a comparison on every get, and it runs too late to save a lock that a parent thread
held at the moment of fork (gunicorn --preload forks while the master's threads may be
mid-call). The hook runs in the child before any user code.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "register"]


class ForkAware(Protocol):
    """An object with per-process state to rebuild in a forked child."""

    def _after_fork_in_child(self) -> None: ...


_members: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(member: ForkAware) -> None:
    """Call ``member._after_fork_in_child()`` in every forked child while it lives."""
    _members.add(member)


def _after_fork_in_child() -> None:
    for member in list(_members):
        member._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
