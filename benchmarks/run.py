"""Side-by-side benchmark of dragonfly_cache against its peers (issue 8).

    .venv/bin/python benchmarks/run.py            # full run: 9 rounds, ~2.5 minutes
    .venv/bin/python benchmarks/run.py --quick    # 5 shorter rounds, ~1 minute
    .venv/bin/python benchmarks/run.py --smoke    # every workload, tiny sizes, no judging (CI)

Prints one markdown table per workload, then the targets, to stdout (progress goes to
stderr), and writes the same numbers as JSON to benchmarks/results/latest.json (or
``--json PATH``). See benchmarks/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The benchmark reuses the test harness's redis-server launcher (tests/helpers/servers.py), and
# runs against the working tree's package: both live under the repository root.
sys.path.insert(0, str(ROOT))

from _measure import timer_overhead_ns, zipf_keys  # noqa: E402 - needs the path above
from _systems import Pinning, System, is_hit, open_systems  # noqa: E402 - needs the path above
from _workloads import VALUE_SIZE, WORKLOADS, Context, Settings  # noqa: E402 - same

from tests.helpers.servers import find_redis_server  # noqa: E402 - needs the path above

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"

MODES = {
    "full": Settings(mode="full", rounds=9, duration=0.4, keys=10_000, sample=1 << 17,
                     stampede_rounds=9, stampede_threads=64, loader_seconds=0.05,
                     staleness_seconds=10.0, write_period=0.01, memory_entries=10_000,
                     judge=True),
    "quick": Settings(mode="quick", rounds=5, duration=0.2, keys=10_000, sample=1 << 16,
                      stampede_rounds=5, stampede_threads=64, loader_seconds=0.05,
                      staleness_seconds=5.0, write_period=0.01, memory_entries=10_000,
                      judge=True),
    # Tiny sizes so CI exercises every code path in seconds; the numbers mean nothing.
    "smoke": Settings(mode="smoke", rounds=1, duration=0.01, keys=500, sample=1 << 11,
                      stampede_rounds=1, stampede_threads=64, loader_seconds=0.05,
                      staleness_seconds=0.3, write_period=0.01, memory_entries=500,
                      judge=False),
}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    binary = find_redis_server()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "redis_server": version,
        "redis_server_binary": binary,
        "load_average_at_start": list(os.getloadavg()),
        "gil_switch_interval_s": sys.getswitchinterval(),
    }


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("dragonfly-cache", "redis", "hiredis", "cachetools", "flask-caching",
                 "dogpile.cache"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _numeric(cell: str) -> bool:
    return cell[:1].isdigit() or cell.startswith(("-", "n/a"))


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """Numbers right-aligned, words left-aligned."""
    aligns = ["---:" if i and rows and all(_numeric(row[i]) for row in rows) else "---"
              for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(target: dict[str, Any]) -> str:
    met = target["met"]
    return "not judged" if met is None else ("met" if met else "**not met**")


def render(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    out = [f"## Benchmark results ({meta['mode']} run, {meta['date']})", "",
           f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
           f"{m['redis_server'].split(' sha=')[0]} on loopback; pinning: "
           f"{meta['pinning']['mode']} (benchmark on CPU {meta['pinning']['benchmark_cpus']}, "
           f"redis-server on CPU {meta['pinning']['redis_server_cpus']}); "
           f"load average at start {m['load_average_at_start'][0]:.2f}. "
           f"Medians of {meta['settings']['rounds']} interleaved rounds; ratios are "
           "per-round ratios' medians.", ""]
    if meta["mode"] == "smoke":
        out += ["*Smoke run: tiny sizes, one round — these numbers make no timing claims.*", ""]
    targets = []
    for result in results.values():
        out += [f"### {result['title']}", "", result["note"], "",
                markdown_table(result["columns"], result["rows"]), ""]
        for target in result["targets"]:
            out.append(f"- Target: {target['target']} — measured {target['shown']}: "
                       f"{verdict(target)}")
            targets.append(target)
        if result["targets"]:
            out.append("")
    out += ["### Targets (issue 8)", "",
            markdown_table(["target", "measured", "verdict"],
                           [[t["target"], t["shown"], verdict(t)] for t in targets]), ""]
    return "\n".join(out)


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="5 shorter rounds (about a minute)")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                      help="every workload with tiny sizes, no timing claims (CI)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"where to write the JSON (default {DEFAULT_JSON.relative_to(ROOT)})")
    parser.add_argument("--pin", choices=("same", "split", "none"), default="same",
                        help="CPU pinning (default same: the benchmark, its children and the "
                             "redis-servers on one CPU; split: redis-servers on another)")
    parser.add_argument("--only", action="append", choices=sorted(WORKLOADS),
                        help="run only this workload (repeatable)")
    parser.set_defaults(mode="full")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = MODES[args.mode]
    pinning = Pinning(args.pin)
    pinning.pin_self()  # before any thread or child exists: they inherit it
    started = time.monotonic()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": settings.mode,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "packages": package_versions(),
        "pinning": pinning.describe(),
        "settings": vars(settings).copy(),
        "value_size": VALUE_SIZE,
    }
    print(f"benchmark: {settings.mode} run, pinning {args.pin}", file=sys.stderr, flush=True)
    systems: list[System] = open_systems(pinning, max(2 * settings.keys, 1000))
    try:
        keys = [f"k:{i:06d}" for i in range(settings.keys)]
        value = bytes(range(VALUE_SIZE))
        for system in systems:
            system.populate(keys, value)
            if not is_hit(system.get(keys[-1])):
                raise RuntimeError(f"{system.name}: a populated key reads as a miss")
        context = Context(settings=settings, systems=systems, keys=keys,
                          zipf=zipf_keys(keys, settings.sample, seed=1), value=value,
                          overhead_ns=timer_overhead_ns())
        meta["timer_overhead_ns"] = context.overhead_ns
        selected = args.only or list(WORKLOADS)
        results = {name: WORKLOADS[name](context) for name in WORKLOADS if name in selected}
    finally:
        for system in systems:
            system.close()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    print(render(results, meta))
    document = {**meta, "workloads": {name: {k: v for k, v in result.items() if k != "rows"}
                                      for name, result in results.items()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_clean(document), indent=2, ensure_ascii=False) + "\n")
    print(f"\nJSON written to {args.json} ({meta['elapsed_s']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
