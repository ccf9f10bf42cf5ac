"""Running test code on several threads, and forking while threads run."""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

__all__ = ["fork", "run_threads"]


def run_threads(count: int, target: Any, *args: Any) -> None:
    threads = [threading.Thread(target=target, args=(n, *args)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)


def fork() -> int:
    """``os.fork()``, quiet about the threads this process runs.

    Python 3.12+ warns (DeprecationWarning) when a process with threads forks, and the
    tests turn warnings into errors; forking with threads running (listeners, pools, a
    held lock) is exactly what the fork tests check.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()
