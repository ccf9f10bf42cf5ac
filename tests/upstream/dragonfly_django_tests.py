"""Django's own cache tests, aimed at ``dragonfly_cache.contrib.django.DragonflyCache``.

Imported by Django's ``tests/runtests.py`` (see ``suite_django.py``), never by pytest. Each
class below is an upstream test class with ``CACHES`` pointed at our backend, the way
Django's own ``RedisCacheTests`` points ``BaseCacheTests`` at ``RedisCache``; no upstream
test body is changed or copied:

- ``BaseCacheTests``: the backend-generic suite, with ``caches_setting_for_tests`` as
  ``RedisCacheTests`` uses it (the culling aliases left out, as for Redis: nothing culls),
  plus ``RedisCacheTests.test_get_backend_timeout_method`` (the one Redis test about the
  backend's own surface; the others inspect ``RedisCacheClient``'s internals).
- The cache middleware and ``cache_page`` (``CacheMiddlewareTest``), ``django.utils.cache``
  (``CacheUtils``, ``CacheHEADTest``, ``CacheI18nTest``, their prefixed variants,
  ``TestWithTemplateResponse``), the ``{% cache %}`` template tag (``CacheTagTests``), and
  cached sessions (``CacheSessionTests``, ``CacheDBSessionTests``): upstream they run on
  ``LocMemCache`` or the default cache; here on ours. Where upstream gives an alias a
  separate ``LocMemCache`` ``LOCATION``, ours gets a separate db of the same server.

Excluded tests (``tests/upstream/excluded.txt``, passed in ``UPSTREAM_EXCLUDED``) are
removed from their class before the runner collects it.
"""

import os

from cache import tests as cache_tests
from django.test import TestCase, override_settings
from dragonfly_django_settings import BACKEND, LOCATION, OTHER_LOCATION
from sessions_tests import tests as session_tests
from template_tests.syntax_tests import test_cache as template_tests

OURS = {"BACKEND": BACKEND, "LOCATION": LOCATION}
ON_OURS = override_settings(CACHES={"default": OURS})
PREFIXED = override_settings(CACHES={"default": {**OURS, "KEY_PREFIX": "cacheprefix"}})


@override_settings(CACHES=cache_tests.caches_setting_for_tests(
    BACKEND=BACKEND, LOCATION=LOCATION, exclude=cache_tests.redis_excluded_caches))
class DragonflyCacheTests(cache_tests.BaseCacheTests, TestCase):
    test_get_backend_timeout_method = (
        cache_tests.RedisCacheTests.test_get_backend_timeout_method)


@override_settings(CACHES={
    "default": OURS,
    "other": {"BACKEND": BACKEND, "LOCATION": OTHER_LOCATION, "TIMEOUT": "1"},
})
class DragonflyCacheMiddlewareTest(cache_tests.CacheMiddlewareTest):
    pass


@ON_OURS
class DragonflyCacheUtils(cache_tests.CacheUtils):
    pass


@PREFIXED
class DragonflyPrefixedCacheUtils(cache_tests.PrefixedCacheUtils):
    pass


@ON_OURS
class DragonflyCacheHEADTest(cache_tests.CacheHEADTest):
    pass


@ON_OURS
class DragonflyCacheI18nTest(cache_tests.CacheI18nTest):
    pass


@PREFIXED
class DragonflyPrefixedCacheI18nTest(cache_tests.PrefixedCacheI18nTest):
    pass


@ON_OURS
class DragonflyTestWithTemplateResponse(cache_tests.TestWithTemplateResponse):
    pass


@ON_OURS
class DragonflyCacheTagTests(template_tests.CacheTagTests):
    pass


@ON_OURS
class DragonflyCacheSessionTests(session_tests.CacheSessionTests):
    pass


@ON_OURS
class DragonflyCacheDBSessionTests(session_tests.CacheDBSessionTests):
    pass


@ON_OURS
class DragonflyCacheDBSessionWithTimeZoneTests(session_tests.CacheDBSessionWithTimeZoneTests):
    pass


def _exclude(test_ids: str) -> None:
    """Take each ``module.Class.test_name`` out of its class (unittest collects only
    callable ``test*`` attributes); an id that names nothing is an error, not a no-op."""
    for test_id in filter(None, test_ids.split(",")):
        module, class_name, method = test_id.strip().split(".")
        cls = globals().get(class_name) if module == __name__ else None
        if cls is None or not callable(getattr(cls, method, None)):
            raise LookupError(f"excluded.txt names {test_id!r}, which is not a test here")
        setattr(cls, method, None)


_exclude(os.environ.get("UPSTREAM_EXCLUDED", ""))
