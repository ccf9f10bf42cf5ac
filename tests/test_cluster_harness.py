"""Tests of the Redis Cluster harness (tests/helpers/cluster.py) the cluster-mode tests rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import MovedError

from tests.helpers.cluster import (
    BUS_PORT_OFFSET,
    HASH_SLOTS,
    ClusterNode,
    LocalCluster,
    free_cluster_port,
)


def _keys_on_every_node(cluster: LocalCluster) -> dict[ClusterNode, str]:
    return {node: cluster.key_for_node(node, prefix="harness:") for node in cluster.nodes}


def test_cluster_forms_with_three_primaries_covering_every_slot(
    redis_cluster: LocalCluster,
) -> None:
    nodes = redis_cluster.nodes
    assert len(nodes) == 3
    assert redis_cluster.addresses == [f"127.0.0.1:{node.port}" for node in nodes]
    assert len({node.node_id() for node in nodes}) == 3
    for node in nodes:
        info = node.cluster_info()
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == str(HASH_SLOTS)
        assert info["cluster_slots_ok"] == str(HASH_SLOTS)
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_size"] == "3"  # primaries serving slots
        assert node.cluster_slots() == nodes[0].cluster_slots()  # every node agrees
    ranges = nodes[0].cluster_slots()
    covered = [slot for first, last, _ in ranges for slot in range(first, last + 1)]
    assert covered == list(range(HASH_SLOTS))
    assert {port for _, _, port in ranges} == {node.port for node in nodes}


def test_nodes_are_private_loopback_servers_with_partial_coverage(
    redis_cluster: LocalCluster,
) -> None:
    for node in redis_cluster.nodes:
        client = node.client(decode_responses=True)
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("cluster-require-full-coverage") == {
            "cluster-require-full-coverage": "no"
        }
        assert client.config_get("cluster-node-timeout") == {"cluster-node-timeout": "2000"}
        assert node.config_file == Path(node.workdir) / f"nodes-{node.port}.conf"
        assert node.config_file.is_file()


def test_client_reaches_keys_on_every_node(redis_cluster: LocalCluster) -> None:
    keys = _keys_on_every_node(redis_cluster)
    client = redis_cluster.client()
    for node, key in keys.items():
        assert redis_cluster.node_for_key(key) is node
        assert redis_cluster.keyslot(key) == key_slot(key.encode())  # redis-py agrees
        assert client.set(key, node.address.encode()) is True
    for node, key in keys.items():
        assert client.get(key) == node.address.encode()
        # The key really lives on its node: a plain client there reads it, elsewhere MOVED.
        assert node.client().get(key) == node.address.encode()
        other = next(peer for peer in redis_cluster.nodes if peer is not node)
        with pytest.raises(MovedError, match=rf"^\d+ 127\.0\.0\.1:{node.port}$"):
            other.client().get(key)


def test_redis_cluster_fixture_flushes_between_tests_part1(redis_cluster: LocalCluster) -> None:
    client = redis_cluster.client()
    for key in _keys_on_every_node(redis_cluster).values():
        client.set(key, b"leftover")


def test_redis_cluster_fixture_flushes_between_tests_part2(redis_cluster: LocalCluster) -> None:
    for node in redis_cluster.nodes:
        assert node.client().dbsize() == 0


def test_killed_primary_fails_only_its_own_slots_and_rejoins_after_restart(
    redis_cluster: LocalCluster,
) -> None:
    keys = _keys_on_every_node(redis_cluster)
    client = redis_cluster.client()
    for key in keys.values():
        client.set(key, b"before")
    victim = redis_cluster.nodes[0]  # also the client's startup node: the hardest case
    victim_id = victim.node_id()
    survivors = {node: key for node, key in keys.items() if node is not victim}

    victim.kill()

    with pytest.raises(redis.ConnectionError, match=rf"127\.0\.0\.1:{victim.port}"):
        client.get(keys[victim])
    # That failure made redis-py refresh its slot map from a survivor; the survivors still
    # list the dead node as the owner (no replica to fail over to), so only its slots fail.
    for key in survivors.values():
        assert client.get(key) == b"before"
        assert client.set(key, b"during") is True
    with pytest.raises(redis.ConnectionError):
        client.set(keys[victim], b"during")
    # A new client starts from a running node; it fails the same way for the dead slots.
    late_client = redis_cluster.client()
    assert all(late_client.get(key) == b"during" for key in survivors.values())
    with pytest.raises(redis.ConnectionError):
        late_client.get(keys[victim])
    for node in survivors:
        assert node.cluster_info()["cluster_state"] == "ok"  # full coverage not required

    victim.restart()
    redis_cluster.wait_healthy()

    assert victim.node_id() == victim_id  # rejoined from its nodes.conf, same identity
    for node in redis_cluster.nodes:
        assert node.cluster_info()["cluster_state"] == "ok"
    assert client.get(keys[victim]) is None  # no persistence: it came back empty
    assert client.set(keys[victim], b"after") is True
    assert victim.client().get(keys[victim]) == b"after"
    assert all(client.get(key) == b"during" for key in survivors.values())


def test_redis_cluster_fixture_heals_a_killed_node_part1(redis_cluster: LocalCluster) -> None:
    redis_cluster.nodes[1].kill()


def test_redis_cluster_fixture_heals_a_killed_node_part2(redis_cluster: LocalCluster) -> None:
    assert all(node.is_running() for node in redis_cluster.nodes)
    client = redis_cluster.client()
    for key in _keys_on_every_node(redis_cluster).values():
        assert client.set(key, b"1") is True


@pytest.mark.usefixtures("redis_cluster")
def test_server_marker_added_for_cluster_fixture(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("server") is not None


def test_free_cluster_port_leaves_room_for_the_bus_port() -> None:
    taken = {free_cluster_port()}
    port = free_cluster_port(avoid=taken)
    assert port not in taken
    assert port + BUS_PORT_OFFSET <= 65535
