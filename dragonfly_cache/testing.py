"""Caches for your app's own tests, with no server process: in-process fake servers.

```python
from dragonfly_cache.testing import fake_cache

cache = fake_cache()                # a TieredCache on a fake server at 127.0.0.1:6379
cache.set("user:1", b"Ada")
other = fake_cache()                # the same fake server: coherent with the first
assert other.get("user:1") == b"Ada"
```

The fake servers are fakeredis's (the ``testing`` extra: ``pip install
'dragonfly-cache[testing]'``), one per address and shared by every fake cache of the
process, so two fake caches behave like two processes on one server: a write in one drops
the key from the other's L1 (pub/sub works there too). Everything else is the real
``TieredCache``: L1, tickets, singleflight, the breaker and every operation, Lua scripts
included (fakeredis runs them with lupa).

The framework adapters get their cache from ``dragonfly_cache.contrib``'s shared registry;
inside ``with fake_servers():`` every cache made, theirs included, is a fake one, so an app
configured for a real server can be tested without one::

    with fake_servers():
        app = create_app()          # Flask-Caching / Django / dogpile backends: all fake

Fakes are for unit tests of *your* code. They are not a Redis, Valkey or Dragonfly: the
behaviour under load, failures and cluster routing are only shown against real servers.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import threading
from collections.abc import Iterator
from typing import Any

from ._extras import require

# Before the import it guards: without the extra, fail with its install line.
require("fakeredis", "testing", __name__)

import fakeredis

from ._nodes import Transport, using_transport
from .config import CacheConfig
from .tiered import TieredCache

__all__ = ["FAKE", "fake_cache", "fake_servers"]

# Options of ours that a fake connection has no use for (it has no socket, no TLS, and the
# fake server has no password).
_DROPPED = ("password", "username", "socket_timeout", "socket_connect_timeout",
            "socket_keepalive", "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs",
            "ssl_certfile", "ssl_keyfile")


_servers: dict[str, fakeredis.FakeServer] = {}
_servers_lock = threading.Lock()


def _fake_options(options: dict[str, Any]) -> dict[str, Any]:
    # One fake server per host:port for the whole process: that is what makes two fake
    # caches on one address coherent. Ours, under a lock: the cache's listener thread and
    # its first call make their connections at the same moment.
    address = f"{options['host']}:{options['port']}"
    with _servers_lock:
        server = _servers.get(address)
        if server is None:
            server = _servers[address] = fakeredis.FakeServer()
    kept = {name: value for name, value in options.items() if name not in _DROPPED}
    return {**kept, "server": server}


#: The transport of fake caches: fakeredis connections instead of sockets, to a standalone
#: fake server (fakeredis has no INFO, so the transport says what the server is).
FAKE = Transport(fakeredis.FakeRedisConnection, _fake_options,
                 server=("fakeredis", importlib.metadata.version("fakeredis")))


def fake_cache(config: CacheConfig | None = None) -> TieredCache:
    """A :class:`TieredCache` on an in-process fake server (fakeredis).

    Args:
        config: as for ``TieredCache`` (default ``CacheConfig()``). The addresses name the
            fake server: fake caches with the same address share one.

    Raises:
        MissingExtraError: fakeredis is not installed (the ``testing`` extra).
    """
    with using_transport(FAKE):
        return TieredCache(config)


@contextlib.contextmanager
def fake_servers() -> Iterator[None]:
    """Every cache made inside the block (the adapters' included) is a fake one."""
    with using_transport(FAKE):
        yield
