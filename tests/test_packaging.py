"""The core install: ``pip install .`` with no extras, in a fresh virtualenv.

It proves what issue 13 promises: the core needs only redis, hiredis and cachetools;
``import dragonfly_cache`` and a ``TieredCache`` against a real server work there; Flask,
gunicorn and PyYAML are absent; and each extra's feature fails with its install line.

Slow (marked ``slow``: a virtualenv and a wheel build, about 15 s). Like
``scripts/bootstrap.sh`` it installs from the package index through pip's cache; a pip
failure fails the test, it never skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the fresh venv; argv[1] is the server's address. Prints one JSON report, so
# the assertions (and their messages) stay here, in the test.
PROBE = r"""
import importlib, importlib.util, json, sys
import dragonfly_cache
from dragonfly_cache import CacheConfig, DragonflyConfig, L2Config, TieredCache, codecs

report = {"file": dragonfly_cache.__file__, "errors": {}}
config = CacheConfig(dragonfly=DragonflyConfig(addresses=[sys.argv[1]]), key_prefix="core:")
with TieredCache(config) as writer, TieredCache(config) as reader:
    writer.set("greeting", b"hello", ttl=60)
    report["l2_read"] = reader.get("greeting").decode()  # reader's L1 is empty: from L2
    report["l1_read"] = writer.get("greeting").decode()
    report["health"] = writer.health()["status"]
compressing = CacheConfig(dragonfly=config.dragonfly, key_prefix="core:",
                          l2=L2Config(compression="zlib", compress_min_size=0))
with TieredCache(compressing) as writer, TieredCache(config) as reader:
    writer.set("document", b"0123456789" * 1000, ttl=60)
    report["zlib_read"] = reader.get("document") == b"0123456789" * 1000
report["installed"] = sorted(
    name for name in ("flask", "gunicorn", "yaml", "prometheus_client",
                      "prometheus_flask_exporter", "msgpack", "zstandard")
    if importlib.util.find_spec(name) is not None)

def attempt(label, call):
    try:
        call()
    except ImportError as exc:
        report["errors"][label] = [type(exc).__name__, str(exc)]

for module in ("dragonfly_cache.flask", "dragonfly_cache.metrics", "dragonfly_cache.demo"):
    attempt(module, lambda: importlib.import_module(module))
attempt("from_yaml", lambda: CacheConfig.from_yaml("cache: {}\n"))
attempt("msgpack", lambda: codecs.resolve("msgpack"))
try:
    CacheConfig.from_env({"CACHE_COMPRESSION": "zstd"})
except ValueError as exc:  # ConfigError
    report["errors"]["zstd"] = [type(exc).__name__, str(exc)]
print(json.dumps(report))
"""


def _run(argv: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=240, check=False)


def _setup(argv: list[str], *, env: dict[str, str], cwd: Path) -> None:
    """A setup step (venv, pip): its failure fails the test with pip's output."""
    result = _run(argv, env=env, cwd=cwd)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr}")


def _source_copy(target: Path) -> Path:
    """What ``pip install .`` reads, copied: building in the checkout would leave build/ and
    *.egg-info there, next to the docs site the other tests build."""
    target.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "dragonfly_cache", target / "dragonfly_cache",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pip_install_without_extras(redis_server: RedisServer, tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "source")
    # Our own venv must not leak in: no PYTHONPATH (pytest's pythonpath is in-process only),
    # no VIRTUAL_ENV; pip's own settings (index, cache, find-links) stay.
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
           and not key.startswith(("DRAGONFLY_", "CACHE_"))}
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    _setup([sys.executable, "-m", "venv", str(venv)], env=env, cwd=tmp_path)
    _setup([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            str(source)], env=env, cwd=tmp_path)

    # -I: isolated, so neither the working directory nor PYTHON* variables add a path.
    probe = _run([str(python), "-I", "-c", PROBE, redis_server.address], env=env, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    report: dict[str, Any] = json.loads(probe.stdout)

    assert Path(report["file"]).is_relative_to(venv), report["file"]  # the installed copy
    assert (report["l2_read"], report["l1_read"], report["health"]) == ("hello", "hello",
                                                                        "healthy")
    assert report["installed"] == []  # no flask, gunicorn, yaml, prometheus, msgpack, zstandard
    assert report["zlib_read"] is True  # compression with the standard library's zlib
    line = "pip install 'dragonfly-cache[{}]'"
    no_zstd = {} if sys.version_info >= (3, 14) else {"zstd": [  # 3.14 has compression.zstd
        "ConfigError", "CACHE_COMPRESSION='zstd': zstd needs Python 3.14+ (compression.zstd) "
        f"or the zstandard package ({line.format('zstd')})"]}
    assert report["errors"] == {**no_zstd,
        "dragonfly_cache.flask": [
            "MissingExtraError",
            f"dragonfly_cache.flask needs the flask package: {line.format('flask')}"],
        "dragonfly_cache.metrics": [
            "MissingExtraError",
            f"dragonfly_cache.metrics needs the prometheus_client package: "
            f"{line.format('flask')}"],
        "dragonfly_cache.demo": [
            "MissingExtraError",
            f"dragonfly_cache.demo needs the flask package: {line.format('server')}"],
        "from_yaml": [
            "MissingExtraError",
            f"CacheConfig.from_yaml needs the yaml package: {line.format('yaml')}"],
        "msgpack": [
            "MissingExtraError",
            f"the msgpack codec needs the msgpack package: {line.format('msgpack')}"],
    }

    # The console script: the core commands work, the extras' fail in one line with exit 2.
    script = str(venv / "bin" / "dragonfly-cache")
    ping = _run([script, "ping"], env={**env, "DRAGONFLY_ADDRESSES": redis_server.address},
                cwd=tmp_path)
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout == (f"PONG {redis_server.address} {redis_server.kind} "
                           f"{redis_server.version}\n")
    serve = _run([script, "serve"], env=env, cwd=tmp_path)
    assert (serve.returncode, serve.stdout, serve.stderr) == (
        2, "", f"dragonfly-cache: error: serve needs the gunicorn package: "
               f"{line.format('server')}\n")
    config = tmp_path / "cache.yaml"
    config.write_text("cache: {}\n")
    ping_yaml = _run([script, "--config", str(config), "ping"], env=env, cwd=tmp_path)
    assert (ping_yaml.returncode, ping_yaml.stdout, ping_yaml.stderr) == (
        2, "", f"dragonfly-cache: error: --config needs the yaml package: "
               f"{line.format('yaml')}\n")
