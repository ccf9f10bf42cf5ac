"""Fork safety of the Prometheus export: a process forked while one of its threads is
inside prometheus_client (gunicorn --preload forks while the master's listener threads
observe L2 latency) must not inherit a held lock and hang on its first observation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: forking pytest's own process (and its threads) is not ours
# to do. Each child observes once and exits; a child stuck for 5 s counts as hung.
_FORKS = textwrap.dedent("""
    import os, sys, threading, time
    from dragonfly_cache import metrics

    stop = False
    def observe_forever():
        while not stop:
            metrics._observe_latency("GET", 0.0002)
            metrics.sync_all()
    threads = [threading.Thread(target=observe_forever, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    hung = 0
    for _ in range(int(sys.argv[1])):
        pid = os.fork()
        if pid == 0:
            metrics._observe_latency("GET", 0.0002)
            metrics.sync_all()
            os._exit(0)
        deadline = time.monotonic() + 5
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0, status
                break
            if time.monotonic() > deadline:
                hung += 1
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
        if hung:
            break
            time.sleep(0.005)
    stop = True
    print("hung", hung)
""")


def test_a_child_forked_while_threads_observe_latency_can_observe(tmp_path: Path) -> None:
    # Multiprocess mode (as under gunicorn): every value shares one prometheus_client lock.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _FORKS, "60"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hung", "0"], result.stdout + result.stderr
