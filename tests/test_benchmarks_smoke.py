"""The benchmark harness runs end to end, so it never rots (issue 8).

Smoke mode runs every workload with tiny sizes against real redis-server processes it
starts itself (of the server under test: valkey-server with ``--server=valkey``); it makes
no timing claims, and neither does this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.servers import ServerBinary

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

WORKLOADS = {
    "hot_reads_1t",
    "hot_reads_8t",
    "l1_bytes_bound",
    "mixed_90_10_4t",
    "l2_path",
    "stampede",
    "stampede_fleet",
    "get_many_100",
    "get_many_cluster",
    "cross_process_staleness",
    "metrics_overhead",
    "l1_memory",
    "adapter_hits",
    "compression_100k",
    "fleet_scale",
    "staleness_by_mode",
    "coherence_modes",
}


def on_server(server: ServerBinary) -> dict[str, str]:
    """The environment of a benchmark run on the server under test (it starts its own
    servers from $REDIS_SERVER_BIN)."""
    return {**os.environ, "REDIS_SERVER_BIN": server.path}


def test_smoke_run_covers_every_workload(tmp_path: Path,
                                         server_under_test: ServerBinary) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env=on_server(server_under_test),
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"

    document = json.loads(out.read_text())
    assert set(document["workloads"]) == WORKLOADS
    assert document["mode"] == "smoke"
    assert document["date"]
    machine = document["machine"]
    assert machine["nproc"] >= 1
    assert machine["cpu_model"]
    assert machine["python"]
    assert machine["redis_server"] == server_under_test.line
    assert machine["redis_server_binary"] == server_under_test.path
    compression = document["workloads"]["compression_100k"]["data"]
    assert compression["off"]["stored_bytes"] == compression["document_bytes"] == 100_000
    assert compression["zlib"]["stored_bytes"] < 20_000  # read on the server (STRLEN)
    assert compression["zstd"]["stored_bytes"] < 20_000
    # Pub/sub announces every write to every process (counted by the receivers).
    for point in document["workloads"]["fleet_scale"]["data"]["points"]:
        if point["mode"] == "pubsub":
            assert point["messages_per_write"] == point["members"], point
        assert point["server_cpu_us_per_write"] > 0, point
    for name, workload in document["workloads"].items():
        assert workload["title"], name
        assert workload["data"], name
        for target in workload["targets"]:
            assert target["met"] is None, f"{name}: smoke mode must not judge targets"

    # Every workload printed its markdown table.
    assert "## Benchmark results (smoke run" in proc.stdout
    for workload in document["workloads"].values():
        assert f"### {workload['title']}" in proc.stdout
    assert "### Targets (issue 8)" in proc.stdout


def test_smoke_run_answers_each_system(tmp_path: Path,
                                       server_under_test: ServerBinary) -> None:
    """The systems really ran: reads found their values, loaders returned them."""
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--only", "stampede", "--only", "hot_reads_1t",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env=on_server(server_under_test),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    workloads = json.loads(out.read_text())["workloads"]
    assert set(workloads) == {"stampede", "hot_reads_1t"}
    stampede = workloads["stampede"]["data"]
    assert {"dragonfly_cache", "dogpile.cache", "flask-caching"} <= set(stampede)
    for name, entry in stampede.items():
        assert entry["all_callers_got_value"], name
    assert stampede["dragonfly_cache"]["loader_calls_max"] == 1
    hot = workloads["hot_reads_1t"]["data"]
    assert all(entry["ops_per_s"] > 0 for entry in hot.values())


def test_smoke_get_many_is_compared_with_mget_on_the_same_server(
        tmp_path: Path, server_under_test: ServerBinary) -> None:
    """Issue 16's batch read target: get_many(100) of L1-cold keys against a raw MGET of the
    same keys on the same server, measured in the same run."""
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--only", "get_many_100", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=100, check=False,
        env=on_server(server_under_test),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    workload = json.loads(out.read_text())["workloads"]["get_many_100"]
    data = workload["data"]
    reference = data["redis-py MGET(100), same server"]
    assert reference["vs_mget"] == 1.0 and reference["p50_us"] > 0
    assert data["dragonfly_cache get_many(100)"]["vs_mget"] > 0
    # The targets' ratio: get_many and MGET reading each batch in turns, in each mode.
    interleaved = data["dragonfly_cache get_many(100), interleaved with the next"]
    pubsub = data["dragonfly_cache get_many(100), l1.invalidation=pubsub, interleaved with "
                  "the next"]
    assert interleaved["vs_mget"] > 0 and pubsub["vs_mget"] > 0
    assert [(t["limit"], t["measured"], t["met"]) for t in workload["targets"]] == [
        (2.0, interleaved["vs_mget"], None), (1.3, interleaved["vs_mget"], None)]
