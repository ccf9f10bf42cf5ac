"""SingleFlight on its own: one call per key in flight, shared results and errors, no leaks."""

from __future__ import annotations

import threading

import pytest

from dragonfly_cache._singleflight import SingleFlight
from tests.helpers import run_threads, wait_until


def test_concurrent_calls_share_one_run() -> None:
    flights: SingleFlight[bytes] = SingleFlight()
    calls: list[int] = []
    results: list[bytes] = []

    def function() -> bytes:
        calls.append(1)
        wait_until(lambda: flights.coalesced == 31)
        return b"value"

    def worker(_: int) -> None:
        results.append(flights.do("k", function))

    run_threads(32, worker)
    assert len(calls) == 1
    assert results == [b"value"] * 32
    assert flights.coalesced == 31
    assert len(flights) == 0


def test_an_exception_reaches_every_waiter_and_the_next_call_retries() -> None:
    flights: SingleFlight[bytes] = SingleFlight()
    errors: list[BaseException] = []

    def failing() -> bytes:
        wait_until(lambda: flights.coalesced == 7)
        raise RuntimeError("database down")

    def worker(_: int) -> None:
        try:
            flights.do("k", failing)
        except RuntimeError as exc:
            errors.append(exc)

    run_threads(8, worker)
    assert len(errors) == 8
    assert len(flights) == 0
    assert flights.do("k", lambda: b"ok") == b"ok"


def test_different_keys_do_not_wait_for_each_other() -> None:
    flights: SingleFlight[str] = SingleFlight()
    release = threading.Event()
    started = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "slow"

    thread = threading.Thread(target=lambda: flights.do("a", slow))
    thread.start()
    started.wait(5)
    assert flights.do("b", lambda: "fast") == "fast"
    release.set()
    thread.join(5)
    assert len(flights) == 0


def test_base_exception_in_the_leader_does_not_leak_the_flight() -> None:
    flights: SingleFlight[bytes] = SingleFlight()

    def interrupted() -> bytes:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        flights.do("k", interrupted)
    assert len(flights) == 0
