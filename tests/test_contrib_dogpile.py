"""The dogpile.cache backend: configuration by ``arguments``, dogpile's semantics, signed
pickles, the fleet lock as ``get_mutex``, failures, and bad input.

dogpile's own suites run against it in tests/test_upstream_dogpile.py; these tests cover
what they do not: our arguments and errors, the pickle safety, more than one process.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import pickle
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from dogpile.cache import make_region
from dogpile.cache.api import NO_VALUE, CachedValue, CacheMutex
from dogpile.cache.region import CacheRegion

from dragonfly_cache import CacheUnavailableError, ConfigError, MissingExtraError
from dragonfly_cache.contrib._common import pickle_codec
from dragonfly_cache.contrib.dogpile import DragonflyBackend
from tests.helpers import wait_subscribed, wait_until
from tests.helpers.lock_worker import region_member

SECRET = "dogpile-test-secret-0123456789"
LOCK = "\x1flock:"  # where the fleet lock on a key lives (dragonfly_cache._fleet)

Configure = Callable[..., CacheRegion]


@pytest.fixture
def configure(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """``configure(**arguments) -> region`` on the per-test server (url and pickle_secret
    preset; pass ``url=None`` to leave it out). The caches are closed at teardown: the
    server is flushed between tests behind their back, and a closed shared cache is
    replaced by a fresh one (an empty L1) on next use."""
    for name in ("DRAGONFLY_ADDRESSES", "CACHE_PICKLE_SECRET", "CACHE_KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    regions: list[CacheRegion] = []

    def factory(expiration_time: float = 60, **arguments: Any) -> CacheRegion:
        arguments = {"url": f"redis://{redis_server.address}/0", "pickle_secret": SECRET,
                     **arguments}
        arguments = {key: value for key, value in arguments.items() if value is not None}
        region = make_region().configure("dragonfly_cache", expiration_time=expiration_time,
                                         arguments=arguments)
        regions.append(region)
        return region

    try:
        yield factory
    finally:
        for region in regions:
            region.backend.cache.close()


def backend_of(region: CacheRegion) -> DragonflyBackend:
    backend = region.backend
    assert isinstance(backend, DragonflyBackend)
    return backend


# -- the one line ----------------------------------------------------------------------------


def test_the_entry_point_names_the_backend(configure: Configure) -> None:
    (point,) = entry_points(group="dogpile.cache", name="dragonfly_cache")
    assert point.load() is DragonflyBackend
    region = configure()
    assert isinstance(region.backend, DragonflyBackend)
    region.set("greeting", {"hello": ("world", 1)})
    assert region.get("greeting") == {"hello": ("world", 1)}  # any picklable object


def test_configure_from_an_ini_style_dict(redis_server: Any) -> None:
    """``configure_from_config``: every value a string, as read from an .ini file."""
    region = make_region().configure_from_config({
        "cache.backend": "dragonfly_cache",
        "cache.expiration_time": "60",
        "cache.arguments.url": f"redis://{redis_server.address}/0",
        "cache.arguments.pickle_secret": SECRET,
        "cache.arguments.distributed_lock": "true",
        "cache.arguments.redis_expiration_time": "90",
    }, "cache.")
    try:
        region.set("k", [1, 2])
        assert region.get("k") == [1, 2]
        assert 80_000 < redis_server.client().pttl("k") <= 90_000
        assert region.backend.get_mutex("k") is not None
    finally:
        region.backend.cache.close()


# -- dogpile's semantics ---------------------------------------------------------------------


def test_values_are_cached_values_stored_as_signed_pickles(configure: Configure,
                                                           redis_server: Any) -> None:
    region = configure()
    region.set("k", {"a": 1})
    stored = backend_of(region).get("k")
    assert isinstance(stored, CachedValue)
    assert stored.payload == {"a": 1} and stored.cached_time > 0
    raw = redis_server.client().get("k")
    assert raw[:1] == b"\x01" and raw[33:34] == b"\x80"  # version, HMAC, then the pickle
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)  # noqa: S301 - our own bytes: proof they are no bare pickle
    # The CachedValue is pickled as a plain tuple: no class to look up on every L1 hit.
    assert b"CachedValue" not in raw
    assert pickle.loads(raw[33:]) == ({"a": 1}, stored.metadata)  # noqa: S301 - ours


def test_a_value_signed_alike_but_not_stored_by_this_backend_is_a_miss(
        configure: Configure, redis_server: Any) -> None:
    """What another adapter with the same secret stored (a bare object, a 3-tuple) is not a
    CachedValue: the region gets NO_VALUE and makes the value anew."""
    region = configure()
    codec = pickle_codec(SECRET, setting="test")
    redis_server.client().mset({"bare": codec.encode({"a": 1}),
                                "triple": codec.encode((1, 2, 3))})
    assert region.get_multi(["bare", "triple"]) == [NO_VALUE, NO_VALUE]
    assert region.get_or_create("bare", lambda: "made") == "made"
    region.backend.set("plain", b"bytes")  # what a region with a serializer hands over
    assert region.backend.get("plain") == b"bytes"


def test_a_miss_is_no_value_and_get_multi_keeps_the_order(configure: Configure) -> None:
    region = configure()
    backend = backend_of(region)
    assert region.get("nothing") is NO_VALUE
    assert backend.get("nothing") is NO_VALUE
    region.set_multi({"a": 1, "b": 2})
    assert region.get_multi(["b", "nothing", "a", "b"]) == [2, NO_VALUE, 1, 2]
    assert backend.get_multi([]) == []
    assert backend.get_multi(iter(["a"]))[0].payload == 1  # any iterable


def test_delete_and_delete_multi(configure: Configure, redis_server: Any) -> None:
    region = configure()
    region.set_multi({"a": 1, "b": 2, "c": 3})
    region.delete("a")
    region.delete("a")  # idempotent
    region.delete_multi(["b", "never"])
    backend_of(region).delete_multi([])
    assert region.get_multi(["a", "b", "c"]) == [NO_VALUE, NO_VALUE, 3]
    assert redis_server.client().keys("*") == [b"c"]


def test_a_serializer_of_the_region_is_honoured(redis_server: Any) -> None:
    """With the region's own serializer, dogpile hands the backend bytes: they come back."""
    region = make_region(serializer=lambda value: json.dumps(value).encode(),
                         deserializer=json.loads)
    region.configure("dragonfly_cache", arguments={
        "url": f"redis://{redis_server.address}/0", "pickle_secret": SECRET})
    try:
        region.set("k", {"a": [1, 2]})
        assert region.get("k") == {"a": [1, 2]}
        assert region.backend.get_serialized("k").endswith(b'|{"a": [1, 2]}')
    finally:
        region.backend.cache.close()


def test_get_or_create_and_cache_on_arguments(configure: Configure) -> None:
    region = configure()
    calls: list[int] = []

    @region.cache_on_arguments()
    def user(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    assert user(1) == user(1) == {"id": 1}
    user.invalidate(1)
    assert user(1) == {"id": 1}
    assert calls == [1, 1]
    assert region.get_or_create("answer", lambda: 42) == 42
    assert region.get_or_create("answer", lambda: 0) == 42


def test_redis_expiration_time_is_the_server_ttl(configure: Configure,
                                                 redis_server: Any) -> None:
    raw = redis_server.client()
    configure(redis_expiration_time=30).set("short", 1)
    assert 29_000 < raw.pttl("short") <= 30_000
    configure().set("forever", 1)  # unset (or 0): no expiry, as dogpile.cache.redis
    assert raw.pttl("forever") > 99 * 365 * 86400 * 1000


# -- configuration ---------------------------------------------------------------------------


def test_redis_style_host_port_db_password(auth_redis_server: Any,
                                           configure: Configure) -> None:
    host, _, port = auth_redis_server.address.rpartition(":")
    region = configure(url=None, host=host, port=int(port), db=3,
                       password=auth_redis_server.password)
    region.set("k", 1)
    assert auth_redis_server.client(db=3).exists("k") == 1
    url = f"redis://:{auth_redis_server.password}@{auth_redis_server.address}/4"
    configure(url=url, host="ignored.invalid", db=9).set("k", 2)  # url wins, as in dogpile
    assert auth_redis_server.client(db=4).exists("k") == 1


def test_options_and_the_environment(configure: Configure, redis_server: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    region = configure(options={"CACHE_KEY_PREFIX": "app:", "CACHE_L1_TTL": "30s"})
    region.set("k", 1)
    assert redis_server.client().exists("app:k") == 1
    assert backend_of(region).cache.config.l1.ttl == 30.0
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", redis_server.address)
    monkeypatch.setenv("CACHE_PICKLE_SECRET", SECRET)
    from_env = configure(url=None, pickle_secret=None)  # no server, no secret: environment
    from_env.set("env", 1)
    assert redis_server.client().exists("env") == 1


def test_backends_configured_alike_share_one_cache_and_others_stay_coherent(
        configure: Configure) -> None:
    first, second = configure(), configure(distributed_lock=True)
    assert backend_of(first).cache is backend_of(second).cache  # one L1, pool, listener
    other = configure(options={"CACHE_L1_TTL": "1m"})  # another config: another cache
    assert backend_of(other).cache is not backend_of(first).cache
    first.set("k", "old")
    wait_subscribed(backend_of(other).cache)
    assert other.get("k") == "old"  # now in its L1 too
    first.set("k", "new")
    wait_until(lambda: other.get("k") == "new", timeout=1)  # invalidated across caches


def test_unknown_arguments_are_logged_and_the_dict_is_left_alone(
        redis_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """dogpile lets ``arguments`` carry keys for other layers: accepted, but said."""
    arguments = {"url": f"redis://{redis_server.address}", "pickle_secret": SECRET,
                 "foo": "barf", "password_typo": "hunter2-secret", "socket_keepalive": True,
                 "connection_kwargs": {}, "thread_local_lock": True}
    before = dict(arguments)
    with caplog.at_level(logging.WARNING, "dragonfly_cache.contrib.dogpile"):
        region = make_region().configure("dragonfly_cache", arguments=arguments)
    region.backend.cache.close()
    assert arguments == before
    assert "ignoring arguments it does not know: 'foo', 'password_typo'" in caplog.text
    assert "hunter2" not in caplog.text  # names only, never values


# -- the fleet lock as get_mutex --------------------------------------------------------------


def test_get_mutex_is_the_fleet_lock_with_distributed_lock(configure: Configure,
                                                           redis_server: Any) -> None:
    plain = backend_of(configure())
    assert plain.get_mutex("k") is None  # dogpile then locks per process, as with redis
    assert plain.has_lock_timeout() is False
    backend = backend_of(configure(distributed_lock=True, lock_timeout=5, lock_sleep=0.01))
    assert backend.has_lock_timeout() is True
    mutex = backend.get_mutex("k")
    assert isinstance(mutex, CacheMutex)
    assert mutex.acquire()
    assert 4_000 < redis_server.client().pttl(f"{LOCK}k") <= 5_000
    assert not backend.get_mutex("k").acquire(False)
    mutex.release()
    assert not mutex.locked()


def test_distributed_lock_one_creator_across_two_processes(redis_server: Any) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [context.Process(target=region_member,
                                 args=(redis_server.address, SECRET, barrier, True))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0]
    raw = redis_server.client()
    assert raw.get("creations") == b"1"  # the other process waited for it
    assert raw.exists(f"{LOCK}report") == 0


# -- pickles that are not ours ---------------------------------------------------------------

unpickled: list[str] = []


def record(marker: str) -> str:
    unpickled.append(marker)
    return marker


class Payload:
    """Unpickling it calls :func:`record`: proof that a pickle was (not) loaded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return record, ("unpickled!",)


def test_a_tampered_or_foreign_pickle_is_a_miss_never_unpickled(configure: Configure,
                                                                redis_server: Any) -> None:
    region = configure()
    raw = redis_server.client()
    value = CachedValue(Payload(), {"ct": 1.0, "v": 2})
    raw.set("bare", pickle.dumps(value))  # what dogpile.cache.redis stores: unsigned
    signed = pickle_codec(SECRET, setting="test").encode(value)  # what we store
    raw.set("tampered", signed[:40] + bytes([signed[40] ^ 1]) + signed[41:])
    other_secret = configure(pickle_secret="another-secret-0123456789",
                             options={"CACHE_L1_TTL": "1m"})  # another cache, other key
    other_secret.set("foreign", Payload())
    unpickled.clear()
    stats = backend_of(region).cache.stats
    failures = stats()["loading"]["decode_failures"]
    assert region.get("bare") is NO_VALUE
    assert region.get_multi(["foreign", "tampered"]) == [NO_VALUE, NO_VALUE]
    assert unpickled == []
    assert stats()["loading"]["decode_failures"] == failures + 3
    assert raw.get("bare") is not None and raw.get("foreign") is not None  # left alone
    assert region.get_or_create("bare", lambda: "regenerated") == "regenerated"


# -- failures ----------------------------------------------------------------------------------


def test_server_down_reads_miss_and_writes_raise(configure: Configure,
                                                 redis_server: Any) -> None:
    # Coherence off: with it on, the listener flushes L1 as soon as it loses the server
    # (it could miss invalidations), and this test would race it.
    region = configure(options={"CACHE_L1_INVALIDATION": "off"})
    region.set("k", "cached")
    redis_server.kill()
    assert region.get("k") == "cached"  # from L1
    assert region.get("other") is NO_VALUE  # never raises
    assert region.get_multi(["k", "other"]) == ["cached", NO_VALUE]
    with pytest.raises(CacheUnavailableError):
        region.set("k", "new")
    with pytest.raises(CacheUnavailableError):
        region.delete("k")
    with pytest.raises(CacheUnavailableError):
        region.get_or_create("made", lambda: "value")  # created, then the write fails


def test_wrong_key_and_value_types(configure: Configure, redis_server: Any) -> None:
    backend = backend_of(configure())
    with pytest.raises(TypeError, match="key must be a str, got bytes"):
        backend.get(b"k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        backend.set("", CachedValue(1, {}))
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        backend.set("k", CachedValue(lambda: None, {}))  # cannot be pickled
    assert redis_server.client().dbsize() == 0


# -- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "message"), [
    ({"url": "memcached://h:11211"}, r"arguments\['url'\]: .* scheme 'memcached'"),
    ({"url": None, "port": "http"}, r"arguments\['port'\]='http'"),
    ({"url": None, "port": 70000}, r"arguments\['port'\]=70000: expected a port in 1\.\.65535"),
    ({"url": None, "host": ""}, r"arguments\['host'\]: expected a host name"),
    ({"url": None, "host": 1}, r"arguments\['host'\]=1: expected a string"),
    ({"url": None, "db": -1}, r"arguments\['db'\]=-1"),
    ({"ssl": "maybe"}, r"arguments\['ssl'\]='maybe': expected a boolean"),
    ({"socket_timeout": 0}, r"arguments\['socket_timeout'\]=0: duration must be positive"),
    ({"redis_expiration_time": -5}, r"arguments\['redis_expiration_time'\]=-5"),
    ({"redis_expiration_time": "soon"}, r"arguments\['redis_expiration_time'\]='soon'"),
    ({"redis_expiration_time": 10**12}, r"arguments\['redis_expiration_time'\].*100 years"),
    ({"distributed_lock": "maybe"}, r"arguments\['distributed_lock'\]='maybe'"),
    ({"thread_local_lock": 2}, r"arguments\['thread_local_lock'\]=2"),
    ({"lock_timeout": 0}, r"arguments\['lock_timeout'\]=0"),
    ({"lock_sleep": "often"}, r"arguments\['lock_sleep'\]='often'"),
    ({"options": ["CACHE_L1_TTL"]}, r"arguments\['options'\]: expected a dict"),
    ({"options": {"CACHE_L1_TTLL": "1s"}}, r"arguments\['options'\]: unknown option.*TTLL"),
    ({"options": {"CACHE_L1_TTL": "soon"}}, r"arguments\['options'\]: .*CACHE_L1_TTL"),
    ({"pickle_secret": None}, r"arguments\['pickle_secret'\] \(or CACHE_PICKLE_SECRET\) is "
                              r"not set"),
    ({"pickle_secret": "short"}, r"arguments\['pickle_secret'\] \(or CACHE_PICKLE_SECRET\) "
                                 r"must be at least 16 bytes"),
    ({"pickle_secret": 1234567890123456789}, r"arguments\['pickle_secret'\]: expected str"),
    ({"connection_pool": object()}, r"arguments\['connection_pool'\] is not supported"),
    ({"connection_kwargs": {"ssl": True}}, r"arguments\['connection_kwargs'\] is not sup"),
    ({"lock_prefix": "_lok."}, r"arguments\['lock_prefix'\] is not supported"),
    ({"lock_blocking": False}, r"arguments\['lock_blocking'\] is not supported"),
    ({"lock_blocking_timeout": 5}, r"arguments\['lock_blocking_timeout'\] is not supp"),
])
def test_bad_arguments_name_dogpiles_key(configure: Configure, redis_server: Any,
                                         arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        configure(**arguments)
    assert redis_server.client().dbsize() == 0


def test_passwords_and_secrets_are_never_echoed(configure: Configure) -> None:
    for arguments in ({"url": "redis://:hunter2-secret@h:port"},
                      {"url": None, "password": 123456789},
                      {"pickle_secret": "hunter2"},
                      {"pickle_secret": 123456789}):
        with pytest.raises(ConfigError) as error:
            configure(**arguments)
        assert "hunter2" not in str(error.value) and "123456789" not in str(error.value)


def test_arguments_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"dogpile\.cache arguments: expected a dict, got list"):
        DragonflyBackend(["url"])  # type: ignore[arg-type]


def test_without_the_extra_the_module_names_the_install_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dogpile.cache", None)
    monkeypatch.delitem(sys.modules, "dragonfly_cache.contrib.dogpile")
    with pytest.raises(MissingExtraError, match=r"^dragonfly_cache.contrib.dogpile needs the "
                       r"dogpile.cache package: pip install 'dragonfly-cache\[dogpile\]'$"):
        importlib.import_module("dragonfly_cache.contrib.dogpile")
