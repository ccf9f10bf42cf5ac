"""End to end: ``gunicorn wsgi:app`` with 2 workers against a private redis-server."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ADMIN_TOKEN, metric
from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


class Gunicorn:
    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.process = process
        self.log = log

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One request on a new connection, so the kernel may hand it to any worker."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = json.dumps(body) if body is not None else None
            all_headers = {"Content-Type": "application/json"} if payload else {}
            all_headers.update(headers or {})
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def json(self, path: str) -> Any:
        status, text = self.request("GET", path)
        assert status == 200, (path, status, text, self.log.read_text()[-4000:])
        return json.loads(text)


@pytest.fixture
def gunicorn(redis_server: Any, tmp_path: Path) -> Iterator[Gunicorn]:
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DRAGONFLY_", "CACHE_", "PROMETHEUS_"))}
    env.update(DRAGONFLY_ADDRESSES=redis_server.address, CACHE_ADMIN_TOKEN=ADMIN_TOKEN,
               DEMO_DB_PATH=str(tmp_path / "demo.sqlite3"),
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
               PORT=str(port), WEB_CONCURRENCY="2", GUNICORN_PRELOAD="true")
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "wsgi:app"], cwd=ROOT,
                                   env=env, stdout=sink, stderr=subprocess.STDOUT)
    server = Gunicorn(port, process, log)
    deadline = time.monotonic() + 20
    while True:
        try:
            if server.request("GET", "/api/v1/health/cache")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"gunicorn did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def workers_seen(server: Gunicorn, path: str, want: int = 2, tries: int = 200) -> set[int]:
    pids: set[int] = set()
    for _ in range(tries):
        pids.add(server.json(path)["served_by"])
        if len(pids) >= want:
            break
    return pids


def test_two_workers_serve_health_demo_coherence_and_aggregated_metrics(
        gunicorn: Gunicorn) -> None:
    assert gunicorn.json("/api/v1/health/cache")["status"] == "healthy"
    status, text = gunicorn.request("GET", "/api/v1/admin/cache/stats",
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 200
    assert gunicorn.request("GET", "/api/v1/admin/cache/stats")[0] == 401

    # Warm item 1 into both workers' L1.
    pids = workers_seen(gunicorn, "/demo/items/1")
    assert len(pids) == 2, "traffic never reached the second worker"
    first = gunicorn.json("/demo/items/1")
    assert first["name"] == "item 1"

    # A write through one worker; every later read, whichever worker serves it, is new.
    status, text = gunicorn.request("PUT", "/demo/items/1", {"name": "renamed"})
    assert status == 200, text
    # At least 40 reads, and on until both workers served some: the kernel may hand a
    # busy machine's connections to one worker for a while.
    served: set[int] = set()
    for reads in range(1, 401):
        item = gunicorn.json("/demo/items/1")
        assert item["name"] == "renamed", item
        served.add(item["served_by"])
        if reads >= 40 and served == pids:
            break
    assert served == pids

    # /metrics adds up every worker's counters, whichever worker serves the scrape.
    def scrape() -> str:
        status, text = gunicorn.request("GET", "/metrics")
        assert status == 200
        return text

    def demo_requests(text: str) -> float:
        return metric(text, "flask_http_request_duration_seconds_count",
                      url_rule="/demo/items/<int:item_id>")

    before = scrape()
    count = 30
    for n in range(count):
        gunicorn.json(f"/demo/items/{n % 3 + 1}")
    after = scrape()
    assert demo_requests(after) - demo_requests(before) == count
    lookups = (metric(after, "dragonfly_cache_requests_total", tier="l1")
               - metric(before, "dragonfly_cache_requests_total", tier="l1"))
    assert lookups == count  # each demo read is one L1 lookup, in whichever worker
    assert demo_requests(scrape()) == demo_requests(scrape())  # any worker, same totals
    assert metric(after, "dragonfly_cache_l1_entries") >= 2  # livesum over both workers
    assert metric(after, "dragonfly_cache_coherence_subscribed") == 1
    # Every worker's cache runs tracking (what auto picks here): livesum counts each live
    # process that exported it (the preloading master's cache too, once it synced).
    assert metric(after, "dragonfly_cache_coherence_mode", mode="tracking") >= len(pids)
    assert metric(after, "dragonfly_cache_coherence_mode", mode="pubsub") == 0
