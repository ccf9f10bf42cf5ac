"""gunicorn settings for the demo and for apps that use the extension.

Use it as ``gunicorn -c python:dragonfly_cache._gunicorn wsgi:app`` (the repository's
``gunicorn.conf.py`` imports it). Environment: ``PORT`` (8000), ``BIND`` (overrides PORT),
``WEB_CONCURRENCY`` (2 workers), ``GUNICORN_THREADS`` (4 per worker),
``GUNICORN_PRELOAD`` (false; the cache is fork-safe, so true is fine),
``GUNICORN_CONTROL_SOCKET`` (default: one per instance in the temp directory),
``PROMETHEUS_MULTIPROC_DIR``.

Threaded workers (``gthread``): a client that sends its request slowly (or never finishes
its body) holds one thread, not a whole worker, so a few slow clients cannot stall every
worker and the health checks with them. In production, put a buffering proxy (nginx) in
front as well: it reads whole requests before gunicorn sees them (docs/operations.md).

Prometheus multiprocess mode. With several workers, each /metrics request is served by
one of them, so every worker must write its values where the others can read them. That
requires ``PROMETHEUS_MULTIPROC_DIR`` in the environment *before* prometheus_client is
first imported — which is why it is set here, in the config the master reads before it
loads the app, and not in app code (prometheus_flask_exporter #165 is that mistake).
The directory is emptied when the master reads this config, and a dead worker's live
gauges are dropped when it exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

from ._extras import require

# Before the settings below change the environment and the filesystem.
require("gunicorn", "server", __name__)

__all__ = ["accesslog", "bind", "child_exit", "control_socket", "graceful_timeout",
           "keepalive", "on_exit", "preload_app", "threads", "timeout", "worker_class",
           "workers"]

bind = os.environ.get("BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
preload_app = os.environ.get("GUNICORN_PRELOAD", "false").lower() in ("1", "true", "yes", "on")
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
# gunicorn 27 puts every instance's control socket at one path: a second instance would
# take the first one's. One per instance (the master's pid), removed on exit.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET") or os.path.join(
    tempfile.gettempdir(), f"dragonfly_cache_gunicorn_{os.getpid()}.ctl")

# Ours to remove on exit when we chose it (not when the environment named it).
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(
        tempfile.gettempdir(), f"dragonfly_cache_prometheus_{os.getpid()}")
# Every run starts with an empty directory (stale files from an earlier run would add
# up). Done here, when the master reads its config, not in on_starting: with preload_app
# the app, and so the first metric, is loaded before on_starting runs.
shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges."""
    from prometheus_client import multiprocess

    # prometheus_client leaves mark_process_dead unannotated.
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Remove what this instance made in the temp directory."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    if not os.environ.get("GUNICORN_CONTROL_SOCKET"):
        with contextlib.suppress(OSError):
            os.unlink(control_socket)
