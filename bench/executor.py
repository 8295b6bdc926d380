"""End to end through the mesh: submit → executor → scripted model → exit → DONE.

Every service is its own process (as deployed): an embedded nats-server, submission, state,
provider and 1 or 2 executor replicas with ``max_concurrency`` 100. Jobs are submitted in
batches through ``statek.jobs.submit_batch``; completion is read from the DONE status events.
Rows: single-turn jobs/s (2 steps, 1 LLM call), 3-turn jobs/s (4 steps, 3 LLM calls) with LLM
steps/s, and submit→DONE latency of one job at a time on an otherwise idle mesh. The floor is raw
nats-py request/reply measured on the same server at the end of each run: a job's cost in raw
request/replies (100 in flight) and its idle latency in raw round trips (1 in flight).

``python -m bench.executor [--quick]``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import SLOWER, percentile, print_table, progress, ratio, settle
from bench.floor import measure
from statek_bus.authoring.agents import SupervisedAgent
from statek_bus.client.core import AsyncStatekClient
from statek_bus.mesh.settings import Settings
from statek_bus.ops.mesh import Mesh, ServiceProcess
from statek_bus.wire.messages import JobEvent, JobStatus, decode
from statek_bus.wire.subjects import EVENTS_PREFIX, job_events_subject

__all__ = ["AGENTS", "run"]

ONE_TURN = SupervisedAgent(
    "bench_one_turn",
    "",
    metadata={"MODEL": "scripted/bench", "SCRIPT": ["result = n * 2\nexit(str(result))"]},
)
THREE_TURN = SupervisedAgent(
    "bench_three_turn",
    "",
    metadata={"MODEL": "scripted/bench", "SCRIPT": ["a = n + 1", "b = a * 2", "exit(str(a + b))"]},
)


def lookup_order(order_id: str, include_lines: bool = False) -> dict[str, Any]:
    """Fetch an order by id.

    Args:
        order_id: the order's id, as the customer gives it.
        include_lines: whether to include the order lines.
    """
    return {"id": order_id, "lines": [] if include_lines else None}


def refund(order_id: str, amount: float, reason: str = "") -> str:
    """Refund part of an order.

    Args:
        order_id: the order's id.
        amount: how much to refund, in the order's currency.
        reason: shown to the customer.
    """
    return f"refunded {amount} on {order_id}"


PROMPT = """You are a support agent. You write Python; the variables in your workspace persist.

--- Tools ---
{tools}

--- L: Simple requests ---
Answer directly when the request is simple.

--- MH: Hard requests ---
Look the order up first, then decide. Explain each refund in one sentence.

--- Finishing ---
Call exit(result) with the answer when you are done.
"""
"""A realistic system prompt: sections (two by difficulty) and the ``{tools}`` placeholder."""

PROMPTED = SupervisedAgent(
    "bench_prompted",
    PROMPT,
    tools=[lookup_order, refund],
    metadata={"MODEL": "scripted/bench", "SCRIPT": ["result = n * 2\nexit(str(result))"]},
)
"""A single-turn agent with what real agents have: a sectioned prompt, ``{tools}``, two tools."""
LLM_LATENCY = 0.5
"""Seconds each model call of :data:`LLM_BOUND` takes (``SCRIPT_LATENCY``)."""
LLM_BOUND = SupervisedAgent(
    "bench_llm_bound",
    PROMPT,
    tools=[lookup_order, refund],
    metadata={
        "MODEL": "scripted/bench",
        "SCRIPT": ["a = n + 1", "result = n * 2\nexit(str(result))"],
        "SCRIPT_LATENCY": LLM_LATENCY,
    },
)
"""The prompted agent with two model calls of :data:`LLM_LATENCY` seconds each (two steps)."""
AGENTS = [ONE_TURN, THREE_TURN, PROMPTED, LLM_BOUND]
"""The agents the benchmark's executors serve."""

_SPEC = "bench.executor:AGENTS"


async def _throughput(
    client: AsyncStatekClient, agent: str, jobs: int, timeout: float = 120.0
) -> tuple[float, int]:
    """Jobs/s for ``jobs`` jobs submitted in batches; returns (rate, completed)."""
    nc = await client.connection()
    done = 0
    finished = asyncio.Event()
    ids: set[str] = set()
    early: set[str] = set()

    async def on_event(msg: Any) -> None:
        nonlocal done
        e = decode(msg.data, JobEvent)
        if e.kind == "status" and e.status is JobStatus.DONE:
            if e.job_id in ids:
                done += 1
            else:
                early.add(e.job_id)
            if done + len(early & ids) >= jobs:
                finished.set()

    sub = await nc.subscribe(f"{EVENTS_PREFIX}.>", cb=on_event)
    started = time.perf_counter()
    batch = 250
    chunks = [
        client.jobs.submit_batch(agent, [{"n": i} for i in range(k, min(jobs, k + batch))])
        for k in range(0, jobs, batch)
    ]
    for created in await asyncio.gather(*chunks):
        ids.update(j.id for j in created)
    done += len(early & ids)
    if done >= jobs:
        finished.set()
    try:
        await asyncio.wait_for(finished.wait(), timeout=timeout)
    finally:
        await sub.unsubscribe()
    return jobs / (time.perf_counter() - started), done


async def _latency(client: AsyncStatekClient, agent: str, samples: int) -> list[float]:
    """submit→DONE seconds of one job at a time."""
    nc = await client.connection()
    out: list[float] = []
    for i in range(samples):
        job_id = f"lat-{time.time_ns()}-{i}"
        got = asyncio.Event()

        async def on_event(msg: Any, got: asyncio.Event = got) -> None:
            e = decode(msg.data, JobEvent)
            if e.kind == "status" and e.status is JobStatus.DONE:
                got.set()

        sub = await nc.subscribe(job_events_subject(job_id), cb=on_event)
        await nc.flush()
        t0 = time.perf_counter()
        await client.jobs.submit(agent, {"n": i}, job_id=job_id)
        await asyncio.wait_for(got.wait(), timeout=30)
        out.append(time.perf_counter() - t0)
        await sub.unsubscribe()
    return out


async def _one_config(replicas: int, quick: bool, tmp: Path) -> list[dict[str, Any]]:
    settings = Settings.from_env({}, max_concurrency=100, request_timeout=30.0)
    env = {"STATEK_MAX_CONCURRENCY": "100", "STATEK_LOG_LEVEL": "WARNING"}
    mesh = Mesh(
        settings,
        data_dir=tmp / f"nats{replicas}",
        kinds=["submission", "state", "provider"],
        env=env,
        log_dir=tmp,
    )
    rows: list[dict[str, Any]] = []
    async with mesh:
        executors = [
            ServiceProcess(
                "executor",
                mesh.nats_url,
                args=["--agents", _SPEC],
                env=env,
                log_path=tmp / f"executor{i}.log",
            )
            for i in range(replicas)
        ]
        await asyncio.gather(*(e.start() for e in executors))
        client = AsyncStatekClient(settings=settings.replace(nats_url=mesh.nats_url))
        try:
            n = 600 if quick else 3000
            progress(f"executor: {replicas} executor(s), warming up")
            await _throughput(client, ONE_TURN.role, 200)  # warm up
            pids = [p.proc.pid for p in [*mesh.services.values(), *executors] if p.proc is not None]
            await settle(dict(enumerate(pids)))  # the provider's litellm import ends first
            progress(f"executor: {n:,} single-turn and {n // 2:,} 3-turn jobs, then the idle latency")
            rate1, _ = await _throughput(client, ONE_TURN.role, n)
            rate3, _ = await _throughput(client, THREE_TURN.role, n // 2)
            lat = await _latency(client, ONE_TURN.role, 30 if quick else 200)
            floor = {(r["operation"], r["in flight"]): r for r in await measure(mesh.nats_url, seconds=0.5)}
            rr_rate = float(floor[("request/reply (raw nats-py)", 100)]["ops/s"])  # type: ignore[arg-type]
            rr_p50 = float(floor[("request/reply (raw nats-py)", 1)]["p50 ms"])  # type: ignore[arg-type]
            p50 = percentile(lat, 50) * 1000
            rows.append(
                {
                    "executors": replicas,
                    "single-turn jobs/s": rate1,
                    ratio("raw request/reply, 100 in flight", SLOWER): rr_rate / rate1,  # a job in round trips
                    "3-turn jobs/s": rate3,
                    "LLM steps/s (3-turn)": rate3 * 3,
                    "steps/s (3-turn)": rate3 * 4,
                    "submit→DONE p50 ms": p50,
                    "p99 ms": percentile(lat, 99) * 1000,
                    ratio("raw request/reply p50", SLOWER): p50 / rr_p50,
                }
            )
        finally:
            await client.aclose()
            await asyncio.gather(*(e.stop() for e in executors))
    return rows


async def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for 1 and 2 executor replicas."""
    rows: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="statek-bench-")
    try:
        for replicas in (1, 2):
            rows += await _one_config(replicas, quick, Path(tmp))
        for row in rows:  # the second replica against the first, in the same run
            row[ratio("1 executor jobs/s")] = row["single-turn jobs/s"] / rows[0]["single-turn jobs/s"]
    except BaseException:
        print(f"benchmark failed; service logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    try:
        import uvloop

        result = uvloop.run(run(quick))
    except ImportError:
        result = asyncio.run(run(quick))
    print_table(f"executor{' (quick)' if quick else ''}", result)
