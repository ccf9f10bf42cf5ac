"""What every workload shares: the run's settings, the context it is handed, and how a
result's cells and targets are written."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from _systems import System

__all__ = [
    "VALUE_SIZE",
    "Context",
    "Result",
    "Settings",
    "fmt",
    "fmt_x",
    "progress",
    "rotated",
    "target",
]

VALUE_SIZE = 100


@dataclass(frozen=True)
class Settings:
    """How big and how long; one instance per mode (see ``run.py``)."""

    mode: str
    rounds: int
    duration: float  # seconds each system is measured per round (per measurement)
    keys: int  # key space of the hot workloads
    sample: int  # length of the precomputed Zipf key sequence
    stampede_rounds: int
    stampede_threads: int
    loader_seconds: float
    staleness_seconds: float
    write_period: float
    memory_entries: int
    judge: bool  # compare with the targets (never in smoke mode)


@dataclass
class Context:
    """What every workload reads: the settings, the open systems (populated with ``keys``,
    each holding ``value``), the Zipf key sequence and the timer's own cost."""

    settings: Settings
    systems: list[System]
    keys: list[str]
    zipf: list[str]
    value: bytes
    overhead_ns: float

    def system(self, name: str) -> Any:
        return next(s for s in self.systems if s.name == name)


Result = dict[str, Any]


def fmt(value: float, digits: int = 1) -> str:
    """``value`` for a table cell: thousands separated, ``n/a`` for NaN (not measured)."""
    if value != value:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_x(value: float) -> str:
    """A ratio for a table cell, as ``1.23x``."""
    return "n/a" if value != value else f"{value:.2f}x"


def target(text: str, measured: float, limit: float, op: str, judge: bool,
           shown: str | None = None) -> dict[str, Any]:
    """One target of issue 8; ``met`` is None when not judged (smoke mode) or unmeasured."""
    met: bool | None = None
    if judge and measured == measured:
        met = measured <= limit if op == "<=" else measured >= limit
    if shown is None:
        # Two decimals, or three where two would round onto the limit and hide the verdict.
        close = measured == measured and round(measured, 2) == limit
        shown = f"{measured:.3f}x" if close else fmt_x(measured)
    return {"target": text, "measured": measured, "limit": limit, "op": op,
            "shown": shown, "met": met}


def rotated(items: Sequence[Any], round_index: int) -> list[Any]:
    """``items`` in this round's order: the order rotates every round, so no system always
    runs first or right after another."""
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the tables)."""
    print(f"  .. {message}", file=sys.stderr, flush=True)
