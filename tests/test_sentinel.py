"""Redis Sentinel: the cache finds the primary through the sentinels, follows a failover
(a killed primary, ``SENTINEL FAILOVER``) with its threads running, re-applies the deletes
the old primary may have lost, and says in ``health()`` what the sentinels said.

The deployment (tests/helpers/sentinel.py): a primary and a replica of the server under
test, three Redis sentinels, quorum 2, ``down-after-milliseconds`` 300. A killed primary is
replaced in about 1.5-4 s there, a manual failover in about 1 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dragonfly_cache import (
    CacheConfig,
    CacheUnavailableError,
    DragonflyConfig,
    L1Config,
    TieredCache,
)
from dragonfly_cache._sentinel import Answer, choose
from tests.helpers import run_threads, wait_subscribed, wait_until
from tests.helpers.sentinel import LocalSentinels

Make = Callable[..., TieredCache]

THREADS = 8
KEYS_PER_THREAD = 16
SWITCH_BOUND = 1.0  # the cache writes to the new primary within this after the quorum
SENTINEL_PASSWORD = "s3nt1nel-Pa55word!"
SENTINEL_USERNAME = "cache-reader-7x"


@pytest.fixture
def make(redis_sentinels: LocalSentinels) -> Iterator[Make]:
    """``make(**dragonfly)``: a TieredCache that finds its server through the sentinels,
    its listener subscribed; closed at teardown."""
    caches: list[TieredCache] = []

    def factory(*, subscribed: bool = True, **dragonfly: Any) -> TieredCache:
        dragonfly.setdefault("sentinels", redis_sentinels.addresses)
        dragonfly.setdefault("sentinel_master", redis_sentinels.service)
        config = CacheConfig(dragonfly=DragonflyConfig(**dragonfly),
                             l1=L1Config(degraded_ttl=0.2))
        cache = TieredCache(config)
        caches.append(cache)
        if subscribed:
            wait_subscribed(cache)
        return cache

    yield factory
    for cache in caches:
        with contextlib.suppress(Exception):
            cache.close()


def sentinel_report(cache: TieredCache) -> dict[str, Any]:
    report = cache.health()["dragonfly"].get("sentinel")
    assert report is not None
    return dict(report)


# -- finding the primary ----------------------------------------------------------------------


def test_the_cache_uses_the_primary_the_sentinels_name_and_health_says_so(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    deployment = redis_sentinels
    cache = make()
    cache.set("k", b"v")
    assert deployment.primary.client().get("k") == b"v"
    assert cache.get("k") == b"v"
    health = cache.health()
    assert health["status"] == "healthy"
    dragonfly = health["dragonfly"]
    assert dragonfly["mode"] == "sentinel"
    assert dragonfly["server"] == deployment.primary.kind
    assert dragonfly.get("sentinel") == {
        "service": deployment.service, "primary": deployment.primary.address,
        "sentinels": 3, "answered": 3, "switches": 0,
        "subscribed": dragonfly.get("sentinel", {}).get("subscribed")}
    assert dragonfly["sentinel"].get("subscribed") in deployment.addresses
    assert deployment.service in repr(cache)


def test_with_every_sentinel_away_the_last_known_primary_stays_in_use(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    deployment = redis_sentinels
    cache = make()
    cache.set("before", b"1")
    for sentinel in deployment.sentinels:
        sentinel.kill()
    report = sentinel_report(cache)
    assert report["answered"] == 0
    assert report["primary"] == deployment.primary.address
    assert "no sentinel answered" in report["error"]
    assert f"using the last known primary {deployment.primary.address}" in report["error"]
    health = cache.health()
    assert health["status"] == "healthy"  # the primary answers: the cache works
    cache.set("during", b"2")
    assert deployment.primary.client().get("during") == b"2"
    for sentinel in deployment.sentinels:
        sentinel.restart()
    wait_until(lambda: sentinel_report(cache)["answered"] == 3, timeout=10)
    assert "error" not in sentinel_report(cache)


def test_a_service_no_sentinel_monitors_fails_writes_and_reads_miss(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    cache = make(sentinel_master="no-such-service", subscribed=False)
    assert cache.get("k") is None
    with pytest.raises(CacheUnavailableError, match="no-such-service"):
        cache.set("k", b"v")
    health = cache.health()
    assert health["status"] == "unhealthy"
    assert health["dragonfly"]["connected"] is False
    report = health["dragonfly"].get("sentinel", {})
    assert report.get("primary") is None
    assert "none monitors service 'no-such-service'" in report.get("error", "")


def test_sentinel_credentials_are_used_and_never_shown(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    deployment = redis_sentinels
    for sentinel in deployment.sentinels:  # their own users, not the servers'
        sentinel.command("ACL", "SETUSER", SENTINEL_USERNAME, "on", f">{SENTINEL_PASSWORD}",
                         "+@all", "&*")
        sentinel.command("ACL", "SETUSER", "default", "resetpass", f">{SENTINEL_PASSWORD}-2")
    refused = make(subscribed=False)
    assert "answered" in sentinel_report(refused).get("error", "")
    assert refused.get("k") is None
    cache = make(sentinel_username=SENTINEL_USERNAME, sentinel_password=SENTINEL_PASSWORD)
    cache.set("k", b"v")
    report = sentinel_report(cache)
    assert (report["answered"], report.get("subscribed") is not None) == (3, True)
    text = f"{cache!r} {cache.config!r} {cache.health()} {cache.stats()}"
    assert SENTINEL_PASSWORD not in text
    assert SENTINEL_USERNAME not in text


def test_a_cache_dropped_without_close_stops_its_sentinel_thread(
        redis_sentinels: LocalSentinels) -> None:
    import gc

    config = CacheConfig(dragonfly=DragonflyConfig(
        sentinels=redis_sentinels.addresses, sentinel_master=redis_sentinels.service))
    name = f"dragonfly_cache-sentinel-{redis_sentinels.service}"
    for _ in range(2):
        cache = TieredCache(config)
        wait_subscribed(cache)
        del cache


    def ended() -> bool:
        # The router and its sentinel form reference cycles (callbacks both ways): they
        # go at a collection once the listener threads, which hold the L2, have ended.
        gc.collect()
        return not [t for t in threading.enumerate() if t.name == name]

    wait_until(ended, timeout=3.0)


# -- following a failover ----------------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    """Eight threads of reads, writes and deletes on keys of their own, until ``stop``.

    Each thread knows what each of its keys may hold: after a write L2 took, that value
    or nothing (a failover's re-apply deletes it); after a write L2 refused, that value
    too (L1 keeps it briefly); after a delete L2 took, nothing at all. A read that returns
    anything else is recorded in ``stale``."""

    cache: TieredCache
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    read_errors: list[BaseException] = dataclasses.field(default_factory=list)
    other_errors: list[BaseException] = dataclasses.field(default_factory=list)
    write_failures: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    writes: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)
    deleted: set[str] = dataclasses.field(default_factory=set)  # keys last deleted (taken)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def run(self, n: int) -> None:
        rng = random.Random(n)
        allowed: dict[str, set[bytes | None]] = {}
        counter = 0
        while not self.stop.is_set():
            key = f"t{n}:{rng.randrange(KEYS_PER_THREAD)}"
            choice = rng.random()
            if choice < 0.5:
                self._read(key, allowed.get(key, {None}))
            else:
                counter += 1
                value = b"%d:%d" % (n, counter) if choice < 0.8 else None
                self._write(key, value, allowed)
            time.sleep(0.002)

    def _read(self, key: str, allowed: set[bytes | None]) -> None:
        try:
            value = self.cache.get(key)
        except BaseException as exc:
            self.read_errors.append(exc)
            return
        if value not in allowed:
            self.stale.append(f"{key}: read {value!r}, may hold {sorted(map(repr, allowed))}")

    def _write(self, key: str, value: bytes | None,
               allowed: dict[str, set[bytes | None]]) -> None:
        started = time.monotonic()
        try:
            if value is None:
                self.cache.delete(key)
            else:
                self.cache.set(key, value)
        except CacheUnavailableError:
            with self.lock:
                self.write_failures.append((started, time.monotonic()))
                self.deleted.discard(key)
            allowed[key] = allowed.get(key, {None}) | {value, None}
            return
        except BaseException as exc:
            self.other_errors.append(exc)
            return
        with self.lock:
            self.writes.append((started, time.monotonic()))
            if value is None:
                self.deleted.add(key)
            else:
                self.deleted.discard(key)
        allowed[key] = {value, None}


@dataclasses.dataclass
class Failover:
    """When things happened, in ``time.monotonic()`` seconds."""

    triggered: float
    quorum: float  # a quorum of sentinels named the new primary
    written: float  # a write through the cache first reached the new primary


def _through_failover(deployment: LocalSentinels, cache: TieredCache,
                      trigger: Callable[[], None]) -> tuple[Workload, Failover]:
    """Run the workload, trigger the failover, watch for the quorum and (at the same time)
    for the cache's first write to the new primary, then run on for a second."""
    workload = Workload(cache)
    timings: list[Failover] = []

    def drive(n: int) -> None:
        if n < THREADS:
            workload.run(n)
            return
        try:
            time.sleep(0.3)  # the workload in full swing, on the first primary
            triggered = time.monotonic()
            written: list[float] = []
            prober = threading.Thread(target=lambda: written.append(
                _first_write_to_new_primary(cache, deployment, deadline=triggered + 20)))
            trigger()
            prober.start()
            quorum = deployment.wait_reported(deployment.replica.address)
            prober.join()
            assert written, "no write through the cache reached the new primary"
            timings.append(Failover(triggered, quorum, written[0]))
            time.sleep(1.0)  # and on the new primary
        finally:
            workload.stop.set()

    run_threads(THREADS + 1, drive, timeout=40)
    (failover,) = timings
    last_failure = max((end for _, end in workload.write_failures), default=failover.triggered)
    print(f"\nfailover: quorum {failover.quorum - failover.triggered:.3f}s after the trigger; "
          f"first write to the new primary {failover.written - failover.quorum:+.3f}s from "
          f"the quorum; {len(workload.write_failures)} failed writes, the last ending "
          f"{last_failure - failover.triggered:.3f}s after the trigger; "
          f"{len(workload.writes)} writes taken")
    return workload, failover


def _first_write_to_new_primary(cache: TieredCache, deployment: LocalSentinels,
                                deadline: float) -> float:
    """Write through the cache until a value is on the new primary and not on the old one
    (which it would be had it been written there and replicated); when that write ended."""
    new, old = deployment.replica.client(), deployment.primary.client()
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        key, value = f"probe:{attempt}", b"%d" % attempt
        with contextlib.suppress(CacheUnavailableError):
            cache.set(key, value)
            done = time.monotonic()
            with contextlib.suppress(redis.RedisError):
                if new.get(key) == value and _missing(old, key):
                    return done
        time.sleep(0.005)
    raise AssertionError("no write through the cache reached the new primary")


def _missing(client: redis.Redis, key: str) -> bool:
    try:
        return client.get(key) is None
    except redis.ConnectionError:  # a dead primary holds nothing
        return True


def _check(workload: Workload, failover: Failover, deployment: LocalSentinels,
           make: Make) -> None:
    assert workload.read_errors == []
    assert workload.other_errors == []
    assert workload.stale == []
    assert failover.written <= failover.quorum + SWITCH_BOUND
    for started, ended in workload.write_failures:
        assert ended >= failover.triggered, "a write failed before the failover"
        assert started <= failover.quorum + SWITCH_BOUND, "a write failed after the switch"
    assert any(started > failover.written for started, _ in workload.writes)
    # No deleted value anywhere: not from this cache, the new primary, or a new process.
    fresh = make()
    new_primary = deployment.replica.client()
    for key in sorted(workload.deleted):
        assert workload.cache.get(key) is None, key
        assert fresh.get(key) is None, key
    wait_until(lambda: workload.cache.stats()["journal"]["pending"] == 0)
    assert [key for key in sorted(workload.deleted) if new_primary.exists(key)] == []
    report = sentinel_report(workload.cache)
    assert (report["primary"], report["switches"]) == (deployment.replica.address, 1)
    assert workload.cache.stats()["coherence"]["state"] == "subscribed"


def test_threads_keep_their_guarantees_through_a_killed_primary(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    deployment = redis_sentinels
    cache = make()
    workload, failover = _through_failover(deployment, cache, deployment.primary.kill)
    _check(workload, failover, deployment, make)
    assert workload.write_failures, "the primary was dead for seconds: some writes failed"


def test_threads_keep_their_guarantees_through_a_manual_failover(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    deployment = redis_sentinels
    cache = make()
    workload, failover = _through_failover(deployment, cache, deployment.failover)
    _check(workload, failover, deployment, make)
    # The old primary still takes writes for ~10 s after the switch (Sentinel demotes it
    # late): the cache left it when the sentinels announced the switch, not on an error.
    old = deployment.primary.client()
    assert old.info("replication")["role"] == "master"
    cache.set("after", b"1")
    assert old.get("after") is None
    assert deployment.replica.client().get("after") == b"1"


def test_a_delete_the_new_primary_missed_is_applied_there_after_the_switch(
        redis_sentinels: LocalSentinels, make: Make) -> None:
    """A delete acknowledged by the old primary but lost with it: made so here by giving
    the replica the old value back after the delete reached it."""
    deployment = redis_sentinels
    cache, other = make(), make()
    cache.set("k", b"old")
    replica = deployment.replica.client()
    wait_until(lambda: replica.get("k") == b"old")
    cache.delete("k")
    wait_until(lambda: replica.get("k") is None)
    replica.config_set("replica-read-only", "no")
    replica.set("k", b"old")  # the replica now holds what the delete removed
    deployment.primary.kill()
    deployment.wait_reported(deployment.replica.address)
    wait_until(lambda: sentinel_report(cache)["switches"] == 1, timeout=5)
    for reader in (cache, other):
        assert reader.get("k") is None
    wait_until(lambda: replica.get("k") is None)  # deleted there by the re-apply


# -- which answer wins (no server) ---------------------------------------------------------------


def test_the_newest_configuration_epoch_wins_then_the_most_sentinels() -> None:
    old, new = "10.0.0.1:6379", "10.0.0.2:6379"
    assert choose([]) is None
    assert choose([Answer("s1", None, -1)]) is None
    assert choose([Answer("s1", old, 1), Answer("s2", old, 1), Answer("s3", new, 2)]) == \
        Answer("s3", new, 2)
    assert choose([Answer("s1", old, 3), Answer("s2", new, 3), Answer("s3", new, 3)]) == \
        Answer("s2", new, 3)
    assert choose([Answer("s1", new, 3), Answer("s2", old, 3)]) == Answer("s1", new, 3)
