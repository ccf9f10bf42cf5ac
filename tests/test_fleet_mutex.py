"""``TieredCache.lock``: the fleet lock as a mutex (dogpile.cache's ``CacheMutex`` shape)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from typing import Any

import pytest

from dragonfly_cache import L2Config
from tests.helpers import CacheFactory, command_calls, fork, wait_until
from tests.helpers.lock_worker import lock_member

LOCK = "\x1flock:"  # where the fleet lock on a key lives (dragonfly_cache._fleet)


def test_acquire_release_locked(cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory()
    raw = redis_server.client()
    mutex, other = cache.lock("job"), cache.lock("job")
    assert not mutex.locked()
    assert raw.exists(f"{LOCK}job") == 0  # nothing is sent until acquire
    assert mutex.acquire()
    assert mutex.locked() and other.locked()  # anyone holding it counts
    assert mutex.acquire(False) is False  # not reentrant, like threading.Lock
    assert other.acquire(wait=False) is False
    assert 9_000 < raw.pttl(f"{LOCK}job") <= 10_000  # l2.fleet_lock_ttl, 10 s
    mutex.release()
    assert not mutex.locked()
    assert raw.exists(f"{LOCK}job") == 0
    with other:  # a context manager too
        assert mutex.locked()
    assert not other.locked()


def test_a_waiter_gets_the_lock_when_its_holder_releases_it(cache_factory: CacheFactory
                                                            ) -> None:
    cache = cache_factory()
    holder, waiter = cache.lock("job", poll=0.01), cache.lock("job", poll=0.01)
    holder.acquire()
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(waiter.acquire()))
    thread.start()
    thread.join(0.1)
    assert got == [] and thread.is_alive()  # still waiting
    holder.release()
    thread.join(5)
    assert got == [True]
    waiter.release()


def test_release_from_another_thread_and_release_unheld(cache_factory: CacheFactory) -> None:
    """dogpile's async creators release in a worker thread what the caller acquired."""
    mutex = cache_factory().lock("job")
    mutex.acquire()
    thread = threading.Thread(target=mutex.release)
    thread.start()
    thread.join(5)
    assert not mutex.locked()
    with pytest.raises(RuntimeError, match="does not hold"):
        mutex.release()


def test_ttl_bounds_a_dead_holder_and_a_late_release_deletes_nothing(
        cache_factory: CacheFactory, redis_server: Any) -> None:
    cache = cache_factory()
    raw = redis_server.client()
    first = cache.lock("job", ttl=1.0, poll=0.01)
    first.acquire()
    assert 0 < raw.pttl(f"{LOCK}job") <= 1000
    second = cache.lock("job", ttl=5)
    assert second.acquire()  # waits until the first one's lock expires
    first.release()  # too late: the lock is the second's now, and stays
    assert raw.exists(f"{LOCK}job") == 1
    second.release()
    assert raw.exists(f"{LOCK}job") == 0


def test_get_or_load_with_lock_takes_the_same_lock(cache_factory: CacheFactory,
                                                    redis_server: Any) -> None:
    cache = cache_factory()
    raw = redis_server.client()
    calls: list[int] = []

    def loader() -> bytes:
        calls.append(1)
        return b"loaded"

    mutex = cache.lock("report")
    mutex.acquire()
    sets = command_calls(raw, "set")
    results: list[bytes] = []
    thread = threading.Thread(
        target=lambda: results.append(cache.get_or_load("report", loader, lock=True)))
    thread.start()
    wait_until(lambda: command_calls(raw, "set") > sets)  # it tried the lock, and waits
    cache.set("report", b"made under the mutex")
    mutex.release()
    thread.join(5)
    assert results == [b"made under the mutex"]
    assert calls == []


def test_with_l2_down_the_lock_is_local(cache_factory: CacheFactory,
                                        redis_server: Any) -> None:
    """No fleet to coordinate with: acquire succeeds, this object excludes its own users,
    and nothing raises (as get_or_load(lock=True) then loads)."""
    mutex = cache_factory().lock("job")
    redis_server.kill()
    assert mutex.acquire() is True
    assert mutex.locked()
    assert mutex.acquire(False) is False
    mutex.release()
    assert not mutex.locked()


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda c: c.lock(""), ValueError, "name must be a non-empty string"),
    (lambda c: c.lock(7), TypeError, "name must be a str"),
    (lambda c: c.lock("job", ttl=0), ValueError, "ttl must be positive"),
    (lambda c: c.lock("job", ttl="10s"), TypeError, "ttl must be seconds"),
    (lambda c: c.lock("job", poll=-1), ValueError, "poll must be positive"),
    (lambda c: c.lock("job", poll="fast"), TypeError, "poll must be seconds"),
])
def test_bad_arguments_are_refused(cache_factory: CacheFactory, redis_server: Any,
                                   call: Any, error: type[Exception], message: str) -> None:
    cache = cache_factory()
    with pytest.raises(error, match=message):
        call(cache)
    assert redis_server.client().dbsize() == 0


def test_default_ttl_is_fleet_lock_ttl(cache_factory: CacheFactory, redis_server: Any) -> None:
    mutex = cache_factory(l2={"fleet_lock_ttl": 3.0}).lock("job")
    with mutex:
        assert 2_000 < redis_server.client().pttl(f"{LOCK}job") <= 3_000
    assert L2Config().fleet_lock_ttl == 10.0


def test_two_processes_never_hold_it_at_once(redis_server: Any) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [context.Process(target=lock_member, args=(redis_server.address, barrier, 25))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0]
    raw = redis_server.client()
    assert raw.get("entries") == b"50"
    assert raw.get("overlaps") is None  # nobody ever found the other inside
    assert int(raw.get("contended") or 0) > 0  # and they did compete for it
    assert raw.get("inside") == b"0"
    assert raw.exists(f"{LOCK}critical") == 0  # released, nothing left behind


def test_a_mutex_held_at_fork_time_is_free_in_the_child(cache_factory: CacheFactory) -> None:
    """The parent's holder thread does not exist in the child: its local lock must not stay
    held there, while the fleet lock stays the parent's until the parent releases it."""
    cache = cache_factory()
    mutex = cache.lock("forked", ttl=5)
    assert mutex.acquire()
    tried, told = os.pipe()
    pid = fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(10)  # a local lock left held would block here: the alarm ends it
            taken = mutex.acquire(wait=False) is False  # the fleet lock is still the parent's
            os.write(told, b".")
            taken = taken and mutex.acquire()  # waits until the parent releases it
            mutex.release()
            code = 0 if taken else 2
        finally:
            os._exit(code)
    os.close(told)  # the child's end only: a child that dies gives the read an EOF
    assert os.read(tried, 1) == b"."  # the child tried once while the parent held it
    os.close(tried)
    mutex.release()  # now the child may take it
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not mutex.locked()
