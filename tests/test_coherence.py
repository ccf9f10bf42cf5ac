"""Cross-process L1 coherence, with a second process started by multiprocessing spawn.

Tests about coherence in general run in both modes (``mode``: tracking and pub/sub); tests
about the pub/sub machinery (the listener, its channel, its subscription) pin ``pubsub``.
Tracking's own machinery is tested in tests/test_tracking.py."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dragonfly_cache import _invalidation
from tests.helpers import CacheFactory, fork, percentile, wait_until
from tests.helpers.coherence_worker import Worker, measure


@pytest.fixture(params=["tracking", "pubsub"])
def mode(request: pytest.FixtureRequest) -> str:
    """The coherence mode of a test that holds in both."""
    return str(request.param)


@pytest.fixture
def worker(redis_server: Any) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(prefix: str = "app:", invalidation: str | bool = "pubsub") -> Worker:
        worker = Worker(redis_server.address, prefix, invalidation)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def test_another_process_stops_serving_the_old_value_within_100ms(
        cache_factory: CacheFactory, worker: Callable[..., Worker], mode: str) -> None:
    a = cache_factory(key_prefix="app:", invalidation=mode)
    trials = 60
    a.set_many({f"user:{n}": b"old" for n in range(trials)})
    b = worker(invalidation=mode)
    assert b.coherence == "subscribed"
    writes: list[tuple[str, Callable[[str], None], bytes | None]] = [
        ("set", lambda key: a.set(key, b"new"), b"new"),
        ("delete", lambda key: a.delete(key), None),
        # a real glob that matches this key alone: user:1[2] for user:12
        ("invalidate", lambda key: a.invalidate(f"{key[:-1]}[{key[-1]}]"), None),
        ("set_many", lambda key: a.set_many({key: b"new", key + ":x": b"x"}), b"new"),
    ]
    delays: list[float] = []
    for n in range(trials):
        name, write, expected = writes[n % len(writes)]
        key = f"user:{n}"
        outcome, delay, value, l2_lookups = measure(a, b, key, b"old",
                                                    functools.partial(write, key))
        assert outcome == "seen", (name, key)
        assert value == expected, (name, key, value)
        # B spun on L1 until the invalidation arrived, then read L2 once (maybe twice).
        assert l2_lookups <= 2, (name, l2_lookups)
        delays.append(delay)
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    print(f"\ninvalidation delay over {trials} trials: p50 {p50 * 1000:.2f} ms, "
          f"p99 {p99 * 1000:.2f} ms, max {max(delays) * 1000:.2f} ms")
    assert p99 < 0.100
    stats = b.stats()["coherence"]
    assert stats["state"] == "subscribed"
    assert stats["applied"] >= trials


def test_pattern_invalidation_reaches_the_other_process(
        cache_factory: CacheFactory, worker: Callable[..., Worker], mode: str) -> None:
    a = cache_factory(key_prefix="app:", invalidation=mode)
    a.set_many({"user:1": b"old", "user:2": b"old", "post:1": b"old"})
    b = worker(invalidation=mode)
    assert b.call("get_many", ["user:1", "user:2", "post:1"])[1] == {
        "user:1": b"old", "user:2": b"old", "post:1": b"old"}
    outcome, delay, value, _ = measure(a, b, "user:2", b"old", lambda: a.invalidate("user:*"))
    assert (outcome, value) == ("seen", None)
    assert delay < 0.1
    assert b.call("get", "post:1")[1] == b"old"
    assert b.call("get", "user:1")[1] is None


def test_without_coherence_the_other_process_stays_stale(
        cache_factory: CacheFactory, worker: Callable[..., Worker]) -> None:
    """The control: the measurement above is not passing by accident."""
    a = cache_factory(key_prefix="app:", invalidation="off")
    a.set("k", b"old")
    b = worker(invalidation="off")
    outcome, _, _, l2_lookups = measure(a, b, "k", b"old", lambda: a.set("k", b"new"),
                                        timeout=0.3)
    assert outcome == "timeout"
    assert l2_lookups == 0  # B served the stale value from L1 the whole time


def test_different_prefixes_do_not_invalidate_each_other(
        cache_factory: CacheFactory, worker: Callable[..., Worker], mode: str) -> None:
    a = cache_factory(key_prefix="a:", invalidation=mode)
    b_side = cache_factory(key_prefix="b:", invalidation=mode)
    b_side.set("k", b"b-value")
    b = worker(prefix="b:", invalidation=mode)
    assert b.call("get", "k")[1] == b"b-value"
    assert b.call("get", "sync")[1] is None  # tracking mode: B now hears of "sync" too
    for n in range(20):
        a.set("k", b"a-value-%d" % n)
        a.delete("other")
        a.invalidate("*")
    a.set("sync", b"1")
    b_side.set("sync", b"1")  # a message B does receive, so B's listener has caught up
    wait_until(lambda: b.stats()["coherence"]["received"] >= 1)
    stats = b.stats()
    assert stats["coherence"]["received"] == 1
    assert b.call("get", "k")[1] == b"b-value"
    assert b.stats()["l1_stats"]["hits"] >= stats["l1_stats"]["hits"] + 1


def test_a_killed_listener_connection_flushes_l1(cache_factory: CacheFactory,
                                                 worker: Callable[..., Worker],
                                                 redis_server: Any) -> None:
    a = cache_factory(key_prefix="app:", invalidation="pubsub")
    a.set("k", b"old")
    b = worker()
    assert b.call("get", "k")[1] == b"old"
    raw = redis_server.client()
    # Kill B's subscription (A's too) and write while it is down: the message is lost.
    killed = raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 1
    raw.set("app:k", b"new")  # a write whose invalidation B can never receive
    # B notices the closed connection at once (a silent drop: within PING_INTERVAL +
    # PONG_TIMEOUT) and flushes L1, so the lost message cannot leave it stale.
    wait_until(lambda: b.stats()["coherence"]["flushes"] >= 1, timeout=1.0)
    assert b.call("get", "k")[1] == b"new"
    wait_until(lambda: b.stats()["coherence"]["state"] == "subscribed")
    stats = b.stats()["coherence"]
    assert stats["flushes"] >= 1
    assert stats["reconnects"] >= 1
    # Coherence works again after the reconnect.
    outcome, _, value, _ = measure(a, b, "k", b"new", lambda: a.set("k", b"newer"))
    assert (outcome, value) == ("seen", b"newer")


def test_a_restarted_server_flushes_l1(cache_factory: CacheFactory,
                                       worker: Callable[..., Worker],
                                       redis_server: Any, mode: str) -> None:
    a = cache_factory(key_prefix="app:", invalidation=mode)
    a.set("k", b"old")
    b = worker(invalidation=mode)
    assert b.call("get", "k")[1] == b"old"
    redis_server.restart()  # the data is gone, and so is every subscription
    wait_until(lambda: b.stats()["coherence"]["flushes"] >= 1)
    assert b.call("get", "k")[1] is None
    wait_until(lambda: b.stats()["coherence"]["state"] == "subscribed", timeout=10)
    a.set("k", b"fresh")
    assert b.call("get", "k")[1] == b"fresh"


def test_with_coherence_a_dead_server_leaves_no_l1_to_serve_stale(
        cache_factory: CacheFactory, redis_server: Any, mode: str) -> None:
    cache = cache_factory(invalidation=mode)
    cache.set("k", b"v")
    redis_server.kill()
    # Pub/sub: the state says "down" first (new entries are short-lived from then), then
    # L1 empties. Tracking: the poller sees the idle connection close, and L1 empties.
    wait_until(lambda: cache.stats()["coherence"]["flushes"] == 1)
    if mode == "pubsub":
        assert cache.stats()["coherence"]["state"] == "down"
    assert cache.get("k") is None  # nobody can tell us about deletes now
    if mode == "pubsub":
        assert cache.health()["coherence"] == "down"


def test_close_flushes_l1_so_nothing_stale_outlives_coherence(
        cache_factory: CacheFactory, mode: str) -> None:
    cache, writer = cache_factory(invalidation=mode), cache_factory(invalidation=mode)
    cache.set("k", b"v1")
    assert cache.get("k") == b"v1"
    cache.close()
    writer.set("k", b"v2")  # cache can no longer hear about this
    assert cache.get("k") == b"v2"
    assert cache.stats()["coherence"]["state"] == "stopped"


def test_a_malformed_invalidation_flushes_l1(cache_factory: CacheFactory,
                                             redis_server: Any) -> None:
    cache = cache_factory(invalidation="pubsub")
    cache.set("k", b"v")
    redis_server.client().publish(cache._l2.channel, b"\xff not json")
    wait_until(lambda: cache.stats()["coherence"]["flushes"] == 1)
    assert cache._tiers.l1.get("k") is None
    assert cache.stats()["coherence"]["state"] == "subscribed"


def test_race_stress_readers_end_on_the_final_version(
        cache_factory: CacheFactory, worker: Callable[..., Worker], mode: str) -> None:
    a = cache_factory(key_prefix="app:", invalidation=mode)
    keys = [f"hot:{n}" for n in range(8)]
    a.set_many({key: b"v0" for key in keys})
    b = worker(invalidation=mode)
    assert b.call("stress_start", keys, 8)[0] == "started"
    version = 0
    finish = time.monotonic() + 3.0
    while time.monotonic() < finish:
        version += 1
        value = b"v%d" % version
        if version % 7 == 0:
            a.delete(keys[version % 8])
            a.set(keys[version % 8], value)
        elif version % 5 == 0:
            a.set_many(dict.fromkeys(keys, value))
        else:
            a.set(keys[version % 8], value)
    final = a.get_many(keys)
    other = cache_factory(key_prefix="app:", invalidation=mode)  # a fresh L1: what L2 holds
    assert other.get_many(keys) == final
    reply = b.call("stress_check", final, 0.2, 0.5, timeout=30)
    assert reply[0] == "checked"
    wrong, reads = reply[1], reply[2]
    print(f"\nrace stress: {version} writes by A, {reads} reads by B's 8 threads")
    assert reads > 1000
    assert wrong == []


# -- coherent from the first read ------------------------------------------------------------


def test_a_write_1_ms_after_another_process_first_read_is_seen_within_100_ms(
        cache_factory: CacheFactory, worker: Callable[..., Worker], mode: str) -> None:
    """The other process makes a new cache and reads at once, its listener barely started;
    a write 1 ms later must reach it (it used to live out l1.degraded_ttl: 1 s). With
    "auto" the mode is not even known yet at that read."""
    writer = cache_factory(key_prefix="app:", invalidation=mode)
    b = worker(invalidation="auto" if mode == "tracking" else mode)
    delays, states = [], []
    for trial in range(10):
        key = f"first:{trial}"
        writer.set(key, b"old")
        read = b.call("first_read", key, b"old", 2.0)
        assert read[:2] == ("read", b"old"), read
        states.append(read[2])
        time.sleep(0.001)
        written = time.monotonic()
        writer.set(key, b"new")
        outcome = b.call(timeout=5)
        assert outcome[0] == "seen" and outcome[2] == b"new", outcome
        delays.append(outcome[1] - written)
    print(f"\nfirst read -> write 1 ms later: seen after {max(delays) * 1000:.1f} ms at "
          f"most; listener states at the first read: {states}")
    assert max(delays) < 0.1


def test_an_idle_cache_is_subscribed_within_a_second_without_any_call(
        cache_factory: CacheFactory, mode: str) -> None:
    cache = cache_factory(subscribed=False, invalidation="auto" if mode == "tracking" else mode)
    wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed", timeout=1.0)
    lookups = cache.stats()["l2_stats"]
    assert lookups["hits"] == lookups["misses"] == 0  # nothing but the cache being made
    assert cache.stats()["coherence"]["mode"] == mode  # auto chose tracking on this server


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Listeners made from now on cannot subscribe until the returned event is set."""
    opened = threading.Event()
    subscription = _invalidation.subscription

    def held(l2: Any, address: str) -> Any:
        assert opened.wait(10)
        return subscription(l2, address)

    monkeypatch.setattr(_invalidation, "subscription", held)
    yield opened
    opened.set()


def test_an_entry_filled_before_the_subscription_is_confirmed_is_dropped_then(
        cache_factory: CacheFactory, redis_server: Any, gate: threading.Event) -> None:
    """While the listener cannot subscribe, a raw write is heard by nobody; the entry read
    before it must not outlive the confirmation (l1.degraded_ttl is 60 s here)."""
    cache = cache_factory(subscribed=False, l1={"degraded_ttl": 60.0}, invalidation="pubsub")
    redis_server.client().set("k", b"old")
    assert cache.get("k") == b"old" and cache.get("k") == b"old"  # in L1
    assert cache.stats()["coherence"]["state"] == "connecting"
    redis_server.client().set("k", b"new")  # nobody announces it
    assert cache.get("k") == b"old"
    gate.set()
    wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed")
    assert cache.get("k") == b"new"
    assert cache.stats()["coherence"]["flushes"] == 0  # not a lost connection


def test_fork_parent_and_child_both_keep_coherence(cache_factory: CacheFactory, mode: str
                                                   ) -> None:
    writer = cache_factory(key_prefix="app:", invalidation=mode)
    shared = cache_factory(key_prefix="app:", invalidation=mode)  # made before the fork
    writer.set_many({"parent-key": b"old", "child-key": b"old"})
    assert shared.get("parent-key") == b"old"
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    pid = fork()
    if pid == 0:  # the child
        code = 1
        try:
            signal.alarm(20)
            os.close(ready_read)
            os.close(go_write)
            # The child's own listener started at the fork, without any call.
            deadline = time.monotonic() + 5
            while (shared.stats()["coherence"]["state"] != "subscribed"
                   and time.monotonic() < deadline):
                time.sleep(0.005)
            assert shared.stats()["l2_stats"]["hits"] == 0
            assert shared.get("child-key") == b"old" and shared.get("child-key") == b"old"
            assert shared.stats()["l1_stats"]["hits"] >= 1
            os.write(ready_write, b"r")
            os.read(go_read, 1)  # the parent has written
            deadline = time.monotonic() + 1
            while shared.get("child-key") == b"old" and time.monotonic() < deadline:
                pass
            code = 0 if shared.get("child-key") == b"new" else 2
        finally:
            os._exit(code)
    os.close(ready_write)
    os.close(go_read)
    assert os.read(ready_read, 1) == b"r"
    writer.set("child-key", b"new")
    writer.set("parent-key", b"new")
    os.write(go_write, b"g")
    _, status = os.waitpid(pid, 0)
    os.close(ready_read)
    os.close(go_write)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_until(lambda: shared.get("parent-key") == b"new", timeout=1.0)
    assert shared.stats()["coherence"]["state"] == "subscribed"


@pytest.mark.parametrize("flush", ["FLUSHDB", "FLUSHALL"])
def test_a_flush_by_another_client_empties_every_l1_within_about_a_second(
        cache_factory: CacheFactory, redis_server: Any, flush: str, mode: str) -> None:
    a, b = cache_factory(invalidation=mode), cache_factory(invalidation=mode)
    a.set("k", b"v")
    assert b.get("k") == b"v" and a.get("k") == b"v"  # in both L1s now
    time.sleep(1.2)  # past a watch run: no false alarm while nothing was flushed
    assert a.stats()["coherence"]["flushes"] == 0 and b.get("k") == b"v"
    redis_server.client().execute_command(flush)  # announced to nobody
    started = time.monotonic()
    # The bound: one watch interval (1 s) plus a listener poll and a round trip (pub/sub;
    # tracking: the server's push, at once).
    wait_until(lambda: a.get("k") is None and b.get("k") is None, timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert a.stats()["coherence"]["flushes"] == 1 and b.stats()["coherence"]["flushes"] == 1


def test_stopping_a_listener_whose_socket_refuses_the_wake_up_still_stops_it(
        cache_factory: CacheFactory) -> None:
    """fakeredis's socket raises ValueError from shutdown() while the listener thread reads
    from it (seen once in the docs' fake_cache example): close() must not raise."""
    cache = cache_factory(invalidation="pubsub")
    coherence = cache._tiers.coherence
    assert coherence is not None and coherence._pubsub is not None
    (listener,) = coherence._pubsub._listeners.values()

    pubsub = listener._pubsub
    real = pubsub.connection._sock

    class Refusing:
        """The real socket, whose first shutdown() (the wake-up from close()) refuses."""

        refused = False

        def shutdown(self, how: int) -> None:
            if not Refusing.refused:
                Refusing.refused = True
                raise ValueError("generator already executing")
            real.shutdown(how)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    pubsub.connection._sock = Refusing()
    cache.close()  # no ValueError
    assert Refusing.refused
    assert cache.stats()["coherence"]["state"] == "stopped"


def test_a_load_made_before_the_subscription_is_stored_in_l2_only_briefly(
        cache_factory: CacheFactory, redis_server: Any, gate: threading.Event) -> None:
    """Its loader may have read the database before a write whose delete nobody heard: the
    value lives in L2 at most l1.degraded_ttl, not l2.ttl (fleet-wide staleness bound)."""
    cache = cache_factory(subscribed=False, l1={"degraded_ttl": 2.0}, invalidation="pubsub")
    assert cache.get_or_load("early", lambda: b"v", ttl=300) == b"v"
    assert 0 < redis_server.client().pttl("early") <= 2000
    gate.set()
    wait_until(lambda: cache.stats()["coherence"]["state"] == "subscribed")
    assert cache.get_or_load("later", lambda: b"v", ttl=300) == b"v"
    assert redis_server.client().pttl("later") > 290_000


def test_a_cache_dropped_without_close_stops_its_listeners(redis_server_factory: Any, mode: str
                                                           ) -> None:
    """Nothing the listener threads hold keeps the cache's L1 alive (the journal's wake-up,
    the set's callbacks, the loop's own locals): a dropped cache's threads end."""
    import gc

    from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, TieredCache
    from tests.helpers import wait_subscribed

    server = redis_server_factory()
    mine = (f"dragonfly_cache-listener-{server.address}" if mode == "pubsub"
            else "dragonfly_cache-tracking")
    for _ in range(3):
        cache = TieredCache(CacheConfig(dragonfly=DragonflyConfig(addresses=[server.address]),
                                        l1=L1Config(invalidation=mode)))
        wait_subscribed(cache)
        del cache
    gc.collect()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == mine], timeout=3.0)
