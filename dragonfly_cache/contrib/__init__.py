"""Drop-in backends for the caches apps already use: one line of their configuration.

One module per framework, each behind its optional extra; each translates the framework's
API and semantics onto :class:`~dragonfly_cache.TieredCache` and owns no policy of its own
(no L1, no locks, no Redis client: the cache does all of that):

- :mod:`dragonfly_cache.contrib.cachelib`: a cachelib ``BaseCache`` (Flask-Session and
  plain cachelib users); extra ``flask``.
- :mod:`dragonfly_cache.contrib.flask_caching`: ``CACHE_TYPE =
  "dragonfly_cache.contrib.flask_caching.DragonflyCache"``; extra ``flask``.
- :mod:`dragonfly_cache.contrib.django`: ``"BACKEND":
  "dragonfly_cache.contrib.django.DragonflyCache"``; extra ``django``.
- :mod:`dragonfly_cache.contrib.dogpile`: the ``dragonfly_cache`` dogpile.cache backend;
  extra ``dogpile``.

What they share (configuration from a URL and the framework's settings, signed pickles, one
cache per process) is in :mod:`dragonfly_cache.contrib._common`.
"""
