"""The journal's part in a failover (no server): the writes L2 took lately become pending
deletes at a switch, counted back from the newest; writes acknowledged during it, or sent
before it, too; and a replay that a switch overtook settles nothing (the Sentinel tests
show it with real servers: tests/test_sentinel.py)."""

from __future__ import annotations

import threading

from dragonfly_cache._glob import compile_glob
from dragonfly_cache._journal import Journal, Pending
from tests.helpers import FakeClock, wait_until


class Replays:
    """A replay that succeeds and records what it was given; ``hold`` blocks it."""

    def __init__(self) -> None:
        self.calls: list[Pending] = []
        self.hold: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self, pending: Pending) -> Pending:
        self.calls.append(pending)
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(5)
        return pending


def test_without_a_window_taken_writes_are_not_remembered() -> None:
    journal = Journal(Replays())
    journal.settled(["a"], journal.mark())
    journal.took_pattern("user:*", compile_glob("user:*"))
    journal.took_clear()
    with journal.switching() as count:
        assert count == 0
    assert not journal


def test_a_switch_makes_the_writes_of_the_window_before_the_newest_pending() -> None:
    clock = FakeClock()
    replays = Replays()
    replays.hold = threading.Event()
    journal = Journal(replays, window=5.0, timer=clock)
    journal.settled(["old"], journal.mark())
    clock.advance(3)
    journal.settled(["a"], journal.mark())
    journal.took_pattern("user:*", compile_glob("user:*"))
    clock.advance(3)  # 6 s after "old": out of the window counted back from here
    journal.settled(["b"], journal.mark())
    clock.advance(100)  # the primary died long before the switch: still counted from "b"
    with journal.switching() as count:
        assert count == 3
        assert journal.blocked(["old", "a", "b", "user:1", "x"]) == {"a", "b", "user:1"}
        assert replays.calls == []  # not replayed before the move: it would go to the old one
    wait_until(lambda: replays.calls)
    assert set(replays.calls[0].keys) == {"a", "b"}
    assert list(replays.calls[0].patterns) == ["user:*"]
    replays.hold.set()
    wait_until(lambda: not journal)
    with journal.switching() as count:
        assert count == 0  # the window starts afresh at each switch


def test_a_taken_clear_in_the_window_makes_everything_pending() -> None:
    journal = Journal(Replays(), window=5.0, timer=FakeClock())
    journal.settled(["a"], journal.mark())
    journal.took_clear()
    with journal.switching() as count:
        assert count == 1
        assert journal.blocked(["anything"]) == {"anything"}


def test_writes_acknowledged_during_the_switch_or_sent_before_it_are_pending() -> None:
    replays = Replays()
    replays.hold = threading.Event()
    journal = Journal(replays, window=5.0, timer=FakeClock())
    sent_before = journal.mark()
    with journal.switching():
        during = journal.mark()
        journal.settled(["acknowledged-during"], during)
        journal.took_pattern("p:*", compile_glob("p:*"))
    journal.settled(["sent-before"], sent_before)
    journal.settled(["sent-during"], during)
    journal.settled(["sent-after"], journal.mark())
    assert journal.blocked(["acknowledged-during", "p:1", "sent-before", "sent-during",
                            "sent-after"]) == {"acknowledged-during", "p:1", "sent-before",
                                               "sent-during"}
    replays.hold.set()
    wait_until(lambda: not journal)


def test_a_later_write_settles_a_reapplied_key() -> None:
    replays = Replays()
    replays.hold = threading.Event()
    journal = Journal(replays, window=5.0, timer=FakeClock())
    journal.settled(["a"], journal.mark())
    with journal.switching():
        pass
    assert journal.blocked(["a"]) == {"a"}
    journal.settled(["a"], journal.mark())  # written on the new primary since
    assert journal.blocked(["a"]) == set()
    replays.hold.set()


def test_a_replay_overtaken_by_a_switch_settles_nothing_and_runs_again() -> None:
    replays = Replays()
    replays.hold = threading.Event()
    journal = Journal(replays, window=5.0, timer=FakeClock())
    journal.keys(["a"])  # a failed write: the replay starts and is held
    assert replays.entered.wait(5)
    with journal.switching():
        replays.hold.set()  # it finishes on the old primary, during the move
        wait_until(lambda: len(replays.calls) == 1 and journal.blocked(["a"]) == {"a"})
    wait_until(lambda: not journal)
    assert len(replays.calls) == 2  # replayed again once the move was done
    assert journal.stats()["replayed"] == 1


def test_switching_counts_the_moves_begun() -> None:
    journal = Journal(Replays(), window=5.0)
    assert journal.switches == 0
    with journal.switching():
        assert journal.switches == 1
    assert journal.switches == 1


def test_a_read_a_switch_overtook_is_a_miss() -> None:
    """The keys a read checked before a failover began may be pending once it returns."""
    from dragonfly_cache.testing import fake_cache

    with fake_cache() as cache:
        cache.set("k", b"v")
        tiers = cache._tiers  # the read path itself is under test
        tiers.l1.clear()
        read = tiers.l2.get

        def read_overtaken_by_a_switch(key: str, **options: bool) -> tuple[bytes | None, int]:
            reply = read(key, **options)
            with tiers.journal.switching():
                pass
            return reply

        tiers.l2.get = read_overtaken_by_a_switch  # type: ignore[method-assign]
        assert cache.get("k") is None
        tiers.l2.get = read  # type: ignore[method-assign]
        assert cache.get("k") == b"v"
