"""The demo service: ``gunicorn wsgi:app`` (``./scripts/demo.sh`` starts it with a server).

Configured from the environment (``DRAGONFLY_ADDRESSES`` etc., see the README). Until the
Flask extension lands this is a small app of its own: a health endpoint in the contract's
shape and a key/value demo on top of one process-wide TieredCache.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

from dragonfly_cache import CacheError, TieredCache


def create_app() -> Flask:
    """Build the demo app; the cache is created here, connections open on first use."""
    app = Flask(__name__)
    cache = TieredCache.from_env()
    app.extensions["dragonfly_cache"] = cache

    @app.get("/api/v1/health/cache")
    def health() -> tuple[Response, int]:
        report = cache.health()
        return jsonify(report), 200 if report["status"] == "healthy" else 503

    @app.get("/demo/<key>")
    def read(key: str) -> tuple[Response, int]:
        value = cache.get(key)
        if value is None:
            return jsonify(error="not found", key=key), 404
        return jsonify(key=key, value=value.decode("utf-8", "replace")), 200

    @app.put("/demo/<key>")
    def write(key: str) -> tuple[Response, int]:
        try:
            cache.set(key, request.get_data())
        except CacheError as exc:
            return jsonify(error=str(exc)), 503
        return jsonify(key=key, stored=True), 200

    return app


app = create_app()
