"""What the Flask and gunicorn tests share: the admin token and a reader of /metrics."""

from __future__ import annotations

import re

__all__ = ["ADMIN_TOKEN", "metric"]

ADMIN_TOKEN = "s3cret-admin-token"  # CACHE_ADMIN_TOKEN of every app the tests start


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``.

    Args:
        text: a Prometheus text exposition, e.g. the body of ``GET /metrics``.
        name: the sample name, e.g. ``dragonfly_cache_requests_total``.
        labels: label values a sample must have to count; others are ignored.
    """
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        sample = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        if all(sample.get(key) == value for key, value in labels.items()):
            total += float(match[3])
    return total
