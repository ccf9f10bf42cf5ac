"""``./scripts/demo.sh`` as a new user runs it, then the README's path after it: the
example and the CLI lines against the demo's own server (the ``export`` line it prints),
slow clients that must not stall it, and what it leaves behind (nothing)."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
VENV_BIN = ROOT / ".venv" / "bin"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell: none of our variables, the temp directory under ``tmp_path``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DRAGONFLY_", "CACHE_", "PROMETHEUS_", "GUNICORN_"))}
    env.update(TMPDIR=str(tmp_path), **extra)
    return env


class Demo:
    def __init__(self, process: subprocess.Popen[bytes], output: Path, port: int) -> None:
        self.process, self.output, self.port = process, output, port

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def stop(self) -> int:
        """Ctrl-C, as a user stops it (SIGINT to the process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(5)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    port = free_port()
    output = tmp_path / "demo.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(["bash", "scripts/demo.sh"], cwd=ROOT,
                                   env=_environment(tmp_path, PORT=str(port)),
                                   stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    running = Demo(process, output, port)
    deadline = time.monotonic() + 60
    while True:
        try:
            if running.get("/api/v1/health/cache", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            running.stop()
            pytest.fail(f"the demo did not come up:\n{running.text()[-3000:]}")
        time.sleep(0.1)
    try:
        yield running
    finally:
        running.stop()


def test_the_readme_path_works_in_order_after_the_demo(demo: Demo, tmp_path: Path) -> None:
    """The banner's export line points the README's example and CLI lines at the demo."""
    banner = demo.text()
    found = re.search(r"^\s*export DRAGONFLY_ADDRESSES=(127\.0\.0\.1:\d+)$", banner, re.M)
    assert found, banner
    assert "generated CACHE_ADMIN_TOKEN for this run" in banner
    env = _environment(tmp_path, DRAGONFLY_ADDRESSES=found[1])
    example = next(block for block in _blocks("python") if "TieredCache.from_env()" in block)
    expected = _blocks("text")[0]
    ran = subprocess.run([str(VENV_BIN / "python"), "-c", example], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == expected
    commands = next(block for block in _blocks("bash") if "dragonfly-cache ping" in block)
    cli_lines = [line.split("#")[0].split() for line in commands.splitlines()
                 if line.startswith("dragonfly-cache ") and " serve" not in line]
    assert [line[1] for line in cli_lines] == ["ping", "stats", "invalidate"]
    for argv in cli_lines:
        argv = [str(VENV_BIN / argv[0]), *(arg.strip("'") for arg in argv[1:])]
        ran = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60, check=False)
        assert ran.returncode == 0, (argv, ran.stdout, ran.stderr)
    assert demo.get("/api/v1/health/cache")[0] == 200


def test_slow_clients_do_not_stall_the_workers(demo: Demo) -> None:
    """Three clients that send half a request body each hold a thread, not a worker."""
    stalled = []
    for _ in range(3):
        client = socket.create_connection(("127.0.0.1", demo.port))
        client.sendall(b"PUT /demo/items/1 HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"na")
        stalled.append(client)
    try:
        time.sleep(0.3)
        started = time.monotonic()
        for _ in range(5):
            assert demo.get("/api/v1/health/cache", timeout=3)[0] == 200
        assert time.monotonic() - started < 3
    finally:
        for client in stalled:
            client.close()


def test_it_leaves_nothing_behind_and_stops_cleanly(demo: Demo, tmp_path: Path) -> None:
    assert list(tmp_path.glob("tmp.*/prometheus/*.db"))  # the workers' metric files
    # This instance's control socket. gunicorn's master binds it only after the first
    # workers are spawned, so a worker can answer the health check before it exists.
    deadline = time.monotonic() + 15
    while not list(tmp_path.glob("tmp.*/gunicorn.ctl")):
        assert time.monotonic() < deadline, list(tmp_path.glob("tmp.*/*"))
        time.sleep(0.05)
    demo.stop()
    assert not list(tmp_path.glob("tmp.*")), list(tmp_path.iterdir())
    assert not list(tmp_path.glob("dragonfly_cache_*"))


def test_a_port_in_use_is_said_before_the_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=False,
                             env=_environment(tmp_path, PORT=str(port)))
    assert ran.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in ran.stderr
    assert "PORT=" in ran.stderr
    assert "gunicorn with" not in ran.stdout  # no banner
