"""Settings for Django's own test runner (``tests/runtests.py --settings=...``) when it runs
Django's cache and session tests against our backend (see ``suite_django.py``).

Django's ``tests/test_sqlite.py`` (in-memory SQLite for the tests that need a database),
with the default cache pointed at ``dragonfly_cache.contrib.django.DragonflyCache`` on the
private server the test started (``DRAGONFLY_ADDRESSES`` in the environment). The test
classes that run set ``CACHES`` themselves too (``dragonfly_django_tests.py``).
"""

import os

#: The private server, as a LOCATION URL; ``OTHER_LOCATION`` is another db on it.
LOCATION = f"redis://{os.environ['DRAGONFLY_ADDRESSES']}/0"
OTHER_LOCATION = f"redis://{os.environ['DRAGONFLY_ADDRESSES']}/1"
BACKEND = "dragonfly_cache.contrib.django.DragonflyCache"

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3"},
    "other": {"ENGINE": "django.db.backends.sqlite3"},
}
CACHES = {"default": {"BACKEND": BACKEND, "LOCATION": LOCATION}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
