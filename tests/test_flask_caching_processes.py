"""Two app processes using Flask-Caching on our backend, against one server: a write in
one is served by the other within 100 ms, although the other held the old value in L1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.flask_caching_worker import FlaskCachingWorker
from tests.helpers.servers import RedisServer

SECRET_KEY = "two-processes-secret-key"


@pytest.fixture
def workers(redis_server: RedisServer) -> Iterator[list[FlaskCachingWorker]]:
    made: list[FlaskCachingWorker] = []
    try:
        for _ in range(2):
            made.append(FlaskCachingWorker(redis_server.address, SECRET_KEY))
        yield made
    finally:
        for worker in made:
            worker.close()


def test_a_write_in_one_process_is_served_by_the_other_within_100ms(
        workers: list[FlaskCachingWorker]) -> None:
    writer, reader = workers
    assert writer.call("set", "greeting", {"text": "hello"})[2] is True
    ready = reader.call("watch", "greeting", {"text": "hello"}, 2.0)
    assert ready == ("ready", True)  # the reader's second read was an L1 hit, by its counters
    _, written_at, stored = writer.call("set", "greeting", {"text": "bonjour"})
    assert stored is True
    outcome = reader.call(timeout=10)
    assert outcome[0] == "seen", outcome
    _, seen_at, value = outcome
    assert value == {"text": "bonjour"}
    print(f"\nseen by the other process {1000 * (seen_at - written_at):.1f} ms after the set")
    assert seen_at - written_at < 0.1
    assert writer.call("get", "greeting") == ("value", {"text": "bonjour"})
