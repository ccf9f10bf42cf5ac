"""Failed invalidations are kept and replayed: the journal alone (a fake replay), then a
real server stalled with SIGSTOP while the writes fail, and processes that must not serve
the old value once it is back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from dragonfly_cache import CacheUnavailableError, TieredCache
from dragonfly_cache._glob import compile_glob
from dragonfly_cache._journal import Journal, Pending
from tests.helpers import CacheFactory, wait_until

# -- the journal alone ----------------------------------------------------------------------


class Replays:
    """A replay callable that fails while ``down`` and records what it was given."""

    def __init__(self) -> None:
        self.down = True
        self.calls: list[Pending] = []
        self.entered = threading.Event()
        self.hold: threading.Event | None = None

    def __call__(self, pending: Pending) -> Pending:
        self.calls.append(pending)
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(5)
        if self.down:
            raise CacheUnavailableError("UNLINK on 127.0.0.1:1 failed: down")
        return pending


def test_recorded_keys_and_patterns_block_reads_until_replayed() -> None:
    replays = Replays()
    journal = Journal(replays)
    assert not journal and journal.blocked(["a"]) == set()
    journal.keys(["a", "b"])
    journal.pattern("user:*", compile_glob("user:*"))
    assert journal
    assert journal.blocked(["a", "c", "user:1", "post:1"]) == {"a", "user:1"}
    assert journal.stats() == {"pending": 3, "replayed": 0, "dropped": 0}
    wait_until(lambda: len(replays.calls) >= 2)  # retried by itself, with backoff
    replays.down = False
    journal.wake()
    wait_until(lambda: not journal)
    assert journal.stats() == {"pending": 0, "replayed": 3, "dropped": 0}
    assert set(replays.calls[-1].keys) == {"a", "b"} and list(replays.calls[-1].patterns) == [
        "user:*"]
    assert journal.blocked(["a", "user:1"]) == set()


def test_a_partial_replay_settles_what_it_did_and_retries_only_the_rest() -> None:
    """One server still away: the keys of the others are settled once, not deleted again
    at every retry (under values written since)."""
    calls: list[list[str]] = []
    away = {"on-dead"}

    def replay(pending: Pending) -> Pending:
        calls.append(sorted(pending.keys))
        done = Pending({key: record for key, record in pending.keys.items()
                        if key not in away})
        if not done:
            raise CacheUnavailableError("UNLINK on 127.0.0.1:1 failed: down")
        return done

    journal = Journal(replay)
    journal.keys(["on-live", "on-dead"])
    wait_until(lambda: len(calls) >= 3)
    assert calls[0] == ["on-dead", "on-live"] and all(c == ["on-dead"] for c in calls[1:])
    assert journal.stats()["replayed"] == 1 and journal.blocked(["on-live", "on-dead"]) == {
        "on-dead"}
    away.clear()  # the server is back
    journal.wake()
    wait_until(lambda: not journal)
    assert journal.stats()["replayed"] == 2


def test_a_clear_covers_everything_and_blocks_every_key() -> None:
    replays = Replays()
    journal = Journal(replays)
    journal.keys(["a"])
    journal.clear()
    assert journal.stats()["pending"] == 1  # the clear: the key is part of it
    assert journal.blocked(["a", "anything"]) == {"a", "anything"}
    replays.down = False
    journal.wake()
    wait_until(lambda: not journal)
    assert replays.calls[-1].clear is not None and not replays.calls[-1].keys


def test_a_successful_write_settles_its_key() -> None:
    replays = Replays()
    journal = Journal(replays)
    journal.keys(["a", "b"])
    journal.settled(["a"], journal.mark())  # a write of "a" sent after the failure
    assert journal.blocked(["a", "b"]) == {"b"}
    journal.stop()


def test_a_failure_recorded_while_a_write_was_in_flight_is_not_settled_by_it() -> None:
    """Thread B's SET of the old value is sent; thread A's delete fails and is recorded;
    B's SET succeeds: A's delete must still be replayed, or L2 keeps the old value."""
    journal = Journal(Replays())
    mark = journal.mark()  # B takes its mark, then sends its SET
    journal.keys(["k"])  # A's delete fails meanwhile
    journal.settled(["k"], mark)  # B's SET was taken
    assert journal.blocked(["k"]) == {"k"}
    journal.stop()


def test_a_key_recorded_again_during_a_replay_stays_pending() -> None:
    """The replay took its snapshot before the second failure: that one is not done."""
    replays = Replays()
    replays.down = False
    replays.hold = threading.Event()
    journal = Journal(replays)
    journal.keys(["a", "b"])
    assert replays.entered.wait(5)
    journal.keys(["a"])  # failed again while the replay runs
    replays.hold.set()
    wait_until(lambda: journal.stats()["replayed"] >= 1)
    wait_until(lambda: not journal)  # and the second record is replayed on its own
    assert journal.stats()["replayed"] == 2  # b, then a (its second record)
    assert [sorted(call.keys) for call in replays.calls] == [["a", "b"], ["a"]]


def test_a_full_journal_drops_the_oldest_and_counts_it(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    journal = Journal(Replays(), size=3)
    journal.keys(["a", "b", "c"])
    journal.keys(["d"])
    journal.pattern("p*", compile_glob("p*"))
    assert journal.stats() == {"pending": 3, "replayed": 0, "dropped": 2}
    assert journal.blocked(["a", "b", "c", "d", "p1"]) == {"c", "d", "p1"}
    assert caplog.text.count("invalidation journal full") == 2  # one line per overflow
    journal.stop()


def test_a_stopped_journal_keeps_what_is_pending_and_replays_no_more() -> None:
    replays = Replays()
    journal = Journal(replays)
    journal.stop()
    journal.keys(["a"])
    time.sleep(0.2)
    assert replays.calls == [] and journal.stats()["pending"] == 1


# -- a real server, stalled -----------------------------------------------------------------

# Small enough for a test: a probe every 0.1 s once the breaker opens.
FAST_BREAKER = {"breaker_cooldown": 0.1, "breaker_max_cooldown": 0.2}


def stalled(server: Any, write: Callable[[], object]) -> None:
    """Run ``write`` while ``server`` is stopped: it must raise and be journaled."""
    server.pause()
    try:
        with pytest.raises(CacheUnavailableError):
            write()
    finally:
        time.sleep(0.3)  # the replay fails meanwhile, and retries by itself
        server.resume()


def test_a_delete_during_sigstop_is_replayed_within_a_second_of_sigcont(
        cache_factory: CacheFactory, redis_server_factory: Any) -> None:
    server = redis_server_factory()
    writer = cache_factory(server, key_prefix="app:", **FAST_BREAKER)
    other = cache_factory(server, key_prefix="app:", **FAST_BREAKER)
    writer.set("item:1", b"old")
    assert other.get("item:1") == b"old"  # in the other process's L1 too
    raw = server.client()

    # The app wrote its database, then deletes the cached copy: the server is stalled.
    stalled(server, lambda: writer.delete("item:1"))
    assert writer.stats()["journal"]["pending"] == 1
    assert writer.get("item:1") is None  # this process: a miss, not L2's old value
    resumed = time.monotonic()
    wait_until(lambda: raw.get("app:item:1") is None, timeout=1.0)
    replayed_after = time.monotonic() - resumed
    wait_until(lambda: writer.stats()["journal"] == {"pending": 0, "replayed": 1,
                                                     "dropped": 0}, timeout=1.0)
    # Every process reads the new value (their loaders read the database).
    assert writer.get_or_load("item:1", lambda: b"new") == b"new"
    wait_until(lambda: other.get("item:1") == b"new", timeout=1.0)
    print(f"\nreplayed {replayed_after * 1000:.0f} ms after SIGCONT")


@pytest.mark.parametrize("operation", ["set", "set_many", "delete_many", "invalidate",
                                       "clear", "incr", "touch", "add"])
def test_every_failed_write_is_replayed_once_the_server_answers(
        cache_factory: CacheFactory, redis_server_factory: Any, operation: str) -> None:
    server = redis_server_factory()
    cache = cache_factory(server, key_prefix="app:", **FAST_BREAKER)
    raw = server.client()
    raw.set("app:k", b"1")
    raw.set("app:other", b"2")
    writes: dict[str, Callable[[TieredCache], object]] = {
        "set": lambda c: c.set("k", b"new"),
        "set_many": lambda c: c.set_many({"k": b"new"}),
        "delete_many": lambda c: c.delete_many(["k"]),
        "invalidate": lambda c: c.invalidate("k*"),
        "clear": lambda c: c.clear(),
        "incr": lambda c: c.incr("k"),
        "touch": lambda c: c.touch("k", 60),
        "add": lambda c: c.add("k", b"new"),
    }
    stalled(server, lambda: writes[operation](cache))
    wait_until(lambda: raw.get("app:k") is None, timeout=1.0)
    wait_until(lambda: cache.stats()["journal"]["pending"] == 0, timeout=1.0)
    assert (raw.get("app:other") is None) == (operation == "clear")



def test_the_demo_serves_a_put_made_during_a_stall_within_a_second_of_the_return(
        redis_server_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Two demo workers; the server is stopped while one takes a PUT: the PUT reports the
    cache failure, and within a second of SIGCONT both serve the new item."""
    server = redis_server_factory()
    monkeypatch.setenv("DRAGONFLY_ADDRESSES", server.address)
    monkeypatch.setenv("DEMO_DB_PATH", str(tmp_path / "demo.sqlite3"))
    monkeypatch.setenv("DRAGONFLY_BREAKER_COOLDOWN", "100ms")
    monkeypatch.setenv("DRAGONFLY_BREAKER_MAX_COOLDOWN", "200ms")
    from dragonfly_cache.demo import create_app

    apps = [create_app(), create_app()]
    clients = [app.test_client() for app in apps]
    try:
        for client in clients:
            assert client.get("/demo/items/7").get_json()["name"] == "item 7"
        server.pause()
        try:
            response = clients[0].put("/demo/items/7", json={"name": "renamed"})
            assert response.status_code == 503, response.get_data(as_text=True)
            assert clients[0].get("/demo/items/7").get_json()["name"] == "renamed"
            time.sleep(0.5)
        finally:
            server.resume()
        resumed = time.monotonic()
        for client in clients:
            wait_until(lambda c=client: c.get("/demo/items/7").get_json()["name"] == "renamed",
                       timeout=1.0 - (time.monotonic() - resumed))
    finally:
        for app in apps:
            app.extensions["dragonfly_cache"].close()


def test_a_replay_that_fails_with_a_bug_retries_slowly_not_in_a_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def broken(pending: Pending) -> None:
        calls.append(1)
        raise RuntimeError("a bug")

    journal = Journal(broken)
    journal.wake()  # as a listener's subscription does
    journal.keys(["k"])
    time.sleep(0.5)
    journal.stop()
    assert 1 <= len(calls) <= 3, len(calls)
    assert "replaying the invalidation journal failed" in caplog.text


@pytest.mark.parametrize(("operation", "expected", "left"), [
    ("incr", 1, b"1"),  # not 6: the removed 5 is not built on
    ("add", True, b"new"),  # the removed value does not make the key exist
    ("touch", False, None),  # nor does it get a new expiry
])
def test_incr_add_and_touch_settle_a_pending_removal_of_their_key_first(
        cache_factory: CacheFactory, redis_server: Any, operation: str, expected: object,
        left: bytes | None) -> None:
    """A delete that failed left the old value in L2 and the key in the journal; before the
    replay thread got to it, an operation that builds on L2's value runs. It removes the
    key first, as the replay would have."""
    cache = cache_factory(key_prefix="app:")
    raw = redis_server.client()
    raw.set("app:n", b"5")
    journal = cache._tiers.journal
    journal.stop()  # no replay thread: the operation itself must settle the key
    journal.keys(["n"])  # what a failed delete records
    operations: dict[str, Callable[[TieredCache], object]] = {
        "incr": lambda c: c.incr("n"),
        "add": lambda c: c.add("n", b"new"),
        "touch": lambda c: c.touch("n", 60),
    }
    assert operations[operation](cache) == expected
    assert raw.get("app:n") == left
    assert not journal.blocked(["n"])
