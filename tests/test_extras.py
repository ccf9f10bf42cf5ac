"""Optional extras: the guard helper and every guarded module, without a server.

A missing package is simulated with ``sys.modules[name] = None`` (which makes ``import
name`` fail as if it were not installed); ``tests/test_packaging.py`` checks the same in a
real virtualenv with no extras.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dragonfly_cache import CacheConfig, CacheError, MissingExtraError
from dragonfly_cache._extras import install_line, require
from dragonfly_cache.cli import main

OPTIONAL = ("flask", "prometheus_client", "prometheus_flask_exporter", "gunicorn", "yaml",
            "msgpack")

Capsys = pytest.CaptureFixture[str]


def message(needed_by: str, module: str, extra: str) -> str:
    """The whole message, as a regex: what needed it, the package, the install line."""
    return (f"^{re.escape(needed_by)} needs the {module} package: "
            f"pip install 'dragonfly-cache\\[{extra}\\]'$")


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as if it were not installed (undone after the test)."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


# -- the helper ---------------------------------------------------------------------------


def test_install_line() -> None:
    assert install_line("flask") == "pip install 'dragonfly-cache[flask]'"


def test_require_returns_the_module() -> None:
    assert require("json", "unused", "test") is json


def test_require_names_what_needed_it_the_package_and_the_install_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "flask")
    with pytest.raises(MissingExtraError, match=message("the thing", "flask", "flask")) as exc:
        require("flask", "flask", "the thing")
    error = exc.value
    # What `except ImportError` / `except ModuleNotFoundError` guards catch, and our root.
    assert isinstance(error, ModuleNotFoundError)
    assert isinstance(error, CacheError)
    assert error.name == "flask"
    assert error.__suppress_context__  # one traceback, not "No module named" above it


def test_require_of_a_submodule_whose_package_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(tmp_path)  # nothing there: the package does not exist
    with pytest.raises(MissingExtraError, match=message("x", "no_such_pkg_1c2d.sub", "yaml")):
        require("no_such_pkg_1c2d.sub", "yaml", "x")


def test_a_broken_dependency_of_an_installed_module_is_not_blamed_on_the_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "installed_but_broken_9f3a.py").write_text("import its_dependency_9f3a\n")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(ModuleNotFoundError) as exc:
        require("installed_but_broken_9f3a", "flask", "x")
    assert not isinstance(exc.value, MissingExtraError)
    assert exc.value.name == "its_dependency_9f3a"


# -- the guarded modules ------------------------------------------------------------------


@pytest.mark.parametrize(("module", "missing", "extra"), [
    ("dragonfly_cache.flask", "flask", "flask"),
    ("dragonfly_cache.flask", "prometheus_flask_exporter", "flask"),
    ("dragonfly_cache.metrics", "prometheus_client", "flask"),
    ("dragonfly_cache.demo", "flask", "server"),
    ("dragonfly_cache._gunicorn", "gunicorn", "server"),
    ("dragonfly_cache.testing", "fakeredis", "testing"),
    ("dragonfly_cache.otel", "opentelemetry.trace", "otel"),
])
def test_importing_a_module_without_its_extra(module: str, missing: str, extra: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, missing)
    monkeypatch.delitem(sys.modules, module, raising=False)  # import it afresh
    with pytest.raises(MissingExtraError, match=message(module, missing, extra)):
        importlib.import_module(module)


def test_from_yaml_without_pyyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "yaml")
    with pytest.raises(MissingExtraError,
                       match=message("CacheConfig.from_yaml", "yaml", "yaml")):
        CacheConfig.from_yaml("cache: {}\n")
    assert CacheConfig.from_env({}).key_prefix == ""  # the rest of config needs no extra


def test_the_core_imports_no_optional_package() -> None:
    """``import dragonfly_cache`` (and the CLI, config, codecs) with every extra blocked."""
    code = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None
import dragonfly_cache, dragonfly_cache.cli, dragonfly_cache.codecs
dragonfly_cache.CacheConfig.from_env({{}})
dragonfly_cache.codecs.resolve("json")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


# -- the command line: one line, exit 2 ---------------------------------------------------


def test_cli_config_file_without_pyyaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        capsys: Capsys) -> None:
    block(monkeypatch, "yaml")
    config = tmp_path / "cache.yaml"
    config.write_text("cache: {}\n")
    assert main(["--config", str(config), "ping"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("dragonfly-cache: error: --config needs the yaml package: "
                   "pip install 'dragonfly-cache[yaml]'\n")


@pytest.mark.parametrize("missing", ["gunicorn", "flask", "prometheus_flask_exporter"])
def test_cli_serve_without_the_server_extra(missing: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: Capsys) -> None:
    def no_exec(*args: object) -> None:
        raise AssertionError("serve must not exec gunicorn without the server extra")

    monkeypatch.setattr("os.execvp", no_exec)
    block(monkeypatch, missing)
    assert main(["serve"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"dragonfly-cache: error: serve needs the {missing} package: "
                   "pip install 'dragonfly-cache[server]'\n")
