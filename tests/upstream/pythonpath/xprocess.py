"""Stand-in for pytest-xprocess, on the path of the upstream suites' runs only.

cachelib's and Flask-Caching's ``tests/conftest.py`` import ``ProcessStarter`` from it at
module level, to start their own redis-server on a fixed port in fixtures (``redis_server``)
that the tests we run do not use: the server comes from our ``redis_server_factory``. With
this stand-in, a test that did ask for those fixtures would fail for want of the
``xprocess`` fixture, loudly, never silently run against something else.
"""


class ProcessStarter:
    """Only a name to subclass: nothing here starts a process."""
