"""The command line: ``dragonfly-cache`` / ``python -m dragonfly_cache``.

Most tests call ``main([...])`` in-process against the real redis-server fixtures; two run
it as a subprocess (``-m`` and the installed console script), where logging and exit codes
are those a user sees. ``serve`` is tested by catching the exec, never running gunicorn.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from dragonfly_cache.cli import main
from tests.helpers.servers import RedisServer, free_port

SCRIPT = Path(sys.executable).parent / "dragonfly-cache"
WRONG_PASSWORD = "wrong-pa55word-that-must-never-be-printed"

Capsys = pytest.CaptureFixture[str]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No configuration leaks in from the environment the tests run in."""
    for name in list(os.environ):
        if name.startswith(("DRAGONFLY_", "CACHE_")) or name in ("PORT", "BIND",
                                                                  "WEB_CONCURRENCY"):
            monkeypatch.delenv(name)


def use(monkeypatch: pytest.MonkeyPatch, server: RedisServer, **env: str) -> None:
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", server.address)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    return lines[0]


# -- ping ---------------------------------------------------------------------------------


def test_ping_healthy(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
                      capsys: Capsys) -> None:
    use(monkeypatch, redis_server)
    assert main(["ping"]) == 0
    out, err = capsys.readouterr()
    assert one_line(out) == (f"PONG {redis_server.address} {redis_server.kind} "
                             f"{redis_server.version}")
    assert err == ""


def test_ping_dead_server(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
                          capsys: Capsys) -> None:
    use(monkeypatch, redis_server)
    redis_server.kill()
    assert main(["ping"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    line = one_line(err)
    assert line.startswith(f"dragonfly-cache: {redis_server.address} unreachable: ")
    assert "Connection refused" in line
    assert "Traceback" not in err


def test_ping_a_cluster_and_a_cluster_missing_a_primary(redis_cluster: Any,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: Capsys) -> None:
    seeds = ",".join(redis_cluster.addresses)
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", seeds)
    assert main(["ping"]) == 0
    out, err = capsys.readouterr()
    assert one_line(out) == (f"PONG {seeds} {redis_cluster.kind} {redis_cluster.version} "
                             "(cluster of 3 primaries)")
    assert err == ""
    dead = redis_cluster.nodes[1]
    dead.kill()
    assert main(["ping"]) == 1
    out, err = capsys.readouterr()
    line = one_line(err)
    assert out == "" and "Traceback" not in err
    assert line.startswith(f"dragonfly-cache: {seeds} degraded: 1 of 3 cluster primaries "
                           f"unreachable: PING on {dead.address} failed: ")


def test_ping_names_the_primary_the_sentinels_name(redis_sentinels: Any,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: Capsys) -> None:
    primary = redis_sentinels.primary
    monkeypatch.setenv("DRAGONFLY_SENTINELS", ",".join(redis_sentinels.addresses))
    monkeypatch.setenv("DRAGONFLY_SENTINEL_MASTER", redis_sentinels.service)
    assert main(["ping"]) == 0
    out, err = capsys.readouterr()
    assert one_line(out) == (f"PONG {primary.address} {primary.kind} {primary.version} "
                             f"(primary of Sentinel service {redis_sentinels.service!r})")
    assert err == ""
    primary.kill()  # the sentinels still name it for a few hundred ms at least
    assert main(["ping"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err).startswith(f"dragonfly-cache: {primary.address} unreachable: ")


def test_ping_wrong_password_never_prints_it(auth_redis_server: RedisServer,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: Capsys) -> None:
    use(monkeypatch, auth_redis_server, DRAGONFLY_PASSWORD=WRONG_PASSWORD)
    assert main(["ping"]) == 1
    out, err = capsys.readouterr()
    assert "unreachable" in one_line(err)
    assert WRONG_PASSWORD not in out + err
    assert auth_redis_server.password is not None
    assert auth_redis_server.password not in out + err


def test_ping_with_the_right_password(auth_redis_server: RedisServer,
                                      monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    assert auth_redis_server.password is not None
    use(monkeypatch, auth_redis_server, DRAGONFLY_PASSWORD=auth_redis_server.password)
    assert main(["ping"]) == 0
    out, err = capsys.readouterr()
    assert one_line(out).startswith("PONG ")
    assert auth_redis_server.password not in out + err


def test_ping_starts_no_listener_thread(redis_server: RedisServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, redis_server)
    started: list[str] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    assert main(["ping"]) == 0
    assert not [name for name in started if "listener" in name]


# -- stats --------------------------------------------------------------------------------


def test_stats_prints_health_as_json(redis_server: RedisServer,
                                     monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    use(monkeypatch, redis_server)
    assert main(["stats"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "healthy"
    assert report["dragonfly"]["connected"] is True
    assert report["dragonfly"]["server"] == redis_server.kind
    assert report["dragonfly"]["version"] == redis_server.version
    assert report["breaker"] == "closed"
    assert report["coherence"] == "disabled"
    assert {"hits", "misses", "hit_rate"} <= set(report["l1_stats"])
    assert {"hits", "misses", "errors"} <= set(report["l2_stats"])


def test_stats_unhealthy_exits_1(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
                                 capsys: Capsys) -> None:
    use(monkeypatch, redis_server)
    redis_server.kill()
    assert main(["stats"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["status"] == "unhealthy"
    assert report["dragonfly"]["connected"] is False
    assert "Traceback" not in err


# -- invalidate ---------------------------------------------------------------------------


@pytest.fixture
def keys(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Four raw keys, three under the prefix ``app:``; returns the raw client."""
    use(monkeypatch, redis_server, CACHE_KEY_PREFIX="app:")
    client = redis_server.client()
    client.mset({"app:user:1": b"a", "app:user:2": b"b", "app:post:1": b"c",
                 "other:user:1": b"d"})
    return client


def remaining(client: Any) -> set[bytes]:
    return set(client.scan_iter())


def test_invalidate_removes_matching_keys(keys: Any, capsys: Capsys) -> None:
    assert main(["invalidate", "user:*"]) == 0
    assert one_line(capsys.readouterr().out) == "removed 2 keys"
    assert remaining(keys) == {b"app:post:1", b"other:user:1"}


def test_invalidate_one_key_says_key(keys: Any, capsys: Capsys) -> None:
    assert main(["invalidate", "post:1"]) == 0
    assert one_line(capsys.readouterr().out) == "removed 1 key"


class Terminal(io.StringIO):
    """Typed answers, as a terminal gives them."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "whatever\n"])
def test_invalidate_everything_declined_removes_nothing(keys: Any, answer: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: Capsys) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    assert main(["invalidate", "*"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "Remove every key under prefix 'app:'" in err
    assert "[y/N]" in err
    assert err.rstrip().endswith("dragonfly-cache: aborted")
    assert len(remaining(keys)) == 4


@pytest.mark.parametrize("pattern", ["*", "?*", "*?", "[a-z]*", "**"])
def test_invalidate_with_no_literal_prefix_asks_on_a_terminal(keys: Any, pattern: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: Capsys) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert main(["invalidate", pattern]) == 1
    assert "[y/N]" in capsys.readouterr().err
    assert len(remaining(keys)) == 4
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert main(["invalidate", pattern]) == 0
    assert one_line(capsys.readouterr().out) == "removed 3 keys"
    assert remaining(keys) == {b"other:user:1"}


@pytest.mark.parametrize("stdin", [io.StringIO("y\n"), io.StringIO(""), None])
def test_invalidate_with_no_literal_prefix_and_no_terminal_is_refused(
        keys: Any, stdin: Any, monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["invalidate", "?*"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "without a terminal to ask; pass --yes" in one_line(err)
    assert len(remaining(keys)) == 4


@pytest.mark.parametrize("argv", [["invalidate", "*", "--yes"], ["invalidate", "-y", "**"],
                                  ["invalidate", "[a-z]*", "--yes"]])
def test_invalidate_everything_with_yes(keys: Any, argv: list[str],
                                        monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # never read
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert one_line(out) == "removed 3 keys"
    assert "Remove" not in err
    assert remaining(keys) == {b"other:user:1"}


def test_a_pattern_with_a_literal_prefix_does_not_ask(keys: Any,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: Capsys) -> None:
    monkeypatch.setattr(sys, "stdin", None)  # no terminal, and none needed
    assert main(["invalidate", "u*"]) == 0
    assert one_line(capsys.readouterr().out) == "removed 2 keys"


def test_invalidate_empty_pattern_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: Capsys) -> None:
    assert main(["invalidate", ""]) == 2
    err = capsys.readouterr().err
    assert "usage: dragonfly-cache invalidate" in err
    assert "PATTERN" in err
    assert "Traceback" not in err


def test_invalidate_server_down(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
                                capsys: Capsys) -> None:
    use(monkeypatch, redis_server)
    redis_server.kill()
    assert main(["invalidate", "user:*"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err).startswith("dragonfly-cache: ")
    assert redis_server.address in err
    assert "Traceback" not in err


def test_invalidate_reaches_running_caches(redis_server: RedisServer,
                                           monkeypatch: pytest.MonkeyPatch,
                                           cache_factory: Callable[..., Any],
                                           capsys: Capsys) -> None:
    """A running app's L1 drops what the CLI removed (the CLI announces its invalidation)."""
    use(monkeypatch, redis_server, CACHE_KEY_PREFIX="app:")
    cache = cache_factory(key_prefix="app:")
    cache.set("user:1", b"stale")
    assert cache.get("user:1") == b"stale"  # now in its L1
    assert main(["invalidate", "user:*"]) == 0
    deadline = time.monotonic() + 5
    while cache.get("user:1") is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cache.get("user:1") is None


# -- configuration ------------------------------------------------------------------------


def test_config_file(redis_server: RedisServer, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", "127.0.0.1:1")  # the file wins over the env
    config = tmp_path / "cache.yaml"
    config.write_text(f'cache:\n  dragonfly:\n    addresses: ["{redis_server.address}"]\n'
                      f'  key_prefix: "yaml:"\n', encoding="utf-8")
    redis_server.client().mset({"yaml:a": b"1", "a": b"2"})
    assert main(["--config", str(config), "ping"]) == 0
    assert one_line(capsys.readouterr().out).startswith(f"PONG {redis_server.address} ")
    # accepted after the command as well
    assert main(["invalidate", "a", "--config", str(config)]) == 0
    assert one_line(capsys.readouterr().out) == "removed 1 key"
    assert remaining(redis_server.client()) == {b"a"}


def test_config_file_bad_value(tmp_path: Path, capsys: Capsys) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text("cache:\n  l1:\n    ttl: forever\n", encoding="utf-8")
    assert main(["--config", str(config), "ping"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = one_line(err)
    assert line.startswith("dragonfly-cache: error: ")
    assert "cache.l1.ttl" in line


def test_config_file_missing(tmp_path: Path, capsys: Capsys) -> None:
    assert main(["--config", str(tmp_path / "nope.yaml"), "stats"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("dragonfly-cache: error: ")
    assert "nope.yaml" in line


def test_config_file_password_never_printed(auth_redis_server: RedisServer, tmp_path: Path,
                                            capsys: Capsys) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text(f'cache:\n  dragonfly:\n    addresses: ["{auth_redis_server.address}"]\n'
                      f'    password: "{WRONG_PASSWORD}"\n', encoding="utf-8")
    assert main(["--config", str(config), "stats"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "unhealthy"
    assert WRONG_PASSWORD not in out + err


def test_env_bad_value(monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setenv("DRAGONFLY_POOL_SIZE", "0")
    assert main(["ping"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("dragonfly-cache: error: ")
    assert "DRAGONFLY_POOL_SIZE" in line


# -- argument handling --------------------------------------------------------------------


def test_no_command_is_a_usage_error(capsys: Capsys) -> None:
    assert main([]) == 2
    assert "usage: dragonfly-cache" in capsys.readouterr().err


def test_help_and_version(capsys: Capsys) -> None:
    assert main(["--help"]) == 0
    assert "invalidate" in capsys.readouterr().out
    assert main(["stats", "--help"]) == 0
    assert "process's own" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dragonfly-cache ")


# -- serve --------------------------------------------------------------------------------


class Exec(Exception):
    """Raised by the fake ``os.execvp``: like the real one, it does not return."""

    def __init__(self, file: str, argv: list[str]) -> None:
        super().__init__(file)
        self.file, self.argv = file, argv


@pytest.fixture
def fake_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def execvp(file: str, argv: list[str]) -> NoReturn:
        raise Exec(file, list(argv))

    monkeypatch.setattr(os, "execvp", execvp)


def serve_argv(*args: str) -> list[str]:
    with pytest.raises(Exec) as caught:
        main(["serve", *args])
    assert caught.value.file == sys.executable
    return caught.value.argv


def expected_argv(bind: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "python:dragonfly_cache._gunicorn",
            "--bind", bind, "--workers", str(workers), "dragonfly_cache.demo:create_app()"]


@pytest.mark.usefixtures("fake_exec")
def test_serve_defaults() -> None:
    assert serve_argv() == expected_argv("127.0.0.1:8000", 2)


@pytest.mark.usefixtures("fake_exec")
def test_serve_defaults_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    assert serve_argv() == expected_argv("127.0.0.1:9123", 5)


@pytest.mark.usefixtures("fake_exec")
def test_serve_bind_env_wins_over_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("BIND", "unix:/tmp/demo.sock")
    assert serve_argv() == expected_argv("unix:/tmp/demo.sock", 2)


@pytest.mark.usefixtures("fake_exec")
def test_serve_options_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    assert serve_argv("--bind", "0.0.0.0:80", "--workers", "3") == expected_argv("0.0.0.0:80", 3)


@pytest.mark.usefixtures("fake_exec")
@pytest.mark.parametrize(("env", "args", "named"), [
    ({"WEB_CONCURRENCY": "many"}, [], "WEB_CONCURRENCY"),
    ({"PORT": "http"}, [], "PORT"),
    ({"PORT": "70000"}, [], "PORT"),
    ({"WEB_CONCURRENCY": "\u00b2"}, [], "WEB_CONCURRENCY"),  # isdigit() but not int()
    ({}, ["--workers", "0"], "--workers"),
    ({"DRAGONFLY_DB": "-1"}, [], "DRAGONFLY_DB"),
    ({}, ["--config", "cache.yaml"], "--config"),
])
def test_serve_bad_settings(env: dict[str, str], args: list[str], named: str,
                            monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *args]) == 2  # and no Exec: gunicorn is never started
    err = capsys.readouterr().err
    assert named in err
    assert "Traceback" not in err


# -- as a user runs it --------------------------------------------------------------------


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DRAGONFLY_", "CACHE_"))}
    return subprocess.run(argv, env={**clean, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_python_dash_m(redis_server: RedisServer) -> None:
    ok = run([sys.executable, "-m", "dragonfly_cache", "ping"],
             DRAGONFLY_ADDRESSES=redis_server.address)
    assert ok.returncode == 0, ok.stderr
    assert one_line(ok.stdout) == (f"PONG {redis_server.address} {redis_server.kind} "
                                   f"{redis_server.version}")
    assert ok.stderr == ""

    # A real process has no logging configured: the package's warnings must not add lines.
    dead = f"127.0.0.1:{free_port()}"
    down = run([sys.executable, "-m", "dragonfly_cache", "ping"], DRAGONFLY_ADDRESSES=dead)
    assert down.returncode == 1
    assert down.stdout == ""
    assert one_line(down.stderr).startswith(f"dragonfly-cache: {dead} unreachable: ")


def test_console_script(auth_redis_server: RedisServer) -> None:
    assert SCRIPT.exists(), f"{SCRIPT} missing: run `.venv/bin/pip install -e '.[test]'`"
    assert auth_redis_server.password is not None
    ok = run([str(SCRIPT), "ping"], DRAGONFLY_ADDRESSES=auth_redis_server.address,
             DRAGONFLY_PASSWORD=auth_redis_server.password)
    assert ok.returncode == 0, ok.stderr
    assert one_line(ok.stdout).startswith("PONG ")

    wrong = run([str(SCRIPT), "ping"], DRAGONFLY_ADDRESSES=auth_redis_server.address,
                DRAGONFLY_PASSWORD=WRONG_PASSWORD)
    assert wrong.returncode == 1
    assert "unreachable" in one_line(wrong.stderr)
    assert "Traceback" not in wrong.stderr
    assert WRONG_PASSWORD not in wrong.stdout + wrong.stderr
