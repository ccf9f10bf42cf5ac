"""What the tests share. Test modules import from here, never from each other.

The small helpers are re-exported here (``from tests.helpers import wait_until``):

* ``waiting``: :func:`wait_until` (poll a condition), :func:`wait_subscribed` (the
  invalidation listener of a cache is subscribed).
* ``threads``: :func:`run_threads` (N threads, lined up), :func:`fork` (with threads running).
* ``caches``: :class:`FakeClock`, :class:`CacheFactory` (the ``cache_factory`` fixture's type).
* ``counters``: :func:`command_calls` (what a server ran), :func:`percentile`.
* ``apps``: :data:`ADMIN_TOKEN` and :func:`metric` (a sample of ``/metrics``) for the Flask
  and gunicorn tests.

The harness is imported from its own submodule:

* ``servers``: throw-away redis-server processes (:class:`~tests.helpers.servers.RedisServer`).
* ``cluster``: a throw-away 3-primary Redis Cluster (:class:`~tests.helpers.cluster.LocalCluster`).
* ``sentinel``: a throw-away primary + replica watched by three Redis sentinels
  (:class:`~tests.helpers.sentinel.LocalSentinels`).
* ``backends``: where the contract suite runs (one server, TLS, a cluster).
* ``proxy``: a fault-injecting TCP proxy in front of a server.
* ``pki``: a throw-away PKI for the TLS tests.
* ``spawned``: a function run in a spawned process, driven over a pipe (the workers' base).
* ``coherence_worker``, ``loading_worker``, ``lock_worker``, ``memo``, ``django_worker``,
  ``flask_caching_worker``: code run in spawned processes.

The fixtures that use them live in tests/conftest.py.
"""

from tests.helpers.apps import ADMIN_TOKEN, metric
from tests.helpers.caches import CacheFactory, FakeClock
from tests.helpers.counters import command_calls, percentile
from tests.helpers.threads import fork, run_threads
from tests.helpers.waiting import wait_subscribed, wait_until

__all__ = [
    "ADMIN_TOKEN",
    "CacheFactory",
    "FakeClock",
    "command_calls",
    "fork",
    "metric",
    "percentile",
    "run_threads",
    "wait_subscribed",
    "wait_until",
]
