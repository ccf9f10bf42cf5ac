"""Running test code on several threads, and forking while threads run."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["fork", "run_threads"]


def run_threads(count: int, target: Callable[..., object], *args: Any,
                timeout: float = 30.0) -> None:
    """Call ``target(n, *args)`` on ``count`` threads at once (``n`` = 0 .. count - 1).

    The threads line up at a :class:`threading.Barrier` and call ``target`` together when
    the last one arrives, so a test needs no barrier of its own. What a thread raises
    reaches the test: this call raises it once every thread has finished.

    Raises:
        AssertionError: a thread was still running ``timeout`` seconds after the start
            (a deadlock, or a wait that never ends), or several threads raised (the first
            error is chained).
        BaseException: what ``target`` raised, when one thread did.
    """
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            start.wait(timeout)
            target(n, *args)
        except BaseException as exc:  # re-raised in the test's thread, below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), name=f"run_threads-{n}", daemon=True)
               for n in range(count)]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    running = sum(thread.is_alive() for thread in threads)
    assert running == 0, f"{running} of {count} threads still running after {timeout:g} s"
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise AssertionError(f"{len(errors)} of {count} threads raised; the first: "
                             f"{errors[0]!r}") from errors[0]


def fork() -> int:
    """``os.fork()``, quiet about the threads this process runs.

    Python 3.12+ warns (DeprecationWarning) when a process with threads forks, and the
    tests turn warnings into errors; forking with threads running (listeners, pools, a
    held lock) is exactly what the fork tests check.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()
