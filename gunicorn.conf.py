"""Read by gunicorn by default (``gunicorn wsgi:app``); see dragonfly_cache/_gunicorn.py."""

from dragonfly_cache._gunicorn import *  # noqa: F403 - gunicorn reads module-level settings
