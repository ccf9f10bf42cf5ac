"""The documentation site builds, and what it says is true.

- ``mkdocs build --strict`` succeeds: no broken link, anchor or API reference.
- Every ```python block in README.md and docs/ runs against a private redis-server (a block
  right after a ``<!-- no-run -->`` line is exempt). Examples name the default address
  ``127.0.0.1:6379``; it is pointed at the private server. A block that defines a Flask
  ``app`` is then exercised through the test client, every GET route of it.
- The Grafana dashboard and the alerting rules query only series the code exports.
- Every environment variable named anywhere in the docs exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from flask import Flask

import dragonfly_cache
from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config, TieredCache
from dragonfly_cache import _fork as fork_module
from dragonfly_cache.flask import _SETTINGS
from dragonfly_cache.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
DASHBOARD = DOCS / "grafana" / "dragonfly_cache.json"
NO_RUN = "<!-- no-run -->"
DEFAULT_ADDRESS = "127.0.0.1:6379"


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _fenced_blocks(path: Path, language: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, code, marked no-run) of each ```language block in ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() != f"```{language}":
            index += 1
            continue
        indent = len(line) - len(line.lstrip())
        previous = next((text.strip() for text in reversed(lines[:index]) if text.strip()), "")
        start = index + 1
        end = next(i for i in range(start, len(lines)) if lines[i].strip() == "```")
        code = "\n".join(text[indent:] for text in lines[start:end]) + "\n"
        yield start, code, previous == NO_RUN
        index = end + 1


@dataclasses.dataclass(frozen=True)
class Example:
    """One ```python block of the docs."""

    page: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def _examples() -> tuple[list[Example], list[Example]]:
    runnable, exempt = [], []
    for path in PAGES:
        for line, code, no_run in _fenced_blocks(path, "python"):
            (exempt if no_run else runnable).append(Example(_relative(path), line, code))
    return runnable, exempt


RUNNABLE, EXEMPT = _examples()


# -- the build ------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("get_or_load", "CacheUnavailableError", "DragonflyCache", "from_yaml",
                 "sync_all", "Exit codes"):
        assert name in api, f"{name} missing from the generated API reference"
    assert ":class:" not in api and ":meth:" not in api  # docs/_ext/griffe_roles.py ran
    copied = json.loads((site / "grafana" / "dragonfly_cache.json").read_text("utf-8"))
    assert copied == json.loads(DASHBOARD.read_text("utf-8"))


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(node: Any) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    in_nav = set(pages(config["nav"]))
    on_disk = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert in_nav == on_disk


# -- the examples ---------------------------------------------------------------------------


def test_examples_are_found_and_few_are_exempt() -> None:
    pages = {example.page for example in RUNNABLE}
    assert {"README.md", "docs/quickstart.md", "docs/flask.md", "docs/migration.md",
            "docs/configuration.md", "docs/index.md"} <= pages
    assert len(EXEMPT) <= 3, [str(example) for example in EXEMPT]


def _exercise(app: Flask) -> None:
    """GET every route (twice: miss, then hit) with sample arguments; none may fail."""
    client = app.test_client()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or "GET" not in (rule.methods or ()):
            continue
        with app.test_request_context():
            from flask import url_for

            url = url_for(rule.endpoint, **dict.fromkeys(rule.arguments, 1))
        for _ in range(2):
            response = client.get(url)
            assert response.status_code < 500, (url, response.get_data(as_text=True))
    if "dragonfly_cache" in app.extensions:
        health = client.get("/api/v1/health/cache")
        assert health.status_code == 200, health.get_json()
        assert "dragonfly_cache_requests_total" in client.get("/metrics").get_data(as_text=True)


def _close_foreign_clients(namespace: dict[str, Any]) -> None:
    """Close redis-py clients that the Flask-Caching / dogpile.cache examples opened."""
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, redis.Redis):
            obj.close()
            return
        module = type(obj).__module__
        if module.startswith(("flask_caching", "cachelib", "dogpile")):
            for value in list(vars(obj).values()) if hasattr(obj, "__dict__") else []:
                visit(value, depth + 1)

    for value in namespace.values():
        visit(value, 0)


@pytest.fixture
def cache_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: Any) -> str:
    """A clean environment and scratch directory for one example; returns the address."""
    for name in list(os.environ):
        if name.startswith(("DRAGONFLY_", "CACHE_", "PROMETHEUS_MULTIPROC")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", redis_server.address)
    monkeypatch.chdir(tmp_path)
    # `CacheConfig.from_yaml("cache.yaml")` in the examples reads the reference's example.
    reference = DOCS / "configuration.md"
    yaml_example = next(code for _, code, _ in _fenced_blocks(reference, "yaml"))
    (tmp_path / "cache.yaml").write_text(yaml_example, encoding="utf-8")
    address: str = redis_server.address
    return address


# dogpile.cache's Redis backend writes with SETEX, which redis-py marks deprecated; that is
# the migration guide's "before" code, not ours.
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
@pytest.mark.parametrize("example", RUNNABLE, ids=str)
def test_example_runs(example: Example, cache_env: str) -> None:
    code = example.code.replace(DEFAULT_ADDRESS, cache_env)
    before = set(fork_module._members)
    # A real module, as a script is: a single-file Django project names itself
    # (ROOT_URLCONF=__name__), so the name must import.
    module = types.ModuleType("docs_example")
    sys.modules[module.__name__] = module
    namespace: dict[str, Any] = vars(module)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, str(example), "exec"), namespace)  # noqa: S102 - the docs' own code
            app = namespace.get("app")
            if isinstance(app, Flask):
                _exercise(app)
    finally:
        del sys.modules[module.__name__]
        for member in set(fork_module._members) - before:  # caches (and fleet mutexes)
            if isinstance(member, TieredCache):
                member.close()
        _close_foreign_clients(namespace)


def _acl_line(page: str) -> tuple[list[str], str, str, str]:
    """The ``redis-cli ACL SETUSER`` line of a docs page: (command, user, password, prefix)."""
    text = (DOCS / page).read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("redis-cli ACL SETUSER"))
    command = shlex.split(line)[1:]
    password = next(arg[1:] for arg in command if arg.startswith(">"))
    prefix = next(arg[1:-1] for arg in command if arg.startswith("~"))  # "~myapp:*"
    return command, command[2], password, prefix


def exercise_acl_user(config: CacheConfig, mode: str) -> None:
    """Every operation, and coherence in ``mode``, with no error counted anywhere; and
    ``auto`` would pick tracking for this user."""
    auto = dataclasses.replace(config, l1=dataclasses.replace(config.l1, invalidation="auto"))
    with TieredCache(auto) as probe:
        deadline = time.monotonic() + 5
        while probe.stats()["coherence"]["mode"] == "auto" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert probe.stats()["coherence"]["mode"] == "tracking"
    with TieredCache(config) as writer, TieredCache(config) as reader:
        writer.set("a", b"1")
        assert reader.get("a") == b"1"
        assert reader.get_many(["a", "b"]) == {"a": b"1"}
        assert reader.exists("a")
        assert writer.get_or_load("loaded", lambda: b"x") == b"x"
        writer.set_many({"b": b"2", "c": b"3"})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
                writer.stats()["coherence"]["state"] == "subscribed"
                and reader.stats()["coherence"]["state"] == "subscribed"):
            time.sleep(0.01)
        assert writer.add("n", b"1") and not reader.add("n", b"2")
        assert writer.incr("n", 4) == 5 and reader.decr("n") == 4 and reader.get("n") == b"4"
        assert writer.touch("n", 30) and 0 < (writer.ttl("n") or 0) <= 30
        assert writer.get_or_load("locked", lambda: b"l", lock=True) == b"l"  # fleet lock
        assert writer.delete_many(["n", "locked", "never"]) == 2
        writer.delete("a")
        assert writer.invalidate("*") == 3  # loaded, b, c
        writer.set("d", b"4")
        assert writer.clear() == 1
        assert writer.health()["status"] == "healthy"
        for cache in (writer, reader):
            stats = cache.stats()
            assert stats["l2_stats"]["errors"] == 0, stats["l2_stats"]
            assert stats["coherence"]["state"] == "subscribed"
            assert stats["coherence"]["mode"] == mode
        # The last invalidations reach the reader asynchronously: wait for one (bounded).
        deadline = time.monotonic() + 5
        while reader.stats()["coherence"]["applied"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.stats()["coherence"]["applied"] >= 1


@pytest.mark.parametrize("mode", ["tracking", "pubsub"])
def test_acl_user_from_operations_can_do_everything(redis_server_factory: Any, mode: str
                                                    ) -> None:
    """The least-privilege ACL line in operations.md is enough for every operation, in
    both coherence modes (and auto picks tracking with it)."""
    command, user, password, prefix = _acl_line("operations.md")
    server = redis_server_factory()
    with redis.Redis.from_url(f"redis://{server.address}") as admin:
        admin.execute_command(*command)
    exercise_acl_user(CacheConfig(
        dragonfly=DragonflyConfig(addresses=[server.address], username=user, password=password,
                                  db=1),  # db 1 needs SELECT too
        l1=L1Config(invalidation=mode), l2=L2Config(ttl=60.0), key_prefix=prefix), mode)


@pytest.mark.parametrize("mode", ["tracking", "pubsub"])
def test_acl_user_from_scaling_out_can_do_everything_on_a_cluster(redis_cluster: Any,
                                                                  mode: str) -> None:
    """The cluster ACL line in scaling-out.md, set on every node, is enough (both modes)."""
    command, user, password, prefix = _acl_line("scaling-out.md")
    for node in redis_cluster.nodes:
        node.command(*command)
    try:
        exercise_acl_user(CacheConfig(
            dragonfly=DragonflyConfig(addresses=redis_cluster.addresses, username=user,
                                      password=password),
            l1=L1Config(invalidation=mode), l2=L2Config(ttl=60.0), key_prefix=prefix), mode)
    finally:
        for node in redis_cluster.nodes:
            node.command("ACL", "DELUSER", user)


# -- dashboards and alerts ------------------------------------------------------------------


def _allowed_series() -> dict[str, str]:
    """Every series name the metrics module exports -> its family."""
    series = {}
    for family in METRICS.all():
        name = family._name
        if family._type == "counter":
            series[f"{name}_total"] = name
        elif family._type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                series[name + suffix] = name
        else:
            series[name] = name
    return series


def _queried_series(queries: list[str]) -> set[str]:
    return {name for query in queries for name in re.findall(r"\bdragonfly_cache_\w+", query)}


def _dashboard_queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_queries(item)


def test_grafana_dashboard_queries_only_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = list(_dashboard_queries(dashboard))
    used = _queried_series(queries)
    allowed = _allowed_series()
    assert used, "the dashboard queries nothing"
    assert used <= set(allowed), sorted(used - set(allowed))
    families = {family._name for family in METRICS.all()}
    assert {allowed[name] for name in used} == families, "a family has no panel"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        targets = panel.get("targets", [])
        assert len({target["refId"] for target in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_alert_rules_query_only_exported_series() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    documents = [yaml.safe_load(code) for _, code, _ in _fenced_blocks(DOCS / "operations.md",
                                                                         "yaml")]
    rules = [rule for document in documents if "groups" in document
             for group in document["groups"] for rule in group["rules"]]
    assert len(rules) >= 4
    used = _queried_series([rule["expr"] for rule in rules])
    assert used <= set(_allowed_series()), sorted(used - set(_allowed_series()))
    assert "dragonfly_cache_breaker_state" in used and "grafana/dragonfly_cache.json" in text


# -- environment variables ------------------------------------------------------------------

# Read outside CacheConfig: by the gunicorn settings, the CLI, the demo, scripts and tests.
OTHER_VARIABLES = frozenset({
    "PORT", "BIND", "WEB_CONCURRENCY", "GUNICORN_PRELOAD", "GUNICORN_ACCESS_LOG",
    "GUNICORN_THREADS", "GUNICORN_CONTROL_SOCKET",
    "PROMETHEUS_MULTIPROC_DIR", "REDIS_SERVER_BIN", "VALKEY_SERVER_BIN", "SOAK_SECONDS",
    "DEMO_DB_PATH",
})
# Named by the migration guide: the other libraries' own settings and constants.
FOREIGN_NAMES_PAGE = "docs/migration.md"
VARIABLE = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")


def _cache_variables() -> set[str]:
    sections = (DragonflyConfig, L1Config, L2Config, CacheConfig)
    return {option.env for section in sections for option in section.OPTIONS
            if option.env is not None} | set(_SETTINGS)


def _project_sources() -> str:
    files = [*(ROOT / "dragonfly_cache").glob("*.py"), *(ROOT / "tests").rglob("*.py"),
             *(ROOT / "scripts").glob("*.sh"), ROOT / "gunicorn.conf.py"]
    return "\n".join(path.read_text(encoding="utf-8") for path in files
                     if path.name != Path(__file__).name)


def _python_constants() -> set[str]:
    modules = [dragonfly_cache, sys.modules["dragonfly_cache.tiered"]]
    # codecs and _loading: the loading page names their constants (FLEET_LOCK_TTL, ...).
    modules += [sys.modules[f"dragonfly_cache.{name}"]
                for name in ("flask", "metrics", "config", "codecs", "_loading")]
    return {name for module in modules for name in vars(module) if name.isupper()}


def _foreign_sources() -> str:
    import cachelib
    import django
    import dogpile
    import flask
    import flask_caching

    packages = (flask_caching, dogpile, cachelib, flask)  # flask: SECRET_KEY
    files = [path for package in packages
             for path in Path(package.__file__).parent.rglob("*.py")]
    # Django: its settings, URLs and cache framework, which the guide's Django section names.
    django_root = Path(django.__file__).parent
    files += [path for part in ("conf", "urls", "core/cache")
              for path in (django_root / part).rglob("*.py")]
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def test_other_variables_are_read_by_the_project() -> None:
    sources = _project_sources()
    for name in OTHER_VARIABLES:
        assert name in sources, f"{name} is allowed in the docs but nothing reads it"


def test_every_variable_named_in_the_docs_exists() -> None:
    known = _cache_variables() | OTHER_VARIABLES | _python_constants()
    foreign = _foreign_sources()
    unknown = []
    for path in PAGES:
        page = _relative(path)
        text = path.read_text(encoding="utf-8")
        # ${NAME} in a YAML example is the reader's own variable, expanded by from_yaml.
        interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
        for name in sorted(set(VARIABLE.findall(text)) - interpolated):
            if name in known or (page == FOREIGN_NAMES_PAGE and name in foreign):
                continue
            unknown.append(f"{page}: {name}")
    assert not unknown, unknown
