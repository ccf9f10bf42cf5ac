"""A function run in a spawned process and driven over a pipe: the workers' common part.

The worker function takes its arguments and, last, its end of the pipe; it answers each
command it receives with one reply, its first reply says it started, and it returns on
``("stop",)`` after replying ``("stopped",)``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

__all__ = ["Spawned"]


class Spawned:
    """The test process's handle on one worker process.

    Args:
        target: the worker function (importable: it runs in a spawned process).
        args: its arguments; the pipe's other end is passed after them.
        start_timeout: how long the worker may take to send its first reply.
        call_timeout: how long :meth:`call` waits for a reply by default.

    Attributes:
        started: that first reply.
    """

    def __init__(self, target: Callable[..., None], *args: Any, start_timeout: float = 30.0,
                 call_timeout: float = 10.0) -> None:
        self.call_timeout = call_timeout
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(*args, child))
        self.process.start()
        child.close()
        self.started = self.call(timeout=start_timeout)

    def call(self, *command: Any, timeout: float | None = None) -> Any:
        """Send ``command`` (if any) and return the next reply."""
        if command:
            self.conn.send(command)
        wait = self.call_timeout if timeout is None else timeout
        assert self.conn.poll(wait), f"worker did not answer {command!r}"
        return self.conn.recv()

    def close(self) -> None:
        """Stop the worker (kill it if it does not answer) and close the pipe."""
        if self.process.is_alive():
            try:
                self.call("stop", timeout=5)
            except (AssertionError, OSError, EOFError):
                self.process.kill()
        self.process.join(5)
        self.conn.close()
