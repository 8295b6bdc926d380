"""Shared benchmark helpers: closed-loop load at N in flight, percentiles, and the table printer."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHEAPER",
    "FASTER",
    "RATIO_HEADER",
    "SLOWER",
    "Result",
    "closed_loop",
    "connection_messages",
    "cpu_seconds",
    "minor_faults",
    "own_cpu_seconds",
    "percentile",
    "print_table",
    "print_tables",
    "progress",
    "ratio",
    "settle",
    "table_problems",
]

FASTER = "higher = faster"
"""Direction of a ratio of rates (ours ÷ the floor's), or of latencies taken the other way (floor ÷ ours)."""
SLOWER = "lower = faster"
"""Direction of a ratio of times or latencies (ours ÷ the floor's)."""
CHEAPER = "lower = cheaper"
"""Direction of a ratio of costs: CPU, memory (ours ÷ the floor's)."""

RATIO_HEADER = re.compile(r"^x \S.* \((higher|lower) = (faster|cheaper)\)$")
"""The one header style of a ratio column: ``x <floor or peer> (<direction>)``."""


def ratio(against: str, direction: str = FASTER) -> str:
    """The header of a ratio column against ``against`` (a floor or peer measured in the same run)."""
    header = f"x {against} ({direction})"
    if not RATIO_HEADER.match(header):
        raise ValueError(f"not a ratio header: {header!r}")
    return header


def table_problems(rows: list[dict[str, Any]]) -> list[str]:
    """What keeps a table from being read on its own: no ratio column (``x <floor> (<direction>)``)."""
    cols = {c for r in rows for c in r}
    if rows and not any(RATIO_HEADER.match(c) for c in cols):
        return ["no ratio column against a floor or peer of the same run (x <floor> (higher = faster))"]
    return []


@dataclass
class Result:
    """Outcome of a closed-loop run."""

    ops: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.ops / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        """Latency percentile ``q`` (0-100) in milliseconds."""
        return percentile(self.latencies, q) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[k]


async def closed_loop(op: Callable[[int], Awaitable[Any]], *, in_flight: int, seconds: float) -> Result:
    """Run ``op(i)`` from ``in_flight`` workers for ``seconds``; each awaits its op before the next."""
    latencies: list[float] = []
    counter = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            counter += 1
            i = counter
            t0 = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return Result(len(latencies), time.perf_counter() - started, latencies)


def print_table(title: str, rows: list[dict[str, Any]], *, ratios: bool = True) -> None:
    """Print ``rows`` (dicts with the same keys) as an aligned text table.

    ``ratios``: the table is a bench table, whose ratio column is checked (a profile's shares are not).
    """
    print(f"\n## {title}\n")
    if not rows:
        print("(no rows)")
        return
    for problem in table_problems(rows) if ratios else []:
        progress(f"table {title!r}: {problem}")
    cols = list(rows[0])
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")


def print_tables(title: str, result: list[dict[str, Any]] | dict[str, list[dict[str, Any]]]) -> None:
    """Print a bench's result: one table (rows) or several (title → rows)."""
    if isinstance(result, dict):
        for name, rows in result.items():
            print_table(name, rows)
    else:
        print_table(title, result)


def progress(text: str) -> None:
    """A progress line on stderr (kept out of the tables on stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


_CLK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return found


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` alone (no child's)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _CLK


def minor_faults(pid: int) -> int:
    """Minor page faults of the children ``pid`` has reaped (a fork server's finished workers)."""
    return int(_stat(pid)[8])


def connection_messages(monitor_url: str, name: str) -> int:
    """Messages the server has exchanged with the connections named ``name`` so far, both ways
    (``/connz``: what they published and what it delivered to them)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{monitor_url}/connz?limit=100000", timeout=10) as r:
        conns = json.load(r)["connections"]
    return sum(int(c["in_msgs"]) + int(c["out_msgs"]) for c in conns if c.get("name") == name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and everything it started, so far.

    A process's own time plus what its reaped children used, and the same for every live child:
    an executor's sandbox fork server and the per-step workers it reaped count as the executor's
    (they are part of running a step; leaving them out hides the process boundary's cost).
    """
    try:
        fields = _stat(pid)
    except OSError:  # ended meanwhile: what it used is in its parent's reaped-children time
        return 0.0
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / _CLK
    return total + sum(cpu_seconds(child) for child in _children(pid))


async def settle(pids: dict[str, int], *, idle_share: float = 0.05, timeout: float = 90.0) -> float:
    """Wait until the processes together use under ``idle_share`` of a core; returns the seconds waited.

    A freshly started provider imports litellm in a background thread (seconds of CPU): measured
    before it finishes, that import competes with the executor and counts in the provider's cost.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(cpu_seconds(p) for p in pids.values())
        await asyncio.sleep(0.5)
        if sum(cpu_seconds(p) for p in pids.values()) - before < idle_share * 0.5:
            break
    return time.monotonic() - started
