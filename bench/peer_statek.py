"""The STATEK side of :mod:`bench.peer`: runs in a venv holding the public ``statek`` 1.4.2, never ours.

``python peer_statek.py '<json spec>'`` runs one workload in this process (STATEK is a library
in one worker process) and prints one JSON line of results. Spec fields: ``jobs``, ``calls`` (LLM
calls per job: the script is ``calls - 1`` assignments, then ``exit``), ``latency`` (seconds
the fake model waits, without holding a thread), ``concurrency`` (``run_jobs_loop``'s
``max_concurrency``), ``latency_samples`` (idle submit→DONE samples taken afterwards), and
``prompt``/``tools`` (the system prompt, rendered by STATEK with its ``{tools}``).

The model is faked the way STATEK supports: a provider registered with ``statek.add_provider``
whose ``_process_request`` answers from the ``SCRIPT`` metadata. Completion is watched by
counting DONE jobs every 50 ms beside the loop (``auto_terminate`` adds up to 0.8 s of its own).
This file imports nothing from ``statek_bus``; the mesh side lives in :mod:`bench.peer`.
"""

# This module runs under another interpreter and package set: it is kept out of mypy's files.
from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

import dbzero as db0
import statek
from statek import LLM_API, LLM_Response, LLM_Stats, LLM_StepData
from statek.agents.agent import SupervisedAgent
from statek.executors.job import Job, JobStatus
from statek.executors.utils import run_jobs_loop
from statek.prompt_config import make_system_prompt
from statek.task import submit_new_job, submit_new_jobs_batch

_LATENCY = 0.0


class ScriptedLLM(LLM_API):
    """Replies from the agent's ``SCRIPT`` metadata (JSON list), one per assistant turn so far."""

    def __init__(self, settings: Any, **kwargs: Any) -> None:
        self.settings = settings

    def _build_request_payload(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    async def _process_request(self, **kwargs: Any) -> Any:
        script = json.loads((kwargs.get("metadata") or {})["SCRIPT"])
        history = list(kwargs.get("chat_history") or [])
        turn = sum(1 for item in history if str(getattr(item, "role", "")).endswith("ASSISTANT"))
        if _LATENCY:
            await asyncio.sleep(_LATENCY)
        text = script[min(turn, len(script) - 1)]
        sent = len(kwargs.get("system_prompt") or "") + sum(len(str(i)) for i in history)
        return LLM_Response(
            LLM_StepData(text, None), LLM_Stats(sent, len(text), 0.0, sent // 4, len(text) // 4, 0)
        )


@statek.tool
def lookup_order(order_id: str, include_lines: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Fetch an order by id.

    Args:
        order_id: the order's id, as the customer gives it.
        include_lines: whether to include the order lines.
    """
    return {"id": order_id}


@statek.tool
def refund(order_id: str, amount: float, reason: str = "", **kwargs: Any) -> str:
    """Refund part of an order.

    Args:
        order_id: the order's id.
        amount: how much to refund, in the order's currency.
        reason: shown to the customer.
    """
    return f"refunded {amount} on {order_id}"


def _script(calls: int) -> list[str]:
    lines = [f"a{i} = n + {i}" for i in range(calls - 1)]
    return [*lines, "result = n * 2\nexit(str(result))"]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pending() -> int:
    return len(db0.find(Job, [JobStatus.READY, JobStatus.WARMING_UP, JobStatus.STARTED, JobStatus.SUSPENDED]))


async def _until_done(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pending():
        if time.monotonic() > deadline:
            raise TimeoutError("STATEK did not finish its jobs")
        await asyncio.sleep(0.05)


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the workload described by ``spec`` and return the figures."""
    global _LATENCY
    _LATENCY = float(spec.get("latency", 0.0))
    jobs, calls = int(spec["jobs"]), int(spec.get("calls", 1))
    statek.add_provider("BENCHFAKE", ScriptedLLM, api_url="http://fake.invalid", api_key="fake")
    agent = SupervisedAgent(
        role=f"peer_{calls}_{os.getpid()}",
        _system_prompt=make_system_prompt(spec["prompt"]) if spec.get("prompt") else None,
        _tools=[lookup_order, refund] if spec.get("tools", True) else [],
        _metadata={"MODEL": "fake-1", "PROVIDER": "BENCHFAKE", "SCRIPT": json.dumps(_script(calls))},
    )
    loop_task = asyncio.create_task(
        run_jobs_loop(max_concurrency=int(spec.get("concurrency", 100)), queue_prefixes=[])
    )
    await asyncio.sleep(0.5)
    # warm-up: a few jobs through every code path before the clock starts
    submit_new_jobs_batch(agent, [{"n": i} for i in range(min(100, jobs))])
    await _until_done(120)

    rss_before = _rss_mib()
    cpu0, started = time.process_time(), time.perf_counter()
    for k in range(0, jobs, 250):
        submit_new_jobs_batch(agent, [{"n": i} for i in range(k, min(jobs, k + 250))])
    await _until_done(3600)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    statuses = [str(j.py_env.exit_status) for j in db0.find(Job, [JobStatus.DONE])]
    ok = sum(1 for s in statuses if s.isdigit())

    latencies: list[float] = []
    for i in range(int(spec.get("latency_samples", 0))):
        t0 = time.perf_counter()
        job = submit_new_job(agent, shared_vars={"n": i})
        while job.status != JobStatus.DONE:
            await asyncio.sleep(0.001)
        latencies.append(time.perf_counter() - t0)
    loop_task.cancel()
    return {
        "jobs": jobs,
        "seconds": seconds,
        "rate": jobs / seconds,
        "ok": ok,
        "cpu_ms_per_job": 1000 * cpu / jobs,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before,
        "latencies": latencies,
        "version": statek.__version__,
    }


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    root = tempfile.mkdtemp(prefix="statek-peer-")
    db0.init(root)
    db0.open("bench", "rw")
    statek.init()
    result = asyncio.run(main(spec))
    print(json.dumps(result), flush=True)
    os._exit(0)  # dbzero's background threads and the cancelled loop need no orderly shutdown
