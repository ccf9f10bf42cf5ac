"""Fill a cache's L1 far past ``l1.max_bytes`` from 8 threads and report the memory it took.

Run by ``tests/test_l1_memory.py`` in a process of its own (``python -m
tests.helpers.l1_fill_worker ADDRESS MAX_BYTES``), so the resident set measured is this
process's alone, not pytest's with every earlier test's garbage. Prints one JSON object.

Each thread writes values of mixed sizes (log-uniform from 100 bytes to 256 KiB) under
keys drawn from a space three times the bound, reads another key, and samples L1's byte
count after every operation, until the values written total 10x the bound. A sampler
thread reads the resident set every 5 ms.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
import time

from dragonfly_cache import CacheConfig, DragonflyConfig, L1Config, L2Config, TieredCache

THREADS = 8
LARGEST = 256 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE


def main(address: str, bound: int) -> dict[str, int]:
    cache = TieredCache(CacheConfig(
        dragonfly=DragonflyConfig(addresses=[address], pool_size=THREADS),
        l1=L1Config(max_size=10**6, max_bytes=bound), l2=L2Config(ttl=120.0),
        key_prefix="l1fill:"))
    mean_size = (LARGEST - 100) / math.log(LARGEST / 100)  # of the log-uniform sizes
    keys = int(3 * bound / mean_size)
    for n in range(50):  # warm-up: connections, buffers, code paths
        cache.set(f"warm:{n}", b"w" * 1000)
        cache.get(f"warm:{n}")
    lock = threading.Lock()
    done = threading.Event()
    report = {"bound": bound, "baseline": resident(), "peak_resident": 0,
              "peak_l1_bytes": 0, "written": 0}

    def sample_resident() -> None:
        while not done.is_set():
            report["peak_resident"] = max(report["peak_resident"], resident())
            time.sleep(0.005)

    def fill(seed: int) -> None:
        rng = random.Random(seed)
        while True:
            size = int(100 * (LARGEST / 100) ** rng.random())
            with lock:
                if report["written"] >= 10 * bound:
                    return
                report["written"] += size
            cache.set(f"k{rng.randrange(keys)}", bytes([rng.randrange(256)]) * size)
            cache.get(f"k{rng.randrange(keys)}")
            held = cache.stats()["l1_stats"]["bytes"]
            with lock:
                report["peak_l1_bytes"] = max(report["peak_l1_bytes"], held)

    sampler = threading.Thread(target=sample_resident)
    sampler.start()
    fillers = [threading.Thread(target=fill, args=(seed,)) for seed in range(THREADS)]
    for thread in fillers:
        thread.start()
    for thread in fillers:
        thread.join()
    done.set()
    sampler.join()
    report["evicted_by_bytes"] = cache.stats()["l1_stats"]["evictions_by_cause"]["bytes"]
    cache.close()
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
