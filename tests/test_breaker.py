"""The circuit breaker on its own, on a fake clock."""

from __future__ import annotations

from dragonfly_cache._breaker import CircuitBreaker
from tests.helpers import FakeClock


def make(threshold: int = 3, cooldown: float = 1.0, max_cooldown: float = 4.0
         ) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(threshold, cooldown, max_cooldown, clock), clock


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = make(threshold=3)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.stats()["rejected"] == 1
    assert breaker.stats()["opened"] == 1


def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _ = make(threshold=3)
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed"
    assert breaker.stats()["consecutive_failures"] == 2


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker, clock = make(threshold=1, cooldown=1.0)
    breaker.failure()
    clock.advance(0.99)
    assert not breaker.allow()
    clock.advance(0.02)
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    assert not breaker.allow()  # everyone else still fails fast
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.stats()["closed"] == 1


def test_failed_probes_double_the_cooldown_up_to_the_cap() -> None:
    breaker, clock = make(threshold=1, cooldown=1.0, max_cooldown=4.0)
    breaker.failure()
    waits = []
    for _ in range(4):
        waited = 0.0
        while not breaker.allow():
            clock.advance(0.25)
            waited += 0.25
        waits.append(waited)
        breaker.failure()
    assert waits == [1.0, 2.0, 4.0, 4.0]
    breaker.success()
    breaker.failure()
    assert breaker.stats()["cooldown"] == 1.0  # a success resets the backoff


def test_a_probe_that_never_reports_frees_its_slot_after_a_cooldown() -> None:
    breaker, clock = make(threshold=1, cooldown=1.0)
    breaker.failure()
    clock.advance(1.0)
    assert breaker.allow()  # the probe's thread dies without reporting
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_successes_in_the_closed_state_take_no_lock() -> None:
    breaker, _ = make()

    class Boom:
        def __enter__(self) -> None:
            raise AssertionError("lock taken")

        def __exit__(self, *args: object) -> None:
            return None

    breaker._lock = Boom()  # type: ignore[assignment]
    breaker.success()


def test_a_probe_abandoned_without_a_verdict_lets_the_next_call_probe_at_once() -> None:
    breaker, clock = make(threshold=1, cooldown=5.0)
    breaker.failure()
    clock.advance(5.0)
    assert breaker.allow()  # the probe ...
    breaker.abandon()  # ... never reached the server (no free connection)
    assert breaker.state == "open"
    assert breaker.allow()  # the next call probes now, not after another cooldown
