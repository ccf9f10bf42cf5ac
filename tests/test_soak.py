"""Soak: 16 threads on one TieredCache while the server is killed and restarted twice.

Thread ``i`` owns the keys ``k<n>`` with ``n % THREADS == i`` and is their only writer, so
it knows at every moment which values a read of them may return:

- after a successful ``set(v)``: ``v`` or None (L1 eviction, or the server restarted empty);
- after a successful ``delete``: None only;
- after a failed write (CacheUnavailableError), or a ``get_or_load`` that called the loader
  (its store may have failed silently): what was allowed before, or the value just written,
  until the next successful write.

Every value spells its key and a per-thread version (``b"k123:v45"``), so a value from
another key or an older version than allowed is caught. Threads also read each other's
keys, so their L1 fills race the owners' writes; those reads are only checked for
spelling, and any stale value such a racing fill left in L1 is caught by the owner.

SOAK_SECONDS (default 30) sets the length; SOAK_SEED replays a run's op mix (not its
timing); SOAK_L1_TTL (default 0.2 s) sets how often hot keys fall out of L1.
"""

from __future__ import annotations

import os
import random
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from dragonfly_cache import CacheUnavailableError, TieredCache
from tests.helpers import CacheFactory, wait_until
from tests.helpers.servers import RedisServer

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
SOAK_SEED = int(os.environ.get("SOAK_SEED", str(random.randrange(1_000_000))))
THREADS = 16
KEYS = 10_000
OWN_KEYS = KEYS // THREADS  # 625: KEYS is a multiple of THREADS
L1_MAX_SIZE = 2_000
# Short, so reads of hot keys keep missing L1 while L2 has them: their fills then race the
# owners' writes, which is what the read tickets must win (see "Racing fills" in concepts).
L1_TTL = float(os.environ.get("SOAK_L1_TTL", "0.2"))
HOT_KEYS = THREADS  # k0..k15: one per thread, the target of most cross-thread reads
PREFIX = "soak:"
KILL_AT = (0.25, 0.60)  # fractions of the run; a kill waits for the last recovery
OUTAGE = 2.0  # seconds the server stays down each time
RECOVERY_BOUND = 3.0  # seconds from restart() until L2 serves again
RESUBSCRIBE_BOUND = 5.0  # seconds from restart() until the listener is subscribed again
PROBE_GIVE_UP = 6.0  # the controller stops probing after this long (the checks then fail)
SETTLE = 0.5  # seconds between a full recovery and the next kill, at least
RSS_GROWTH_BOUND = 20 * 2**20  # bytes, over the last half of the run
EXAMPLES = 20  # problems kept with details; all of them are counted
MIB = 2**20

NO_VALUE: frozenset[int] = frozenset()


def key_name(n: int) -> str:
    return f"k{n}"


def encode(n: int, version: int) -> bytes:
    return f"k{n}:v{version}".encode()


def decode(value: object) -> tuple[str, int] | None:
    """``(key name, version)`` of a value this test wrote, else None."""
    if not isinstance(value, bytes):
        return None
    key, sep, version = value.decode(errors="replace").partition(":v")
    return (key, int(version)) if sep and version.isdigit() else None


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Findings:
    """What every thread reports back: all counted, the first EXAMPLES kept in full."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.unexpected = 0  # exceptions the contract does not allow
        self.unexpected_examples: list[str] = []
        self.violations = 0  # values the contract does not allow
        self.violation_examples: list[str] = []

    def exception(self, where: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc, limit=-6))
        with self._lock:
            self.unexpected += 1
            if len(self.unexpected_examples) < EXAMPLES:
                self.unexpected_examples.append(f"{where}: {type(exc).__name__}: {exc}\n{text}")

    def violation(self, text: str) -> None:
        with self._lock:
            self.violations += 1
            if len(self.violation_examples) < EXAMPLES:
                self.violation_examples.append(text)


@dataclass
class Run:
    """State shared by the workers and the controller."""

    findings: Findings = field(default_factory=Findings)
    stop: threading.Event = field(default_factory=threading.Event)
    # "up", "down" (killed), "recovering" (restarted, no probe write has succeeded yet).
    phase: str = "up"
    # versions[i]: the last version thread i put in a value; only thread i writes it.
    versions: list[int] = field(default_factory=lambda: [0] * THREADS)


class Worker:
    """One of the THREADS load threads; the sole writer of its own keys."""

    def __init__(self, index: int, cache: TieredCache, run: Run) -> None:
        self.index = index
        self.cache = cache
        self.run = run
        self.rng = random.Random(SOAK_SEED * 1000 + index)
        # key -> versions a read may return besides None; missing means none.
        self.allowed: dict[int, set[int]] = {}
        # key -> its last few writes, for the violation message. Made up front, so the
        # test's own bookkeeping does not grow during the run and blur the RSS check.
        self.history = {n: deque[str](maxlen=4) for n in range(index, KEYS, THREADS)}
        self.ops: Counter[str] = Counter()
        self.ops_by_phase: Counter[str] = Counter()
        self.reads = 0
        self.writes_ok = 0
        self.write_failures: Counter[str] = Counter()  # by phase

    # -- the loop ------------------------------------------------------------------------

    def __call__(self) -> None:
        try:
            count = 0
            while not self.run.stop.is_set():
                self.ops_by_phase[self.run.phase] += 1
                self.one_op()
                count += 1
                if count % 64 == 0:
                    time.sleep(0)  # let the controller and the listener in between L1 hits
        except BaseException as exc:  # a harness bug: must not vanish with the thread
            self.run.findings.exception(f"worker {self.index} loop", exc)

    def one_op(self) -> None:
        roll = self.rng.random()
        if roll < 0.32:
            self.get(self.own_key())
        elif roll < 0.45:
            self.get(self.any_key())  # usually another thread's key
        elif roll < 0.65:
            self.set(self.own_key())
        elif roll < 0.80:
            self.get_or_load(self.own_key())
        elif roll < 0.90:
            self.delete(self.own_key())
        elif roll < 0.95:
            self.get_many([self.own_key() for _ in range(3)]
                          + [self.any_key() for _ in range(3)])
        elif roll < 0.98:
            self.set_many({self.own_key() for _ in range(3)})
        else:
            self.exists(self.own_key())

    def own_key(self) -> int:
        """One of this thread's keys; half of the time its hot one."""
        spread = HOT_KEYS // THREADS if self.rng.random() < 0.5 else OWN_KEYS
        return self.rng.randrange(spread) * THREADS + self.index

    def any_key(self) -> int:
        """Any thread's key; mostly a hot one, so reads race the owner's writes."""
        return self.rng.randrange(HOT_KEYS if self.rng.random() < 0.7 else KEYS)

    def next_version(self) -> int:
        self.run.versions[self.index] += 1
        return self.run.versions[self.index]

    # -- checks --------------------------------------------------------------------------

    def check(self, n: int, seen: bytes | None, op: str) -> None:
        """Report ``seen`` if a read of key ``n`` may not return it now."""
        if n % THREADS != self.index:
            self.check_foreign(n, seen, op)
            return
        if seen is None:
            return
        allowed = self.allowed.get(n, NO_VALUE)
        decoded = decode(seen)
        if decoded is None or decoded[0] != key_name(n) or decoded[1] not in allowed:
            expected = ("None (deleted or never written)" if not allowed else
                        "None or " + " / ".join(encode(n, v).decode() for v in sorted(allowed)))
            recent = "; ".join(self.history.get(n, ())) or "none"
            self.run.findings.violation(
                f"{op} of {key_name(n)!r} returned {seen!r}, expected {expected} "
                f"(owner's last writes: {recent}; phase {self.run.phase})")

    def check_foreign(self, n: int, seen: bytes | None, op: str) -> None:
        """Another thread's key: racing its writes, only the spelling can be checked."""
        if seen is None:
            return
        decoded = decode(seen)
        owner_version = self.run.versions[n % THREADS]
        if decoded is None or decoded[0] != key_name(n) or not 0 < decoded[1] <= owner_version:
            self.run.findings.violation(
                f"{op} of another thread's key {key_name(n)!r} returned {seen!r}, which its "
                f"owner never wrote (owner's last version: {owner_version})")

    # -- reads: must never raise ------------------------------------------------------

    def read(self, op: str, call: Callable[[], Any]) -> tuple[bool, Any]:
        self.ops[op] += 1
        self.reads += 1
        try:
            return True, call()
        except Exception as exc:
            self.run.findings.exception(f"read {op} (phase {self.run.phase})", exc)
            return False, None

    def get(self, n: int) -> None:
        op = "get" if n % THREADS == self.index else "get_foreign"
        ok, value = self.read(op, lambda: self.cache.get(key_name(n)))
        if ok:
            self.check(n, value, "get")

    def get_many(self, keys: list[int]) -> None:
        ok, found = self.read("get_many",
                              lambda: self.cache.get_many([key_name(n) for n in keys]))
        if ok:
            for n in keys:
                self.check(n, found.get(key_name(n)), "get_many")

    def exists(self, n: int) -> None:
        ok, present = self.read("exists", lambda: self.cache.exists(key_name(n)))
        if ok and present and not self.allowed.get(n):
            self.run.findings.violation(
                f"exists({key_name(n)!r}) is True, expected False (deleted or never written; "
                f"owner's last writes: {'; '.join(self.history.get(n, ())) or 'none'})")

    def get_or_load(self, n: int) -> None:
        loaded: list[int] = []

        def loader() -> bytes:
            loaded.append(self.next_version())
            return encode(n, loaded[-1])

        ok, value = self.read("get_or_load", lambda: self.cache.get_or_load(key_name(n), loader))
        if not ok:
            return
        if not loaded:
            if value is None:
                self.run.findings.violation(f"get_or_load({key_name(n)!r}) returned None")
            else:
                self.check(n, value, "get_or_load")
            return
        self.ops["loader_calls"] += 1
        if value != encode(n, loaded[0]) or len(loaded) != 1:
            self.run.findings.violation(
                f"get_or_load({key_name(n)!r}) returned {value!r} after calling the loader "
                f"{len(loaded)} time(s), expected {encode(n, loaded[0])!r}")
        # Its store swallows CacheUnavailableError: stored or not, we cannot tell.
        self.allowed.setdefault(n, set()).add(loaded[0])
        self.history[n].append(f"get_or_load stored v{loaded[0]} (maybe)")

    # -- writes: succeed or raise CacheUnavailableError --------------------------------------

    def write(self, op: str, call: Callable[[], None], changes: dict[int, int | None]) -> None:
        """Run a write of ``changes`` (key -> new version, None to delete); track the state."""
        self.ops[op] += 1
        try:
            call()
        except CacheUnavailableError:
            failed = True
            self.write_failures[self.run.phase] += 1
        except Exception as exc:
            failed = True  # and the test fails; keep the state loose so no violation follows
            self.run.findings.exception(f"write {op} (phase {self.run.phase})", exc)
        else:
            failed = False
            self.writes_ok += 1
        for n, version in changes.items():
            written = "delete" if version is None else f"set v{version}"
            self.history[n].append(f"{written} {'FAILED' if failed else 'ok'}")
            if failed:
                # L1 took it, L2 may have: the old values and the new one are all possible.
                if version is not None:
                    self.allowed.setdefault(n, set()).add(version)
            elif version is None:
                self.allowed.pop(n, None)
            else:
                self.allowed[n] = {version}

    def set(self, n: int) -> None:
        version = self.next_version()
        self.write("set", lambda: self.cache.set(key_name(n), encode(n, version)), {n: version})

    def set_many(self, keys: set[int]) -> None:
        changes: dict[int, int | None] = {n: self.next_version() for n in keys}
        mapping = {key_name(n): encode(n, v) for n, v in changes.items() if v is not None}
        self.write("set_many", lambda: self.cache.set_many(mapping), changes)

    def delete(self, n: int) -> None:
        self.write("delete", lambda: self.cache.delete(key_name(n)), {n: None})


@dataclass
class Recovery:
    """One restart: seconds from ``restart()`` returning until each sign of recovery."""

    restarted_at: float
    key: str
    write: float | None = None  # the controller's probe set through the soaked cache
    served: float | None = None  # a second cache then read the probe from L2
    subscribed: float | None = None  # the soaked cache's listener is subscribed again

    def done(self) -> bool:
        return self.served is not None and self.subscribed is not None


class Controller:
    """Kills and restarts the server, samples L1 size and RSS, probes recovery.

    Kill ``k`` comes at ``KILL_AT[k]`` of the run, or ``SETTLE`` after the previous
    restart has fully recovered if that is later, so each outage meets a subscribed
    listener and a closed breaker; the run may then outlast SOAK_SECONDS a little.
    """

    def __init__(self, run: Run, cache: TieredCache, observer: TieredCache,
                 server: RedisServer) -> None:
        self.run = run
        self.cache = cache
        self.observer = observer
        self.server = server
        self.l1_max = 0
        self.l1_samples = 0
        self.rss: list[tuple[float, int]] = []  # (seconds into the run, bytes)
        self.recoveries: list[Recovery] = []
        self.started = 0.0

    def __call__(self) -> None:
        try:
            self.loop()
        except BaseException as exc:
            self.run.findings.exception("controller", exc)
        finally:
            self.run.stop.set()

    def loop(self) -> None:
        outages = [fraction * SOAK_SECONDS for fraction in KILL_AT]
        kill_at: float | None = outages.pop(0)
        restart_at: float | None = None
        probing: Recovery | None = None
        self.started = time.monotonic()
        next_rss = self.started
        while True:
            now = time.monotonic()
            elapsed = now - self.started
            self.l1_max = max(self.l1_max, self.cache.stats()["l1_stats"]["size"])
            self.l1_samples += 1
            if now >= next_rss:
                self.rss.append((elapsed, rss_bytes()))
                next_rss += 1.0
            if kill_at is not None and elapsed >= kill_at:
                self.run.phase = "down"
                self.server.kill()
                kill_at, restart_at = None, elapsed + OUTAGE
            elif restart_at is not None and elapsed >= restart_at:
                self.server.restart()
                self.run.phase = "recovering"
                probing = Recovery(time.monotonic(), f"probe:{len(self.recoveries)}")
                self.recoveries.append(probing)
                restart_at = None
            if probing is not None and self.probe(probing):
                probing = None
                if outages:
                    kill_at = max(outages.pop(0), time.monotonic() - self.started + SETTLE)
            idle = kill_at is None and restart_at is None and probing is None
            if elapsed >= SOAK_SECONDS and idle:
                return
            time.sleep(0.01 if probing is not None else 0.05)

    def probe(self, recovery: Recovery) -> bool:
        """One round of recovery probes; True once it is over (recovered, or given up)."""
        since = time.monotonic() - recovery.restarted_at
        if recovery.served is None:
            # Written again every round until served: the journal replays the failed probes
            # as deletes, and one may land after the first successful write.
            try:
                self.cache.set(recovery.key, b"probe")
            except CacheUnavailableError:
                pass
            else:
                if recovery.write is None:
                    recovery.write = since = time.monotonic() - recovery.restarted_at
                    self.run.phase = "up"
        if (recovery.write is not None and recovery.served is None
                and self.observer.get(recovery.key) == b"probe"):
            recovery.served = time.monotonic() - recovery.restarted_at
        if recovery.subscribed is None and self.cache.stats()["coherence"]["state"] == "subscribed":
            recovery.subscribed = since
        return recovery.done() or since > PROBE_GIVE_UP


def final_sweep(cache: TieredCache, server: RedisServer, workers: list[Worker]) -> None:
    """Check every key once more, through the cache and straight from the server."""
    raw = server.client()
    for start in range(0, KEYS, 500):
        chunk = range(start, min(start + 500, KEYS))
        found = cache.get_many([key_name(n) for n in chunk])
        stored = raw.mget([PREFIX + key_name(n) for n in chunk])
        for n, in_l2 in zip(chunk, stored, strict=True):
            owner = workers[n % THREADS]
            owner.check(n, found.get(key_name(n)), "final get_many")
            owner.check(n, in_l2, "final raw GET from the server")


def mib(size: float) -> str:
    return f"{size / MIB:.1f}"


def ms(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds * 1000:.0f} ms"


def contract_problems(run: Run, controller: Controller, stats: Any, write_failures: int,
                      growth: int, samples: list[tuple[float, int]]) -> list[str]:
    """What the run shows against the contract (empty: all held)."""
    problems: list[str] = []
    findings = run.findings
    # 1. Reads never raise; writes succeed or raise CacheUnavailableError, nothing else.
    if findings.unexpected:
        problems.append(f"{findings.unexpected} exception(s) the contract does not allow "
                        "(reads must not raise; writes only CacheUnavailableError), e.g.:\n"
                        + "\n".join(findings.unexpected_examples))
    # 2. No value is served that the owner's writes do not allow (deleted, older, foreign).
    if findings.violations:
        problems.append(f"{findings.violations} read(s) returned a value the owner's writes "
                        "do not allow, e.g.:\n" + "\n".join(findings.violation_examples))
    # 3. L1 stays within its bound.
    if controller.l1_max > L1_MAX_SIZE:
        problems.append(f"L1 held {controller.l1_max} entries, more than l1_max_size "
                        f"{L1_MAX_SIZE}")
    # 4. No leak: memory is flat over the last half of the run.
    if growth >= RSS_GROWTH_BOUND:
        problems.append(f"RSS grew {mib(growth)} MiB over the last half of the run (bound "
                        f"{mib(RSS_GROWTH_BOUND)} MiB); samples (s, MiB): "
                        + ", ".join(f"{t:.0f}:{mib(rss)}" for t, rss in samples))
    # 5. Each restart: the soaked cache writes to L2 again and another cache reads it back.
    for number, recovery in enumerate(controller.recoveries, 1):
        if recovery.served is None or recovery.served > RECOVERY_BOUND:
            problems.append(f"restart {number}: L2 not serving within {RECOVERY_BOUND:g} s "
                            f"(probe write after {recovery.write} s, read back after "
                            f"{recovery.served} s)")
        if recovery.subscribed is None or recovery.subscribed > RESUBSCRIBE_BOUND:
            problems.append(f"restart {number}: the invalidation listener not subscribed "
                            f"within {RESUBSCRIBE_BOUND:g} s (after {recovery.subscribed} s)")
    # The faults really happened and were seen: otherwise the run proves nothing.
    if len(controller.recoveries) != len(KILL_AT):
        problems.append(f"{len(controller.recoveries)} restarts happened, expected "
                        f"{len(KILL_AT)}")
    if write_failures == 0 or stats["breaker"]["opened"] < len(KILL_AT):
        problems.append(f"the outages were not noticed: {write_failures} failed writes, "
                        f"breaker opened {stats['breaker']['opened']} times")
    if stats["coherence"]["flushes"] < len(KILL_AT):
        problems.append(f"L1 was flushed {stats['coherence']['flushes']} times, expected at "
                        f"least once per outage ({len(KILL_AT)})")
    return problems


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 90)
def test_soak_under_server_restarts(cache_factory: CacheFactory,
                                    redis_server: RedisServer) -> None:
    cache = cache_factory(key_prefix=PREFIX, l1_max_size=L1_MAX_SIZE, l1_ttl=L1_TTL,
                          breaker_cooldown=0.2, breaker_max_cooldown=1.0)
    observer = cache_factory(key_prefix=PREFIX)
    run = Run()
    workers = [Worker(index, cache, run) for index in range(THREADS)]
    controller = Controller(run, cache, observer, redis_server)
    threads = [threading.Thread(target=worker, name=f"soak-{worker.index}")
               for worker in workers]
    threads.append(threading.Thread(target=controller, name="soak-controller"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SOAK_SECONDS + PROBE_GIVE_UP * len(KILL_AT) + 30)
    hung = [thread.name for thread in threads if thread.is_alive()]
    assert not hung, f"threads still running after the run: {hung}"
    duration = time.monotonic() - controller.started
    problems: list[str] = []

    # 5. Recovery: the breaker closes again (given traffic) and the listener resubscribes.
    def recovered() -> bool:
        cache.get("probe:final")
        stats = cache.stats()
        return (stats["breaker"]["state"] == "closed"
                and stats["coherence"]["state"] == "subscribed")

    try:
        wait_until(recovered, timeout=5.0)
    except AssertionError:
        stats = cache.stats()
        problems.append(f"5 s after the run the cache has not recovered: breaker "
                        f"{stats['breaker']}, coherence {stats['coherence']}")
    final_sweep(cache, redis_server, workers)

    ops: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    by_phase: Counter[str] = Counter()
    for worker in workers:
        ops.update(worker.ops)
        by_phase.update(worker.ops_by_phase)
        failures.update(worker.write_failures)
    reads = sum(worker.reads for worker in workers)
    writes_ok = sum(worker.writes_ok for worker in workers)
    write_failures = sum(failures.values())
    samples = controller.rss or [(0.0, rss_bytes())]
    middle = next((rss for t, rss in samples if t >= SOAK_SECONDS / 2), samples[-1][1])
    last_half = [rss for t, rss in samples if t >= SOAK_SECONDS / 2] or [middle]
    growth = max(last_half) - middle
    stats = cache.stats()
    findings = run.findings
    recoveries = ", ".join(
        f"restart {i + 1}: write {ms(r.write)} / served {ms(r.served)} / "
        f"resubscribed {ms(r.subscribed)}" for i, r in enumerate(controller.recoveries))
    print(f"\nsoak {duration:.1f} s, seed {SOAK_SEED}, {THREADS} threads, {KEYS} keys: "
          f"{sum(ops.values()) - ops['loader_calls']} ops "
          f"({(reads + writes_ok + write_failures) / duration:.0f}/s): "
          + " ".join(f"{op}={count}" for op, count in sorted(ops.items()))
          + f"; by phase {dict(by_phase)}")
    print(f"reads {reads} (raised {findings.unexpected}); writes ok {writes_ok}, failed "
          f"{write_failures} ({dict(failures)}); violations {findings.violations}")
    print(f"L1 max {controller.l1_max}/{L1_MAX_SIZE} over {controller.l1_samples} samples, "
          f"evictions {stats['l1_stats']['evictions']}; breaker opened "
          f"{stats['breaker']['opened']}x, rejected {stats['breaker']['rejected']}; coherence "
          f"flushes {stats['coherence']['flushes']}, reconnects "
          f"{stats['coherence']['reconnects']}")
    print(f"RSS MiB start/mid/end/max {mib(samples[0][1])}/{mib(middle)}/{mib(samples[-1][1])}"
          f"/{mib(max(rss for _, rss in samples))}, growth over the last half {mib(growth)} "
          f"; samples {' '.join(mib(rss) for _, rss in samples)}")
    print(f"recovery after restart() returned: {recoveries}")

    problems += contract_problems(run, controller, stats, write_failures, growth, samples)
    assert not problems, "\n\n".join(problems)
