"""Replica reads (``DRAGONFLY_READ_FROM_REPLICAS``, issue 17): the reads that fill L1 go to
replicas, everything else to the primaries, and coherence still bounds what a lagging
replica can put into L1.

Real processes: the Sentinel deployment (a primary, a replica, three sentinels) and the
replicated cluster (3 primaries x 1 replica). Where a command ran is told by each
server's ``INFO commandstats``. A lagging replica is made with ``CLIENT PAUSE <ms> WRITE``
on it: it still answers reads, but applies nothing from its primary until the pause ends
(checked on the replica itself in each test).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dragonfly_cache import CacheConfig, ConfigError, DragonflyConfig, L1Config, TieredCache
from dragonfly_cache._replicas import RECENT_WINDOW, Recent
from dragonfly_cache._sentinel_answers import healthy_replicas
from tests.helpers import FakeClock, command_calls, metric, wait_subscribed, wait_until
from tests.helpers.cluster import LocalCluster
from tests.helpers.sentinel import LocalSentinels

Make = Callable[..., TieredCache]


def replica_stats(cache: TieredCache) -> dict[str, Any]:
    stats = cache.stats()["l2_stats"].get("replicas")
    assert stats is not None, "replica reads are on: stats() reports them"
    return dict(stats)


def lag(server: Any, milliseconds: int) -> None:
    """Make a replica stop applying its primary's writes for ``milliseconds`` (it still
    answers reads): ``CLIENT PAUSE ... WRITE`` holds its master link's commands too."""
    server.client().execute_command("CLIENT", "PAUSE", milliseconds, "WRITE")


# -- configuration ------------------------------------------------------------------------------


def test_the_setting_is_off_by_default_and_read_like_the_other_dragonfly_settings() -> None:
    assert DragonflyConfig().read_from_replicas is False
    env = {"DRAGONFLY_READ_FROM_REPLICAS": "yes", "DRAGONFLY_ADDRESSES": "a:1,b:2"}
    assert CacheConfig.from_env(env).dragonfly.read_from_replicas is True
    text = "cache:\n  dragonfly:\n    addresses: [a:1]\n    read_from_replicas: ${R}\n"
    assert CacheConfig.from_yaml(text, environ={"R": "true"}).dragonfly.read_from_replicas
    with pytest.raises(ConfigError, match=r"^DRAGONFLY_READ_FROM_REPLICAS='maybe': expected"):
        CacheConfig.from_env({"DRAGONFLY_READ_FROM_REPLICAS": "maybe"})
    with pytest.raises(ConfigError, match=r"^cache\.dragonfly\.read_from_replicas="):
        CacheConfig.from_yaml("cache:\n  dragonfly:\n    read_from_replicas: 7\n", environ={})


def test_a_standalone_server_without_sentinels_has_no_replicas_to_read() -> None:
    with pytest.raises(ConfigError, match=r"^DRAGONFLY_READ_FROM_REPLICAS .* standalone "
                                          r"without DRAGONFLY_SENTINELS: .*sentinel or cluster"):
        DragonflyConfig(mode="standalone", read_from_replicas=True)
    # One address in mode auto may be a cluster seed: allowed (a standalone server found
    # there is read from, as without the setting).
    assert DragonflyConfig(read_from_replicas=True).read_from_replicas
    assert DragonflyConfig(sentinels=["s:26379"], sentinel_master="m", mode="standalone",
                           read_from_replicas=True).read_from_replicas


def test_recent_keys_are_remembered_for_the_window_and_never_beyond_their_number() -> None:
    clock = FakeClock()
    recent = Recent(window=1.0, size=3, timer=clock)
    assert not recent.any(["a"])
    recent.note(["a", "b"])
    assert recent.any(["x", "a"]) and not recent.any(["x"])
    clock.advance(0.6)
    recent.note(["c"])
    clock.advance(0.5)  # a and b are 1.1 s old, c 0.5 s
    assert not recent.any(["a", "b"]) and recent.any(["c"])
    recent.note(["d", "e", "f"])  # c, then d, fall out of 3: every key is recent a while
    assert recent.any(["never-written"])
    clock.advance(1.01)
    assert not recent.any(["never-written", "c", "f"])
    recent.note_all()  # a pattern, a clear, a flush
    assert recent.any(["anything"])
    clock.advance(1.01)
    assert not recent.any(["anything"])


def test_only_the_replicas_a_sentinel_reports_healthy_are_read_from() -> None:
    def replica(port: int, flags: str, link: str = "ok") -> list[bytes]:
        return [b"name", b"127.0.0.1:%d" % port, b"ip", b"127.0.0.1", b"port", b"%d" % port,
                b"flags", flags.encode(), b"master-link-status", link.encode()]

    reply = [replica(1, "slave"), replica(2, "s_down,slave"), replica(3, "o_down,slave"),
             replica(4, "slave,disconnected"), replica(5, "slave", link="err"),
             replica(6, "slave")]
    assert healthy_replicas(reply) == ("127.0.0.1:1", "127.0.0.1:6")
    assert healthy_replicas(redis.ResponseError("unknown subcommand")) == ()


# -- Sentinel --------------------------------------------------------------------------------------


@pytest.fixture
def make(redis_sentinels: LocalSentinels) -> Iterator[Make]:
    """``make(invalidation, **dragonfly)``: a cache reading from the sentinels' replicas,
    coherent, that knows the replica; closed at teardown."""
    caches: list[TieredCache] = []

    def factory(invalidation: str = "auto", l1_ttl: float = 300.0,
                timer: Callable[[], float] = time.monotonic, **dragonfly: Any) -> TieredCache:
        dragonfly.setdefault("sentinels", redis_sentinels.addresses)
        dragonfly.setdefault("sentinel_master", redis_sentinels.service)
        cache = TieredCache(CacheConfig(
            dragonfly=DragonflyConfig(read_from_replicas=True, **dragonfly),
            l1=L1Config(invalidation=invalidation, ttl=l1_ttl)), timer=timer)
        caches.append(cache)
        wait_subscribed(cache)
        wait_until(lambda: replica_stats(cache)["replicas"] == [
            redis_sentinels.replica.address])
        return cache

    yield factory
    for cache in caches:
        with contextlib.suppress(Exception):
            cache.close()


def seed(primary: Any, values: dict[str, bytes]) -> None:
    """Write ``values`` straight to the primary (no cache hears of it) and wait until the
    replica has them."""
    client = primary.client()
    client.mset(values)
    assert client.wait(1, 2000) == 1


def exported_reads(cache: TieredCache) -> dict[str, float]:
    """``dragonfly_cache_replica_reads_total`` by ``served_by``, as the metrics export the
    growth of ``cache``'s counters (from a registry of its own)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from dragonfly_cache.metrics import CacheMetrics, register

    registry = CollectorRegistry()
    register(registry)

    def exported() -> dict[str, float]:
        text = generate_latest(registry).decode()
        return {served_by: metric(text, "dragonfly_cache_replica_reads_total",
                                  served_by=served_by)
                for served_by in ("replica", "primary", "fallback")}

    before = exported()
    CacheMetrics(cache).sync()
    return {key: value - before[key] for key, value in exported().items()}


def not_called() -> bytes:
    raise AssertionError("L2 has the value: the loader must not run")


def test_fill_reads_go_to_the_replica_and_everything_else_to_the_primary(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    primary, replica = redis_sentinels.primary.client(), redis_sentinels.replica.client()
    keys = [f"k{n}" for n in range(12)]
    seed(redis_sentinels.primary, {key: key.encode() for key in keys})
    cache = make()
    before = {name: (command_calls(server, "get"), command_calls(server, "mget"))
              for name, server in (("primary", primary), ("replica", replica))}

    assert cache.get("k0") == b"k0"
    assert cache.get_many(keys[1:10]) == {key: key.encode() for key in keys[1:10]}
    assert cache.get_or_load("k10", not_called) == b"k10"
    assert cache.exists("k11")

    assert command_calls(replica, "get") - before["replica"][0] == 3  # get, get_or_load, exists
    assert command_calls(replica, "mget") - before["replica"][1] == 1
    assert (command_calls(primary, "get"), command_calls(primary, "mget")) == before["primary"]
    counted = replica_stats(cache)
    assert (counted["reads"], counted["primary"], counted["fallbacks"]) == (12, 0, 0)
    assert exported_reads(cache) == {"replica": 12.0, "primary": 0.0, "fallback": 0.0}

    pttls = command_calls(primary, "pttl")
    assert cache.ttl("k0") is not None  # not a fill: the primary answers
    assert command_calls(primary, "pttl") == pttls + 1
    cache.set("w", b"written")
    cache.delete("k1")
    assert primary.get("w") == b"written" and primary.get("k1") is None
    assert "errorstat_READONLY" not in replica.info("errorstats")  # no write was sent there


def test_tracking_on_a_replica_connection_hears_the_write_when_replication_applies_it(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    seed(redis_sentinels.primary, {"k": b"v1"})
    cache = make("tracking")
    assert cache.get("k") == b"v1"  # read from the replica, and tracked there only
    lag(redis_sentinels.replica, 800)
    redis_sentinels.primary.client().set("k", b"v2")  # by another client: no announcement
    # The replica has not applied it, so it has not told us: L1 still serves v1 ...
    assert redis_sentinels.replica.client().get("k") == b"v1"
    assert cache.get("k") == b"v1"
    # ... until replication applies it and the replica pushes the invalidation (l1.ttl
    # is 300 s: nothing else would drop the value).
    wait_until(lambda: cache.get("k") == b"v2", timeout=5.0)
    assert cache.stats()["coherence"]["received"] >= 1


def test_a_value_deleted_on_the_primary_is_not_refilled_from_a_lagging_replica(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    seed(redis_sentinels.primary, {"k": b"old"})
    writer = make("pubsub")
    clock = FakeClock(time.monotonic())  # the reader's: its window and its L1 deadlines
    reader = make("pubsub", l1_ttl=0.5, timer=clock)
    assert reader.get("k") == b"old" and writer.get("k") == b"old"  # both from the replica
    lag(redis_sentinels.replica, 1500)
    applied = reader.stats()["coherence"]["applied"]
    writer.delete("k")
    wait_until(lambda: reader.stats()["coherence"]["applied"] > applied)  # heard it
    # For the window after the invalidation (or the write), reads go to the primary: the
    # replica still has the old value and would put it back into L1.
    for _ in range(10):
        assert reader.get("k") is None
        assert writer.get("k") is None  # read-your-writes (a second is ample for 10 rounds)
        clock.advance(RECENT_WINDOW / 20)
    assert redis_sentinels.replica.client().get("k") == b"old"
    assert replica_stats(reader)["primary"] == 10
    # Past the window a replica still lagging may answer the old value (documented); it
    # then lives in L1 until l1.ttl, and the replica caught up answers the delete.
    clock.advance(RECENT_WINDOW / 2 + 0.01)
    assert reader.get("k") == b"old"
    clock.advance(0.25)
    assert reader.get("k") == b"old"  # from L1
    wait_until(lambda: redis_sentinels.replica.client().get("k") is None, timeout=5.0)
    assert reader.get("k") == b"old"  # from L1 still: nothing tells it in pub/sub mode
    clock.advance(0.26)
    assert reader.get("k") is None  # l1.ttl is over: read from the replica again


def test_reads_go_to_the_primary_while_the_replica_is_down(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    values = {f"k{n}": b"%d" % n for n in range(20)}
    seed(redis_sentinels.primary, values)
    cache = make(l1_ttl=0.01)  # every read reaches L2
    redis_sentinels.replica.kill()
    errors: list[BaseException] = []
    deadline = time.monotonic() + 1.5  # past down-after-milliseconds: the sentinels see it
    while time.monotonic() < deadline:
        try:
            assert cache.get_many(list(values)) == values
            assert cache.get("k0") == b"0"
        except Exception as exc:  # a read must never raise
            errors.append(exc)
        time.sleep(0.02)
    assert errors == []
    counted = replica_stats(cache)
    # Failed attempts on the replica until its breaker opened; then straight to the primary.
    assert counted["fallbacks"] >= 1 and counted["primary"] > counted["fallbacks"]
    assert counted["reads"] == 0
    # The sentinels, asked again after the failure, no longer report the replica.
    wait_until(lambda: replica_stats(cache)["replicas"] == [], timeout=10.0)


def test_reads_through_a_sentinel_failover_never_raise(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    values = {f"k{n}": b"%d" % n for n in range(20)}
    seed(redis_sentinels.primary, values)
    cache = make(l1_ttl=0.01)  # every read reaches L2
    new_primary = redis_sentinels.replica.address
    redis_sentinels.failover()
    deadline = time.monotonic() + 10.0
    while cache.health()["dragonfly"].get("sentinel", {}).get("primary") != new_primary:
        assert time.monotonic() < deadline, "the cache did not follow the failover"
        found = cache.get_many(list(values))  # never raises; L1 flushed at the switch
        assert all(values[key] == value for key, value in found.items())
    # The old primary's replica is the primary now: never read from as a replica.
    assert new_primary not in replica_stats(cache)["replicas"]
    assert cache.get_many(list(values)) == values
    assert new_primary not in replica_stats(cache)["replicas"]
    cache.set("after", b"switch")  # and writes go there
    assert redis_sentinels.replica.client().get("after") == b"switch"


# -- cluster ---------------------------------------------------------------------------------------


def test_cluster_fill_reads_go_to_the_slots_replicas_and_survive_a_dead_one(
        replicated_cluster: LocalCluster) -> None:
    cluster = replicated_cluster
    primaries = cluster.primaries()
    replicas = [cluster.replica_of(primary) for primary in primaries]
    keys = [f"key:{n}" for n in range(60)]
    raw = cluster.client()
    for key in keys:
        raw.set(key, key.encode())
    for primary in primaries:
        assert primary.client().wait(1, 2000) == 1
    # Every node lists every replica (CLUSTER SLOTS): they are known by gossip, a little
    # after they replicate.
    wait_until(lambda: all(len(entry) == 4 for node in primaries
                           for entry in node.command("CLUSTER", "SLOTS")))
    cache = TieredCache(CacheConfig(dragonfly=DragonflyConfig(
        addresses=[primary.address for primary in primaries], read_from_replicas=True)))
    try:
        wait_subscribed(cache)
        reads_before = [command_calls(node, "get") for node in primaries + replicas]
        assert cache.get_many(keys) == {key: key.encode() for key in keys}
        assert cache.get("key:0") == b"key:0"  # an L1 hit now
        assert cache.get_many(keys[:3]) == {key: key.encode() for key in keys[:3]}
        reads = [command_calls(node, "get") - before for node, before
                 in zip(primaries + replicas, reads_before, strict=True)]
        assert reads[:3] == [0, 0, 0]  # no primary served a read
        assert sum(reads[3:]) == len(keys) and all(reads[3:])  # every replica served some
        assert replica_stats(cache)["replicas"] == sorted(node.address for node in replicas)

        cache.set("key:0", b"new")  # writes go to the primaries (a replica would MOVE it)
        assert raw.get("key:0") == b"new"

        # A dead replica: its keys are read from its primary, and no read fails.
        replicas[0].kill()
        fresh = TieredCache(CacheConfig(dragonfly=DragonflyConfig(
            addresses=[primary.address for primary in primaries], read_from_replicas=True)))
        try:
            assert fresh.get_many(keys) == {key: key.encode() for key in keys} | {
                "key:0": b"new"}
            counted = replica_stats(fresh)
            owned = sum(cluster.node_for_key(key) is primaries[0] for key in keys)
            # The dead replica's keys came from its primary (after a failed attempt, until
            # the cluster stops listing it); the others' from their replicas.
            assert counted["fallbacks"] + counted["primary"] == owned
            assert counted["reads"] == len(keys) - owned
        finally:
            fresh.close()
    finally:
        cache.close()
        raw.close()
