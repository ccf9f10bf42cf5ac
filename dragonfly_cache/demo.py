"""The demo service: the cache in front of a slow "database", served by gunicorn.

``GET /demo/items/<id>`` reads an item through ``get_or_load``: the first read in the fleet
pays the simulated 50 ms query, later reads come from L2 or L1. ``PUT /demo/items/<id>``
(JSON ``{"name": ...}``) updates the database and deletes the cached copy; coherence then
drops it from every worker's L1 (with the cache server away: 503, and the delete is
replayed when it is back). Bad input is a 4xx, never a 500: a body over 16 KiB is a 413;
an item id past SQLite's largest integer, a malformed body or a name that is empty or
over 1000 characters is a 400. The database is a SQLite file shared by all workers
(``DEMO_DB_PATH``, default in the temp directory), so any worker may serve any request.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import time

from ._extras import require

# Before the imports it guards: the demo comes with the server extra (Flask, gunicorn).
require("flask", "server", __name__)

from flask import Flask, Response, abort, jsonify, request

from .exceptions import CacheUnavailableError
from .flask import DragonflyCache

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

QUERY_SECONDS = 0.05
MAX_BODY_BYTES = 16 * 1024  # a larger request body is refused with 413
MAX_ITEM_ID = 2**63 - 1  # SQLite's largest integer: a larger id is a 400
MAX_NAME_LENGTH = 1000


def _database_path() -> str:
    return os.environ.get("DEMO_DB_PATH") or os.path.join(tempfile.gettempdir(),
                                                          "dragonfly_cache_demo.sqlite3")


def _connect() -> sqlite3.Connection:
    connection = sqlite3.connect(_database_path(), timeout=5)
    connection.execute("CREATE TABLE IF NOT EXISTS items "
                       "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL)")
    return connection


def _load_item(item_id: int) -> bytes:
    """The slow query the cache protects (50 ms, simulated)."""
    time.sleep(QUERY_SECONDS)
    with _connect() as connection:
        row = connection.execute("SELECT name, version FROM items WHERE id = ?",
                                 (item_id,)).fetchone()
    name, version = row if row else (f"item {item_id}", 0)
    return json.dumps({"id": item_id, "name": name, "version": version,
                       "loaded_by": os.getpid()}).encode()


def _bad_request(message: str) -> Response:
    response = jsonify(error=message, status=400)
    response.status_code = 400
    return response


def create_app() -> Flask:
    """The demo app: the extension's endpoints, /metrics and the /demo resource."""
    app = Flask("dragonfly_cache.demo")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # Flask answers 413 past it
    extension = DragonflyCache(app)

    @app.errorhandler(413)
    def too_large(_error: Exception) -> tuple[Response, int]:
        return jsonify(error=f"request body larger than {MAX_BODY_BYTES} bytes",
                       status=413), 413

    @app.url_value_preprocessor
    def check_item_id(_endpoint: str | None, values: dict[str, object] | None) -> None:
        item_id = (values or {}).get("item_id")
        if isinstance(item_id, int) and item_id > MAX_ITEM_ID:
            abort(_bad_request(f"item id must be at most {MAX_ITEM_ID}"))

    @app.get("/")
    def index() -> Response:
        return jsonify(endpoints={
            "health": "/api/v1/health/cache",
            "stats": "/api/v1/admin/cache/stats (Authorization: Bearer $CACHE_ADMIN_TOKEN)",
            "metrics": "/metrics",
            "read": "GET /demo/items/<id>",
            "write": "PUT /demo/items/<id> with JSON {\"name\": ...}",
        })

    @app.get("/demo/items/<int:item_id>")
    def read_item(item_id: int) -> Response:
        started = time.perf_counter()
        value = extension.cache.get_or_load(f"item:{item_id}", lambda: _load_item(item_id),
                                            ttl=300)
        item = json.loads(value)
        item["served_by"] = os.getpid()
        item["ms"] = round((time.perf_counter() - started) * 1000, 3)
        return jsonify(item)

    @app.put("/demo/items/<int:item_id>")
    def write_item(item_id: int) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return _bad_request('expected a JSON body {"name": "..."}')
        if not body["name"] or len(body["name"]) > MAX_NAME_LENGTH:
            return _bad_request(f"name must be 1 to {MAX_NAME_LENGTH} characters")
        with _connect() as connection:
            connection.execute(
                "INSERT INTO items (id, name, version) VALUES (?, ?, 1) "
                "ON CONFLICT(id) DO UPDATE SET name = excluded.name, version = version + 1",
                (item_id, body["name"]))
            version = connection.execute("SELECT version FROM items WHERE id = ?",
                                         (item_id,)).fetchone()[0]
        # The database changed: drop the cached copy everywhere. If the cache server does
        # not take it, the cache keeps the delete in its journal and replays it when the
        # server is back (this worker reads the item from the database meanwhile); the
        # caller hears that with a 503 and may retry the PUT.
        try:
            extension.cache.delete(f"item:{item_id}")
        except CacheUnavailableError as exc:
            logger.warning("PUT /demo/items/%d: database updated; cache invalidation "
                           "pending (%s)", item_id, exc)
            response = jsonify(error="the item was saved; the cache server did not take the "
                                     "invalidation, which is retried until it does",
                               id=item_id, version=version, status=503)
            response.status_code = 503
            return response
        return jsonify(id=item_id, name=body["name"], version=version)

    return app
