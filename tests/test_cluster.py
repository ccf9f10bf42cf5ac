"""Cluster mode against a real 3-primary Redis Cluster (tests/helpers/cluster.py).

The contract itself runs on the cluster in test_contract.py; this file checks what is
particular to a cluster: keys on every node, one round trip per node, SCAN on every
primary, sharded pub/sub across processes, a dead primary costing only its own slots,
MOVED/ASK during a resharding, the listener following its channel's slot, and tracking
per node. Tests of the pub/sub machinery pin ``pubsub``; the others run in the mode
``auto`` picks (tracking, on these servers).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dragonfly_cache import (
    CacheConfig,
    CacheUnavailableError,
    ConfigError,
    DragonflyConfig,
    L1Config,
    TieredCache,
    _invalidation,
)
from dragonfly_cache import _coherence as coherence_module
from dragonfly_cache._channels import channel_name
from tests.helpers import command_calls, percentile, wait_until
from tests.helpers.cluster import ClusterNode, LocalCluster
from tests.helpers.coherence_worker import Worker, measure

Make = Callable[..., TieredCache]
BASE = channel_name(0, "app:")


@pytest.fixture
def make(redis_cluster: LocalCluster) -> Iterator[Make]:
    """``make(addresses=None, subscribed=True, invalidation="auto", **dragonfly)``: a
    cache on the cluster (prefix ``app:``), closed at teardown."""
    caches: list[TieredCache] = []

    def factory(addresses: list[str] | None = None, subscribed: bool = True,
                invalidation: str = "auto", **dragonfly: Any) -> TieredCache:
        config = CacheConfig(
            dragonfly=DragonflyConfig(addresses=addresses or redis_cluster.addresses,
                                      **dragonfly),
            l1=L1Config(invalidation=invalidation), key_prefix="app:")
        cache = TieredCache(config)
        caches.append(cache)
        if subscribed:
            cache.exists("warm-up")
            wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed",
                       timeout=5.0)
        return cache

    yield factory
    for cache in caches:
        with contextlib.suppress(Exception):
            cache.close()


def keys_per_node(cluster: LocalCluster, count: int) -> dict[ClusterNode, list[str]]:
    """``count`` cache keys (without the prefix) whose L2 names land on each node."""
    found: dict[ClusterNode, list[str]] = {node: [] for node in cluster.nodes}
    n = 0
    while any(len(keys) < count for keys in found.values()):
        key = f"k{n}"
        holder = cluster.node_for_key("app:" + key)
        if len(found[holder]) < count:
            found[holder].append(key)
        n += 1
    return found


def channel_of(cluster: LocalCluster, node: ClusterNode) -> str:
    """The invalidation channel of ``node`` under the current slots (dragonfly_cache.
    _channels: the smallest number whose channel name hashes to a slot of that node)."""
    return next(f"{BASE}:{{{n}}}" for n in itertools.count()
                if cluster.node_for_key(f"{BASE}:{{{n}}}") is node)


def subscribers(cluster: LocalCluster, node: ClusterNode) -> int:
    channel = channel_of(cluster, node)
    return int(node.command("PUBSUB", "SHARDNUMSUB", channel)[1])


def other_node(cluster: LocalCluster, *not_these: ClusterNode) -> ClusterNode:
    return next(node for node in cluster.nodes if node not in not_these)


# -- configuration and detection -------------------------------------------------------------


def test_mode_is_checked_and_a_clusters_db_is_left_to_the_server() -> None:
    # Whether a cluster has db 1 is the server's to say (Redis: no; Valkey 9: as many as
    # its cluster-databases); the tests below ask real servers.
    assert DragonflyConfig(addresses=["127.0.0.1:7000", "127.0.0.1:7001"], db=1).db == 1
    assert DragonflyConfig(addresses=["127.0.0.1:7000"], mode="cluster", db=2).db == 2
    with pytest.raises(ConfigError, match="DRAGONFLY_MODE"):
        DragonflyConfig(addresses=["127.0.0.1:7000", "127.0.0.1:7001"], mode="standalone")
    with pytest.raises(ConfigError, match="DRAGONFLY_MODE"):
        CacheConfig.from_env({"DRAGONFLY_MODE": "sharded"})
    assert DragonflyConfig(addresses=["127.0.0.1:7000"], db=3).mode == "auto"


def test_one_seed_address_is_enough_the_server_says_it_is_a_cluster(
        make: Make, redis_cluster: LocalCluster) -> None:
    cache = make(addresses=[redis_cluster.addresses[0]])
    values = {key: b"v" for keys in keys_per_node(redis_cluster, 5).values() for key in keys}
    cache.set_many(values)
    assert make().get_many(list(values)) == values
    health = cache.health()
    assert health["status"] == "healthy", health
    assert health["dragonfly"]["mode"] == "cluster"
    assert set(health["dragonfly"]["nodes"]) == set(redis_cluster.addresses)


# What each server answers to SELECT 1 in a cluster: Redis has only db 0; Valkey 9 has as
# many as its cluster-databases, 1 unless configured (the session cluster's case).
NO_DB_1 = {"redis": "SELECT is not allowed in cluster mode", "valkey": "DB index is out of range"}


@pytest.mark.parametrize("given", ["one seed", "every seed", "mode cluster"])
def test_a_cluster_without_db_1_refuses_it_naming_DRAGONFLY_DB(
        make: Make, redis_cluster: LocalCluster, given: str) -> None:
    seeds = redis_cluster.addresses[:1] if given == "one seed" else redis_cluster.addresses
    mode = "cluster" if given == "mode cluster" else "auto"
    cache = make(addresses=seeds, mode=mode, db=1, subscribed=False)
    reason = (f"the server runs in cluster mode and has no db 1 (SELECT 1: "
              f"{NO_DB_1[redis_cluster.kind]}): a Redis cluster has only db 0, a Valkey 9 "
              f"cluster as many as its cluster-databases; set DRAGONFLY_DB")
    assert cache.get("k") is None
    with pytest.raises(CacheUnavailableError, match=re.escape(reason)):
        cache.set("k", b"v")
    health = cache.health()
    assert health["status"] == "unhealthy"
    assert reason in health["dragonfly"]["error"]
    assert all(node.command("DBSIZE") == 0 for node in redis_cluster.nodes)


def test_a_valkey_cluster_with_cluster_databases_serves_db_1(valkey_binary: str) -> None:
    """Valkey 9 keeps several databases in a cluster (cluster-databases): the cache then
    works in db 1 as in db 0, every node's keys and invalidations included."""
    with LocalCluster(valkey_binary, extra_args=("--cluster-databases", "4")) as cluster:
        def make_cache(addresses: list[str], db: int) -> TieredCache:
            config = CacheConfig(dragonfly=DragonflyConfig(addresses=addresses, db=db),
                                 key_prefix="app:")
            cache = TieredCache(config)
            cache.exists("warm-up")
            wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed",
                       timeout=5.0)
            return cache

        with make_cache(cluster.addresses[:1], 1) as writer, \
                make_cache(cluster.addresses, 1) as reader, \
                make_cache(cluster.addresses, 0) as elsewhere:
            values = {key: b"v" for keys in keys_per_node(cluster, 3).values()
                      for key in keys}
            writer.set_many(values)
            assert reader.get_many(list(values)) == values
            assert elsewhere.get_many(list(values)) == {}
            for node in cluster.nodes:  # every node holds its keys in db 1, none in db 0
                with redis.Redis(host=node.host, port=node.port, db=1) as db1:
                    assert db1.dbsize() == 3
                assert node.command("DBSIZE") == 0
            key = next(iter(values))
            writer.set(key, b"newer")
            wait_until(lambda: reader.get(key) == b"newer", timeout=0.5)
            health = writer.health()
            assert health["status"] == "healthy", health
            assert health["dragonfly"]["mode"] == "cluster"


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pubsub", "tracking"])
def test_keys_spread_over_every_node_and_batches_take_one_round_trip_per_node(
        make: Make, redis_cluster: LocalCluster, mode: str) -> None:
    writer, reader = make(invalidation=mode), make(invalidation=mode)
    values = {f"k{n}": b"v%d" % n for n in range(300)}
    operations: list[str] = []
    # The listener's once-a-second flush watch (INFO) may run meanwhile: not a batch of ours.
    writer.add_latency_observer(
        lambda operation, _seconds: operation != "INFO" and operations.append(operation))
    writer.set_many(values)
    # One call for the writes (every node at once), then the announcement (pub/sub; in
    # tracking mode the servers tell whoever read the keys).
    assert operations == (["SET", "PUBLISH"] if mode == "pubsub" else ["SET"])
    sizes = [int(node.command("DBSIZE")) for node in redis_cluster.nodes]
    assert all(size > 50 for size in sizes) and sum(sizes) == 300, sizes
    for node in redis_cluster.nodes:
        node.command("CONFIG", "RESETSTAT")
    operations.clear()
    reader.add_latency_observer(
        lambda operation, _seconds: operation != "INFO" and operations.append(operation))
    assert reader.get_many(list(values)) == values
    assert operations == ["MGET"]
    for node, size in zip(redis_cluster.nodes, sizes, strict=True):
        assert command_calls(node, "get") == size  # each key asked of its own node only


def test_invalidate_scans_every_primary(make: Make, redis_cluster: LocalCluster) -> None:
    cache = make()
    cache.set_many({**{f"user:{n}": b"u" for n in range(300)},
                    **{f"order:{n}": b"o" for n in range(30)}})
    for node in redis_cluster.nodes:
        node.command("CONFIG", "RESETSTAT")
    assert cache.invalidate("user:*") == 300
    for node in redis_cluster.nodes:
        assert command_calls(node, "scan") >= 1
        assert command_calls(node, "keys") == 0
    assert sum(int(node.command("DBSIZE")) for node in redis_cluster.nodes) == 30


# -- coherence -------------------------------------------------------------------------------


def test_coherence_across_two_processes_over_sharded_pub_sub(
        make: Make, redis_cluster: LocalCluster) -> None:
    a = make(invalidation="pubsub")
    assert a.stats()["coherence"]["sharded"] is True
    b = Worker(redis_cluster.addresses, "app:", "pubsub")
    try:
        assert b.coherence == "subscribed"
        # a's listeners and b's: one on every primary, each on its own channel there.
        assert [subscribers(redis_cluster, node) for node in redis_cluster.nodes] == [2] * 3
        trials = 24
        a.set_many({f"user:{n}": b"old" for n in range(trials)})
        writes: list[tuple[Callable[[str], None], bytes | None]] = [
            (lambda key: a.set(key, b"new"), b"new"),
            (lambda key: a.delete(key), None),
            (lambda key: a.invalidate(key), None),
        ]
        delays = []
        for n in range(trials):
            write, expected = writes[n % len(writes)]
            key = f"user:{n}"
            outcome, delay, value, _ = measure(a, b, key, b"old", functools.partial(write, key))
            assert outcome == "seen" and value == expected, (key, outcome, value)
            delays.append(delay)
        print(f"\ncluster invalidation delay: p50 {percentile(delays, 0.5) * 1000:.2f} ms, "
              f"p99 {percentile(delays, 0.99) * 1000:.2f} ms")
        assert percentile(delays, 0.99) < 0.100
        assert b.stats()["coherence"]["sharded"] is True
    finally:
        b.close()


# -- failures --------------------------------------------------------------------------------


def test_killing_one_primary_degrades_only_its_slots(make: Make,
                                                      redis_cluster: LocalCluster) -> None:
    cache = make(breaker_cooldown=0.2, invalidation="pubsub")
    keys = keys_per_node(redis_cluster, 10)
    dead = redis_cluster.nodes[1]
    values = {key: b"v" for node_keys in keys.values() for key in node_keys}
    cache.set_many(values)
    dead.kill()
    # Its listener on the dead primary cannot subscribe.
    reader = make(subscribed=False, invalidation="pubsub")
    alive = {key: b"v" for node, node_keys in keys.items() if node is not dead
             for key in node_keys}
    for _ in range(10):  # enough failures to open the dead node's breaker
        assert reader.get_many(list(values)) == alive
        assert reader.get(keys[dead][0]) is None
    assert all(reader.get(key) == b"v" for key in alive)
    breaker = reader.stats()["breaker"]
    assert breaker["nodes"][dead.address] == "open"
    assert [state for address, state in breaker["nodes"].items()
            if address != dead.address] == ["closed", "closed"]
    # Writes to healthy slots still work; writes to the dead one's report it.
    live_key = next(iter(alive))
    cache.set(live_key, b"new")
    assert reader.get(live_key) in (b"v", b"new")
    wait_until(lambda: reader.get(live_key) == b"new", timeout=1.0)
    with pytest.raises(CacheUnavailableError, match=dead.address):
        cache.set(keys[dead][0], b"new")
    # The listener on the dead primary is down (L1 entries live l1.degraded_ttl now); the
    # others still hear every write to their primaries.
    wait_until(lambda: reader.stats()["coherence"]["state"] == "down", timeout=5.0)
    health = reader.health()
    assert health["status"] == "unhealthy"
    assert health["dragonfly"]["connected"] is True
    assert dead.address in health["dragonfly"]["error"]
    assert health["dragonfly"]["nodes"][dead.address] != "ok"
    redis_cluster.heal()
    wait_until(lambda: _writes(cache, keys[dead][0]), timeout=10.0)
    assert reader.health()["status"] == "healthy"


def _writes(cache: TieredCache, key: str) -> bool:
    try:
        cache.set(key, b"back")
    except CacheUnavailableError:
        return False
    return True


@pytest.mark.parametrize("mode", ["pubsub", "tracking"])
@pytest.mark.parametrize("dead", [0, 1, 2])
def test_killing_any_primary_leaves_writes_to_the_others_working_and_announced(
        make: Make, redis_cluster: LocalCluster, dead: int, mode: str) -> None:
    """No primary holds every invalidation: each write is announced on the channel of the
    primary that took it (pub/sub), or told by that primary (tracking). (The issue's "kill
    each of the 3 primaries in turn".)"""
    writer, reader = make(invalidation=mode), make(invalidation=mode)
    keys = keys_per_node(redis_cluster, 2)
    victim = redis_cluster.nodes[dead]
    writer.set_many({key: b"old" for node_keys in keys.values() for key in node_keys})
    for node_keys in keys.values():
        assert reader.get_many(node_keys) == dict.fromkeys(node_keys, b"old")
    victim.kill()
    try:
        for node in redis_cluster.nodes:
            if node is victim:
                with pytest.raises(CacheUnavailableError, match=victim.address):
                    writer.set(keys[node][0], b"new")
                continue
            for key in keys[node]:
                writer.set(key, b"new")  # no error: its primary took it and announced it
                assert reader.get(key) in (b"old", b"new")  # L1, until the message lands
                wait_until(lambda key=key: reader.get(key) == b"new", timeout=0.1)
        assert reader.stats()["l2_stats"]["errors"] >= 0
    finally:
        redis_cluster.heal()
    wait_until(lambda: reader.stats()["coherence"]["state"] == "subscribed", timeout=10.0)
    wait_until(lambda: _writes(writer, keys[victim][1]), timeout=10.0)
    wait_until(lambda: reader.get(keys[victim][1]) == b"back", timeout=1.0)


# -- resharding ------------------------------------------------------------------------------


@contextlib.contextmanager
def migrating(cluster: LocalCluster, slot: int, source: ClusterNode, target: ClusterNode
              ) -> Iterator[Callable[[], None]]:
    """Mark ``slot`` MIGRATING on ``source`` and IMPORTING on ``target`` (redis-cli
    --cluster reshard's steps); yields ``move_keys()``; on exit the slot belongs to
    ``target`` on every node."""
    source_id, target_id = source.node_id(), target.node_id()
    target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)

    def move_keys() -> None:
        for name in source.command("CLUSTER", "GETKEYSINSLOT", str(slot), "1000"):
            source.command("MIGRATE", cluster.host, str(target.port), name, "0", "5000")

    try:
        yield move_keys
    finally:
        move_keys()
        for node in cluster.nodes:
            node.command("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)


def test_ask_and_moved_are_followed_during_a_resharding(make: Make,
                                                        redis_cluster: LocalCluster) -> None:
    cache, writer = make(), make()
    source = redis_cluster.nodes[0]
    key = keys_per_node(redis_cluster, 1)[source][0]
    slot = redis_cluster.keyslot("app:" + key)
    target = other_node(redis_cluster, source)
    writer.set(key, b"before")
    with migrating(redis_cluster, slot, source, target) as move_keys:
        move_keys()  # the key now lives on target; source answers ASK for it
        assert cache.get(key) == b"before"
        writer.set(key, b"during")  # SET on source -> ASK -> ASKING + SET on target
        with pytest.raises(redis.exceptions.MovedError):  # only reachable with ASKING
            target.command("GET", "app:" + key)
        wait_until(lambda: cache.get(key) == b"during", timeout=1.0)
        assert cache.get_many([key]) == {key: b"during"}
    # The slot is target's now: source answers MOVED, and the map is refreshed.
    writer.set(key, b"after")
    wait_until(lambda: cache.get(key) == b"after", timeout=1.0)
    assert cache.stats()["l2_stats"]["errors"] == 0 and writer.stats()["l2_stats"]["errors"] == 0
    owner = writer._l2.router.topology.current().owner(slot)
    assert owner == target.address


def _number(cluster: LocalCluster, node: ClusterNode) -> int:
    return int(channel_of(cluster, node).rsplit("{", 1)[1].rstrip("}"))


@pytest.mark.parametrize("direction", ["first_to_second", "lowest_to_highest"])
def test_the_listeners_follow_a_channel_whose_slot_moves(
        make: Make, redis_cluster: LocalCluster, direction: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """lowest_to_highest: the receiving primary's own channel changes to a smaller number
    without any subscription ending there; the periodic check finds it."""
    monkeypatch.setattr(coherence_module, "FOLLOW_INTERVAL", 0.5)
    a, b = make(invalidation="pubsub"), make(invalidation="pubsub")
    if direction == "first_to_second":
        source, target = redis_cluster.nodes[0], redis_cluster.nodes[1]
    else:
        ordered = sorted(redis_cluster.nodes, key=lambda node: _number(redis_cluster, node))
        source, target = ordered[0], ordered[-1]
    slot = redis_cluster.keyslot(channel_of(redis_cluster, source))
    key = keys_per_node(redis_cluster, 1)[target][0]
    b.set(key, b"old")
    assert a.get(key) == b"old"
    with migrating(redis_cluster, slot, source, target):
        pass
    # The listeners on the source lose that shard subscription; every listener ends up on
    # its primary's channel under the new map (each primary: our 2 caches).
    wait_until(lambda: [subscribers(redis_cluster, node) for node in redis_cluster.nodes]
               == [2] * 3, timeout=5.0)
    wait_until(lambda: a.stats()["coherence"]["state"] == "subscribed", timeout=5.0)
    assert a.get(key) in (b"old", None)
    assert a.get(key) == b"old"
    b.set(key, b"new")
    wait_until(lambda: a.get(key) == b"new", timeout=0.1)


def test_a_fork_child_keeps_the_slot_map_and_gets_its_own_nodes(
        make: Make, redis_cluster: LocalCluster) -> None:
    cache = make()
    cache.set("k", b"v")
    slot_map, nodes = cache._l2.router.topology.slot_map, dict(cache._l2.router.nodes._nodes)
    cache._after_fork_in_child()  # what the at-fork hook runs in a child
    assert cache._l2.router.topology.slot_map is slot_map  # plain data: no need to ask again
    fresh = cache._l2.router.nodes._nodes
    assert all(fresh.get(address) is not node for address, node in nodes.items())
    assert cache.get("k") == b"v"


def test_a_cluster_without_sharded_pub_sub_gets_global_pub_sub(redis_binary: str) -> None:
    """Redis 6 clusters have no SPUBLISH; renaming it away on 7 looks the same to a client."""
    hide = ["--rename-command", "SPUBLISH", "", "--rename-command", "SSUBSCRIBE", ""]
    with LocalCluster(redis_binary, extra_args=hide) as cluster:
        config = CacheConfig(dragonfly=DragonflyConfig(addresses=cluster.addresses),
                             l1=L1Config(), key_prefix="app:")
        with TieredCache(config) as a, TieredCache(config) as b:
            for cache in (a, b):
                cache.exists("warm-up")
                wait_until(lambda cache=cache: cache.stats()["coherence"]["state"]
                           == "subscribed", timeout=5.0)
                assert cache.stats()["coherence"]["sharded"] is False
            a.set("k", b"old")
            assert b.get("k") == b"old"
            a.set("k", b"new")
            wait_until(lambda: b.get("k") == b"new", timeout=0.1)
            assert a.stats()["l2_stats"]["errors"] == 0


def test_threads_keep_their_guarantees_through_a_primary_loss_and_return(
        make: Make, redis_cluster: LocalCluster) -> None:
    """8 threads, each the only writer of its keys (spread over every node), while a
    primary is killed and brought back: reads never raise, writes raise only
    CacheUnavailableError, and no read returns a value its owner deleted or overwrote."""
    cache = make(breaker_cooldown=0.2)
    threads, per_thread = 8, 40
    dead = redis_cluster.nodes[1]
    stop = threading.Event()
    problems: list[str] = []
    counts: Counter[str] = Counter()

    def owner(index: int) -> None:
        rng = random.Random(index)
        keys = [f"t{index}:{n}" for n in range(per_thread)]
        allowed: dict[str, set[bytes | None]] = {key: {None} for key in keys}
        version = 0
        while not stop.is_set():
            key = rng.choice(keys)
            op = rng.random()
            try:
                if op < 0.5:
                    seen = cache.get(key)
                    if seen not in allowed[key]:
                        problems.append(f"get {key}: {seen!r} not in {allowed[key]!r}")
                elif op < 0.65:
                    batch = rng.sample(keys, 8)
                    for name, seen in cache.get_many(batch).items():
                        if seen not in allowed[name]:
                            problems.append(f"get_many {name}: {seen!r}")
                elif op < 0.9:
                    version += 1
                    value = f"{key}:{version}".encode()
                    allowed[key].add(value)  # allowed as soon as the write is attempted
                    cache.set(key, value)
                    allowed[key] = {value, None}  # None: the node may come back empty
                else:
                    cache.delete(key)
                    allowed[key] = {None}
                counts["ok"] += 1
            except CacheUnavailableError:
                counts["unavailable"] += 1
            except Exception as exc:  # anything else is a bug
                problems.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=owner, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    dead.kill()
    time.sleep(1.5)
    redis_cluster.heal()
    wait_until(lambda: _writes(cache, "after-heal"), timeout=10.0)
    time.sleep(0.5)
    stop.set()
    for worker in workers:
        worker.join(10)
    assert not problems, problems[:10]
    assert counts["unavailable"] > 0 and counts["ok"] > 1000, counts
    assert cache.stats()["breaker"]["opened"] >= 1


def test_a_flush_of_one_primary_by_another_client_empties_every_l1(
        make: Make, redis_cluster: LocalCluster) -> None:
    a, b = make(), make()
    keys = keys_per_node(redis_cluster, 1)
    holder, (key,) = next(iter(keys.items()))
    a.set(key, b"v")
    assert b.get(key) == b"v"
    holder.client().flushall()  # one primary, behind every cache's back
    wait_until(lambda: a.get(key) is None and b.get(key) is None, timeout=2.0)


def test_a_prefix_with_a_hash_tag_has_one_channel_on_its_one_primary(
        redis_cluster: LocalCluster) -> None:
    """{app}: puts every key and every channel on one slot: one listener, on that primary,
    found at once (not by trying 65,536 names on every new slot map)."""
    config = CacheConfig(dragonfly=DragonflyConfig(addresses=redis_cluster.addresses),
                         l1=L1Config(invalidation="pubsub"), key_prefix="{app}:")
    with TieredCache(config) as a, TieredCache(config) as b:
        for cache in (a, b):
            wait_until(lambda cache=cache: cache.stats()["coherence"]["state"]
                       == "subscribed", timeout=5.0)
        holder = redis_cluster.node_for_key("{app}:k")
        assert _invalidation.listening_servers(a._l2) == {
            holder.address: f"{channel_name(0, '{app}:')}:{{0}}"}
        started = time.perf_counter()
        a._l2.channels._derive(a._l2.router.topology.current())
        assert time.perf_counter() - started < 0.01
        b.set("k", b"old")
        assert a.get("k") == b"old"
        b.set("k", b"new")
        wait_until(lambda: a.get("k") == b"new", timeout=0.1)


def test_tracking_runs_per_node_and_hears_raw_writes_on_every_primary(
        make: Make, redis_cluster: LocalCluster) -> None:
    """Each primary tracks the keys read from it on our connection to it, and tells that
    connection, idle in the node's pool, when any client writes one of them."""
    cache = make(invalidation="tracking")
    assert cache.stats()["coherence"]["mode"] == "tracking"
    keys = keys_per_node(redis_cluster, 2)
    for node, (read, written) in keys.items():
        node.command("SET", "app:" + read, "old")
        assert cache.get(read) == b"old"
        cache.set(written, b"mine")
        clients = node.client().client_list()
        assert [client["flags"] for client in clients if "t" in client["flags"]] == ["t"]
    l1 = cache._tiers.l1
    for node, (read, written) in keys.items():
        for key in (read, written):
            assert l1.peek(key) is not None
            node.command("SET", "app:" + key, "theirs")  # a raw write on that primary
            wait_until(lambda key=key: l1.peek(key) is None, timeout=0.1)
            assert cache.get(key) == b"theirs"
    assert cache.stats()["coherence"]["flushes"] == 0


def test_a_replay_with_one_primary_away_settles_the_others_keys_once(
        make: Make, redis_cluster: LocalCluster) -> None:
    """A delete of keys on a live and a dead primary fails; the replay deletes the live
    one's key once and keeps only the dead one's pending: a value written there since is
    not deleted again at every retry (a loader storm across the fleet)."""
    cache = make(breaker_cooldown=0.1, breaker_max_cooldown=0.2)
    writer = make()
    keys = keys_per_node(redis_cluster, 1)
    dead = redis_cluster.nodes[1]
    live_key = keys[redis_cluster.nodes[0]][0]
    dead_key = keys[dead][0]
    cache.set_many({live_key: b"old", dead_key: b"old"})
    dead.kill()
    try:
        with pytest.raises(CacheUnavailableError):
            cache.delete_many([live_key, dead_key])
        wait_until(lambda: cache.stats()["journal"] == {"pending": 1, "replayed": 1,
                                                        "dropped": 0}, timeout=5.0)
        writer.set(live_key, b"new")  # written after the replay settled it
        time.sleep(1.5)  # replays of the dead primary's key keep failing meanwhile
        assert redis_cluster.nodes[0].command("GET", "app:" + live_key) == "new"
        assert cache.stats()["journal"]["pending"] == 1
    finally:
        redis_cluster.heal()
    wait_until(lambda: cache.stats()["journal"]["pending"] == 0, timeout=15.0)
