"""Throw-away redis-server processes for the tests.

Each :class:`RedisServer` runs a real ``redis-server`` on a private 127.0.0.1 port with
persistence off and its own temporary directory, so tests never touch a system server and
a killed or restarted server comes back empty. Nothing here imports pytest: the fixtures in
``conftest.py`` turn these errors into test failures (never skips).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "FALLBACK_PATHS",
    "INSTALL_HINT",
    "RedisBinaryNotFoundError",
    "RedisServer",
    "RedisServerError",
    "ServerFactory",
    "find_executable",
    "find_redis_server",
    "free_port",
    "stop_all",
]

HOST = "127.0.0.1"
FALLBACK_PATHS: tuple[str, ...] = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
INSTALL_HINT = (
    "run ./scripts/test.sh (installs it), or `apt-get install redis-server` as root, "
    "or set REDIS_SERVER_BIN=/path/to/redis-server"
)

START_TIMEOUT = 5.0  # seconds for a fresh process to answer
RESTART_TIMEOUT = 3.0  # seconds to keep retrying a restart while the OS still holds the port
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.005
PROBE_TIMEOUT = 0.25
CLIENT_TIMEOUT = 2.0

# Every server that may own a process; stop_all() (atexit, session end) reaps strays.
_LIVE: set[RedisServer] = set()


class RedisServerError(RuntimeError):
    """Raised when a test redis-server cannot be started or does not answer."""


class RedisBinaryNotFoundError(RedisServerError):
    """Raised when no redis-server executable can be found; the message says how to get one."""


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_executable(name: str, variable: str, fallbacks: tuple[str, ...], hint: str,
                    error: type[RedisServerError], needed_for: str,
                    beside: str | None = None) -> str:
    """Locate an executable: ``$variable`` (an explicit setting is never silently
    ignored), then ``name`` next to ``beside`` (same build), then ``PATH``, then
    ``fallbacks``.

    Raises:
        error: nothing usable was found; the message says how to get it.
    """
    configured = os.environ.get(variable)
    if configured:
        if _is_executable(configured):
            return configured
        raise error(f"{variable}={configured} is not an executable file. "
                    f"To get {name}: {hint}.")
    candidates = [str(Path(beside).with_name(name))] if beside is not None else []
    on_path = shutil.which(name)
    candidates += [on_path] if on_path else []
    for candidate in [*candidates, *fallbacks]:
        if _is_executable(candidate):
            return candidate
    raise error(f"{name} was not found ({needed_for}; they are never skipped). "
                f"To get it: {hint}.")


def find_redis_server() -> str:
    """Locate the redis-server executable (``$REDIS_SERVER_BIN``, ``PATH``,
    :data:`FALLBACK_PATHS`).

    Raises:
        RedisBinaryNotFoundError: nothing usable was found.
    """
    return find_executable("redis-server", "REDIS_SERVER_BIN", FALLBACK_PATHS, INSTALL_HINT,
                           RedisBinaryNotFoundError, "the integration tests need a real one")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _command(*parts: str) -> bytes:
    """Encode one command in RESP, so any password survives intact."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _probe_pid(port: int, password: str | None) -> int | None:
    """Ask the server on ``port`` for its process id; None while it is not ready.

    Checking the pid (not just PING) matters: if our process lost the bind race, another
    server may be answering on the same port.
    """
    request = _command("INFO", "server")
    if password is not None:
        request = _command("AUTH", password) + request
    try:
        with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(request)
            reader = sock.makefile("rb")
            if password is not None and not reader.readline().startswith(b"+OK"):
                return None
            header = reader.readline()  # "$<len>" when ready; "-LOADING ..." etc. otherwise
            if not header.startswith(b"$"):
                return None
            body = reader.read(int(header[1:]))
    except (OSError, ValueError):
        return None
    for line in body.splitlines():
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


class RedisServer:
    """One private redis-server process on 127.0.0.1.

    Args:
        binary: path of the redis-server executable.
        password: if set, the server runs with ``--requirepass``.
        port: fixed port; by default a free one is picked (and re-picked once if lost).
        extra_args: more command-line arguments, e.g. ``("--maxmemory", "1mb")``.
    """

    host = HOST

    def __init__(
        self,
        binary: str,
        *,
        password: str | None = None,
        port: int | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.binary = binary
        self.password = password
        self.extra_args = tuple(extra_args)
        self._port_chosen = port is not None
        self.port = port if port is not None else free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="dfc-redis-"))
        self.log_path = self.workdir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._started_once = False
        self._clients: list[redis.Redis] = []
        _LIVE.add(self)  # owns a temporary directory from now on

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {self.address} {state}>"

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, the form DRAGONFLY_ADDRESSES takes."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while running, else None."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def argv(self) -> list[str]:
        """The full command line used to start the server."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        return [*args, *self.extra_args]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the process and wait until it answers; returns self.

        Raises:
            RedisServerError: the process exited or did not answer in time (with the log tail).
        """
        if self.is_running():
            return self
        try:
            self._spawn_and_wait()
        except _PortInUseError:
            if self._started_once or self._port_chosen:
                raise
            # Someone took the port between free_port() and our bind: pick another, once.
            self.port = free_port()
            self._spawn_and_wait()
        self._started_once = True
        return self

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after a grace period) and reap."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self.resume()
            proc.terminate()
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would; for fault-injection tests."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget_process()

    def restart(self) -> RedisServer:
        """Stop if needed and start again on the same port, with an empty dataset."""
        self.stop()
        deadline = time.monotonic() + RESTART_TIMEOUT
        while True:
            try:
                self._spawn_and_wait()
                return self
            except _PortInUseError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers (timeout tests)."""
        if self._proc is not None and self.is_running() and not self._paused:
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    @property
    def is_paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused

    def is_running(self) -> bool:
        """True while the process exists (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Close tracked clients, end the process and remove the temporary directory.

        SIGKILL rather than a graceful stop: the data is thrown away anyway, and redis only
        notices SIGTERM on its next cron tick (up to 100 ms per server at the default hz).
        """
        self.close_clients()
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
        _LIVE.discard(self)

    # -- clients ---------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A raw redis-py client for this server: password, short timeouts, no retries.

        redis-py >= 6 retries failed commands with backoff by default (seconds per failure);
        a harness client fails at once so fault tests stay fast and explicit. Keyword
        arguments override the defaults. The client is closed by :meth:`close` or
        :meth:`close_clients`.
        """
        client = redis.Redis(**{**self._client_options(), **kwargs})
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close every client handed out by :meth:`client`."""
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):  # closing must never mask a test result
                client.close()

    def flushall(self) -> None:
        """Remove every key in every database."""
        with redis.Redis(**self._client_options()) as client:
            client.flushall()

    def _client_options(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "password": self.password,
            "socket_timeout": CLIENT_TIMEOUT,
            "socket_connect_timeout": CLIENT_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        }

    # -- internals -------------------------------------------------------------------------

    def _spawn_and_wait(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- starting on port {self.port}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self._proc = proc
        self._paused = False
        _LIVE.add(self)  # again: close() may have run before a restart
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                self._forget_process()
                tail = self._log_tail()
                if "already in use" in tail:
                    raise _PortInUseError(f"port {self.port} is in use:\n{tail}")
                raise RedisServerError(
                    f"redis-server exited with code {proc.returncode} while starting on "
                    f"{self.address}:\n{tail}"
                )
            if _probe_pid(self.port, self.password) == proc.pid:
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server on {self.address} did not answer within {START_TIMEOUT:g}s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def _forget_process(self) -> None:
        self._proc = None
        self._paused = False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class ServerFactory(Protocol):
    """The type of the ``redis_server_factory`` fixture."""

    def __call__(
        self, password: str | None = None, extra_args: Iterable[str] = ()
    ) -> RedisServer: ...


class _PortInUseError(RedisServerError):
    """The server could not bind its port."""


def stop_all() -> None:
    """Stop and clean up every server still alive (session end, interpreter exit)."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


atexit.register(stop_all)
