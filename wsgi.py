"""WSGI entry point: ``gunicorn wsgi:app`` (settings in gunicorn.conf.py)."""

from dragonfly_cache.demo import create_app

app = create_app()
