"""Provider bench: the cost of one model call (scripted model) in the provider and in its caller.

Rows:

- ``in-process``: :meth:`Provider.complete` called directly, at 1 and 100 in flight (the floor);
- ``service``: the provider in its own process (``statek-bus serve provider``, as deployed),
  called through :class:`~statek_bus.client.llm.ProviderModel`, the executor's client of
  ``statek.llm.complete``, with an executor-like request (a system prompt, agent metadata, a job
  id, a call index, so a deadline and a call identity), at 1 and 100 in flight. Columns: CPU µs
  per call in the provider process, in nats-server and in the caller (this process: the
  executor's side of the call), besides calls/s and latency against the in-process floor;
- ``service, SCRIPT_LATENCY``: thousands of calls in flight at once, each waiting
  ``SCRIPT_LATENCY`` in the provider (a loop timer, no thread): the provider's CPU per call, its
  RSS growth per in-flight call, its thread count, and the wall time against the ideal
  (calls x latency / in flight).

Run: ``python -m bench.provider`` (``--quick`` for a short run). Starts its own nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import SLOWER, Result, closed_loop, cpu_seconds, print_table, progress, ratio, settle
from statek_bus.client.core import AsyncStatekClient
from statek_bus.client.llm import ProviderModel
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh
from statek_bus.provider import Provider
from statek_bus.wire.messages import ChatMessage, CompleteRequest

__all__ = ["run"]

_SYSTEM = (
    "You are a support agent. You write Python; the variables in your workspace persist.\n\n"
    "--- Tools ---\n"
    "lookup_order(order_id: str, include_lines: bool = False) -> dict: Fetch an order by id.\n"
    "refund(order_id: str, amount: float, reason: str = '') -> str: Refund part of an order.\n\n"
    "--- Hard requests ---\nLook the order up first, then decide. Explain each refund in one sentence.\n\n"
    "--- Finishing ---\nCall exit(result) with the answer when you are done.\n"
)
_METADATA = {"MODEL": "scripted/bench", "SCRIPT": ["result = n * 2\nexit(str(result))"]}
REQUEST = CompleteRequest(
    model="",
    messages=[ChatMessage(role="system", content=_SYSTEM), ChatMessage(role="user", content="n = 21")],
    metadata=_METADATA,
    call_index=0,
    job_id="bench",
)
"""What an executor sends for a single-turn job's one call (model from the agent's metadata)."""
LATENCY = 0.5
"""Seconds each call of the latency row waits in the provider (``SCRIPT_LATENCY``)."""


def _request(i: int, metadata: dict[str, Any] = _METADATA) -> CompleteRequest:
    """The call of job ``bench-<i>`` (every call its own job: its own identity)."""
    return CompleteRequest(
        model=REQUEST.model,
        messages=REQUEST.messages,
        metadata=metadata,
        call_index=0,
        job_id=f"bench-{i}",
    )


def _proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


async def run(quick: bool) -> list[dict[str, Any]]:
    """Measure and return one row per configuration."""
    seconds = 2.0 if quick else 6.0
    in_flight_waiting = 2000 if quick else 5000
    rows: list[dict[str, Any]] = []
    settings = Settings.from_env({}, request_timeout=60.0, llm_timeout=60.0)
    progress("provider: in-process calls, then the service at 1 and 100 in flight")
    async with Provider(settings) as local:
        for in_flight in (1, 100):
            cpu = time.process_time()
            r = await closed_loop(lambda i: local.complete(_request(i)), in_flight=in_flight, seconds=seconds)
            row = _row("in-process", in_flight, r)
            row["caller CPU µs/call"] = 1e6 * (time.process_time() - cpu) / max(1, r.ops)
            rows.append(row)
    env = {"STATEK_HANDLER_CONCURRENCY": str(2 * in_flight_waiting), "STATEK_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp:
        async with Mesh(
            settings, data_dir=Path(tmp) / "nats", kinds=["provider"], env=env, log_dir=tmp
        ) as mesh:
            server = getattr(mesh.server, "_proc", None)
            proc = mesh.services["provider"].proc
            assert proc is not None and server is not None
            pids = {"provider": proc.pid, "nats-server": server.pid}
            async with AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url)) as client:
                model = ProviderModel(await client.connection(), settings)
                # steady state: the provider imports litellm in the background after it registers
                await settle(pids)
                await closed_loop(lambda i: model.complete(_request(i)), in_flight=10, seconds=0.5)
                for in_flight in (1, 100):
                    before = {k: cpu_seconds(p) for k, p in pids.items()}
                    cpu = time.process_time()
                    r = await closed_loop(
                        lambda i: model.complete(_request(i)), in_flight=in_flight, seconds=seconds
                    )
                    row = _row("service", in_flight, r)
                    row["caller CPU µs/call"] = 1e6 * (time.process_time() - cpu) / max(1, r.ops)
                    for k, p in pids.items():
                        row[f"{k} CPU µs/call"] = 1e6 * (cpu_seconds(p) - before[k]) / max(1, r.ops)
                    rows.append(row)
                progress(f"provider: {in_flight_waiting:,} calls in flight, {LATENCY} s each")
                rows.append(await _waiting(model, pids, in_flight_waiting, 3 if quick else 6))
    # the floor of each row is the in-process call at the same number in flight
    for row, floor in ((rows[0], rows[0]), (rows[1], rows[1]), (rows[2], rows[0]), (rows[3], rows[1])):
        row[ratio("in-process calls/s")] = row["calls/s"] / floor["calls/s"]
        row[ratio("in-process p50", SLOWER)] = row["p50 µs"] / floor["p50 µs"]
    return rows


async def _waiting(model: ProviderModel, pids: dict[str, int], in_flight: int, rounds: int) -> dict[str, Any]:
    """``rounds`` waves of ``in_flight`` calls of :data:`LATENCY` s each, all in flight at once."""
    metadata = {**_METADATA, "SCRIPT_LATENCY": LATENCY}
    pid = pids["provider"]
    idle_rss = _proc_status(pid, "VmRSS")
    peak = {"rss": idle_rss, "threads": _proc_status(pid, "Threads")}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _proc_status(pid, "VmRSS"))
            peak["threads"] = max(peak["threads"], _proc_status(pid, "Threads"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    sampler = asyncio.create_task(sample())
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    started = time.perf_counter()
    calls = 0
    for wave in range(rounds):
        await asyncio.gather(
            *(model.complete(_request(wave * in_flight + i, metadata)) for i in range(in_flight))
        )
        calls += in_flight
    wall = time.perf_counter() - started
    stop.set()
    await sampler
    ideal = rounds * LATENCY
    row: dict[str, Any] = {
        "path": f"service, SCRIPT_LATENCY {LATENCY} s",
        "in flight": in_flight,
        "calls/s": calls / wall,
        "wall s": wall,
        "ideal s": ideal,
        "x ideal (1.00 = ideal)": wall / ideal,
        "provider threads (peak)": peak["threads"],
        "provider RSS idle MiB": idle_rss / 1024,
        "provider KiB per in-flight call": (peak["rss"] - idle_rss) / in_flight,
    }
    for k, p in pids.items():
        row[f"{k} CPU µs/call"] = 1e6 * (cpu_seconds(p) - before[k]) / calls
    return row


def _row(path: str, in_flight: int, r: Result) -> dict[str, Any]:
    return {
        "path": f"{path} (scripted model)",
        "in flight": in_flight,
        "calls/s": r.rate,
        "p50 µs": r.p(50) * 1000,
        "p99 µs": r.p(99) * 1000,
    }


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 s per configuration instead of 6 s")
    args = parser.parse_args()
    print_table(f"provider{' (quick)' if args.quick else ''}", asyncio.run(run(args.quick)))


if __name__ == "__main__":
    _main()
