"""Tests of the Sentinel harness (tests/helpers/sentinel.py) the Sentinel tests rely on.

Failovers themselves are exercised by tests/test_sentinel.py (each costs 1-4 s)."""

from __future__ import annotations

import pytest

from tests.helpers import wait_until
from tests.helpers.sentinel import DOWN_AFTER_MS, QUORUM, SERVICE, LocalSentinels


def test_three_sentinels_watch_a_primary_and_its_replica(
        redis_sentinels: LocalSentinels) -> None:
    deployment = redis_sentinels
    assert len(deployment.sentinels) == 3
    assert deployment.reported() == [deployment.primary.address] * 3
    ports = {deployment.primary.port, deployment.replica.port,
             *(sentinel.port for sentinel in deployment.sentinels)}
    assert len(ports) == 5
    assert all(address.startswith("127.0.0.1:") for address in deployment.addresses)
    for sentinel in deployment.sentinels:
        master = sentinel.command("SENTINEL", "MASTER", SERVICE)
        fields = dict(zip(master[::2], master[1::2], strict=True))
        assert fields["quorum"] == str(QUORUM)
        assert fields["down-after-milliseconds"] == str(DOWN_AFTER_MS)
        assert fields["num-other-sentinels"] == "2"
        assert fields["num-slaves"] == "1"
    # The replica replicates: a write to the primary shows up there.
    deployment.primary.client().set("harness", b"1")
    replica = deployment.replica.client()
    wait_until(lambda: replica.get("harness") == b"1")


def test_close_kills_every_process(redis_binary: str, sentinel_binary: str) -> None:
    deployment = LocalSentinels(redis_binary, sentinel_binary).start()
    processes = [*deployment.servers, *deployment.sentinels]
    deployment.close()
    assert not any(process.is_running() for process in processes)
    assert not any(process.workdir.exists() for process in processes)
    deployment.close()  # idempotent


def test_markers_added_for_the_sentinel_fixture(request: pytest.FixtureRequest,
                                                redis_sentinels: LocalSentinels) -> None:
    assert request.node.get_closest_marker("server") is not None
    assert request.node.get_closest_marker("sentinel") is not None
